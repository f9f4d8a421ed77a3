"""What one model server's /metrics page costs epp: scrape limits and back-off, before/after.

A real aiohttp server in a child process (so its CPU is not counted) serves, on
127.0.0.1, pages a pod might send:

  normal            the ~60 KB vLLM-like page of bench_prometheus_parse (as a server that
                    ignores the name[] filter sends it)
  unwanted 14.8MB   that page plus 14.8 MB of series epp does not read (LoRA counters)
  unwanted chunked  the same, without a Content-Length (chunked transfer)
  wanted 14.8MB     that page plus 14.8 MB of vllm:num_requests_waiting{x="<i>"} 1
  wanted 3.9MB      the same kind of lines, under the 4 MiB body limit: the sample cap
  negative          the normal page with one queue series at -3

and epp's MetricsScraper polls it, in this process, under two settings:

  before   the old limits: 16 MiB bodies, no cap on wanted samples, no back-off
  after    the defaults: 4 MiB bodies, 1,000 wanted samples, back-off doubling to 1 s

(The range checks on values cannot be switched off, so "before" fails the negative page
too, every 50 ms; the code before them accepted it at the cost of a normal scrape.)

For each page and setting it measures, with ``time.process_time`` (this process only):

  CPU/scrape   median CPU of one ``scrape_once`` (HTTP GET, read, parse, extract)
  polls/s      polls the real loop made at a 50 ms interval, after a warm-up long
               enough for the back-off to reach its cap
  core %       CPU / wall time over that window: the share of one core spent
               scraping this one pod

Prints a table and writes benchmarks/results/scrape_limits.json. Timings on shared
2-core machines are noisy; the ratios are the figures to read.

    python benchmarks/bench_scrape.py [--warmup-s 3] [--window-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402

from benchmarks.bench_prometheus_parse import MODEL, build_payload  # noqa: E402
from epp.datalayer.endpoint import Endpoint  # noqa: E402
from epp.datalayer.scraper import MetricsScraper  # noqa: E402
from epp.datalayer.store import EndpointStore  # noqa: E402

MiB = 1024 * 1024
BIG = 14_800_000  # the page size of the reliability run
UNDER_LIMIT = 3_900_000
INTERVAL_S = 0.05
TIMEOUT_S = 1.0  # epp serve's default --scrape-timeout

SETTINGS: dict[str, dict[str, Any]] = {
    "before": {"max_body_bytes": 16 * MiB, "max_samples": 0, "max_backoff_s": 0.0},
    "after": {},
}


# -- the model server ------------------------------------------------------------------


def _fill(head: str, size: int, line: Callable[[int], str]) -> str:
    parts = [head]
    total = len(head)
    i = 0
    while total < size:
        text = line(i)
        parts.append(text)
        total += len(text)
        i += 1
    return "".join(parts)


def build_pages() -> dict[str, tuple[bytes, bool]]:
    """Page name -> (body, chunked)."""
    normal = build_payload(60 * 1024)
    queue = 'vllm:num_requests_waiting{engine="0",model_name="' + MODEL + '"} 3\n'
    assert queue in normal

    def lora(i: int) -> str:
        return (
            f'vllm:lora_request_success_total{{engine="0",lora_name="adapter-{i}",'
            f'model_name="{MODEL}"}} {i}.0\n'
        )

    def wanted(i: int) -> str:
        return f'vllm:num_requests_waiting{{x="{i}"}} 1\n'

    unwanted = _fill(normal, BIG, lora).encode()
    return {
        "normal": (normal.encode(), False),
        "unwanted 14.8MB": (unwanted, False),
        "unwanted chunked": (unwanted, True),
        "wanted 14.8MB": (_fill(normal, BIG, wanted).encode(), False),
        "wanted 3.9MB": (_fill(normal, UNDER_LIMIT, wanted).encode(), False),
        "negative": (normal.replace(queue, queue[:-2] + "-3\n", 1).encode(), False),
    }


def path_of(page: str) -> str:
    return "/" + page.replace(" ", "-").replace(".", "_")


def serve(conn: Connection) -> None:
    """The child process: serve every page until the parent closes ``conn``."""
    pages = build_pages()
    by_path = {path_of(name): page for name, page in pages.items()}

    async def handle(request: web.Request) -> web.StreamResponse:
        body, chunked = by_path[request.path]
        if not chunked:
            return web.Response(body=body, content_type="text/plain")
        response = web.StreamResponse()
        response.content_type = "text/plain"
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for start in range(0, len(body), 65536):
                await response.write(body[start : start + 65536])
            await response.write_eof()
        except ConnectionError:
            pass  # the scraper stopped reading
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        conn.send((port, {name: len(body) for name, (body, _) in pages.items()}))
        loop = asyncio.get_running_loop()
        closed = asyncio.Event()
        loop.add_reader(conn.fileno(), closed.set)  # readable at EOF
        await closed.wait()
        await runner.cleanup()

    asyncio.run(main())


# -- the measurements ------------------------------------------------------------------


@dataclass
class Result:
    page: str
    setting: str
    page_bytes: int
    outcome: str
    cpu_per_scrape_ms: float
    scrapes_measured: int
    polls_per_s: float
    core_share: float


def short_outcome(endpoint: Endpoint) -> str:
    error = endpoint.last_scrape_error
    if error is None:
        return "ok"
    for needle, label in (
        ("bytes is over the limit", "refused: Content-Length > limit"),
        ("body is over the limit", "refused: body > limit"),
        ("more samples of the wanted", "refused: samples > limit"),
        ("cannot be negative", "refused: negative value"),
    ):
        if needle in error:
            return label
    return "failed: " + error[:40]


async def cpu_per_scrape(
    scraper: MetricsScraper, address: str, budget_s: float
) -> tuple[float, int, str]:
    """Median CPU (ms) of back-to-back scrape_once calls, their count, and the outcome."""
    endpoint = Endpoint(address=address)
    cpu: list[float] = []
    started = time.perf_counter()
    while len(cpu) < 3 or (len(cpu) < 40 and time.perf_counter() - started < budget_s):
        before = time.process_time()
        await scraper.scrape_once(endpoint)
        cpu.append(time.process_time() - before)
    return statistics.median(cpu) * 1e3, len(cpu), short_outcome(endpoint)


async def polling(
    make: Callable[..., MetricsScraper], address: str, warmup_s: float, window_s: float
) -> tuple[float, float]:
    """(polls per second, CPU share of one core) of the real polling loop."""
    polls = 0

    async def counting_sleep(delay: float) -> None:
        nonlocal polls
        polls += 1  # the loop sleeps once per poll
        await asyncio.sleep(delay)

    store = EndpointStore()
    scraper = make(store, sleep=counting_sleep)
    await scraper.start()
    store.replace([(address, None)])
    await asyncio.sleep(warmup_s)
    polls_0, cpu_0, wall_0 = polls, time.process_time(), time.perf_counter()
    await asyncio.sleep(window_s)
    polls_1, cpu_1, wall_1 = polls, time.process_time(), time.perf_counter()
    await scraper.stop()
    wall = wall_1 - wall_0
    return (polls_1 - polls_0) / wall, (cpu_1 - cpu_0) / wall


async def measure(
    address: str, sizes: dict[str, int], warmup_s: float, window_s: float
) -> list[Result]:
    results = []
    for page, size in sizes.items():
        for setting, overrides in SETTINGS.items():

            def make(
                store: EndpointStore,
                page: str = page,
                settings: dict[str, Any] = overrides,
                **kw: Any,
            ) -> MetricsScraper:
                return MetricsScraper(
                    store,
                    path=path_of(page),
                    interval_s=INTERVAL_S,
                    timeout_s=TIMEOUT_S,
                    **settings,
                    **kw,
                )

            one = make(EndpointStore())
            cpu_ms, count, outcome = await cpu_per_scrape(one, address, budget_s=1.5)
            await one.stop()
            polls_per_s, share = await polling(make, address, warmup_s, window_s)
            result = Result(page, setting, size, outcome, cpu_ms, count, polls_per_s, share)
            results.append(result)
            print(
                f"  {page:<17} {setting:<7} {outcome:<32} {cpu_ms:9.2f} ms "
                f"{polls_per_s:7.1f}/s {share * 100:6.1f} %",
                flush=True,
            )
    return results


def print_table(results: list[Result]) -> None:
    print()
    header = (
        f"{'page':<17}{'size':>10}  {'setting':<8}{'outcome':<33}"
        f"{'CPU/scrape':>11}{'polls/s':>9}{'core %':>8}{'before/after':>14}"
    )
    print(header)
    print("-" * len(header))
    shares = {(r.page, r.setting): r.core_share for r in results}
    for r in results:
        ratio = ""
        if r.setting == "after" and shares[(r.page, "after")] > 0:
            ratio = f"{shares[(r.page, 'before')] / shares[(r.page, 'after')]:.1f}x"
        print(
            f"{r.page:<17}{r.page_bytes / 1e6:>8.2f}MB  {r.setting:<8}{r.outcome:<33}"
            f"{r.cpu_per_scrape_ms:>9.2f}ms{r.polls_per_s:>9.1f}{r.core_share * 100:>7.1f}%"
            f"{ratio:>14}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/scrape_limits.json")
    args = parser.parse_args()
    # Each refused page would log a warning per scraper built; the table says it all.
    logging.getLogger("epp.datalayer.scraper").setLevel(logging.ERROR)

    parent, child = multiprocessing.Pipe()
    server = multiprocessing.get_context("fork").Process(target=serve, args=(child,))
    server.start()
    child.close()
    port, sizes = parent.recv()
    address = f"127.0.0.1:{port}"
    try:
        factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
        loop_name = "asyncio"
        try:
            import uvloop

            factory, loop_name = uvloop.new_event_loop, "uvloop"  # what epp serve runs on
        except ImportError:
            pass
        print(
            f"server on {address}; scrapes every {INTERVAL_S * 1e3:.0f} ms on {loop_name}; "
            f"warm-up {args.warmup_s:g} s, window {args.window_s:g} s; "
            f"Python {platform.python_version()}"
        )
        with asyncio.Runner(loop_factory=factory) as runner:
            results = runner.run(measure(address, sizes, args.warmup_s, args.window_s))
    finally:
        parent.close()
        server.join(timeout=10)
        if server.is_alive():
            server.terminate()
    print_table(results)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "scrape_limits",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "event_loop": loop_name,
        "interval_s": INTERVAL_S,
        "warmup_s": args.warmup_s,
        "window_s": args.window_s,
        "settings": SETTINGS,
        "results": [vars(r) for r in results],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
