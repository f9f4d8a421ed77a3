"""The configuration examples in README.md load, and mean what the text around them says."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from epp.config import Config, add_serve_arguments, build_scheduler_from_config, load_config

README = Path(__file__).resolve().parents[2] / "README.md"
YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.DOTALL)


def load(text: str) -> Config:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return load_config(parser.parse_args(["--config-text", text]), environ={})


def test_the_readme_has_config_examples() -> None:
    assert len(YAML_BLOCKS) >= 2


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.split("\n", 1)[0][:40])
def test_every_yaml_example_is_a_valid_config(block: str) -> None:
    config = load(block)
    build_scheduler_from_config(config)


def test_the_main_example_is_the_default_profile() -> None:
    (main,) = [b for b in YAML_BLOCKS if "schedulingProfiles" in b and "epp.dev" in b]
    config = load(main)
    default = load("kind: EndpointPickerConfig\n").scheduler
    assert config.scheduler.profiles == default.profiles  # same plugins, same weights
    assert [p.type for p in config.scheduler.plugins] == [p.type for p in default.plugins]
    assert [address for address, _ in config.endpoints] == ["10.0.0.5:8000", "10.0.0.6:8000"]


def test_the_migration_example_is_the_reference_profile() -> None:
    """The reference-shaped file of "Migrating from the reference picker" loads with its
    weights, and builds (with the picker the reference adds itself)."""
    (reference,) = [b for b in YAML_BLOCKS if "inference.networking.x-k8s.io/v1alpha1" in b]
    config = load(reference)
    (profile,) = config.scheduler.profiles
    assert {ref.plugin_ref: ref.weight for ref in profile.plugins} == {
        "queue-scorer": 2,
        "kv-cache-utilization-scorer": 2,
        "prefix-cache-scorer": 3,
    }
    build_scheduler_from_config(config)


def test_the_pick_proxy_example_is_the_tested_file() -> None:
    """The README shows examples/pick_proxy.py whole, and the integration test runs that
    file (tests/integration/test_pick_proxy.py): the two cannot drift apart."""
    example = README.parent / "examples" / "pick_proxy.py"
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert example.read_text() in blocks


def _routing_commands() -> list[str]:
    """The indented `python -m benchmarks.routing.run` commands, continuation lines joined."""
    text = README.read_text().replace("\\\n", " ")
    return re.findall(r"^ {4}python -m benchmarks\.routing\.run (.*)$", text, flags=re.MULTILINE)


def test_the_routing_benchmark_commands_parse() -> None:
    from benchmarks.routing import run

    commands = _routing_commands()
    assert commands  # the CPU-per-request section shows one
    for command in commands:
        # argparse exits (and the test fails) on a flag the benchmark no longer has.
        args = run._parser().parse_args(shlex.split(command))
        assert args.rounds > 1  # the point of the section: ratios by round
