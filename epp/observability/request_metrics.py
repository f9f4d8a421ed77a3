"""Per-request metrics and the one log line of every finished request.

Names, labels and buckets are the reference EPP's (llm-d-router v0.10 ``pkg/epp/metrics/``:
``llm_d_epp_request_*`` labelled by model, target model, fairness id and priority, and
the deprecated ``inference_objective_*`` names, by model and target model only, exported
too until epp 1.0); so are the definitions: latency runs from the request headers reaching epp
to the response's end, and the normalized time per output token (NTPOT) is that latency
over the completion tokens. Two things the reference leaves to its latency predictor are
measured here from the stream itself: TTFT (request headers to the first response body
byte, or to the first ``.delta`` event of a Responses API stream, whose first events come
before any token) and TPOT ((end - first token) / (completion tokens - 1)); both only for
streamed (SSE) responses, since a non-streamed body arrives whole when generation is done.

Everything is recorded once, when the ext_proc stream closes (:func:`record_finished`);
nothing here runs per body chunk. The histograms are :class:`FastHistogramVec`: about ten
observations per request add up with prometheus_client's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from epp.errors import EppError
from epp.observability.histograms import FastGaugeVec, FastHistogramVec, Legacy
from epp.observability.logging import clip
from epp.observability.metrics import REGISTRY, REQUEST_ERRORS, REQUEST_LABELS, request_labels
from epp.routing import RoutingDecision

__all__ = [
    "INPUT_TOKENS",
    "NTPOT",
    "OUTPUT_TOKENS",
    "PROMPT_CACHED_TOKENS",
    "REQUEST_DURATION",
    "REQUEST_SIZES",
    "REQUEST_TPOT",
    "REQUEST_TTFT",
    "RESPONSE_SIZES",
    "RUNNING_REQUESTS",
    "FinishedRequest",
    "outcome_of",
    "record_finished",
    "request_started",
    "set_request_log",
]

log = logging.getLogger("epp.requests")

_MODEL_LABELS = ("model_name", "target_model_name")
# generalLatencyBuckets: 5 ms to an hour.
_LATENCY_BUCKETS = (
    0.005,
    0.025,
    0.05,
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1.0,
    1.25,
    1.5,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    15,
    20,
    30,
    45,
    60,
    120,
    180,
    240,
    300,
    360,
    480,
    600,
    900,
    1200,
    1800,
    2700,
    3600,
)
# tpotBuckets: half a millisecond to six minutes per token.
_TPOT_BUCKETS = (
    0.0005,
    0.00205,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.125,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.8,
    1,
    1.5,
    2,
    3,
    4.5,
    6,
    12,
    18,
    24,
    30,
    36,
    48,
    60,
    90,
    120,
    180,
    270,
    360,
)
_NTPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_INPUT_TOKEN_BUCKETS = (
    1,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32778,
    65536,
    131072,
    262144,
    524288,
    1048576,
)
_OUTPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_REQUEST_SIZE_BUCKETS = (
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32768,
    65536,
    131072,
    262144,
    524288,
    1048576,
    2097152,
    4194304,
    8388608,
    16777216,
    33554432,
    67108864,
    134217728,
    268435456,
    536870912,
    1073741824,
)
_RESPONSE_SIZE_BUCKETS = (
    1,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32778,
    65536,
)

_LEGACY_LABELS = ("model_name", "target_model_name")
_STREAMING_LABELS = (*REQUEST_LABELS, "streaming")
# The reference's TTFT and TPOT buckets are the first of epp's (which its legacy names
# keep): the same distributions, exported with fewer bounds under the current names.
_TTFT_EXPORT_BUCKETS = _LATENCY_BUCKETS[: _LATENCY_BUCKETS.index(120) + 1]
_TPOT_EXPORT_BUCKETS = (*_TPOT_BUCKETS[: _TPOT_BUCKETS.index(1) + 1], 2)


def _legacy(name: str, current: str, help_text: str, **more: object) -> Legacy:
    return Legacy(
        name,
        f"[Deprecated: use {current}] {help_text}",
        _LEGACY_LABELS,
        **more,  # type: ignore[arg-type]
    )


def _histogram(
    name: str,
    help_text: str,
    buckets: tuple[float, ...],
    legacy_name: str,
    **more: object,
) -> FastHistogramVec:
    return FastHistogramVec(
        name,
        help_text,
        REQUEST_LABELS,
        buckets=buckets,
        registry=REGISTRY,
        legacy=_legacy(legacy_name, name, help_text),
        **more,  # type: ignore[arg-type]
    )


REQUEST_DURATION = _histogram(
    "llm_d_epp_request_duration_seconds",
    "Time from the request reaching epp to the end of its response.",
    _LATENCY_BUCKETS,
    "inference_objective_request_duration_seconds",
)
REQUEST_TTFT = FastHistogramVec(
    "llm_d_epp_request_ttft_seconds",
    "Time from the request reaching epp to the first byte of its response (streaming "
    "false: the whole body's first byte).",
    _STREAMING_LABELS,
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
    export_buckets=_TTFT_EXPORT_BUCKETS,
    legacy=Legacy(
        "inference_objective_request_ttft_seconds",
        '[Deprecated: use llm_d_epp_request_ttft_seconds{streaming="true"}] Time from '
        "the request reaching epp to the first byte of its streamed response.",
        _LEGACY_LABELS,
        where=(("streaming", "true"),),
    ),
)
REQUEST_TPOT = _histogram(
    "llm_d_epp_request_streaming_tpot_seconds",
    "Time per output token after the first, of streamed responses.",
    _TPOT_BUCKETS,
    "inference_objective_request_tpot_seconds",
    export_buckets=_TPOT_EXPORT_BUCKETS,
)
NTPOT = _histogram(
    "llm_d_epp_request_ntpot_seconds",
    "Request latency divided by the number of output tokens.",
    _NTPOT_BUCKETS,
    "inference_objective_normalized_time_per_output_token_seconds",
)
INPUT_TOKENS = _histogram(
    "llm_d_epp_request_input_tokens",
    "Prompt tokens per request, as the model server reported them.",
    _INPUT_TOKEN_BUCKETS,
    "inference_objective_input_tokens",
)
OUTPUT_TOKENS = _histogram(
    "llm_d_epp_request_output_tokens",
    "Completion tokens per request, as the model server reported them.",
    _OUTPUT_TOKEN_BUCKETS,
    "inference_objective_output_tokens",
)
PROMPT_CACHED_TOKENS = _histogram(
    "llm_d_epp_request_cached_tokens",
    "Prompt tokens the model server found in its prefix cache, per request.",
    _INPUT_TOKEN_BUCKETS,
    "inference_objective_prompt_cached_tokens",
)
REQUEST_SIZES = _histogram(
    "llm_d_epp_request_size_bytes",
    "Request body size in bytes.",
    _REQUEST_SIZE_BUCKETS,
    "inference_objective_request_sizes",
)
RESPONSE_SIZES = _histogram(
    "llm_d_epp_response_size_bytes",
    "Response body size in bytes (seen only when responses stream through epp).",
    _RESPONSE_SIZE_BUCKETS,
    "inference_objective_response_sizes",
)
RUNNING_REQUESTS = FastGaugeVec(
    "llm_d_epp_request_running",
    "Requests routed and not yet finished.",
    REQUEST_LABELS,
    registry=REGISTRY,
    legacy=Legacy(
        "inference_objective_running_requests",
        "[Deprecated: use llm_d_epp_request_running] Requests routed and not yet "
        "finished, by the model asked for.",
        ("model_name",),
    ),
)


class _Series:
    """The children of every per-request metric for one request label set."""

    __slots__ = (
        "cached",
        "duration",
        "input",
        "ntpot",
        "output",
        "request_size",
        "response_size",
        "running",
        "server_errors",
        "tpot",
        "ttft",
        "ttft_whole",
    )

    def __init__(self, labels: tuple[str, str, str, str]) -> None:
        self.duration = REQUEST_DURATION.labels(*labels)
        self.ttft = REQUEST_TTFT.labels(*labels, "true")
        self.ttft_whole = REQUEST_TTFT.labels(*labels, "false")
        self.tpot = REQUEST_TPOT.labels(*labels)
        self.ntpot = NTPOT.labels(*labels)
        self.input = INPUT_TOKENS.labels(*labels)
        self.output = OUTPUT_TOKENS.labels(*labels)
        self.cached = PROMPT_CACHED_TOKENS.labels(*labels)
        self.request_size = REQUEST_SIZES.labels(*labels)
        self.response_size = RESPONSE_SIZES.labels(*labels)
        self.running = RUNNING_REQUESTS.labels(*labels)
        self.server_errors = REQUEST_ERRORS.labels(*labels, MODEL_SERVER_ERROR)


MODEL_SERVER_ERROR = "model_server_error"  # error_code of upstream responses >= 400
_MAX_SERIES = 1024  # bounded, whatever clients put in "model"
_series_by_labels: dict[tuple[str, str, str, int], _Series] = {}


def _series(model: str, target: str, fairness_id: str = "", priority: int = 0) -> _Series:
    key = (model, target, fairness_id, priority)
    series = _series_by_labels.get(key)
    if series is None:
        if len(_series_by_labels) >= _MAX_SERIES:
            _series_by_labels.clear()
        labels = request_labels(model, target, fairness_id, priority)
        series = _series_by_labels[key] = _Series(labels)
    return series


def _series_of(decision: RoutingDecision) -> _Series:
    return _series(decision.model, decision.target_model, decision.fairness_id, decision.priority)


_request_log = "errors"  # all | errors | off


def set_request_log(mode: str) -> None:
    """Which finished requests get a log line: ``all``, ``errors`` (every outcome but
    ``completed``) or ``off``. The line costs about 15 us; the metrics about 3 us."""
    global _request_log
    if mode not in ("all", "errors", "off"):
        raise ValueError(f"request log mode must be all, errors or off, not {mode!r}")
    _request_log = mode


def request_started(decision: RoutingDecision) -> None:
    """A request was routed: count it as running until :func:`record_finished`."""
    if decision.model:
        _series_of(decision).running.inc()


@dataclass(slots=True)
class FinishedRequest:
    """What the ext_proc stream knew of one request when it closed."""

    request_id: str
    received_at: float  # time.monotonic() at the request headers
    method: str = ""
    path: str = ""
    decision: RoutingDecision | None = None
    error: EppError | None = None  # epp answered the request itself, with an error
    answered_status: int | None = None  # epp answered it itself, not with an error
    request_bytes: int = 0
    decision_s: float | None = None  # time spent parsing and scheduling
    closed_at: float | None = None  # time.monotonic() when the stream closed


def outcome_of(finished: FinishedRequest) -> str:
    """One word for how the request ended.

    ``completed`` (status < 400), ``upstream_error`` (the model server answered >= 400),
    ``error`` (epp answered it with an error), ``answered`` (epp answered it itself, as
    it does ``GET /v1/models``), ``reset`` (the response began but never ended: the
    client went away or the stream was reset), ``no_response`` (routed, but the stream
    ended before any response headers), ``abandoned`` (the stream ended before routing).
    """
    if finished.error is not None:
        return "error"
    if finished.answered_status is not None:
        return "answered"
    decision = finished.decision
    if decision is None:
        return "abandoned"
    response = decision.response
    if response.status is None:
        return "no_response"
    if not response.completed:
        return "reset"
    return "completed" if response.status < 400 else "upstream_error"


def record_finished(finished: FinishedRequest) -> None:
    """Record the metrics of a finished request and log its line (``epp.requests``)."""
    decision = finished.decision
    if decision is not None and decision.model:
        series = _series_of(decision)
        series.running.dec()
        _observe(finished, decision, series)
    if _request_log == "off" or not log.isEnabledFor(logging.INFO):
        return
    outcome = outcome_of(finished)
    if _request_log == "errors" and outcome in ("completed", "answered"):
        return
    # makeRecord and handle, not info(): info() looks up its caller's file and line in the
    # stack, a third of the cost of the line, for a place that never changes.
    log.handle(
        log.makeRecord(
            log.name,
            logging.INFO,
            __file__,
            0,
            "request finished",
            (),
            None,
            extra=_log_fields(finished, outcome),
        )
    )


def _observe(finished: FinishedRequest, decision: RoutingDecision, series: _Series) -> None:
    response = decision.response
    if finished.request_bytes:
        series.request_size.observe(finished.request_bytes)
    status = response.status
    if status is None:
        return
    if status >= 400:
        series.server_errors.inc()
        return
    start = finished.received_at
    first = response.first_token_at
    if response.streamed and first is not None:  # also when the stream is cut short later
        series.ttft.observe(first - start)
    if not response.completed:
        return
    end = response.ended_at if response.ended_at is not None else finished.closed_at
    if end is None:
        return
    latency = end - start
    series.duration.observe(latency)
    if not response.streamed and first is not None:
        series.ttft_whole.observe(first - start)
    if response.body_bytes:
        series.response_size.observe(response.body_bytes)
    usage = response.usage
    if usage is None:
        return
    if usage.prompt_tokens > 0:
        series.input.observe(usage.prompt_tokens)
    if usage.cached_tokens is not None:
        series.cached.observe(usage.cached_tokens)
    completion = usage.completion_tokens
    if completion > 0:
        series.output.observe(completion)
        series.ntpot.observe(latency / completion)
        if response.streamed and first is not None and completion > 1:
            series.tpot.observe((end - first) / (completion - 1))


def _log_fields(finished: FinishedRequest, outcome: str) -> dict[str, object]:
    # Everything a client chose is clipped: a log line stays a line.
    fields: dict[str, object] = {
        "request_id": clip(finished.request_id),
        "method": clip(finished.method),
        "path": clip(finished.path),
    }
    decision = finished.decision
    if decision is not None:
        fields["model"] = clip(decision.model)
        if decision.rewritten:
            fields["target_model"] = clip(decision.target_model)
        fields["endpoint"] = decision.destination
        served = decision.response.served_endpoint
        if served and served != decision.destination.partition(",")[0]:
            fields["served_endpoint"] = clip(served)  # the gateway went elsewhere (retry)
    if finished.decision_s is not None:
        fields["decision_ms"] = round(finished.decision_s * 1000, 3)
    fields["outcome"] = outcome
    if finished.error is not None:
        fields["status"] = finished.error.status
        fields["error_code"] = finished.error.code
        fields["error_message"] = clip(finished.error.message)
        return fields
    if finished.answered_status is not None:
        fields["status"] = finished.answered_status
    if decision is None:
        return fields
    response = decision.response
    if response.status is not None:
        fields["status"] = response.status
    start = finished.received_at
    if response.streamed:
        fields["stream"] = True
        if response.first_token_at is not None:
            fields["ttft_ms"] = round((response.first_token_at - start) * 1000, 3)
    end = response.ended_at if response.ended_at is not None else finished.closed_at
    if end is not None:
        fields["duration_ms"] = round((end - start) * 1000, 3)
    usage = response.usage
    if usage is not None:
        fields["prompt_tokens"] = usage.prompt_tokens
        fields["completion_tokens"] = usage.completion_tokens
        if usage.cached_tokens is not None:
            fields["cached_tokens"] = usage.cached_tokens
    return fields
