"""A filtering parser for the Prometheus text exposition format (version 0.0.4).

vLLM's ``/metrics`` is 50-100 KB, mostly histogram buckets nobody here reads, and it is
polled every 50 ms per endpoint. So :func:`parse_samples` never looks at a whole line it
does not want. The wanted names are compiled once into a trie-shaped pattern anchored on
``"\\n"`` (``\\n(?:vllm:(?:num_requests_(?:running|waiting)|...))[{ \\t]``): the regex
engine jumps from newline to newline in C and gives up on a line after its first few
characters, so the prefix test on each line costs a handful of byte comparisons and no
Python bytecode. Only the lines found are parsed, in Python. ``#`` lines (HELP, TYPE,
comments) never match, since no metric name starts with ``#``; nor does ``foo_total``
when ``foo`` is wanted, since the name must be followed by ``{``, a space or a tab.

Measured on a 61 KB, 586-line vLLM-like payload (``benchmarks/bench_prometheus_parse.py``,
Python 3.11): ``parse_samples`` with the nine "auto" names, scan and parse, about 55 µs;
merely locating the lines with ``str.split`` plus ``map(str.startswith, ...)`` about 60 µs,
with one ``str.find`` per wanted name about 100 µs; prometheus_client's full parse about
7.6 ms.

Lines that are not wanted are never validated: garbage elsewhere in the text is ignored.
A malformed *wanted* line raises :class:`MetricsParseError`.

Parsing a wanted line costs 3-7 µs of Python, so a page with 100,000 of them would take
0.3-0.6 s. ``max_samples`` and ``max_chars`` bound that work: every wanted line is
*located* first (a regex match, about 0.3 µs each), and a page with more wanted lines, or
more characters in them, than allowed is refused before any is parsed. The character
bound is what stops one enormous line (thousands of labels, or of escapes: 100-200 ns a
character) from costing as much as thousands of lines. The end of a quoted label value
is found by one regex match with possessive quantifiers, so an unterminated value full
of escaped quotes fails in one pass rather than in a Python loop per quote.

Example::

    samples = parse_samples(text, {"vllm:num_requests_running"})
    for sample in samples.get("vllm:num_requests_running", []):
        print(sample.labels.get("model_name"), sample.value)
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Collection, Iterable, Iterator
from typing import NamedTuple

from epp.datalayer.errors import MetricsParseError

__all__ = ["Sample", "parse_samples"]

_BLANKS = " \t"
_ESCAPE = re.compile(r"\\(.)")
# The rest of a quoted label value, up to and including its closing quote: runs of plain
# characters and backslash escapes. Possessive quantifiers: a value with no closing quote
# fails in one pass instead of backtracking over every split of its characters.
_QUOTED_TAIL = re.compile(r'[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_UNESCAPED = {"\\": "\\", '"': '"', "n": "\n"}
# The line prometheus_client writes, whole: labels without escapes or blanks, then the
# value and maybe a timestamp. One match in C checks its shape; findall then reads the
# labels. Any other line (escapes, blanks, a malformed one) takes the general parser
# below, which gives the same result for every line this one accepts, and the error.
_FAST_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'
_FAST_LINE = re.compile(
    rf"\{{((?:{_FAST_LABEL}(?:,{_FAST_LABEL})*,?)?)\}}[ \t]+([^ \t\r\n]+)"
    r"(?:[ \t]+([^ \t\r\n]+))?[ \t]*"
)
_FAST_LABELS = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"\\\n]*)"')
# Label sets already parsed, by their text from "{" to "}": a pod sends the same few
# every 50 ms (vllm:cache_config_info's seven labels cost 8 µs to parse; a lookup well
# under 1). The dicts are shared between samples, hence read-only. A text is stored only
# as the parser read it, ending at its closing brace, so a line starting with a stored
# text parses to the same labels. Cleared when full, so hostile pods cannot grow it.
_LABEL_SETS: dict[str, dict[str, str]] = {}
_MAX_LABEL_SETS = 4096
_MAX_LABEL_SET_CHARS = 2048


class Sample(NamedTuple):
    """One series' value: its labels, the value, and the timestamp in ms if given."""

    labels: dict[str, str]
    value: float
    timestamp_ms: float | None = None


