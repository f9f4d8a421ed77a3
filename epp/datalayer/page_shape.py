"""Read a metrics page that differs from the endpoint's last one only in its numbers.

A busy pod's filtered ``/metrics`` page changes on every poll, but only in the values:
the same lines, names and labels in the same order. :class:`PageShape` remembers, from
one page that :func:`~epp.datalayer.prometheus_text.parse_samples` read and the
extractor accepted, the text between the values of its wanted samples. A later page
made of exactly that text with other values in between is read by a ``startswith``, a
``find`` and a ``float()`` per wanted value, rather than by the parser (a few µs instead
of about 20 for a filtered vLLM page). Any other page, and any value the parser
would refuse, makes :meth:`PageShape.read` return ``None``, and the caller parses the
page in full, limits and error messages included.

Why the result is the parser's: the lines the parser picks out and the labels it reads
depend only on the text before each value, which matched the remembered page's; the
remembered page had no timestamps (a shape is not kept otherwise), and a value that
gained a blank (a timestamp, or junk) is refused; each value is read by the parser's own
``_parse_float`` and is at most ``MAX_VALUE_CHARS`` long. Every other byte of the page,
unwanted lines included, must be the remembered page's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import replace

from epp.datalayer.endpoint import Metrics
from epp.datalayer.extract import (
    cache_config,
    fold_values,
    lora_info,
    required_names,
    served_models,
)
from epp.datalayer.metric_mappings import MetricMapping
from epp.datalayer.prometheus_text import Sample, _parse_float

__all__ = ["MAX_VALUE_CHARS", "PageShape"]

# Every line that does not start with "#": its text up to and including the last blank,
# and its last field. A sample line without a timestamp splits into name-and-labels and
# value; other lines (HELP text, garbage) split somewhere, and only need to stay the same.
_LINE = re.compile(r"^([^#\n][^\n]*[ \t])([^ \t\n]+)$", re.MULTILINE)
# A value longer than this sends the page to the parser, which bounds a line's size.
MAX_VALUE_CHARS = 64


class PageShape:
    """The text of one accepted page around the values of its wanted samples."""

    __slots__ = ("_cache_config", "_lora", "_mapping", "_models", "_roles", "_segments", "_tail")

    def __init__(
        self,
        segments: list[tuple[str, str, dict[str, str]]],
        tail: str,
        roles: tuple[list[int], list[int], list[int]],
        cache: tuple[int | None, int | None],
        mapping: MetricMapping,
        lora: list[int],
        models: frozenset[str],
    ) -> None:
        # (text since the previous value, name, labels) per wanted value, in text order.
        self._segments = segments
        self._tail = tail  # the text after the last value
        self._roles = roles  # which values are waiting, running and KV use
        self._cache_config = cache  # from labels, which the shape keeps as they were
        self._models = models  # likewise
        # The LoRA info series: which one is current depends on their values.
        self._mapping = mapping
        self._lora = lora

    @classmethod
    def of(
        cls,
        text: str,
        names: Collection[str],
        samples: dict[str, list[Sample]],
        mapping: MetricMapping,
    ) -> PageShape | None:
        """The shape of ``text``, which the parser read as ``samples`` and the extractor
        accepted under ``mapping``; ``None`` when the page cannot be matched line for
        line (timestamps, or lines the scan splits differently from the parser)."""
        seen: dict[str, int] = {}
        segments: list[tuple[str, str, dict[str, str]]] = []
        end = 0
        for line in _LINE.finditer(text):
            prefix = line.group(1)
            cut = len(prefix)
            for blank in "{ \t":
                at = prefix.find(blank)
                if 0 <= at < cut:
                    cut = at
            name = prefix[:cut]
            if name not in names:
                continue
            k = seen.get(name, 0)
            seen[name] = k + 1
            found = samples.get(name, [])
            if k >= len(found):
                return None
            sample = found[k]
            if sample.timestamp_ms is not None or not _same(line.group(2), sample.value):
                return None
            segments.append((text[end : line.start(2)], name, sample.labels))
            end = line.end(2)
        if any(len(samples[name]) != seen.get(name, 0) for name in samples):
            return None
        required = required_names(samples, mapping)
        if required is None:
            return None
        waiting, running, kv_usage = (
            [i for i, segment in enumerate(segments) if segment[1] == name] for name in required
        )
        lora_names = set(mapping.lora_info)
        lora = [i for i, segment in enumerate(segments) if segment[1] in lora_names]
        return cls(
            segments,
            text[end:],
            (waiting, running, kv_usage),
            cache_config(samples, mapping),
            mapping,
            lora,
            served_models(samples, mapping),
        )

    def read(self, text: str) -> dict[str, list[Sample]] | None:
        """What ``parse_samples`` would return for ``text``, if it has this shape;
        ``None`` if it has not (or a value needs the parser's judgement)."""
        values = self._values(text)
        if values is None:
            return None
        found: dict[str, list[Sample]] = {}
        for (_, name, labels), value in zip(self._segments, values, strict=True):
            found.setdefault(name, []).append(Sample(labels, value))
        return found

    def read_metrics(self, text: str, *, updated_at: float) -> Metrics | None:
        """What ``extract_metrics`` makes of ``parse_samples(text)``, if ``text`` has
        this shape and the extractor would accept it; else ``None`` (parse it)."""
        values = self._values(text)
        if values is None:
            return None
        waiting, running, kv_usage = self._roles
        lora = None
        if self._lora:
            found: dict[str, list[Sample]] = {}
            for i in self._lora:
                _, name, labels = self._segments[i]
                found.setdefault(name, []).append(Sample(labels, values[i]))
            lora = lora_info(found, self._mapping)
        metrics = fold_values(
            [values[i] for i in waiting],
            [values[i] for i in running],
            [values[i] for i in kv_usage],
            self._cache_config,
            updated_at=updated_at,
            models=self._models,
        )
        if metrics is None or lora is None:
            return metrics
        return replace(metrics, lora_running=lora[0], lora_waiting=lora[1], max_lora=lora[2])

    def _values(self, text: str) -> list[float] | None:
        values: list[float] = []
        pos = 0
        size = len(text)
        try:
            for segment, _, _ in self._segments:
                if not text.startswith(segment, pos):
                    return None
                pos += len(segment)
                end = text.find("\n", pos)
                if end < 0:
                    end = size
                value_text = text[pos:end]
                # One field, as in the remembered page: a blank means a timestamp or junk.
                if len(value_text) > MAX_VALUE_CHARS or " " in value_text or "\t" in value_text:
                    return None
                values.append(_parse_float(value_text))
                pos = end
        except ValueError:
            return None
        if text[pos:] != self._tail:  # (a slice: a filtered page's tail is a newline)
            return None
        return values


def _same(value_text: str, value: float) -> bool:
    try:
        parsed = _parse_float(value_text)
    except ValueError:
        return False
    return parsed == value or (math.isnan(parsed) and math.isnan(value))
