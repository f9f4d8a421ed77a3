"""deploy/grafana and deploy/prometheus: every metric the dashboard queries exists, the
dashboard is well formed, and the scrape configs reach epp and the model servers.

epp's names are checked against ``epp.observability.metrics.REGISTRY`` as it is while epp
serves (``epp.server.serve`` in-process: the collectors it registers only while running,
such as the PoolCollector, included); vLLM's against the ``/metrics`` page of an in-process
simulated pod, plus a short allow-list of real vLLM metrics the simulator does not emit.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from epp.config import DataLayerConfig, ServerConfig
from epp.observability import metrics as epp_metrics
from epp.server import Running, serve
from vllm_sim import PodSpec, SimConfig, start_pod

from .manifests import (
    describe,
    epp_containers,
    load_documents,
    parse_serve_args,
    schema_problems,
)

Obj = dict[str, Any]

# The epp metrics the dashboard uses: counters with ``_total``, histograms by family name.
# The reference EPP's current names (llm-d-router v0.10, ``llm_d_epp_*``; the deprecated
# ``inference_*`` ones are exported beside them until epp 1.0, and
# test_the_dashboard_uses_no_deprecated_name keeps them out); ``epp_*`` names are epp's own.
EPP_METRICS = frozenset(
    {
        "llm_d_epp_request_total",
        "llm_d_epp_request_error_total",
        "llm_d_epp_request_duration_seconds",
        "llm_d_epp_request_ttft_seconds",
        "llm_d_epp_request_ntpot_seconds",
        "llm_d_epp_request_input_tokens",
        "llm_d_epp_request_output_tokens",
        "llm_d_epp_request_running",
        "llm_d_epp_scheduler_e2e_duration_seconds",
        "llm_d_epp_prefix_indexer_size",
        "llm_d_epp_prefix_indexer_hit_ratio",
        "llm_d_epp_ready_endpoints",
        "llm_d_epp_average_kv_cache_utilization",
        "llm_d_epp_average_queue_size",
        "epp_endpoint_inflight_requests",
        "epp_endpoint_metrics_stale",
        "epp_endpoint_metrics_age_seconds",
        "epp_endpoint_scrape_failures",
        "epp_endpoint_unhealthy",
        "epp_endpoint_ejections_total",
        "epp_model_fallback_total",
    }
)

# Used by the dashboard but not yet defined by epp (being added elsewhere): each is left out
# of test_epp_metrics_exist and reported by test_pending_epp_metrics_are_still_missing
# (xfail), which fails once epp defines one, so that it comes off this list.
PENDING_EPP_METRICS: frozenset[str] = frozenset()

# Real vLLM metrics (family name: type, labels) that the simulator does not emit. All are
# defined in vllm/v1/metrics/loggers.py, PrometheusStatLogger.__init__, vLLM v0.18.1 (the
# image in deploy/gateway/model-servers.yaml), with labelnames ["model_name", "engine"].
VLLM_NOT_IN_SIM: Mapping[str, tuple[str, frozenset[str]]] = {
    # loggers.py:873, histogram_prefill_time_request (time in the PREFILL phase)
    "vllm:request_prefill_time_seconds": ("histogram", frozenset({"model_name", "engine"})),
    # loggers.py:883, histogram_decode_time_request (time in the DECODE phase)
    "vllm:request_decode_time_seconds": ("histogram", frozenset({"model_name", "engine"})),
}

# Labels Prometheus attaches to every series from the scrape configs in deploy/prometheus/
# (the operator adds namespace, pod, container, service and job; the plain configs set
# namespace and pod, and node for vLLM pods).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "service", "node"})

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "epp-dashboard.json"
PROMETHEUS = ROOT / "deploy" / "prometheus"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
EPP_METRICS_PORT = 9090
VLLM_PORT = 8000
METRICS_PATH = "/metrics"


# -- PromQL: which metrics and labels an expression selects ---------------------------

AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
FUNCTIONS = frozenset(
    {
        "abs",
        "absent",
        "absent_over_time",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atanh",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "cos",
        "cosh",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "deg",
        "delta",
        "deriv",
        "double_exponential_smoothing",
        "end",
        "exp",
        "floor",
        "histogram_avg",
        "histogram_count",
        "histogram_fraction",
        "histogram_quantile",
        "histogram_stddev",
        "histogram_stdvar",
        "histogram_sum",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "info",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "mad_over_time",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "pi",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rad",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sin",
        "sinh",
        "sort",
        "sort_by_label",
        "sort_by_label_desc",
        "sort_desc",
        "sqrt",
        "start",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "tan",
        "tanh",
        "time",
        "timestamp",
        "vector",
        "year",
    }
)
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = GROUPING | {"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"}

_TOKENS = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)
  | (?P<num>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>[(){}\[\],:])
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=@])
""",
    re.VERBOSE,
)
# Grafana's variables, replaced before parsing: the interval ones stand in a range.
_GRAFANA_INTERVAL = re.compile(r"\$__(?:rate_interval|interval|range)\b|\$\{__\w+\}")
_GRAFANA_VARIABLE = re.compile(r"\$\{\w+(?::\w+)?\}|\$\w+|\[\[\w+\]\]")


