"""The ports the local stack hands its servers: free, below the ephemeral range, unique."""

from __future__ import annotations

import socket
from pathlib import Path

from epp.stack import free_port, free_port_run


def _first_ephemeral() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_ports_are_below_the_ephemeral_range_and_never_repeat() -> None:
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    assert all(20000 <= port < max(_first_ephemeral(), 30000) for port in ports)


def test_a_run_is_consecutive_and_every_port_of_it_binds() -> None:
    first = free_port_run(64)
    for port in range(first, first + 64):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_bound_elsewhere_is_never_handed_out() -> None:
    # Bind every 16th port of the range ourselves: about a quarter of the runs of four
    # drawn at random touch one, so the bind check, not luck, keeps them out.
    held = []
    try:
        for port in range(20000, 30000, 16):
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
        taken = {sock.getsockname()[1] for sock in held}
        assert len(taken) > 500
        for _ in range(200):
            first = free_port_run(4)
            assert not taken & set(range(first, first + 4))
    finally:
        for sock in held:
            sock.close()


def test_long_runs_are_found_after_many_single_ports() -> None:
    # A whole test suite's worth of single ports handed out first: a run of 256 (the
    # scrape benchmark's fleet) must still be found, all of it free and new.
    singles = {free_port() for _ in range(3000)}
    first = free_port_run(256)
    assert not singles & set(range(first, first + 256))
    for port in range(first, first + 256):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