def parse_samples(
    text: str,
    names: Collection[str],
    *,
    max_samples: int | None = None,
    max_chars: int | None = None,
) -> dict[str, list[Sample]]:
    """Samples of the metrics in ``names``, in text order; names absent from ``text`` are absent.

    Values may be ``NaN``, ``+Inf`` or ``-Inf`` (returned as floats); an optional
    timestamp (ms) follows the value. Label values may contain escaped quotes, backslashes
    and newlines (``\\"``, ``\\\\``, ``\\n``), and commas or braces inside the quotes.
    Lines may end in LF or CRLF.

    ``max_samples`` caps how many sample lines of ``names`` the text may hold, and
    ``max_chars`` how many characters those lines may hold together (after the name);
    ``None`` means no cap. Both are checked before any line is parsed.

    Raises :class:`MetricsParseError` on a malformed line whose name is in ``names``, or
    when a cap is exceeded. Does not mutate its arguments. The ``labels`` dicts of the
    samples may be shared with other calls' samples: do not mutate them.
    """
    found: dict[str, list[Sample]] = {}
    if not names:
        return found
    sample_cap = sys.maxsize if max_samples is None else max_samples
    char_cap = sys.maxsize if max_chars is None else max_chars
    located: list[tuple[str, str, int]] = []
    chars = 0
    for name, rest, line_start in _locate(text, frozenset(names)):
        chars += len(rest)
        if len(located) == sample_cap:
            message = f"{name}: more samples of the wanted metrics than the limit of {sample_cap}"
            raise MetricsParseError(message, line_number=_line_number(text, line_start))
        if chars > char_cap:
            message = f"{name}: the wanted metrics' samples hold more than {char_cap} characters"
            raise MetricsParseError(message, line_number=_line_number(text, line_start))
        located.append((name, rest, line_start))
    for name, rest, line_start in located:
        sample = _parse_line(rest, name, text, line_start)
        samples = found.get(name)
        if samples is None:
            found[name] = [sample]
        else:
            samples.append(sample)
    return found


def _locate(text: str, names: frozenset[str]) -> Iterator[tuple[str, str, int]]:
    """``(name, rest of the line, index of the line's start)`` of each wanted line."""
    at_start, after_newline = _patterns(names)
    first = at_start.match(text)
    if first is not None:
        name, rest = first.groups()
        yield name, rest, 0
    for match in after_newline.finditer(text):
        name, rest = match.groups()
        yield name, rest, match.start() + 1


def _line_number(text: str, line_start: int) -> int:
    return text.count("\n", 0, line_start) + 1


