from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from epp.cli import main
from vllm_sim.cli import main as vllm_sim_main


def run_epp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "epp", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grpc-port", "99999"], "flag --grpc-port: port out of range"),
        (["--endpoint", "localhost"], "flag --endpoint"),
        (["--scorer-weight", "queue-scorer=-1"], "weight"),
    ],
    ids=["bad-port", "bad-endpoint", "negative-weight"],
)
def test_serve_refuses_bad_configuration(args: list[str], message: str) -> None:
    result = run_epp("serve", *args)
    assert result.returncode == 2
    assert "configuration error" in result.stderr
    assert message in result.stderr


def test_serve_refuses_an_unknown_plugin(tmp_path: Path) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "plugins": [{"type": "no-such-scorer"}, {"type": "max-score-picker"}],
                "schedulingProfiles": [
                    {
                        "name": "default",
                        "plugins": [
                            {"pluginRef": "no-such-scorer", "weight": 1},
                            {"pluginRef": "max-score-picker"},
                        ],
                    }
                ],
            }
        )
    )
    result = run_epp("serve", "--config-file", str(path))
    assert result.returncode == 2
    assert "no-such-scorer" in result.stderr
    assert "queue-scorer" in result.stderr  # the message lists the known types


def test_envoy_config_prints_a_bootstrap(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envoy-config", "--listen-port", "18080", "--body-mode", "BUFFERED"]) == 0
    bootstrap = yaml.safe_load(capsys.readouterr().out)
    listener = bootstrap["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["port_value"] == 18080


def _help(
    command: Callable[[list[str]], int], args: list[str], out: pytest.CaptureFixture[str]
) -> str:
    with pytest.raises(SystemExit):
        command(args)
    return out.readouterr().out


def test_epp_sim_takes_the_arguments_of_vllm_sim(capsys: pytest.CaptureFixture[str]) -> None:
    epp_sim = _help(main, ["sim", "--help"], capsys)
    vllm_sim = _help(vllm_sim_main, ["--help"], capsys)
    flags = re.compile(r"--[a-z][a-z-]*")
    assert {"--pod", "--pods", "--time-scale"} <= set(flags.findall(vllm_sim))
    assert set(flags.findall(epp_sim)) == set(flags.findall(vllm_sim))
    assert main(["sim"]) == vllm_sim_main([]) == 2  # no pods: the same refusal


def test_flags_without_a_command_mean_serve(capsys: pytest.CaptureFixture[str]) -> None:
    # The reference EPP's chart runs the image with flags alone (--pool-name ...).
    assert main(["--grpc-port", "99999", "--pool-name", "p"]) == 2
    assert "flag --grpc-port: port out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0
    assert capsys.readouterr().out.startswith("epp ")
