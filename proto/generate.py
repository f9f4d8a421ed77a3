"""Compile the protocols epp owns (``proto/``) into the Python modules it ships.

    python proto/generate.py            # writes epp/v1/picker_pb2{,_grpc}.py{,i}
    python proto/generate.py --out DIR  # the same files under DIR (the freshness test)

The module path follows the .proto path (``proto/epp/v1/picker.proto`` becomes
``epp.v1.picker_pb2``), so the generated imports work unedited. Needs grpcio-tools.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent
PROTOS = ("epp/v1/picker.proto",)
# What protoc writes for each .proto, relative to the output directory.
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def outputs(out: Path) -> list[Path]:
    return [
        out / (proto.removesuffix(".proto") + suffix) for proto in PROTOS for suffix in SUFFIXES
    ]


def generate(out: Path) -> list[Path]:
    """Run protoc over every .proto into ``out``; returns the files written."""
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    for proto in PROTOS:
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{ROOT}",
                f"-I{include}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                str(ROOT / proto),
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {code})")
    return outputs(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT.parent, help="output root")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