@dataclass(frozen=True)
class Selector:
    """A metric named in an expression, with the label names its matchers use."""

    name: str
    labels: frozenset[str]


@dataclass(frozen=True)
class Query:
    """What one expression selects: its metrics and the labels it groups by."""

    selectors: tuple[Selector, ...]
    grouping: frozenset[str]


def _tokens(expr: str) -> list[tuple[str, str]]:
    expr = _GRAFANA_VARIABLE.sub("0", _GRAFANA_INTERVAL.sub("5m", expr))
    tokens, pos = [], 0
    while pos < len(expr):
        match = _TOKENS.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot parse {expr[pos : pos + 20]!r} in {expr!r}")
        assert match.lastgroup is not None
        if match.lastgroup != "ws":
            tokens.append((match.lastgroup, match.group()))
        pos = match.end()
    return tokens


def parse_query(expr: str) -> Query:
    """The metric selectors of a PromQL expression: identifiers that are not functions,
    aggregations, keywords or label names. Raises ValueError on what it cannot read (an
    unknown function, unbalanced brackets, a selector by ``__name__``)."""
    tokens = _tokens(expr)
    selectors: list[Selector] = []
    grouping: set[str] = set()
    stack: list[str] = []  # "(" , "by(" (label list) or "{"
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "punct" and text == "[":  # a range or subquery: durations only
            close = next((j for j in range(i, len(tokens)) if tokens[j] == ("punct", "]")), None)
            if close is None:
                raise ValueError(f"unclosed '[' in {expr!r}")
            i = close + 1
            continue
        if kind == "punct" and text in "({":
            if text == "{":
                raise ValueError(f"a selector without a metric name in {expr!r}")
            previous = tokens[i - 1] if i else ("", "")
            grouped = previous[0] == "ident" and previous[1].lower() in GROUPING
            stack.append("by(" if grouped else "(")
        elif kind == "punct" and text in ")}":
            if not stack or stack.pop()[-1] != {")": "(", "}": "{"}[text]:
                raise ValueError(f"unbalanced {text!r} in {expr!r}")
        elif kind == "ident" and stack and stack[-1] == "by(":
            grouping.add(text)
        elif kind == "ident" and following == ("punct", "("):
            if text.lower() not in GROUPING | AGGREGATIONS and text not in FUNCTIONS:
                raise ValueError(f"unknown function {text!r} in {expr!r}")
        elif (
            kind == "ident"
            and text.lower() in AGGREGATIONS
            and following[0] == "ident"
            and following[1].lower() in ("by", "without")
        ):
            pass  # sum by (x) (...)
        elif kind == "ident" and text.lower() in KEYWORDS:
            pass
        elif kind == "ident":
            labels: set[str] = set()
            if following == ("punct", "{"):
                close = next(
                    (j for j in range(i + 2, len(tokens)) if tokens[j] == ("punct", "}")), None
                )
                if close is None:
                    raise ValueError(f"unclosed '{{' in {expr!r}")
                inside = tokens[i + 2 : close]
                labels = {
                    name
                    for (k, name), (_, op) in itertools.pairwise(inside)
                    if k == "ident" and op in ("=", "!=", "=~", "!~")
                }
                i = close
            if "__name__" in labels:
                raise ValueError(f"{text} also matches on __name__ in {expr!r}")
            selectors.append(Selector(text, frozenset(labels)))
        i += 1
    if stack:
        raise ValueError(f"unclosed brackets in {expr!r}")
    return Query(tuple(selectors), frozenset(grouping))


_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)$")


def parse_variable_query(query: str) -> tuple[Query, str]:
    """(the selector, the label) of a Grafana ``label_values(selector, label)`` query."""
    match = _LABEL_VALUES.match(query.strip())
    if match is None or match["selector"] is None:
        raise ValueError(f"not label_values(<selector>, <label>): {query!r}")
    return parse_query(match["selector"]), match["label"]


