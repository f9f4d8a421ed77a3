"""`epp demo` (what `make run` starts): up, answering through Envoy, and gone on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from epp.stack import free_port, free_port_run
from tests.integration.helpers import chat
from tests.integration.metrics_helpers import metric

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_try_it_commands(*, listen: int, metrics: int) -> list[str]:
    """The curl commands of the README's "Try it" block, pointed at this test's ports."""
    section = README.read_text().split("## Try it", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = block.replace("\\\n", " ").strip().splitlines()
    assert len(commands) >= 4
    return [
        c.replace("127.0.0.1:8080", f"127.0.0.1:{listen}").replace(
            "127.0.0.1:9090", f"127.0.0.1:{metrics}"
        )
        for c in commands
    ]


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_serves_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    listen, admin, grpc, metrics = (free_port() for _ in range(4))
    first_pod = free_port_run(3)
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "epp",
            "demo",
            "--listen-port",
            str(listen),
            "--admin-port",
            str(admin),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
            "--first-pod-port",
            str(first_pod),
            "--log-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        banner = []
        for line in demo.stdout:
            banner.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(banner)
        assert "epp demo is up" in text, text
        assert f"curl -si http://127.0.0.1:{listen}/v1/chat/completions" in text

        response = httpx.post(
            f"http://127.0.0.1:{listen}/v1/chat/completions",
            json=chat("gemma-2-2b", "hello"),
            timeout=30,
        )
        assert response.status_code == 200
        assert response.headers["x-sim-pod"] == f"127.0.0.1:{first_pod + 2}"
        for content, pods, model in [
            ("Fix this Python bug", {first_pod + 2}, "gemma-2-2b"),
            ("Hello!", {first_pod, first_pod + 1}, "qwen2-1-5b"),
        ]:
            chosen = httpx.post(
                f"http://127.0.0.1:{listen}/v1/chat/completions",
                json=chat("auto", content),
                timeout=30,
            )
            assert chosen.status_code == 200, chosen.text
            assert chosen.headers["x-selected-model"] == model
            assert chosen.headers["x-sim-pod"] in {f"127.0.0.1:{port}" for port in pods}
        unknown = httpx.post(
            f"http://127.0.0.1:{listen}/v1/chat/completions",
            json=chat("no-such-model", "hello"),
            timeout=30,
        )
        assert unknown.status_code == 404
        # The qwen2-1-5b pods serve its adapters; gemma's pod does not.
        adapter = httpx.post(
            f"http://127.0.0.1:{listen}/v1/chat/completions",
            json=chat("travel-helper-v2", "hello"),
            timeout=30,
        )
        assert adapter.status_code == 200, adapter.text
        assert adapter.json()["model"] == "travel-helper-v2"
        assert adapter.headers["x-sim-pod"] in {f"127.0.0.1:{first_pod + i}" for i in (0, 1)}
        assert "travel-helper-v1" in text

        for command in readme_try_it_commands(listen=listen, metrics=metrics):
            result = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, timeout=30
            )
            assert result.returncode == 0, (command, result.stderr)
            assert result.stdout.strip(), command

        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        assert demo.stdout is not None
        demo.stdout.close()
    # Every process the demo started is gone: nothing listens on its ports any more.
    deadline = time.monotonic() + 5
    ports = [listen, admin, grpc, metrics, first_pod, first_pod + 1, first_pod + 2]
    while any(_listening(port) for port in ports):
        assert time.monotonic() < deadline, "a demo process outlived Ctrl-C"
        time.sleep(0.1)


def test_demo_with_two_replicas_shares_a_prefix_and_stops_redis_too(tmp_path: Path) -> None:
    """``make run REPLICAS=2``: two epps behind the one Envoy, hearing each other through
    the redis-server the demo starts; Ctrl-C stops that too."""
    listen, admin = free_port(), free_port()
    grpc, metrics, first_pod = (free_port_run(n) for n in (2, 2, 3))
    argv = [sys.executable, "-m", "epp", "demo", "--replicas", "2"]
    argv += ["--listen-port", str(listen), "--admin-port", str(admin)]
    argv += ["--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    argv += ["--first-pod-port", str(first_pod), "--log-dir", str(tmp_path)]
    demo = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert demo.stdout is not None
        banner = []
        for line in demo.stdout:
            banner.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(banner)
        assert "2 epp replicas" in text, text
        redis_port = int(text.split("redis://127.0.0.1:", 1)[1].split("/", 1)[0])
        metrics_urls = [f"http://127.0.0.1:{metrics + i}/metrics" for i in range(2)]
        deadline = time.monotonic() + 15
        while any(metric(url, "epp_sync_peers") < 1 for url in metrics_urls):
            assert time.monotonic() < deadline, "the replicas never heard each other"
            time.sleep(0.05)
        served = set()
        prefix = "You are a helpful assistant for a travel agency. Answer briefly. " * 20
        for i in range(6):
            picks_before = sum(metric(url, "epp_sync_received_picks_total") for url in metrics_urls)
            response = httpx.post(
                f"http://127.0.0.1:{listen}/v1/chat/completions",
                json=chat("qwen2-1-5b", prefix + f"question {i}"),
                timeout=30,
            )
            assert response.status_code == 200, response.text
            served.add(response.headers["x-sim-pod"])
            # The other replica has the pick before the next request is sent.
            deadline = time.monotonic() + 10
            while sum(metric(url, "epp_sync_received_picks_total") for url in metrics_urls) <= (
                picks_before
            ):
                assert time.monotonic() < deadline, "the pick never reached the other replica"
                time.sleep(0.02)
        # Envoy spread the streams over both replicas; each was told of the other's picks.
        assert all(metric(url, "epp_sync_received_picks_total") > 0 for url in metrics_urls)
        assert len(served) == 1, served
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        assert demo.stdout is not None
        demo.stdout.close()
    deadline = time.monotonic() + 5
    ports = [listen, admin, grpc, grpc + 1, metrics, metrics + 1, redis_port, first_pod]
    while any(_listening(port) for port in ports):
        assert time.monotonic() < deadline, "a demo process outlived Ctrl-C"
        time.sleep(0.1)
