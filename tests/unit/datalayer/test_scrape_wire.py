"""The frames between epp and its scraper process: what goes in comes out, and what is not
a frame of ours is refused rather than half-read."""

from __future__ import annotations

import logging

import pytest

from epp.datalayer import scrape_wire as wire
from epp.datalayer.endpoint import Endpoint, Metrics

STATES = [
    wire.EndpointState(1, 0, 0, 5, 3, 0.25, 16, 27000, 1234.5, None),
    wire.EndpointState(2, 4, 9, 0, 0, 0.0, None, None, 0.0, "GET http://x/metrics: HTTP 500 ü"),
    wire.EndpointState(2**32 - 1, 1, 1, 2**40, 0, 1.0, 1, None, 7.0, "e" * 400),
    # LoRA adapters and the model names the series carry cross too.
    wire.EndpointState(
        5,
        0,
        0,
        1,
        1,
        0.5,
        16,
        100,
        8.0,
        None,
        2,
        frozenset({"travel-helper-v1"}),
        frozenset({"travel-helper-v2", "ü"}),
        frozenset({"qwen"}),
    ),
    wire.EndpointState(6, 0, 0, 0, 0, 0.0, None, None, 9.0, "x", 0, models=frozenset({"m"})),
]


def test_states_round_trip() -> None:
    body = wire.encode_states(STATES)
    states, end = wire.decode_states(body)
    assert states == STATES
    assert end == len(body)
    assert wire.decode_states(wire.encode_states([])) == ([], 4)


def test_state_of_an_endpoint() -> None:
    endpoint = Endpoint("10.0.0.1:8000", metrics=Metrics(1, 2, 0.5, None, 100, updated_at=9.0))
    endpoint.scrape_failures, endpoint.scrape_errors_total = 2, 7
    endpoint.last_scrape_error = "boom"
    assert wire.state_of(3, endpoint) == wire.EndpointState(
        3, 2, 7, 1, 2, 0.5, None, 100, 9.0, "boom"
    )


def test_endpoints_encode_as_their_states() -> None:
    a = Endpoint(
        "10.0.0.1:8000",
        metrics=Metrics(
            1, 2, 0.5, 16, None, frozenset({"a1"}), frozenset(), 4, frozenset({"m"}), 9.0
        ),
    )
    b = Endpoint("10.0.0.2:8000")
    b.scrape_failures, b.scrape_errors_total, b.last_scrape_error = 3, 4, "timed out ✗"
    items = [(7, a), (8, b)]
    body = wire.encode_endpoints(items)
    assert body == wire.encode_states([wire.state_of(i, ep) for i, ep in items])
    decoded = wire.decode_states(body)[0]
    assert decoded[1].last_scrape_error == "timed out ✗"
    assert (decoded[0].lora_running, decoded[0].max_lora, decoded[0].models) == (
        frozenset({"a1"}),
        4,
        frozenset({"m"}),
    )


def test_add_round_trip() -> None:
    items = [(state, f"10.0.0.{state.id % 250}:8000") for state in STATES]
    assert wire.decode_add(wire.encode_add(items)) == items


@pytest.mark.parametrize("ids", [[], [1], [3, 1, 2**32 - 1]], ids=["none", "one", "three"])
def test_ids_round_trip(ids: list[int]) -> None:
    assert wire.decode_ids(wire.encode_ids(ids)) == ids


def test_stats_and_log_round_trip() -> None:
    assert wire.decode_stats(wire.encode_stats(123456789)) == 123456789
    level, name, text = wire.decode_log(
        wire.encode_log(logging.WARNING, "epp.datalayer.scraper", "scrape of a failed: ✗")
    )
    assert (level, name, text) == (
        logging.WARNING,
        "epp.datalayer.scraper",
        "scrape of a failed: ✗",
    )
    _, _, long = wire.decode_log(wire.encode_log(logging.INFO, "x", "y" * 10_000))
    assert long == "y" * wire.MAX_LOG_CHARS + "..."