@pytest.mark.parametrize(
    ("expr", "names", "grouping"),
    [
        (
            'sum by (le, model_name) (rate(a_bucket{x="y", z=~"$v"}[$__rate_interval]))',
            {"a_bucket": {"x", "z"}},
            {"le", "model_name"},
        ),
        (
            "sum(rate(a[5m])) by (p) / on(q) group_left(r) b offset 1h",
            {"a": set(), "b": set()},
            {"p", "q", "r"},
        ),
        ('count(vllm:x{n="a{b}"} > 0) or vector(0)', {"vllm:x": {"n"}}, set()),
        (
            "histogram_quantile(0.99, rate(h_bucket[1h30m:1m])) * 1e3 + Inf",
            {"h_bucket": set()},
            set(),
        ),
        ('label_replace(up, "dst", "$1", "src", "(.*)")', {"up": set()}, set()),
    ],
    ids=["matchers", "vector-matching", "strings", "numbers", "string-args"],
)
def test_parse_query(expr: str, names: dict[str, set[str]], grouping: set[str]) -> None:
    query = parse_query(expr)
    assert {s.name: set(s.labels) for s in query.selectors} == names
    assert query.grouping == grouping


@pytest.mark.parametrize(
    "expr",
    [
        "rate(a[5m]",
        "sum(a))",
        "ratez(a[5m])",
        '{__name__="a"}',
        'a{__name__=~"b"}',
        "a # b",
    ],
    ids=["unclosed", "unbalanced", "unknown-function", "bare-selector", "name-matcher", "bad-char"],
)
def test_parse_query_refuses(expr: str) -> None:
    with pytest.raises(ValueError):
        parse_query(expr)


# -- the dashboard --------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> Obj:
    data: Obj = json.loads(DASHBOARD.read_text())
    return data


def _panels(panels: list[Obj]) -> Iterator[Obj]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])  # a collapsed row holds its panels


