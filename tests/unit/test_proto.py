"""The checked-in Pick API stubs (epp/v1/) are exactly what grpcio-tools makes of
proto/epp/v1/picker.proto: edit the .proto, then run ``make proto``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "proto" / "generate.py"


def test_checked_in_stubs_are_what_protoc_generates(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the dev extra) compiles proto/")
    written = subprocess.run(
        [sys.executable, str(GENERATE), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(written) == 3  # picker_pb2.py, .pyi, picker_pb2_grpc.py
    for generated in map(Path, written):
        checked_in = ROOT / generated.relative_to(tmp_path)
        assert checked_in.is_file(), f"{checked_in} is missing: run make proto"
        assert checked_in.read_bytes() == generated.read_bytes(), (
            f"{checked_in.relative_to(ROOT)} is out of date with proto/: run make proto"
        )


def test_the_stubs_describe_the_proto_service() -> None:
    from epp.v1 import picker_pb2

    service = picker_pb2.DESCRIPTOR.services_by_name["EndpointPicker"]
    assert service.full_name == "epp.v1.EndpointPicker"
    assert [method.name for method in service.methods] == ["Pick", "Finish"]


def test_the_declared_runtimes_are_those_the_stubs_need() -> None:
    """The stubs raise at import under an older grpcio or protobuf than made them: the
    package's lower bounds must be at least those versions."""
    grpc_stub = (ROOT / "epp" / "v1" / "picker_pb2_grpc.py").read_text()
    messages = (ROOT / "epp" / "v1" / "picker_pb2.py").read_text()
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_stub)
    protobuf_version = re.search(r"# Protobuf Python Version: ([\d.]+)", messages)
    assert grpc_version is not None and protobuf_version is not None
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"grpcio>={grpc_version.group(1)}"' in pyproject
    assert f'"protobuf>={protobuf_version.group(1)}"' in pyproject
