"""The config file: an ``EndpointPickerConfig``-shaped YAML document, and what it gives.

The file holds the options of the table (``options``) under their file keys, the
endpoint list, the name-to-value mappings, and the scheduling profiles (read by
``profiles``). As from ``flags``, options and mappings come back raw with their
source, for ``load`` to parse. A key epp does not know is an error, so a typo
(``grpcport``) fails at start instead of leaving the default in force.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from epp.config.mappings import MAPPINGS, MappingOption
from epp.config.options import OPTIONS
from epp.config.reference import DATA_LAYER_KEYS, DOCUMENT_KEYS, read_reference_plugins
from epp.config.settings import ConfigError
from epp.config.values import Given, parsed
from epp.datalayer.static_discovery import parse_endpoint_flag
from epp.datalayer.store import EndpointSpec

__all__ = ["ConfigDocument", "check_keys", "read_document"]

# epp's own, llm-d-router's, and the Gateway API Inference Extension's (the same shape).
API_VERSIONS = (
    "epp.dev/v1alpha1",
    "llm-d.ai/v1alpha1",
    "inference.networking.x-k8s.io/v1alpha1",
)
# The top-level keys that are not sections of the option table or mappings.
_DOCUMENT_KEYS = (
    "apiVersion",
    "kind",
    "endpoints",
    "plugins",
    "schedulingProfiles",
    *DOCUMENT_KEYS,
)
# Keys of a section beside epp's options there: the reference's own (epp.config.reference).
_SECTION_KEYS = {"dataLayer": DATA_LAYER_KEYS}
_ENDPOINT_KEYS = ("address", "models")


@dataclass(frozen=True, slots=True)
class ConfigDocument:
    """A loaded file (empty without one) and how errors name it: its path, or
    ``--config-text``."""

    content: Mapping[str, Any] = field(default_factory=dict)
    where: str | None = None

    def option_values(self) -> dict[str, Given]:
        """Each option the file sets, by ``Option.dest``: under its own key, or through a
        reference plugin's parameter (``metrics-data-source``'s ``path``); both at once
        must agree."""
        given: dict[str, Given] = {}
        for option in OPTIONS:
            raw = _lookup(self.content, option.file_key)
            if raw is not None:
                given[option.dest] = (raw, f"{self.where}: {'.'.join(option.file_key)}")
        fed = read_reference_plugins(self.content, self.where).option_values
        for dest, (raw, source) in fed.items():
            if dest in given and given[dest][0] != raw:
                raise ConfigError(f"{source} ({raw!r}) contradicts {given[dest][1]}")
            given.setdefault(dest, (raw, source))
        return given

    def mapping_entries(self, option: MappingOption) -> list[tuple[str, Any, str]]:
        """(name, raw value, source) of each entry of ``option``'s mapping."""
        entries = self.content.get(option.file_key) or {}
        if not isinstance(entries, Mapping):
            raise ConfigError(f"{self.where}: {option.file_key} must be a mapping of names")
        return [
            (str(name), value, f"{self.where}: {option.file_key}.{name}")
            for name, value in entries.items()
        ]

    def endpoints(self) -> tuple[EndpointSpec, ...]:
        """The ``endpoints`` list: ``ADDR[=MODEL,...]`` texts or ``{address, models}``."""
        entries = self.content.get("endpoints") or []
        if not isinstance(entries, list):
            raise ConfigError(f"{self.where}: endpoints must be a list")
        specs: list[EndpointSpec] = []
        for index, entry in enumerate(entries):
            where = f"{self.where}: endpoints[{index}]"
            if isinstance(entry, str):
                specs.append(parsed(parse_endpoint_flag, (entry, where)))
                continue
            if not isinstance(entry, Mapping) or "address" not in entry:
                raise ConfigError(f"{where}: expected {{address: HOST:PORT, models: [...]}}")
            check_keys(entry, _ENDPOINT_KEYS, where)
            address, _ = parsed(parse_endpoint_flag, (str(entry["address"]), where))
            models = entry.get("models")
            if models is not None and (
                not isinstance(models, list) or not all(isinstance(m, str) for m in models)
            ):
                raise ConfigError(f"{where}: models must be a list of model names")
            specs.append((address, frozenset(models) if models else None))
        return tuple(specs)


def read_document(config_file: str | None, config_text: str | None) -> ConfigDocument:
    """The document of ``--config-file`` or ``--config-text`` (an empty one without)."""
    if config_file and config_text:
        raise ConfigError("give --config-file or --config-text, not both")
    if config_file:
        path = Path(config_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        content = _parse(text, f"config file {path}")
        _check_sections(content, config_file)
        return ConfigDocument(content, config_file)
    if config_text:
        content = _parse(config_text, "--config-text")
        _check_sections(content, "--config-text")
        return ConfigDocument(content, "--config-text")
    return ConfigDocument()


def check_keys(node: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Raise a ``ConfigError`` naming the first key of ``node`` not in ``known``."""
    allowed = set(known)
    for key in node:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(allowed))})")


def _check_sections(document: Mapping[str, Any], where: str) -> None:
    sections: dict[str, set[str]] = {}
    for option in OPTIONS:
        section, key = option.file_key
        sections.setdefault(section, set()).add(key)
    check_keys(document, [*_DOCUMENT_KEYS, *sections, *(m.file_key for m in MAPPINGS)], where)
    for section, keys in sections.items():
        node = document.get(section)
        if node is None:
            continue
        if not isinstance(node, Mapping):
            raise ConfigError(f"{where}: {section} must be a mapping")
        check_keys(node, [*keys, *_SECTION_KEYS.get(section, ())], f"{where}: {section}")


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{where} must hold a mapping at the top level")
    kind = document.get("kind", "EndpointPickerConfig")
    if kind != "EndpointPickerConfig":
        raise ConfigError(f"{where}: kind must be EndpointPickerConfig, not {kind!r}")
    api_version = document.get("apiVersion")
    if api_version is not None and api_version not in API_VERSIONS:
        raise ConfigError(
            f"{where}: apiVersion must be one of {', '.join(API_VERSIONS)}, not {api_version!r}"
        )
    return document


def _lookup(document: Mapping[str, Any], keys: Sequence[str]) -> Any:
    node: Any = document
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node
