"""A person's decision travels like any change: the cloud applies it, records it, and refuses a second one.

Real laptops and the real cloud (tests/sync/conftest.py). A held status (two final statuses that
the state machine cannot order) is decided on the laptop that met it; after sync the cloud's
record holds the chosen value, its conflict rows say who decided, when and how, and the other
laptop pulls the same record. Two people resolving one serial clash differently on two laptops:
the first decision to reach the cloud stands, the second is refused and shown.
"""

from typing import Any

import pytest
from sqlalchemy import select

from cloud.schema import applicators as cloud_applicators
from cloud.schema import conflicts as cloud_conflicts
from store.applicators import change_status
from store.enums import ApplicatorStatus
from store.errors import NotPermitted
from store.incidents import stuck_entries
from store.journal import QUEUE
from store.models import Applicator
from store.resolution import conflicts_awaiting, keep_in_treatment, keep_local
from store.scanning import Confirmation
from tests.cloud.test_push import Cloud
from tests.sync.conftest import LaptopFactory, walk
from tests.utils.data import ALPHATAU, NURSE

S = ApplicatorStatus
APPLICATORS = Applicator.__table__


def cloud_record(cloud: Cloud, record_id: str) -> dict[str, Any]:
    return cloud.rows(select(cloud_applicators.c.data).where(cloud_applicators.c.id == record_id))[0].data


def test_a_held_status_decided_on_one_laptop_reaches_the_cloud_and_the_other_laptop(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    a, b = laptops("a"), laptops("b")
    applicator = a.scan(a.insertion(), "DART-9000-00000")
    walk(a, applicator["id"], S.OPENED)
    a.sync()
    b.sync()
    # Offline, each records a different final status: the state machine cannot order them.
    change_status(
        a.station,
        NURSE,
        applicator_id=applicator["id"],
        status=S.FAULTY,
        comment="plunger stuck",
        deployed_seeds=2,
        confirm_permanent=True,
    )
    change_status(
        b.station,
        NURSE,
        applicator_id=applicator["id"],
        status=S.DISPOSED,
        comment="dropped on the floor",
        confirm_permanent=True,
    )
    a.sync()
    b.sync()  # meets a's status: held for a person, on b and in the cloud
    [item] = [c for c in conflicts_awaiting(b.station) if c.field == "status"]
    assert (item.is_safety, item.local_value, item.server_value) == (True, "DISPOSED", "FAULTY")

    with pytest.raises(NotPermitted, match="Only a supervisor"):
        keep_local(b.station, NURSE, item.conflict_id, "It was dropped before use")
    keep_local(b.station, ALPHATAU, item.conflict_id, "It was dropped before use")
    b.sync()
    a.sync()

    chosen = cloud_record(cloud, applicator["id"])
    assert (chosen["status"], chosen["deployed_seeds"]) == ("DISPOSED", 0)  # with the count that goes with it
    held = cloud.rows(
        select(cloud_conflicts).where(
            cloud_conflicts.c.record_id == applicator["id"], cloud_conflicts.c.field == "status"
        )
    )
    assert held and {(c.status, c.resolved_by, c.resolution) for c in held} == {
        ("resolved", ALPHATAU.user_id, "keep_local")
    }
    for laptop in (a, b):
        [row] = laptop.rows(APPLICATORS)
        assert row["status"] == "DISPOSED" and row["deployed_seeds"] == 0
        assert {e["status"] for e in laptop.rows(QUEUE)} == {"done"}
    assert [c for c in conflicts_awaiting(b.station) if c.field == "status"] == []


def test_two_laptops_deciding_one_clash_differently_the_first_decision_stands(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    a, b = laptops("a"), laptops("b")
    here, there = a.insertion("SO2611001"), b.insertion("SO2611006")
    mine = a.scan(here, "DART-9000-00000")
    theirs = b.scan(there, "DART-9000-00000", frozenset({Confirmation.WRONG_TREATMENT}))
    for _ in range(2):
        a.sync()
        b.sync()
    [on_a], [on_b] = conflicts_awaiting(a.station), conflicts_awaiting(b.station)

    keep_in_treatment(a.station, NURSE, on_a.conflict_id, here, "Label reads Cohen")
    keep_in_treatment(b.station, NURSE, on_b.conflict_id, there, "Label reads Friedman")
    a.sync()  # first to arrive: applied
    b.sync()  # refused: someone decided first

    live = cloud.rows(
        select(cloud_applicators.c.id).where(
            cloud_applicators.c.serial_number == "DART-9000-00000", ~cloud_applicators.c.deleted
        )
    )
    assert [r.id for r in live] == [mine["id"]]  # never both removed
    [refused] = [s for s in stuck_entries(b.station) if s.record_id == mine["id"]]
    assert (refused.status, refused.code) == ("quarantined", "already_resolved")
    assert "already resolved by" in (refused.message or "")
    assert theirs["id"] not in [r.id for r in live]