def _expressions(dashboard: Obj) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target."""
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets") or []:
            yield (
                f"panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}",
                target.get("expr", ""),
            )


def _variable_queries(dashboard: Obj) -> Iterator[tuple[str, str]]:
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield (
                f"variable {variable['name']}",
                query["query"] if isinstance(query, dict) else query,
            )


def _selectors(dashboard: Obj) -> Iterator[tuple[str, Selector]]:
    for where, expr in _expressions(dashboard):
        for selector in parse_query(expr).selectors:
            yield where, selector
    for where, query in _variable_queries(dashboard):
        for selector in parse_variable_query(query)[0].selectors:
            yield where, selector


def test_dashboard_structure(dashboard: Obj) -> None:
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "pool", "model_name"} <= variables.keys()
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    problems = []
    for panel in panels:
        name = f"panel {panel['id']} {panel.get('title')!r}"
        pos = panel["gridPos"]
        if not (0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0):
            problems.append(f"{name}: gridPos {pos} outside the 24-column grid")
        if panel["type"] == "row":
            continue
        if panel.get("datasource") != DATASOURCE_REF:
            problems.append(f"{name}: datasource is not ${{datasource}}")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{name}: no targets")
        ref_ids = [target.get("refId") for target in targets]
        if None in ref_ids or len(set(ref_ids)) != len(ref_ids):
            problems.append(f"{name}: refIds missing or repeated: {ref_ids}")
        for target in targets:
            if not str(target.get("expr", "")).strip():
                problems.append(f"{name} {target.get('refId')}: no expr")
            if target.get("datasource", DATASOURCE_REF) != DATASOURCE_REF:
                problems.append(f"{name} {target.get('refId')}: datasource is not the variable")
    assert problems == []


def test_dashboard_panels_do_not_overlap(dashboard: Obj) -> None:
    cells: dict[tuple[int, int], str] = {}
    overlaps = set()
    for panel in dashboard["panels"]:  # top level: expanded rows and their panels
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                other = cells.setdefault((x, y), panel["title"])
                if other != panel["title"]:
                    overlaps.add((other, panel["title"]))
    assert overlaps == set()


def test_query_variables_use_the_datasource(dashboard: Obj) -> None:
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        assert variable["datasource"] == DATASOURCE_REF, variable["name"]
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        assert variable.get("definition", text) == text, variable["name"]
        parse_variable_query(text)  # raises when it is not label_values(selector, label)


def test_every_expression_parses(dashboard: Obj) -> None:
    problems = []
    for where, expr in _expressions(dashboard):
        try:
            if not parse_query(expr).selectors:
                problems.append(f"{where}: selects no metric: {expr}")
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    assert problems == []


# -- the metrics that exist -----------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: str
    type: str
    labels: frozenset[str] | None  # None: not known (a labelled metric with no children)

    def sample_names(self) -> frozenset[str]:
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
            "summary": ("", "_count", "_sum", "_created"),
            "info": ("_info",),
        }.get(self.type, ("",))
        return frozenset(self.name + suffix for suffix in suffixes)

    @property
    def canonical(self) -> str:
        """The name people use: a counter's with ``_total``, others' family name."""
        return self.name + "_total" if self.type == "counter" else self.name

    def sample_labels(self, sample: str) -> frozenset[str] | None:
        if self.labels is None:
            return None
        return self.labels | {"le"} if sample.endswith("_bucket") else self.labels


def _catalogue(families: list[Family]) -> dict[str, Family]:
    """Sample name -> its family."""
    return {sample: family for family in families for sample in family.sample_names()}


@dataclass(frozen=True)
class Live:
    """What a running epp registers, and what a simulated vLLM pod serves on /metrics."""

    epp: list[Metric]
    sim_exposition: str


async def _run_epp_and_sim() -> Live:
    pod = await start_pod(PodSpec(models=("m",)), SimConfig(time_scale=0))
    try:
        config, why = parse_serve_args(
            [
                "--grpc-host=127.0.0.1",
                "--grpc-port=0",
                "--grpc-health-port=0",
                "--metrics-port=0",
                f"--endpoint={pod.address}=m",
            ]
        )
        assert config is not None, why
        stop = asyncio.Event()
        collected: list[Metric] = []

        def on_ready(running: Running) -> None:
            collected.extend(epp_metrics.REGISTRY.collect())
            stop.set()

        await asyncio.wait_for(
            serve(config, shutdown_trigger=stop.wait, on_ready=on_ready), timeout=60
        )
        assert collected, "epp never became ready"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{pod.url}{METRICS_PATH}") as response,
        ):
            assert response.status == 200
            return Live(collected, await response.text())
    finally:
        await pod.close()
        gc.unfreeze()  # serve() freezes what it built, as a long-lived process would


@pytest.fixture(scope="module")
def live() -> Live:
    return asyncio.run(_run_epp_and_sim())


def _declared_labels() -> dict[str, frozenset[str]]:
    """Label names of epp's metric objects, by family name: collect() shows labels only
    on samples, and a labelled metric has none until a child is made (prometheus_client
    keeps the names on the object, and epp's own vecs declare theirs)."""
    objects = [
        obj
        for name, module in list(sys.modules.items())
        if name == "epp" or name.startswith("epp.")
        for obj in list(vars(module).values())
    ]
    declared = {
        obj._name: frozenset(obj._labelnames)
        for obj in objects
        if isinstance(obj, MetricWrapperBase)
    }
    for obj in objects:
        if not isinstance(obj, type) and hasattr(obj, "declared_labels"):
            declared.update({k: frozenset(v) for k, v in obj.declared_labels().items()})
    return declared


@pytest.fixture(scope="module")
def epp_families(live: Live) -> dict[str, Family]:
    declared = _declared_labels()
    families = []
    for metric in live.epp:
        labels = {name for sample in metric.samples for name in sample.labels} - {"le"}
        known = frozenset(labels) if metric.samples else declared.get(metric.name)
        families.append(Family(metric.name, metric.type, known))
    return _catalogue(families)


@pytest.fixture(scope="module")
def sim_families(live: Live) -> dict[str, Family]:
    families = []
    for metric in text_string_to_metric_families(live.sim_exposition):
        labels = {name for sample in metric.samples for name in sample.labels} - {"le"}
        families.append(Family(metric.name, metric.type, frozenset(labels)))
    return _catalogue(families)


@pytest.fixture(scope="module")
def vllm_families(sim_families: dict[str, Family]) -> dict[str, Family]:
    allowed = [Family(name, kind, labels) for name, (kind, labels) in VLLM_NOT_IN_SIM.items()]
    return {**sim_families, **_catalogue(allowed)}


def _canonical(sample: str, known: Mapping[str, Family]) -> str:
    if sample in known:
        return known[sample].canonical
    return re.sub(r"_(bucket|sum|count)$", "", sample)  # a histogram family, by its name


def _epp_selectors(dashboard: Obj) -> list[tuple[str, Selector]]:
    return [(w, s) for w, s in _selectors(dashboard) if not s.name.startswith("vllm:")]


def _vllm_selectors(dashboard: Obj) -> list[tuple[str, Selector]]:
    return [(w, s) for w, s in _selectors(dashboard) if s.name.startswith("vllm:")]


def _label_problems(where: str, selector: Selector, family: Family) -> list[str]:
    known = family.sample_labels(selector.name)
    if known is None:
        return []
    unknown = selector.labels - known - TARGET_LABELS
    return [f"{where}: {selector.name} has no label {sorted(unknown)}"] if unknown else []


def test_epp_metric_list_matches_the_dashboard(
    dashboard: Obj, epp_families: dict[str, Family]
) -> None:
    used = {_canonical(s.name, epp_families) for _, s in _epp_selectors(dashboard)}
    assert sorted(used - EPP_METRICS) == [], "used by the dashboard, not in EPP_METRICS"
    assert sorted(EPP_METRICS - used) == [], "in EPP_METRICS, not used by the dashboard"
    assert PENDING_EPP_METRICS <= EPP_METRICS


def test_epp_metrics_exist(dashboard: Obj, epp_families: dict[str, Family]) -> None:
    problems = []
    for where, selector in _epp_selectors(dashboard):
        if _canonical(selector.name, epp_families) in PENDING_EPP_METRICS:
            continue
        family = epp_families.get(selector.name)
        if family is None:
            problems.append(f"{where}: epp has no metric {selector.name}")
        else:
            problems += _label_problems(where, selector, family)
    assert problems == []


def test_the_dashboard_uses_no_deprecated_name(dashboard: Obj, live: Live) -> None:
    deprecated = {m.name for m in live.epp if m.documentation.startswith("[Deprecated")}
    assert deprecated  # epp exports the legacy names while serving (the default)
    families = {f.name: f for f in live.epp}
    used = set()
    for _, selector in _epp_selectors(dashboard):
        name = selector.name
        family = name if name in families else re.sub(r"_(bucket|sum|count|total)$", "", name)
        used.add(family)
    assert sorted(used & deprecated) == []


def test_pending_epp_metrics_are_still_missing(epp_families: dict[str, Family]) -> None:
    landed = sorted(PENDING_EPP_METRICS & {f.canonical for f in epp_families.values()})
    assert landed == [], f"epp now defines {landed}: take them off PENDING_EPP_METRICS"
    if PENDING_EPP_METRICS:
        pytest.xfail(
            f"the dashboard uses epp metrics not defined yet: "
            f"{', '.join(sorted(PENDING_EPP_METRICS))}"
        )


def test_vllm_metrics_exist(dashboard: Obj, vllm_families: dict[str, Family]) -> None:
    problems = []
    for where, selector in _vllm_selectors(dashboard):
        family = vllm_families.get(selector.name)
        if family is None:
            problems.append(
                f"{where}: neither the simulator nor VLLM_NOT_IN_SIM has {selector.name}"
            )
        else:
            problems += _label_problems(where, selector, family)
    assert problems == []


def test_vllm_allow_list_is_needed_and_used(
    dashboard: Obj, sim_families: dict[str, Family]
) -> None:
    emitted = {family.name for family in sim_families.values()}
    assert sorted(VLLM_NOT_IN_SIM.keys() & emitted) == [], "the simulator emits these now"
    used = {_canonical(s.name, {}) for _, s in _vllm_selectors(dashboard)}
    assert sorted(VLLM_NOT_IN_SIM.keys() - used) == [], "allowed but not used"


def test_grouping_and_legend_labels_exist(
    dashboard: Obj, epp_families: dict[str, Family], vllm_families: dict[str, Family]
) -> None:
    """``by (...)`` and ``{{label}}`` name labels that some metric of the query has."""
    known_families = {**epp_families, **vllm_families}
    problems = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets") or []:
            query = parse_query(target["expr"])
            labels: set[str] = set(TARGET_LABELS)
            for selector in query.selectors:
                family = known_families.get(selector.name)
                known = family.sample_labels(selector.name) if family else None
                if known is None:
                    break  # a pending metric: its labels are not known yet
                labels |= known
            else:
                legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
                unknown = (query.grouping | legend) - labels
                if unknown:
                    problems.append(
                        f"panel {panel['id']} {panel['title']!r} "
                        f"{target['refId']}: no label {sorted(unknown)}"
                    )
    assert problems == []


def test_variable_labels_exist(
    dashboard: Obj, epp_families: dict[str, Family], vllm_families: dict[str, Family]
) -> None:
    known_families = {**epp_families, **vllm_families}
    for where, text in _variable_queries(dashboard):
        query, label = parse_variable_query(text)
        for selector in query.selectors:
            family = known_families[selector.name]
            known = family.sample_labels(selector.name)
            assert known is not None, f"{where}: labels of {selector.name} unknown"
            assert label in known | TARGET_LABELS, f"{where}: {selector.name} has no {label}"


# -- Prometheus scrape configs --------------------------------------------------------


def _spelled(rule: Obj, snake: str, camel: str, default: Any = None) -> Any:
    """A relabel rule's field, under its Prometheus or its operator spelling."""
    return rule[snake] if snake in rule else rule.get(camel, default)


def _relabel(labels: Mapping[str, str], rules: list[Obj]) -> dict[str, str] | None:
    """Prometheus relabeling (keep, drop, replace) of one target; None when dropped.
    Accepts the Prometheus (snake_case) and the operator (camelCase) spellings."""
    out = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace").lower()
        sources = _spelled(rule, "source_labels", "sourceLabels", [])
        value = rule.get("separator", ";").join(out.get(name, "") for name in sources)
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if (action == "keep" and match is None) or (action == "drop" and match is not None):
            return None
        if action == "replace" and match is not None:
            target = _spelled(rule, "target_label", "targetLabel")
            replacement = re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
            result = match.expand(replacement)
            if result:
                out[target] = result
            else:
                out.pop(target, None)
        elif action not in ("keep", "drop", "replace"):
            raise ValueError(f"relabel action {action} not simulated here")
    return out


def _label_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _objects(*patterns: str) -> list[Obj]:
    paths = sorted({p for pattern in patterns for p in (ROOT / "deploy").glob(pattern)})
    assert paths, patterns
    return [obj for path in paths for obj in load_documents(path)]


SETUPS = {"kubernetes": ("kubernetes/*.yaml",), "gateway": ("gateway/*.yaml",)}


def _pods(objects: list[Obj]) -> list[tuple[Obj, Obj]]:
    """(Deployment, pod template) pairs."""
    return [(obj, obj["spec"]["template"]) for obj in objects if obj["kind"] == "Deployment"]


def _container_port(template: Obj, target: int | str) -> int | None:
    for container in template["spec"]["containers"]:
        for port in container.get("ports") or []:
            if target in (port.get("name"), port["containerPort"]):
                return int(port["containerPort"])
    return None


def _selects(selector: Obj, labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels and In / NotIn / Exists expressions)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _epp_services(objects: list[Obj]) -> list[tuple[Obj, Obj]]:
    """(Service, pod template) of each Service that selects epp pods."""
    epp_templates = [c.deployment["spec"]["template"] for c in epp_containers(objects)]
    return [
        (svc, template)
        for svc in objects
        if svc["kind"] == "Service"
        for template in epp_templates
        if _selects({"matchLabels": svc["spec"]["selector"]}, template["metadata"]["labels"])
    ]


def _vllm_templates(objects: list[Obj]) -> list[Obj]:
    """The model servers' pod templates: those a pool selects (not epp, not its Redis)."""
    epp = {id(c.deployment) for c in epp_containers(objects)}
    selectors = [_pool_selector(pool) for pool in _pools(objects)]
    return [
        template
        for deployment, template in _pods(objects)
        if id(deployment) not in epp
        and any(s.items() <= template["metadata"]["labels"].items() for s in selectors)
    ]


def _pools(objects: list[Obj]) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == "InferencePool"]


