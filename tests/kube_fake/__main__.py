"""`python -m tests.kube_fake --port 6443 [--seed objects.yaml] [--kubeconfig path]`: run
the fake API server standalone until Ctrl-C, e.g. to poke at it with kubectl or curl."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path
from typing import Any

import yaml

from .server import FakeKubeAPI


async def _serve(args: argparse.Namespace, seed: list[dict[str, Any]]) -> None:
    async with FakeKubeAPI(host=args.host, port=args.port) as api:
        for obj in seed:
            api.apply(obj)
        if args.kubeconfig:
            api.write_kubeconfig(args.kubeconfig)
        print(f"fake Kubernetes API server on {api.url}", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.kube_fake", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", help="a (multi-document) YAML file of objects to apply")
    parser.add_argument("--kubeconfig", help="write a kubeconfig for the server here")
    args = parser.parse_args()
    seed = [o for o in yaml.safe_load_all(Path(args.seed).read_text()) if o] if args.seed else []
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args, seed))


if __name__ == "__main__":
    main()
