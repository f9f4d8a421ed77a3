"""``epp serve`` starts grpc with epp's experiments, and the installed grpc knows them
(a grpc that dropped one would log "Unknown experiment" and run its default)."""

from __future__ import annotations

from pathlib import Path

from epp.grpc_env import GRPC_EXPERIMENTS
from epp.stack import free_port, loopback_serve_args, start_epp_module


def _serve_log(tmp_path: Path, name: str, env: dict[str, str] | None = None) -> str:
    grpc_port, metrics_port = free_port(), free_port()
    epp = start_epp_module(
        name,
        [*loopback_serve_args(grpc_port, metrics_port), "--endpoint", f"127.0.0.1:{free_port()}"],
        log_dir=tmp_path,
        env=env,
    )
    try:
        # Serving is what counts here: its one endpoint is down, so it never gets ready.
        epp.wait_until(
            lambda: "epp serving ext_proc" in epp.log_path.read_text(errors="replace"),
            timeout_s=30,
            what="serving",
        )
    finally:
        epp.stop()
    return epp.log_path.read_text(errors="replace")


def test_epp_serve_sets_its_grpc_experiments_which_grpc_knows(tmp_path: Path) -> None:
    log = _serve_log(tmp_path, "default")
    assert f"GRPC_EXPERIMENTS={GRPC_EXPERIMENTS}" in log
    assert "Unknown experiment" not in log


def test_an_operators_grpc_experiments_are_kept(tmp_path: Path) -> None:
    log = _serve_log(tmp_path, "operator", env={"GRPC_EXPERIMENTS": ""})
    assert "GRPC_EXPERIMENTS=" not in log
