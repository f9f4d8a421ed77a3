"""The filtering Prometheus text parser: edge cases, errors, and agreement with
prometheus_client on the lines it keeps."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from epp.datalayer import prometheus_text
from epp.datalayer.errors import DataLayerError, MetricsParseError
from epp.datalayer.prometheus_text import Sample, parse_samples


def one(text: str, name: str = "m") -> Sample:
    samples = parse_samples(text, {name})
    assert list(samples) == [name]
    assert len(samples[name]) == 1
    return samples[name][0]


@pytest.mark.parametrize(
    ("text", "labels", "value"),
    [
        ("m 1\n", {}, 1.0),
        ("m 1", {}, 1.0),  # no final newline
        ("m\t2.5\n", {}, 2.5),
        ("m   -3e2  \n", {}, -300.0),
        ('m{a="b"} 4\n', {"a": "b"}, 4.0),
        ('m {a="b"} 4\n', {"a": "b"}, 4.0),
        ('m{ a = "b" , c="d", } 5\n', {"a": "b", "c": "d"}, 5.0),
        ("m{} 6\n", {}, 6.0),
        ('m{a="b"} 7\r\n', {"a": "b"}, 7.0),
        ('m{a="x,y}z"} 8\n', {"a": "x,y}z"}, 8.0),
        ('m{a="say \\"hi\\""} 9\n', {"a": 'say "hi"'}, 9.0),
        ('m{a="back\\\\slash"} 10\n', {"a": "back\\slash"}, 10.0),
        ('m{a="line\\nbreak"} 11\n', {"a": "line\nbreak"}, 11.0),
        ('m{a="ends in \\\\"} 12\n', {"a": "ends in \\"}, 12.0),
        ('m{a="odd \\q"} 13\n', {"a": "odd \\q"}, 13.0),
        ('m{a=""} 14\n', {"a": ""}, 14.0),
    ],
    ids=[
        "bare",
        "no-final-newline",
        "tab",
        "exponent-and-spaces",
        "labels",
        "blank-before-brace",
        "blanks-and-trailing-comma",
        "empty-braces",
        "crlf",
        "comma-and-brace-in-value",
        "escaped-quotes",
        "escaped-backslash",
        "escaped-newline",
        "backslash-before-closing-quote",
        "unknown-escape-kept",
        "empty-value",
    ],
)
def test_parses_sample_lines(text: str, labels: dict[str, str], value: float) -> None:
    sample = one(text)
    assert sample.labels == labels
    assert sample.value == value
    assert sample.timestamp_ms is None


@pytest.mark.parametrize(
    ("token", "check"),
    [
        ("NaN", math.isnan),
        ("+Inf", lambda v: v == math.inf),
        ("-Inf", lambda v: v == -math.inf),
        ("Inf", lambda v: v == math.inf),
    ],
    ids=["nan", "plus-inf", "minus-inf", "inf"],
)
def test_special_values(token: str, check: object) -> None:
    value = one(f'm{{a="b"}} {token}\n').value
    assert callable(check) and check(value)


@pytest.mark.parametrize(
    ("text", "value", "timestamp"),
    [
        ("m 1 1712345678901\n", 1.0, 1712345678901.0),
        ('m{a="b"} NaN 1712345678901\n', math.nan, 1712345678901.0),
        ("m +Inf -5\n", math.inf, -5.0),
    ],
    ids=["plain", "labels-nan", "inf-negative-ts"],
)
def test_timestamps(text: str, value: float, timestamp: float) -> None:
    sample = one(text)
    assert sample.value == value or (math.isnan(value) and math.isnan(sample.value))
    assert sample.timestamp_ms == timestamp


def test_several_series_kept_in_text_order() -> None:
    text = 'm{model_name="a"} 1\nother 7\nm{model_name="b"} 2\nm{model_name="c"} 3\n'
    samples = parse_samples(text, {"m"})
    assert [(s.labels["model_name"], s.value) for s in samples["m"]] == [
        ("a", 1.0),
        ("b", 2.0),
        ("c", 3.0),
    ]


def test_only_wanted_names_and_only_sample_lines() -> None:
    text = (
        "# HELP m the m metric\n"
        "# TYPE m gauge\n"
        "#m 99\n"
        "m_total 5\n"  # another metric whose name starts with a wanted one
        'm_bucket{le="1"} 6\n'
        "mm 7\n"
        "xm 8\n"
        "m 1\n"
        "not valid at all {{{\n"  # garbage on unwanted lines is never looked at
        "m_total{ 9\n"
    )
    assert parse_samples(text, {"m", "absent"}) == {"m": [Sample({}, 1.0)]}


def test_a_wanted_name_that_prefixes_another_wanted_name() -> None:
    text = "m 1\nm_total 2\nm_total_more 3\n"
    assert parse_samples(text, {"m", "m_total"}) == {
        "m": [Sample({}, 1.0)],
        "m_total": [Sample({}, 2.0)],
    }


def test_names_with_regex_characters_are_literal() -> None:
    text = "vllm:a.b 1\nvllm:aXb 2\n"
    assert parse_samples(text, ["vllm:a.b"]) == {"vllm:a.b": [Sample({}, 1.0)]}


def test_no_names_and_empty_text() -> None:
    assert parse_samples("m 1\n", set()) == {}
    assert parse_samples("", {"m"}) == {}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("m\n", None),  # no blank after the name: not a sample line of m at all
        ("m \n", "expected 'value [timestamp]'"),
        ("m{} \n", "expected 'value [timestamp]'"),
        ("m 1 2 3\n", "expected 'value [timestamp]'"),
        ("m abc\n", "bad number 'abc'"),
        ("m 1_000\n", "bad number '1_000'"),
        ("m 1 soon\n", "bad number 'soon'"),
        ('m{a="b} 1\n', "unterminated label value"),
        ('m{a="b"\n', "unterminated label set"),
        ("m{a=b} 1\n", "value is not quoted"),
        ('m{a="b" c="d"} 1\n', "expected ',' or '}'"),
        ('m{1a="b"} 1\n', "bad label name '1a'"),
        ("m{a} 1\n", "label without '='"),
        ('m{a="b"}1\n', "expected a blank after '}'"),
    ],
    ids=[
        "name-only",
        "no-value",
        "braces-no-value",
        "too-many-fields",
        "word-value",
        "underscore-number",
        "bad-timestamp",
        "unterminated-quote",
        "unterminated-braces",
        "unquoted-value",
        "missing-comma",
        "bad-label-name",
        "label-without-equals",
        "value-glued-to-brace",
    ],
)
def test_malformed_wanted_lines(line: str, message: str | None) -> None:
    text = "# TYPE m gauge\nother 1\n" + line
    if message is None:
        assert parse_samples(text, {"m"}) == {}
        return
    with pytest.raises(MetricsParseError, match=r"^line 3: m: ") as caught:
        parse_samples(text, {"m"})
    assert message in str(caught.value)
    assert caught.value.line_number == 3
    assert isinstance(caught.value, DataLayerError)


def test_error_on_the_first_line_is_line_1() -> None:
    with pytest.raises(MetricsParseError) as caught:
        parse_samples("m oops\n", {"m"})
    assert caught.value.line_number == 1


def test_agrees_with_prometheus_client() -> None:
    lines = ["# HELP g a gauge", "# TYPE g gauge"]
    expected: list[tuple[dict[str, str], float]] = []
    for i in range(20):
        labels = {"model_name": f'mod"{i}\\x', "engine": str(i % 3)}
        quoted = ",".join(
            f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
            for k, v in labels.items()
        )
        lines.append(f"g{{{quoted}}} {i * 0.5}")
        expected.append((labels, i * 0.5))
    lines += ["# TYPE h histogram", 'h_bucket{le="+Inf"} 3', "h_count 3", "h_sum 1.5"]
    text = "\n".join(lines) + "\n"

    ours = [(s.labels, s.value) for s in parse_samples(text, {"g"})["g"]]
    theirs = [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "g"
    ]
    assert ours == theirs == expected


def test_compiled_patterns_are_cached() -> None:
    names = frozenset({"a", "b"})
    assert prometheus_text._patterns(names) is prometheus_text._patterns(frozenset({"b", "a"}))


# -- limits ------------------------------------------------------------------------------


def test_sample_limit_counts_only_wanted_lines() -> None:
    text = "m 1\n" + "other 2\n" * 10 + 'm{a="b"} 3\n# m 4\nm_total 5\n'
    assert len(parse_samples(text, {"m"}, max_samples=2)["m"]) == 2
    with pytest.raises(
        MetricsParseError,
        match=r"^line 12: m: more samples of the wanted "
        r"metrics than the limit of 1$",
    ) as caught:
        parse_samples(text, {"m"}, max_samples=1)
    assert caught.value.line_number == 12


def test_sample_limit_of_zero_allows_none() -> None:
    assert parse_samples("other 1\n", {"m"}, max_samples=0) == {}
    with pytest.raises(MetricsParseError, match=r"^line 1: m: more samples"):
        parse_samples("m 1\n", {"m"}, max_samples=0)


def test_char_limit_counts_the_wanted_lines_after_their_names() -> None:
    text = 'm{a="b"} 1\n' + "other " + "x" * 1000 + "\n" + "m 2\n"
    # '{a="b"} 1' is 9 characters and ' 2' is 2: 11 in all; unwanted lines are free.
    assert len(parse_samples(text, {"m"}, max_chars=11)["m"]) == 2
    with pytest.raises(
        MetricsParseError,
        match=r"^line 3: m: the wanted metrics' samples "
        r"hold more than 10 characters$",
    ):
        parse_samples(text, {"m"}, max_chars=10)


def test_limits_are_checked_before_any_line_is_parsed() -> None:
    # The first line is malformed, but what is reported is the limit: the text was refused
    # before the (costly) parsing began.
    text = "m{oops 1\n" + "m 1\n" * 5
    with pytest.raises(MetricsParseError, match="more samples of the wanted metrics"):
        parse_samples(text, {"m"}, max_samples=3)
    with pytest.raises(MetricsParseError, match="more than 12 characters"):
        parse_samples(text, {"m"}, max_chars=12)
    with pytest.raises(MetricsParseError, match="label without '='"):
        parse_samples(text, {"m"}, max_samples=6)


@pytest.mark.parametrize(
    "value",
    ['\\"' * 5000, "x" * 100_000 + "\\\\", "\\\\" * 5000 + '\\"'],
    ids=["many-escaped-quotes", "long-value", "many-escaped-backslashes"],
)
def test_long_label_values_with_escapes(value: str) -> None:
    sample = one(f'm{{a="{value}",b="c"}} 1\n')
    assert sample.labels["a"] == value.replace('\\"', '"').replace("\\\\", "\\")
    assert sample.labels["b"] == "c"


def test_unterminated_label_value_full_of_escapes() -> None:
    with pytest.raises(MetricsParseError, match="unterminated label value"):
        parse_samples('m{a="' + '\\"' * 10_000 + "} 1\n", {"m"})


@pytest.mark.parametrize(
    ("line", "labels", "value"),
    [
        ('m{a="1",b="x y"} 2', {"a": "1", "b": "x y"}, 2.0),
        ('m{a="1",} 2 17', {"a": "1"}, 2.0),
        ("m{} 3", {}, 3.0),
        ('m{a="q\\"uote",b="}"} 4', {"a": 'q"uote', "b": "}"}, 4.0),
        ('m{ a = "1" } 5', {"a": "1"}, 5.0),
        ('m{a="1",a="2"} 6', {"a": "2"}, 6.0),
        ('m{a="1"}\t7\r', {"a": "1"}, 7.0),
        ('m{a="1"} 8\x0c', {"a": "1"}, 8.0),
    ],
    ids=[
        "plain",
        "trailing-comma-timestamp",
        "empty",
        "escapes-and-brace",
        "blanks",
        "repeated-label",
        "tab-crlf",
        "form-feed",
    ],
)
def test_a_label_set_seen_before_parses_the_same(
    line: str, labels: dict[str, str], value: float
) -> None:
    # The second parse of each line takes the remembered label set; it must agree with
    # the first, which took the regex or the general parser.
    for _ in range(2):
        (sample,) = parse_samples(line + "\n", {"m"})["m"]
        assert (sample.labels, sample.value) == (labels, value)


@pytest.mark.parametrize(
    "line",
    ['m{a="1"}2', 'm{a="1"} 2 3 4', 'm{a="1"} x', 'm{a="1"} 1_0', 'm{a="1"b="2"} 1'],
    ids=["no-blank", "three-fields", "bad-value", "underscore", "missing-comma"],
)
def test_a_label_set_seen_before_does_not_hide_a_bad_line(line: str) -> None:
    parse_samples('m{a="1"} 1\n', {"m"})  # remember {a="1"}
    with pytest.raises(MetricsParseError, match="line 1: m: "):
        parse_samples(line + "\n", {"m"})