def _pool_selector(pool: Obj) -> dict[str, str]:
    selector = pool["spec"]["selector"]
    return dict(selector.get("matchLabels", selector))  # v1 nests matchLabels; v1alpha2 not


def _pool_ports(pool: Obj) -> list[int]:
    spec = pool["spec"]
    if "targetPorts" in spec:
        return [int(port["number"]) for port in spec["targetPorts"]]
    return [int(spec["targetPortNumber"])]


def test_epp_serves_metrics_where_the_configs_scrape() -> None:
    assert ServerConfig().metrics_port == EPP_METRICS_PORT
    for setup, patterns in SETUPS.items():
        containers = list(epp_containers(_objects(*patterns)))
        assert containers, setup
        for epp in containers:
            assert (
                int(epp.flag("metrics-port") or ServerConfig().metrics_port) == EPP_METRICS_PORT
            ), f"{setup}: {describe(epp.deployment)}"


def test_pools_serve_on_the_vllm_port() -> None:
    for setup, patterns in SETUPS.items():
        pools = _pools(_objects(*patterns))
        assert pools, setup
        assert {port for pool in pools for port in _pool_ports(pool)} == {VLLM_PORT}, setup
    assert DataLayerConfig().metrics_path == METRICS_PATH  # what epp itself scrapes


