from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys

import aiohttp
import pytest

from vllm_sim import PodSpec, SimConfig, SimFleet, start_pod
from vllm_sim.cli import config_from_args, configure_parser, parse_pod, run, specs_from_args

from .helpers import FAST, chat_body


@pytest.mark.asyncio
async def test_fleet_of_three_pods_on_free_ports() -> None:
    specs = [
        PodSpec(models=("m",)),
        PodSpec(models=("m",), name="named"),
        PodSpec(models=("m", "lora"), config=SimConfig(time_scale=0, default_max_tokens=2)),
    ]
    async with SimFleet(specs, FAST) as fleet, aiohttp.ClientSession() as session:
        assert len({pod.port for pod in fleet.pods}) == 3
        assert all(pod.port > 0 for pod in fleet.pods)
        assert fleet.addresses == [f"127.0.0.1:{pod.port}" for pod in fleet.pods]
        seen = []
        for pod in fleet.pods:
            payload = {"messages": [{"content": "x"}]}
            async with session.post(f"{pod.url}/v1/chat/completions", json=payload) as r:
                usage = (await r.json())["usage"]
                seen.append((r.headers["x-sim-pod"], usage["completion_tokens"]))
        first, _, third = fleet.pods
        assert seen == [(first.address, 16), ("named", 16), (third.address, 2)]
        assert third.models == ("m", "lora")
        assert all(pod.engine.stats().request_success == 1 for pod in fleet.pods)
    assert fleet.pods == []


@pytest.mark.asyncio
async def test_fleet_start_failure_closes_started_pods() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fleet = SimFleet([PodSpec(models=("m",)), PodSpec(port=port, models=("m",))], FAST)
        with pytest.raises(OSError):
            await fleet.start()
    assert fleet.pods == []


@pytest.mark.asyncio
async def test_closed_pod_stops_listening() -> None:
    pod = await start_pod(PodSpec(models=("m",)), FAST)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{pod.url}/v1/chat/completions", json=chat_body("x")) as r:
            assert r.status == 200
        await pod.close()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(f"{pod.url}/health"):
                pass


@pytest.mark.parametrize(
    ("value", "host", "port", "models"),
    [
        ("127.0.0.1:8001=qwen2-1-5b", "127.0.0.1", 8001, ("qwen2-1-5b",)),
        ("0.0.0.0:9=a,b", "0.0.0.0", 9, ("a", "b")),
        (":8002=m", "127.0.0.1", 8002, ("m",)),
        ("[::1]:8003=m", "::1", 8003, ("m",)),
    ],
    ids=["one-model", "two-models", "default-host", "ipv6"],
)
def test_parse_pod(value: str, host: str, port: int, models: tuple[str, ...]) -> None:
    assert parse_pod(value) == PodSpec(host=host, port=port, models=models)


@pytest.mark.parametrize("value", ["127.0.0.1:8001", "127.0.0.1=m", "h:x=m", "h:1=", "h:99999=m"])
def test_parse_pod_rejects(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_pod(value)


def test_cli_flags_map_to_config() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    defaults = config_from_args(parser.parse_args([]))
    assert defaults == SimConfig()
    args = parser.parse_args(
        ["--pod", "127.0.0.1:8001=m", "--max-num-seqs", "3", "--kv-num-blocks", "64",
         "--kv-block-size", "8", "--prefill-ms-per-token", "2", "--decode-ms-per-token", "30",
         "--base-latency-ms", "7", "--default-max-tokens", "5", "--time-scale", "0",
         "--legacy-metric-names", "--max-num-batched-tokens", "512",
         "--kv-read-ns-per-token", "40", "--decode-ms-per-seq", "0.5",
         "--max-model-len", "4096"]
    )  # fmt: skip
    assert args.pods == [PodSpec(port=8001, models=("m",))]
    config = config_from_args(args)
    assert config == SimConfig(
        max_num_seqs=3, kv_num_blocks=64, kv_block_size=8, prefill_s_per_token=0.002,
        decode_s_per_token=0.03, base_latency_s=0.007, default_max_tokens=5, time_scale=0,
        legacy_metric_names=True, max_num_batched_tokens=512,
        kv_read_s_per_token=config.kv_read_s_per_token, decode_s_per_seq=0.0005,
        max_model_len=4096,
    )  # fmt: skip
    assert config.kv_read_s_per_token == pytest.approx(40e-9)


def test_pods_shorthand_adds_a_fleet_of_like_pods() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(
        ["--pod", ":7000=a", "--pods", "3", "--first-port", "8100", "--model", "llama"]
    )
    assert specs_from_args(args) == [
        PodSpec(port=7000, models=("a",)),
        *(PodSpec(port=8100 + i, models=("llama",)) for i in range(3)),
    ]
    with pytest.raises(ValueError, match="--first-port"):
        specs_from_args(parser.parse_args(["--pods", "2", "--model", "m"]))


@pytest.mark.asyncio
async def test_sixteen_pods_share_one_process() -> None:
    specs = [PodSpec(models=("m",)) for _ in range(16)]
    async with SimFleet(specs, FAST) as fleet, aiohttp.ClientSession() as session:

        async def ask(url: str) -> str:
            payload = chat_body("the same system prompt " * 10, max_tokens=3)
            async with session.post(f"{url}/v1/chat/completions", json=payload) as r:
                assert r.status == 200
                return r.headers["x-sim-pod"]

        async def twice(url: str) -> list[str]:
            return [await ask(url), await ask(url)]

        served = await asyncio.gather(*(twice(pod.url) for pod in fleet.pods))
        assert [pods[0] for pods in served] == fleet.addresses
        assert len(set(fleet.addresses)) == 16
        # Each pod has its own engine and cache; each second request hit its pod's cache.
        assert all(pod.engine.stats().request_success == 2 for pod in fleet.pods)
        assert all(pod.engine.stats().prefix_cache_hits > 0 for pod in fleet.pods)


def test_cli_run_without_pods_or_with_bad_config_fails() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    assert run(parser.parse_args([])) == 2
    assert run(parser.parse_args(["--pod", ":1=m", "--max-num-seqs", "0"])) == 2


def test_cli_run_reports_a_taken_port() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run(parser.parse_args(["--pod", f"127.0.0.1:{port}=m"])) == 1


def test_python_m_vllm_sim_is_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vllm_sim", "--pods", "2", "--model", "m"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--pods N needs N >= 1, --first-port and --model" in result.stderr