@functools.lru_cache(maxsize=64)
def _patterns(names: frozenset[str]) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Patterns matching a wanted sample line at the start of the text and after a newline.

    Group 1 is the name; group 2 the rest of the line from the ``{`` or blank after it.
    """
    if not all(names):
        raise ValueError("metric names must not be empty")
    body = rf"({_trie_pattern(names)})([{{ \t][^\n]*)"
    return re.compile(body), re.compile("\n" + body)


_Trie = dict[str, "_Trie"]


def _trie_pattern(words: Iterable[str]) -> str:
    """A non-capturing regex alternation of ``words`` with shared prefixes factored out."""
    trie: _Trie = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # a word ends here

    def build(node: _Trie) -> str:
        branches = [re.escape(char) + build(child) for char, child in sorted(node.items()) if char]
        if "" in node:
            branches.append("")  # tried last: a longer word is preferred, then this one
        if len(branches) == 1:
            return branches[0]
        return "(?:" + "|".join(branches) + ")"

    return build(trie)


def _parse_line(rest: str, name: str, text: str, line_start: int) -> Sample:
    """Parse a sample line's text after its name (starting with ``{`` or a blank)."""
    if rest.endswith("\r"):
        rest = rest[:-1]
    braced = rest.startswith("{")
    if braced:
        close = rest.rfind("}")  # the label set's end, unless the line is malformed
        known = _LABEL_SETS.get(rest[: close + 1])
        if known is not None:
            sample = _value_after_labels(rest[close + 1 :], known)
            if sample is not None:
                return sample
        fast = _FAST_LINE.fullmatch(rest)
        if fast is not None:
            label_text, value_text, timestamp_text = fast.groups()
            try:
                value = _parse_float(value_text)
                timestamp = None if timestamp_text is None else _parse_float(timestamp_text)
            except ValueError:
                pass  # the general parser splits on more kinds of blank, and says what
            else:
                labels = dict(_FAST_LABELS.findall(label_text))
                _remember_labels(rest[: fast.end(1) + 1], labels)
                return Sample(labels, value, timestamp)
    try:
        rest = rest.lstrip(_BLANKS)
        if rest.startswith("{"):
            labels, end = _parse_labels(rest, 1)
            if braced:  # nothing was stripped: the text is the line's own
                _remember_labels(rest[:end], labels)
            rest = rest[end:]
            if rest and rest[0] not in _BLANKS:
                raise ValueError("expected a blank after '}'")
        else:
            labels = {}
        fields = rest.split()
        if not 1 <= len(fields) <= 2:
            raise ValueError(f"expected 'value [timestamp]', got {rest.strip()!r}")
        value = _parse_float(fields[0])
        timestamp_ms = _parse_float(fields[1]) if len(fields) == 2 else None
    except ValueError as exc:
        line_number = _line_number(text, line_start)
        raise MetricsParseError(f"{name}: {exc}", line_number=line_number) from exc
    return Sample(labels, value, timestamp_ms)


def _value_after_labels(tail: str, labels: dict[str, str]) -> Sample | None:
    """The sample of a line whose labels are known, given the text after them; ``None``
    when the general parser must look (it does the same checks and names the error)."""
    if not tail or tail[0] not in _BLANKS:
        return None
    fields = tail.split()
    if not 1 <= len(fields) <= 2:
        return None
    try:
        value = _parse_float(fields[0])
        timestamp_ms = _parse_float(fields[1]) if len(fields) == 2 else None
    except ValueError:
        return None
    return Sample(labels, value, timestamp_ms)


def _remember_labels(text: str, labels: dict[str, str]) -> None:
    if len(text) > _MAX_LABEL_SET_CHARS:
        return
    if len(_LABEL_SETS) >= _MAX_LABEL_SETS:
        _LABEL_SETS.clear()
    _LABEL_SETS[text] = labels


def _parse_labels(line: str, pos: int) -> tuple[dict[str, str], int]:
    """Parse ``name="value",...}`` from ``pos`` (just after ``{``); return the labels and
    the index just past ``}``."""
    labels: dict[str, str] = {}
    length = len(line)
    while True:
        while pos < length and line[pos] in _BLANKS:
            pos += 1
        if pos < length and line[pos] == "}":
            return labels, pos + 1
        eq = line.find("=", pos)
        if eq < 0:
            raise ValueError("label without '='")
        label = line[pos:eq].strip(_BLANKS)
        if not (label.isascii() and label.isidentifier()):
            raise ValueError(f"bad label name {label!r}")
        pos = eq + 1
        while pos < length and line[pos] in _BLANKS:
            pos += 1
        if pos >= length or line[pos] != '"':
            raise ValueError(f"label {label!r}: value is not quoted")
        close = _closing_quote(line, pos + 1)
        raw = line[pos + 1 : close]
        labels[label] = _ESCAPE.sub(_unescape, raw) if "\\" in raw else raw
        pos = close + 1
        while pos < length and line[pos] in _BLANKS:
            pos += 1
        if pos >= length:
            raise ValueError("unterminated label set")
        if line[pos] == ",":
            pos += 1
        elif line[pos] != "}":
            raise ValueError(f"expected ',' or '}}' after label {label!r}")


def _closing_quote(line: str, pos: int) -> int:
    """Index of the first ``"`` at or after ``pos`` not escaped by an odd run of ``\\``."""
    match = _QUOTED_TAIL.match(line, pos)
    if match is None:
        raise ValueError("unterminated label value")
    return match.end() - 1


def _unescape(match: re.Match[str]) -> str:
    char = match.group(1)
    # An unknown escape is kept as written.
    return _UNESCAPED.get(char, match.group(0))


def _parse_float(token: str) -> float:
    # float() also takes "1_000"; the exposition format does not.
    if "_" in token:
        raise ValueError(f"bad number {token!r}")
    try:
        return float(token)
    except ValueError:
        raise ValueError(f"bad number {token!r}") from None
