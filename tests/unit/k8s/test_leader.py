"""Lease leader election against the fake API server."""

from __future__ import annotations

import pytest
from lightkube import AsyncClient

from epp.k8s.leader import LeaderElector
from tests.kube_fake import FakeKubeAPI, lease
from tests.unit.k8s.conftest import eventually

NS = "inference"


def elector(client: AsyncClient, identity: str, changes: list[tuple[str, bool]]) -> LeaderElector:
    return LeaderElector(
        client,
        namespace=NS,
        lease_name="epp-pool",
        identity=identity,
        lease_duration_s=1.5,
        renew_deadline_s=1.0,
        retry_period_s=0.1,
        on_change=lambda leader: changes.append((identity, leader)),
    )


@pytest.mark.asyncio
async def test_one_leader_then_hand_over_on_release(api: FakeKubeAPI, client: AsyncClient) -> None:
    changes: list[tuple[str, bool]] = []
    first, second = elector(client, "epp-a", changes), elector(client, "epp-b", changes)
    first.start()
    await eventually(lambda: first.is_leader)
    second.start()
    held = api.get("coordination.k8s.io/v1", "Lease", NS, "epp-pool")
    assert held is not None and held["spec"]["holderIdentity"] == "epp-a"
    await eventually(lambda: api.resource_version > int(held["metadata"]["resourceVersion"]) + 3)
    assert not second.is_leader  # renewals keep the lease with its holder

    await first.stop()  # releases: the standby takes over without waiting out the lease
    await eventually(lambda: second.is_leader, timeout_s=1.4)
    after = api.get("coordination.k8s.io/v1", "Lease", NS, "epp-pool")
    assert after is not None and after["spec"]["holderIdentity"] == "epp-b"
    assert after["spec"]["leaseTransitions"] == 1
    await second.stop()
    assert changes == [("epp-a", True), ("epp-a", False), ("epp-b", True), ("epp-b", False)]


@pytest.mark.asyncio
async def test_a_dead_leaders_lease_is_taken_after_it_expires(
    api: FakeKubeAPI, client: AsyncClient
) -> None:
    api.apply(lease("epp-pool", NS, holder="crashed", duration_s=1))
    changes: list[tuple[str, bool]] = []
    candidate = elector(client, "epp-b", changes)
    candidate.start()
    try:
        await eventually(lambda: candidate.is_leader)
        assert changes == [("epp-b", True)]
        taken = api.get("coordination.k8s.io/v1", "Lease", NS, "epp-pool")
        assert taken is not None and taken["spec"]["leaseTransitions"] == 1
    finally:
        await candidate.stop()


@pytest.mark.asyncio
async def test_leader_steps_down_when_it_cannot_renew(
    api: FakeKubeAPI, client: AsyncClient
) -> None:
    changes: list[tuple[str, bool]] = []
    leader = elector(client, "epp-a", changes)
    leader.start()
    try:
        await eventually(lambda: leader.is_leader)
        api.set_available(False)
        await eventually(lambda: not leader.is_leader)
        api.set_available(True)
        await eventually(lambda: leader.is_leader)
        assert changes == [("epp-a", True), ("epp-a", False), ("epp-a", True)]
    finally:
        await leader.stop()


def test_durations_must_be_ordered(client: AsyncClient) -> None:
    with pytest.raises(ValueError, match="retry period"):
        LeaderElector(
            client,
            namespace=NS,
            lease_name="l",
            identity="i",
            lease_duration_s=5,
            renew_deadline_s=10,
            retry_period_s=2,
        )
