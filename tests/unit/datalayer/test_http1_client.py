"""The scraper's HTTP/1.1 client against real sockets on 127.0.0.1: well-behaved pods and
broken or hostile ones (each answer scripted byte for byte). No timing assertions: the
slow pod is slower than a short timeout by a margin of seconds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.errors import ScrapeError
from epp.datalayer.http1_client import Http1Client, split_address
from epp.datalayer.http1_response import MAX_HEAD_BYTES, ResponseReader
from epp.datalayer.scraper import MetricsScraper
from epp.datalayer.store import EndpointStore
from tests.unit.datalayer.scripted_pod import (
    BODY,
    OK_HEAD,
    Script,
    ScriptedPod,
    always,
    chunked,
    with_length,
)


async def scrape(pod: ScriptedPod, times: int = 1, **kwargs: Any) -> Endpoint:
    scraper = MetricsScraper(EndpointStore(), **kwargs)
    endpoint = Endpoint(address=pod.address)
    try:
        for _ in range(times):
            await scraper.scrape_once(endpoint)
    finally:
        await scraper.stop()
    return endpoint


# -- pods that behave --------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "script",
    [
        always([with_length()]),
        always([with_length()[:10], with_length()[10:60], with_length()[60:]]),
        always([chunked()]),
        always([chunked(size=7)[i : i + 50] for i in range(0, len(chunked(size=7)), 50)]),
        always([OK_HEAD + b"\r\n" + BODY], close=True),  # the body ends with the connection
        always([with_length(head=b"HTTP/1.1 200 OK\r\nConnection: close\r\n")], close=True),
        always([b"HTTP/1.1 100 Continue\r\n\r\n" + with_length()]),
        always([with_length(head=b"HTTP/1.0 200 OK\r\n")], close=True),
        always([with_length(head=OK_HEAD + b"Content-Length: %d\r\n" % len(BODY))]),
    ],
    ids=[
        "length",
        "length-in-pieces",
        "chunked",
        "chunked-in-pieces",
        "until-close",
        "connection-close",
        "interim-100",
        "http-1.0",
        "repeated-length",
    ],
)
async def test_good_answers_land_metrics(pods: Any, script: Script) -> None:
    pod = await pods(script)
    endpoint = await scrape(pod, times=3)
    assert endpoint.scrape_failures == 0, endpoint.last_scrape_error
    assert endpoint.metrics.waiting_requests == 5
    assert endpoint.metrics.kv_num_blocks == 27000


@pytest.mark.asyncio
async def test_one_connection_carries_every_poll(pods: Any) -> None:
    pod = await pods(always([with_length()]))
    await scrape(pod, times=5)
    assert pod.requests == 5 and pod.connections == 1
    request = pod.raw_requests[0]
    assert request.startswith(b"GET /metrics?name%5B%5D=")
    assert f"\r\nHost: {pod.address}\r\n".encode() in request
    assert b"\r\nAccept-Encoding: identity\r\n" in request


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "script",
    [
        always([with_length()], close=True),
        always([with_length(head=b"HTTP/1.1 200 OK\r\nConnection: close\r\n")]),
        always([with_length() + b"HTTP/1.1 200 OK\r\n"]),
    ],
    ids=["server-closes", "connection-close-header", "bytes-after-the-body"],
)
async def test_a_connection_not_to_be_reused_is_not(pods: Any, script: Script) -> None:
    pod = await pods(script)
    endpoint = await scrape(pod, times=3)
    assert endpoint.scrape_failures == 0, endpoint.last_scrape_error
    assert pod.connections == 3


@pytest.mark.asyncio
async def test_an_idle_connection_the_server_closed_is_retried_once(pods: Any) -> None:
    # The server closes after answering, without saying so: the client finds out only
    # when it reuses the connection, and must then poll once more on a fresh one.
    pod = await pods(lambda n: ([with_length()], True))
    scraper = MetricsScraper(EndpointStore())
    endpoint = Endpoint(address=pod.address)
    await scraper.scrape_once(endpoint)
    await asyncio.sleep(0.05)  # let the close arrive
    await scraper.scrape_once(endpoint)
    await scraper.stop()
    assert endpoint.scrape_failures == 0, endpoint.last_scrape_error
    assert pod.requests == 2


@pytest.mark.asyncio
async def test_custom_path_is_encoded_into_the_request_line(pods: Any) -> None:
    pod = await pods(always([with_length()]))
    await scrape(pod, path="/stats/prom metrics", filter_names=False)
    assert pod.raw_requests[0].startswith(b"GET /stats/prom%20metrics HTTP/1.1\r\n")


# -- pods that do not ----------------------------------------------------------------------


HOSTILE = [
    (always([with_length(head=b"HTTP/1.1 503 Busy\r\n")]), "HTTP 503 Busy"),
    (always([b"SSH-2.0-OpenSSH_9.6\r\n\r\n"]), "not an HTTP/1.x status line"),
    (always([b"\x00\xff garbage \x16\x03\x01" * 10 + b"\r\n\r\n"]), "not an HTTP/1.x"),
    (
        always([OK_HEAD + b"Content-Length: 5000\r\n\r\n" + BODY[:100]], close=True),
        "connection closed after 100 of 5000 body bytes",
    ),
    (always([chunked()[:-20]], close=True), "connection closed in the response's chunk"),
    (always([OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"]), "bad chunk size"),
    (
        always([OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n"]),
        "chunk data not followed by CRLF",
    ),
    (
        always([OK_HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n"]),
        "unsupported Transfer-Encoding",
    ),
    (
        always([with_length(head=OK_HEAD + b"Content-Encoding: gzip\r\n")]),
        "unsupported Content-Encoding",
    ),
    (
        always([OK_HEAD + b"Content-Length: 10\r\nContent-Length: 11\r\n\r\n"]),
        "conflicting Content-Length",
    ),
    (always([OK_HEAD + b"Content-Length: -1\r\n\r\n"]), "bad Content-Length"),
    (always([OK_HEAD + b" folded: line\r\n\r\n"]), "folded"),
    (always([OK_HEAD + b"X-Big: " + b"a" * (MAX_HEAD_BYTES + 10)]), "response head over"),
    (always([b"HTTP/1.1 101 Switching Protocols\r\n\r\n"]), "switched protocols"),
    (always([b""], close=True), "connection closed before a response"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("script", "error"),
    HOSTILE,
    ids=[
        "wrong-status",
        "not-http",
        "binary-garbage",
        "truncated-body",
        "truncated-chunked",
        "bad-chunk-size",
        "chunk-without-crlf",
        "other-transfer-coding",
        "gzip",
        "two-lengths",
        "negative-length",
        "obs-fold",
        "endless-head",
        "upgrade",
        "closed-at-once",
    ],
)
async def test_a_broken_pod_fails_the_scrape_and_keeps_the_old_metrics(
    pods: Any, script: Script, error: str
) -> None:
    good = always([with_length()])
    pod = await pods(lambda n: good(n) if n == 0 else script(n))
    endpoint = await scrape(pod, times=2)
    assert endpoint.metrics.waiting_requests == 5  # from the first, good, answer
    assert endpoint.scrape_failures == 1
    message = endpoint.last_scrape_error or ""
    assert message.startswith(f"GET http://{pod.address}/metrics: ")
    assert error in message


@pytest.mark.asyncio
async def test_a_slow_pod_times_out_and_its_connection_is_dropped(pods: Any) -> None:
    # The first answer stalls after its head; the second, on a new connection, is good.
    def script(n: int) -> tuple[list[bytes], bool]:
        if n == 0:
            return [OK_HEAD + b"Content-Length: 5000\r\n\r\n"], False
        return [with_length()], False

    pod = await pods(script)
    scraper = MetricsScraper(EndpointStore(), timeout_s=0.2)
    endpoint = Endpoint(address=pod.address)
    await scraper.scrape_once(endpoint)
    assert "timed out after 0.2s" in (endpoint.last_scrape_error or "")
    await scraper.scrape_once(endpoint)
    await scraper.stop()
    assert endpoint.scrape_failures == 0
    assert pod.connections == 2  # the late answer never reaches the next poll


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (with_length(b"x" * 5000), "body of 5000 bytes is over the limit of 4096"),
        (chunked(b"x" * 5000, size=1000), "body is over the limit of 4096 bytes"),
        (
            OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nffffffffffff\r\n",
            "body is over the limit of 4096 bytes",
        ),
    ],
    ids=["declared-length", "chunked", "one-huge-chunk"],
)
async def test_an_oversized_body_fails_before_it_is_read(
    pods: Any, answer: bytes, error: str
) -> None:
    pod = await pods(always([answer]))
    endpoint = await scrape(pod, max_body_bytes=4096)
    assert error in (endpoint.last_scrape_error or "")


@pytest.mark.asyncio
async def test_cancelling_a_poll_drops_its_connection(pods: Any, wait_until: Any) -> None:
    pod = await pods(lambda n: ([] if n == 0 else [with_length()], False))
    client = Http1Client(max_body_bytes=None)
    poll = asyncio.ensure_future(client.get(pod.address, "/metrics", timeout_s=30))
    await wait_until(lambda: pod.requests == 1, "the request to arrive")
    poll.cancel()
    with pytest.raises(asyncio.CancelledError):
        await poll
    response = await client.get(pod.address, "/metrics", timeout_s=30)
    await client.aclose()
    assert response.status == 200 and response.body == BODY
    assert pod.connections == 2


def test_the_client_works_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> tuple[int, int]:
        pod = ScriptedPod(always([with_length()]))
        await pod.start()
        endpoint = await scrape(pod, times=3)
        await pod.close()
        return endpoint.scrape_failures, pod.connections

    assert uvloop.run(main()) == (0, 1)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.7:8000", ("10.0.0.7", 8000)),
        ("[::1]:9", ("::1", 9)),
        ("pod-0.svc:80", ("pod-0.svc", 80)),
    ],
)
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["10.0.0.7", ":80", "host:0", "host:99999", "host:x"])
def test_split_address_refuses(address: str) -> None:
    with pytest.raises(ScrapeError, match="not a host:port address"):
        split_address(address)


# -- the reader, byte by byte ------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        with_length(),
        chunked(size=9),
        b"HTTP/1.1 100 Continue\r\n\r\n" + with_length(),
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ],
    ids=["length", "chunked", "interim", "trailers", "no-content"],
)
def test_the_reader_resumes_at_any_byte(raw: bytes) -> None:
    whole = ResponseReader(None)
    assert whole.feed(raw)
    piecewise = ResponseReader(None)
    done = [piecewise.feed(raw[i : i + 1]) for i in range(len(raw))]
    assert done[-1] and not any(done[:-1])
    assert (piecewise.status, piecewise.body, piecewise.keep_alive) == (
        whole.status,
        whole.body,
        whole.keep_alive,
    )


def test_the_reason_is_made_printable() -> None:
    reader = ResponseReader(None)
    reader.feed(b"HTTP/1.1 500 Bad\x1b[31m\r\nContent-Length: 0\r\n\r\n")
    assert reader.status == 500 and reader.reason == "Bad?[31m"