def test_standalone_prometheus_config() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs.keys() == {"epp", "vllm"}
    for job in jobs.values():
        assert job.get("metrics_path", "/metrics") == METRICS_PATH
        assert job["static_configs"] and all(group["targets"] for group in job["static_configs"])
    epp_targets = [t for group in jobs["epp"]["static_configs"] for t in group["targets"]]
    assert all(t.rsplit(":", 1)[1] == str(EPP_METRICS_PORT) for t in epp_targets)
    for group in jobs["vllm"]["static_configs"]:
        for target in group["targets"]:
            labels = _relabel(
                {"__address__": target, **group.get("labels", {})},
                jobs["vllm"].get("relabel_configs", []),
            )
            assert labels is not None and labels["pod"] == target
    named = _relabel({"__address__": "h:8000", "pod": "vllm-0"}, jobs["vllm"]["relabel_configs"])
    assert named is not None and named["pod"] == "vllm-0"


def _kubernetes_jobs() -> dict[str, Obj]:
    config = yaml.safe_load((PROMETHEUS / "kubernetes-scrape-configs.yaml").read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def _endpointslice_targets(objects: list[Obj]) -> Iterator[tuple[Obj, dict[str, str]]]:
    """What role: endpointslice discovers for each Service port and pod it selects."""
    for svc in (obj for obj in objects if obj["kind"] == "Service"):
        for _, template in _pods(objects):
            if not _selects(
                {"matchLabels": svc["spec"]["selector"]}, template["metadata"]["labels"]
            ):
                continue
            for port in svc["spec"]["ports"]:
                number = _container_port(template, port.get("targetPort", port["port"]))
                labels = {
                    "__address__": f"10.0.0.1:{number}",
                    "__meta_kubernetes_namespace": "ns",
                    "__meta_kubernetes_service_name": svc["metadata"]["name"],
                    "__meta_kubernetes_endpointslice_port_name": port.get("name", ""),
                    "__meta_kubernetes_endpointslice_port": str(number),
                    "__meta_kubernetes_pod_name": f"{svc['metadata']['name']}-0",
                }
                for key, value in (svc["metadata"].get("labels") or {}).items():
                    labels[f"__meta_kubernetes_service_label_{_label_name(key)}"] = value
                yield svc, labels


def _pod_targets(objects: list[Obj]) -> Iterator[tuple[Obj, dict[str, str]]]:
    """What role: pod discovers: one target per declared container port."""
    for _, template in _pods(objects):
        for container in template["spec"]["containers"]:
            for port in container.get("ports") or []:
                labels = {
                    "__address__": f"10.0.0.2:{port['containerPort']}",
                    "__meta_kubernetes_namespace": "ns",
                    "__meta_kubernetes_pod_name": "pod-0",
                    "__meta_kubernetes_pod_node_name": "node-0",
                    "__meta_kubernetes_pod_phase": "Running",
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                }
                for key, value in template["metadata"]["labels"].items():
                    labels[f"__meta_kubernetes_pod_label_{_label_name(key)}"] = value
                yield template, labels


@pytest.mark.parametrize("setup", SETUPS)
def test_kubernetes_sd_scrapes_each_epp_on_its_metrics_port(setup: str) -> None:
    objects = _objects(*SETUPS[setup])
    job = _kubernetes_jobs()["epp"]
    assert job.get("metrics_path", "/metrics") == METRICS_PATH
    assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["endpointslice"]
    kept = {}
    for svc, labels in _endpointslice_targets(objects):
        result = _relabel(labels, job["relabel_configs"])
        if result is not None:
            kept[svc["metadata"]["name"]] = result
            assert result["__address__"].endswith(f":{EPP_METRICS_PORT}"), result
            assert {"namespace", "pod"} <= result.keys()
            assert "endpoint" not in result  # would clash with epp's own `endpoint` label
    assert sorted(kept) == sorted(svc["metadata"]["name"] for svc, _ in _epp_services(objects))


@pytest.mark.parametrize("setup", SETUPS)
def test_kubernetes_sd_scrapes_each_pool_pod_on_the_vllm_port(setup: str) -> None:
    objects = _objects(*SETUPS[setup])
    job = _kubernetes_jobs()["vllm"]
    assert job.get("metrics_path", "/metrics") == METRICS_PATH
    assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["pod"]
    # The pools' pods, as their selectors describe them, are kept on the pools' port.
    for pool in _pools(objects):
        labels = {
            f"__meta_kubernetes_pod_label_{_label_name(k)}": v
            for k, v in _pool_selector(pool).items()
        }
        for port in _pool_ports(pool):
            result = _relabel(
                {
                    **labels,
                    "__address__": f"10.0.0.3:{port}",
                    "__meta_kubernetes_pod_container_port_number": str(port),
                    "__meta_kubernetes_pod_phase": "Running",
                },
                job["relabel_configs"],
            )
            assert result is not None, describe(pool)
    # Of the pods here, only the model servers' port 8000 is scraped, never epp.
    kept = [
        (template, result)
        for template, labels in _pod_targets(objects)
        if (result := _relabel(labels, job["relabel_configs"])) is not None
    ]
    assert all(r["__address__"].endswith(f":{VLLM_PORT}") for _, r in kept)
    assert all({"namespace", "pod"} <= r.keys() for _, r in kept)
    vllm = _vllm_templates(objects)
    assert len({id(t) for t, _ in kept}) == len(vllm)
    assert all(any(t is template for t in vllm) for template, _ in kept)


def _monitor(name: str) -> Obj:
    documents = load_documents(PROMETHEUS / name)
    assert len(documents) == 1
    return documents[0]


@pytest.mark.parametrize("setup", SETUPS)
def test_service_monitor_selects_every_epp_metrics_port(setup: str) -> None:
    monitor = _monitor("servicemonitor-epp.yaml")
    assert schema_problems(monitor) == []
    assert (monitor["apiVersion"], monitor["kind"]) == (
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
    )
    objects = _objects(*SETUPS[setup])
    selected = [
        svc
        for svc in objects
        if svc["kind"] == "Service"
        and _selects(monitor["spec"]["selector"], svc["metadata"].get("labels") or {})
    ]
    assert sorted(describe(svc) for svc in selected) == sorted(
        describe(svc) for svc, _ in _epp_services(objects)
    )
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint.get("path", "/metrics") == METRICS_PATH
    assert endpoint.get("honorLabels") is True  # keeps epp's `endpoint` label
    for svc, template in _epp_services(objects):
        [port] = [p for p in svc["spec"]["ports"] if p.get("name") == endpoint["port"]]
        assert port["port"] == EPP_METRICS_PORT, describe(svc)
        assert (
            _container_port(template, port.get("targetPort", port["port"])) == EPP_METRICS_PORT
        ), describe(svc)


# The part of the Prometheus Operator's PodMonitor CRD (monitoring.coreos.com/v1) used here.
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
        "action": {
            "enum": [
                "replace",
                "keep",
                "drop",
                "labelmap",
                "labeldrop",
                "labelkeep",
                "hashmod",
                "lowercase",
                "uppercase",
                "keepequal",
                "dropequal",
                "Replace",
                "Keep",
                "Drop",
                "LabelMap",
                "LabelDrop",
                "LabelKeep",
                "HashMod",
                "Lowercase",
                "Uppercase",
                "KeepEqual",
                "DropEqual",
            ]
        },
    },
}
POD_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "matchExpressions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["key", "operator"],
                                "additionalProperties": False,
                                "properties": {
                                    "key": {"type": "string"},
                                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                                    "values": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                        },
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": r"^(0|(\d+(ms|s|m|h))+)$"},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": _RELABEL},
                            "metricRelabelings": {"type": "array", "items": _RELABEL},
                        },
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("setup", SETUPS)
def test_pod_monitor_selects_the_pool_pods_on_the_vllm_port(setup: str) -> None:
    monitor = _monitor("podmonitor-vllm.yaml")
    jsonschema.Draft202012Validator(POD_MONITOR_SCHEMA).validate(monitor)
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint.get("path", "/metrics") == METRICS_PATH
    selector = monitor["spec"]["selector"]
    objects = _objects(*SETUPS[setup])
    for pool in _pools(objects):  # the pods each pool selects are selected here too
        assert _selects(selector, _pool_selector(pool)), describe(pool)
    selected = [
        t
        for t in (template for _, template in _pods(objects))
        if _selects(selector, t["metadata"]["labels"])
    ]
    assert [id(t) for t in selected] == [id(t) for t in _vllm_templates(objects)]
    for template in selected:
        port = endpoint.get("port", endpoint.get("portNumber"))
        assert _container_port(template, port) == VLLM_PORT
