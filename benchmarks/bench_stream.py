"""Micro-benchmark: epp's own CPU per request on the ext_proc stream, without gRPC.

Feeds ``RequestStream`` the messages Envoy sends for a streamed chat request (request
headers, a ~13 KB body in one chunk, response headers, 13 SSE body chunks, trailers),
parsed from bytes as gRPC would hand them over, and serializes every answer; 64 distinct
prompts sharing 16 prefixes over 8 endpoints (``--endpoints N``: over N) with the default
profile. A second case sends a ~400 KB body (an agentic context) in 64 KB chunks, as
Envoy streams it. Prints CPU microseconds per request (median and min over rounds) for
each and writes benchmarks/results/stream.json. ``--profile`` prints cProfile's top
functions instead, which is how the hot path's costs were found.

    python benchmarks/bench_stream.py [--rounds 9] [--profile] [--endpoints 8]

To compare two versions, run it from each checkout in turn, alternating, pinned to one
core (``taskset -c 1``): single runs on these machines move by 10-30 %.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue  # noqa: E402
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import (  # noqa: E402
    ProcessingMode,
)
from envoy.service.ext_proc.v3.external_processor_pb2 import (  # noqa: E402
    HttpBody,
    HttpHeaders,
    HttpTrailers,
    ProcessingRequest,
    ProtocolConfiguration,
)

from epp.datalayer.endpoint import Metrics  # noqa: E402
from epp.datalayer.store import EndpointStore  # noqa: E402
from epp.director import Director  # noqa: E402
from epp.extproc.stream import RequestStream  # noqa: E402
from epp.observability import request_metrics  # noqa: E402
from epp.scheduling.registry import PluginRegistry, register_builtin_plugins  # noqa: E402
from epp.scheduling.scheduler import build_scheduler, default_scheduler_config  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "stream.json"
FULL_DUPLEX = ProcessingMode.FULL_DUPLEX_STREAMED
HEADERS = (
    (":method", "POST"),
    (":path", "/v1/chat/completions"),
    ("content-type", "application/json"),
    ("x-request-id", "bench"),
    ("host", "gw"),
    ("user-agent", "bench"),
    ("accept", "*/*"),
    ("content-length", "13000"),
)
SSE_CHUNK = b'data: {"choices":[{"delta":{"content":"hello world"}}]}\n\n' * 8


BODY_CHUNK = 65_536  # Envoy's default buffer size per streamed body chunk


def request_messages(n: int, repeat: int = 1000) -> list[bytes]:
    """One request's messages, serialized: prompt n shares its prefix with n % 16.

    ``repeat`` 1000 gives a ~10 KB body in one chunk; 44,000 a ~400 KB one in 64 KB chunks.
    """
    body = orjson.dumps(
        {
            "model": "m",
            "stream": True,
            "messages": [
                {"role": "system", "content": f"prefix {n % 16} " * repeat},
                {"role": "user", "content": f"question {n}"},
            ],
        }
    )
    chunks = [body[i : i + BODY_CHUNK] for i in range(0, len(body), BODY_CHUNK)]
    headers = HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in HEADERS])
    status = HeaderMap(
        headers=[
            HeaderValue(key=":status", raw_value=b"200"),
            HeaderValue(key="content-type", raw_value=b"text/event-stream"),
        ]
    )
    messages = [
        ProcessingRequest(
            request_headers=HttpHeaders(headers=headers),
            protocol_config=ProtocolConfiguration(
                request_body_mode=FULL_DUPLEX, response_body_mode=FULL_DUPLEX
            ),
        ),
        *(
            ProcessingRequest(request_body=HttpBody(body=chunk, end_of_stream=i == len(chunks) - 1))
            for i, chunk in enumerate(chunks)
        ),
        ProcessingRequest(response_headers=HttpHeaders(headers=status)),
        *(ProcessingRequest(response_body=HttpBody(body=SSE_CHUNK)) for _ in range(12)),
        ProcessingRequest(response_body=HttpBody(body=b"data: [DONE]\n\n")),
        ProcessingRequest(response_trailers=HttpTrailers()),
    ]
    return [message.SerializeToString() for message in messages]


def make_director(endpoints: int = 8) -> Director:
    store = EndpointStore()
    store.replace(
        [
            (f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:8000", frozenset({"m"}))
            for i in range(endpoints)
        ]
    )
    for endpoint in store.all():
        endpoint.metrics = Metrics(updated_at=time.monotonic() + 1e6)  # fresh throughout
    registry = register_builtin_plugins(PluginRegistry())
    return Director(store, build_scheduler(default_scheduler_config(), registry))


def run_requests(director: Director, requests: list[list[bytes]]) -> None:
    for raw_messages in requests:
        stream = RequestStream(director, max_body_bytes=1 << 26)
        for raw in raw_messages:
            for response in stream.handle(ProcessingRequest.FromString(raw)):
                response.SerializeToString()
        stream.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--endpoints", type=int, default=8, help="the pool the requests are routed over"
    )
    args = parser.parse_args()
    request_metrics.set_request_log("off")
    report: dict[str, object] = {}
    for label, repeat, per_round in (("13KB", 1000, 5), ("400KB", 44_000, 1)):
        director = make_director(args.endpoints)
        requests = [request_messages(n, repeat) for n in range(64)]
        run_requests(director, requests)  # warm the prefix index and the caches
        if args.profile:
            print(f"--- {label} body")
            profile = cProfile.Profile()
            profile.runcall(run_requests, director, requests * (16 // per_round))
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
            continue
        per_request_us = []
        for _ in range(args.rounds):
            started = time.process_time()
            run_requests(director, requests * per_round)
            per_request_us.append(
                (time.process_time() - started) / (per_round * len(requests)) * 1e6
            )
        body_bytes = sum(
            len(ProcessingRequest.FromString(raw).request_body.body) for raw in requests[0]
        )
        case = {
            "endpoints": args.endpoints,
            "body_bytes": body_bytes,
            "cpu_us_per_request_median": statistics.median(per_request_us),
            "cpu_us_per_request_min": min(per_request_us),
            "rounds": per_request_us,
        }
        report[label] = case
        print(
            f"{label} body ({body_bytes} bytes): epp CPU per request on the stream: median "
            f"{case['cpu_us_per_request_median']:.1f} us, min "
            f"{case['cpu_us_per_request_min']:.1f} us ({args.rounds} rounds)"
        )
    if args.profile:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