def test_frames_come_out_whole_however_the_bytes_are_cut() -> None:
    stream = (
        wire.frame(wire.STATES, wire.encode_states(STATES))
        + wire.frame(wire.STARTED)
        + wire.frame(wire.STATS, wire.encode_stats(5))
    )
    for step in (1, 3, 7, len(stream)):
        buffer = wire.FrameBuffer()
        got: list[tuple[int, bytes]] = []
        for at in range(0, len(stream), step):
            buffer.feed(stream[at : at + step])
            got.extend(buffer.frames())
        assert [kind for kind, _ in got] == [wire.STATES, wire.STARTED, wire.STATS]
        assert wire.decode_states(got[0][1])[0] == STATES
        assert buffer.pending_bytes == 0


@pytest.mark.parametrize(
    ("decode", "body"),
    [
        (wire.decode_states, wire.encode_states(STATES)[:-5]),  # a text cut short
        (wire.decode_states, b"\xff\xff\xff\x00"),  # more states than bytes
        (wire.decode_states, b"\x01"),
        (wire.decode_add, wire.encode_add([(STATES[0], "a:1")]) + b"x"),
        (wire.decode_add, wire.encode_states(STATES[:1])),  # no address
        (wire.decode_ids, b"\x02\x00\x00\x00\x01\x00\x00\x00"),
        (wire.decode_stats, b"\x01\x02"),
        (wire.decode_log, wire.encode_log(20, "a", "b") + b"!"),
    ],
    ids=[
        "text-cut",
        "count-too-big",
        "short-count",
        "add-trailing",
        "add-no-address",
        "ids-short",
        "stats-short",
        "log-long",
    ],
)
def test_bodies_that_do_not_add_up_are_refused(decode: object, body: bytes) -> None:
    with pytest.raises(wire.WireError):
        decode(body)  # type: ignore[operator]


def test_a_frame_over_the_limit_is_refused_before_it_is_read() -> None:
    buffer = wire.FrameBuffer(max_frame_bytes=100)
    buffer.feed((1000).to_bytes(4, "little") + b"\x06")
    with pytest.raises(wire.WireError, match="1000 bytes"):
        buffer.next()
    empty = wire.FrameBuffer()
    empty.feed(b"\x00\x00\x00\x00\x06")
    with pytest.raises(wire.WireError):
        empty.next()


def _with_names(id_: int, models: frozenset[str], running: frozenset[str]) -> wire.EndpointState:
    return wire.EndpointState(
        id_, 0, 0, 0, 0, 0.0, None, None, 1.0, None, 4, running, frozenset(), models
    )


def test_names_repeated_across_states_and_frames_are_decoded_once() -> None:
    shared = [_with_names(i, frozenset({"qwen"}), frozenset({"a1", "a2"})) for i in range(3)]
    other = _with_names(9, frozenset({"llama"}), frozenset())
    first = wire.decode_states(wire.encode_states([*shared, other]))[0]
    second = wire.decode_states(wire.encode_states(shared))[0]
    assert first[:3] == second == shared and first[3] == other
    # The same set objects: nothing is built for a blob seen before.
    assert len({id(state.models) for state in first[:3] + second}) == 1
    assert len({id(state.lora_running) for state in first[:3] + second}) == 1
    assert first[3].models is not first[0].models


def test_the_names_cache_is_bounded_and_skips_big_blobs() -> None:
    big = frozenset({"x" * 3000, "y" * 3000})  # a blob over the cached size
    one = wire.decode_states(wire.encode_states([_with_names(1, big, frozenset())]))[0][0]
    two = wire.decode_states(wire.encode_states([_with_names(1, big, frozenset())]))[0][0]
    assert one.models == two.models == big and one.models is not two.models
    many = [
        _with_names(i, frozenset({f"model-{i}"}), frozenset())
        for i in range(wire._CACHED_BLOBS * 3)
    ]
    assert wire.decode_states(wire.encode_states(many))[0] == many
    assert 0 < len(wire._names_cache) <= wire._CACHED_BLOBS
