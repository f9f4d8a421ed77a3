"""The other replicas' in-flight counts: summed onto this replica's endpoints, replaced
by each report, dropped when a replica goes quiet."""

from __future__ import annotations

from epp.datalayer.store import EndpointStore
from epp.sync.remote import RemoteLoad
from tests.unit.directors import POD_A, POD_B, POD_C, fresh_store


def _store() -> EndpointStore:
    return fresh_store({POD_A: ["m"], POD_B: ["m"]})


def test_counts_of_replicas_add_up_on_top_of_the_local_count() -> None:
    store = _store()
    a = store.get(POD_A)
    assert a is not None
    a.request_routed()
    remote = RemoteLoad(store.get, expire_s=5.0)
    remote.apply("r1", {POD_A: 2}, full=False, now=0.0)
    remote.apply("r2", {POD_A: 3}, full=False, now=0.0)
    assert (a.inflight_requests, a.remote_inflight, a.local_inflight) == (6, 5, 1)
    remote.apply("r1", {POD_A: 0}, full=False, now=1.0)  # absolute: replaces, never adds
    assert (a.inflight_requests, a.local_inflight) == (4, 1)


def test_a_full_report_zeroes_what_it_leaves_out() -> None:
    store = _store()
    remote = RemoteLoad(store.get, expire_s=5.0)
    remote.apply("r1", {POD_A: 2, POD_B: 1}, full=False, now=0.0)
    remote.apply("r1", {POD_B: 4}, full=True, now=1.0)
    assert remote.counts_of("r1") == {POD_B: 4}
    assert [ep.inflight_requests for ep in store.all()] == [0, 4]


def test_a_quiet_replica_is_forgotten_with_its_counts() -> None:
    store = _store()
    remote = RemoteLoad(store.get, expire_s=5.0)
    remote.apply("gone", {POD_A: 2}, full=True, now=0.0)
    remote.apply("alive", {POD_A: 1}, full=True, now=0.0)
    remote.heard("alive", 4.0)
    assert remote.expire(5.5) == ["gone"]
    assert remote.replicas() == ["alive"]
    a = store.get(POD_A)
    assert a is not None and a.inflight_requests == 1


def test_unknown_addresses_are_not_kept_and_new_endpoints_get_the_known_load() -> None:
    store = _store()
    remote = RemoteLoad(store.get, expire_s=5.0)
    remote.apply("r1", {POD_C: 7, POD_A: 1}, full=False, now=0.0)
    assert remote.counts_of("r1") == {POD_A: 1}
    # Discovery replaces the endpoint object: the new one starts at 0 and is told.
    store.replace([(POD_B, frozenset({"m"}))])
    store.replace([(POD_A, frozenset({"m"})), (POD_B, frozenset({"m"}))])
    fresh = store.get(POD_A)
    assert fresh is not None and fresh.inflight_requests == 0
    remote.endpoints_added([fresh])
    assert fresh.inflight_requests == 1


def test_replicas_past_the_cap_are_refused() -> None:
    store = _store()
    remote = RemoteLoad(store.get, expire_s=5.0, max_replicas=2)
    assert remote.apply("r1", {POD_A: 1}, full=False, now=0.0)
    assert remote.apply("r2", {POD_A: 1}, full=False, now=0.0)
    assert not remote.apply("r3", {POD_A: 1}, full=False, now=0.0)
    assert remote.refused_replicas == 1
    a = store.get(POD_A)
    assert a is not None and a.inflight_requests == 2
