"""The Dockerfile and `make image`: the image reports the commit and tag it was built from
in llm_d_epp_info. No image is built here (no registry to pull the base from): the
Dockerfile's final stage is read as Docker reads ARG and ENV, and make's command is the
one it would run."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry

from epp.observability import metrics

ROOT = Path(__file__).resolve().parents[3]


def final_stage() -> list[tuple[str, str]]:
    """The (INSTRUCTION, arguments) of the Dockerfile's last stage, continuations joined."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            steps.append((instruction.upper(), rest.strip()))
    last_from = max(i for i, (instruction, _) in enumerate(steps) if instruction == "FROM")
    return steps[last_from + 1 :]


def image_env(build_args: dict[str, str]) -> dict[str, str]:
    """The environment the final stage sets, built with ``build_args``."""
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    for instruction, rest in final_stage():
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            args[name] = build_args.get(name, default)
        elif instruction == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), value)
    return env


def info_labels(env: dict[str, str]) -> dict[str, str]:
    registry = CollectorRegistry()
    registry.register(metrics.InfoCollector("1.0", env))
    (family,) = (f for f in registry.collect() if f.name == "llm_d_epp_info")
    (sample,) = family.samples
    return dict(sample.labels)


def test_the_build_args_reach_llm_d_epp_info() -> None:
    env = image_env({"EPP_COMMIT": "0123abc", "EPP_BUILD_REF": "v0.3.0"})
    assert info_labels(env) == {
        "commit": "0123abc",
        "build_ref": "v0.3.0",
        "version": "1.0",
    }


def test_an_image_built_without_them_says_unknown() -> None:
    labels = info_labels(image_env({}))
    assert (labels["commit"], labels["build_ref"]) == ("unknown", "unknown")


def test_make_image_passes_the_git_commit() -> None:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    command = subprocess.run(
        ["make", "--no-print-directory", "-n", "image", "IMAGE=epp:test"],
        cwd=ROOT,
        # Under `make check` (CI) the parent make's variables would make this one print
        # "make[1]: Entering directory" and the like.
        env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.replace("\\\n", " ")
    words = shlex.split(command)
    assert words[:2] == ["docker", "build"] and words[-3:] == ["-t", "epp:test", "."]
    build_args = dict(
        words[i + 1].split("=", 1) for i, word in enumerate(words) if word == "--build-arg"
    )
    assert build_args["EPP_COMMIT"] == head
    assert build_args["EPP_BUILD_REF"]  # the latest tag, or "unknown" where there is none
    assert info_labels(image_env(build_args))["commit"] == head
