"""Acceptance (issue 4): one serial scanned offline into two patients on two laptops (invariant 9).

Two stations of one site work offline and each scans the same applicator, as a clinician would,
into a different patient's insertion. Once both have synced twice, both show ONE safety conflict,
neither treatment can be finalised, and the cloud holds the conflict; a person resolves it on one
laptop by saying which treatment keeps the applicator; after both sync, the winner can be
finalised, the loser no longer holds the applicator and cannot take it back, and the cloud's and
both laptops' conflict rows say who resolved it, when and how.
"""

from typing import Any

import pytest
from sqlalchemy import select

from cloud.schema import audit_events
from cloud.schema import conflicts as cloud_conflicts
from store.enums import ApplicatorStatus
from store.errors import InvalidInput, NotPermitted
from store.journal import QUEUE
from store.models import Applicator, SyncConflict
from store.resolution import conflicts_awaiting, keep_in_treatment
from store.scanning import Confirmation, scan_applicator
from tests.cloud import conftest as cloud_fixtures
from tests.cloud.test_push import Cloud
from tests.sync import conftest as sync_fixtures
from tests.sync.conftest import Laptop, LaptopFactory, walk
from tests.utils.data import ALPHATAU, NURSE

# The sync tests' fixtures, by name: laptops linked to the real cloud over loopback.
cloud_db, app_engine, owner_engine = (
    cloud_fixtures.cloud_db,
    cloud_fixtures.app_engine,
    cloud_fixtures.owner_engine,
)
cloud, clock, laptops = sync_fixtures.cloud, sync_fixtures.clock, sync_fixtures.laptops

S = ApplicatorStatus
APPLICATORS = Applicator.__table__
CONFLICTS = SyncConflict.__table__
SERIAL = "DART-9000-00000"


def both_scan_offline(a: Laptop, b: Laptop) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """Each laptop starts an insertion for its own patient and scans the one applicator into it."""
    here = a.insertion("SO2611001")  # the patient the applicator was ordered for
    there = b.insertion("SO2611006")  # another patient, same site, same day
    mine = a.scan(here, SERIAL)
    # The scanner says it was meant for another patient; the clinician confirms and goes on.
    theirs = b.scan(there, SERIAL, frozenset({Confirmation.WRONG_TREATMENT}))
    return here, there, mine, theirs


def sync_twice_each(a: Laptop, b: Laptop) -> None:
    for _ in range(2):
        a.sync()
        b.sync()


def cloud_pair(cloud: Cloud, mine: dict[str, Any], theirs: dict[str, Any]) -> list[Any]:
    return cloud.rows(
        select(cloud_conflicts).where(
            cloud_conflicts.c.record_id.in_([mine["id"], theirs["id"]]),
            cloud_conflicts.c.field == "serial_number",
        )
    )


@pytest.mark.parametrize("resolver", ["a", "b"], ids=["found-by-pull", "reported-by-cloud"])
def test_one_serial_in_two_patients_blocks_both_until_a_person_says_who_keeps_it(
    laptops: LaptopFactory, cloud: Cloud, resolver: str
) -> None:
    a, b = laptops("a"), laptops("b")
    here, there, mine, theirs = both_scan_offline(a, b)
    walk(a, mine["id"], S.INSERTED)  # the winner's applicator went into its patient

    sync_twice_each(a, b)

    # Both laptops show ONE safety conflict naming both treatments; neither can be finalised.
    for laptop in (a, b):
        [item] = conflicts_awaiting(laptop.station)
        assert (item.rule, item.is_safety, item.field) == ("serial_in_two_treatments", True, "serial_number")
        assert set(item.treatment_ids) == {here, there} and len(item.row_ids) == 2
        for treatment_id in (here, there):
            with pytest.raises(InvalidInput, match="safety conflict waiting for review"):
                laptop.finalise(treatment_id)
    assert {(r.status, r.is_safety) for r in cloud_pair(cloud, mine, theirs)} == {("open", True)}

    # A person on one laptop decides: the patient it was ordered for keeps it.
    deciding = a if resolver == "a" else b
    [item] = conflicts_awaiting(deciding.station)
    keep_in_treatment(deciding.station, NURSE, item.conflict_id, here, "Label on the package reads Cohen")
    assert conflicts_awaiting(deciding.station) == []
    sync_twice_each(a, b)

    # The cloud's rows of the conflict say who resolved it, when and how; its audit keeps why.
    rows = cloud_pair(cloud, mine, theirs)
    assert len(rows) == 2
    for row in rows:
        assert (row.status, row.resolved_by) == ("resolved", NURSE.user_id) and row.resolved_at is not None
        assert row.resolution in ("keep_local", "keep_server")
    [event] = cloud.rows(select(audit_events.c.details).where(audit_events.c.action == "conflict_resolved"))
    assert event.details["reason"] == "Label on the package reads Cohen"
    assert event.details["keep_treatment_id"] == here
    # Both laptops: nothing awaits, every row of the conflict is closed by the person named.
    for laptop in (a, b):
        assert conflicts_awaiting(laptop.station) == []
        closed = laptop.rows(CONFLICTS, CONFLICTS.c.rule == "serial_in_two_treatments")
        assert closed and {(c["status"], c["resolved_by"]) for c in closed} == {("resolved", NURSE.user_id)}
        [lost] = laptop.rows(APPLICATORS, APPLICATORS.c.id == theirs["id"])
        assert lost["deleted_at"] is not None and "stays in treatment" in lost["deleted_reason"]
        assert {e["status"] for e in laptop.rows(QUEUE)} == {"done"}

    # The winner can be finalised; the loser cannot take the applicator back.
    a.finalise(here)
    a.sync()
    b.sync()
    again = scan_applicator(
        b.station, NURSE, treatment_id=there, raw=SERIAL, confirmed=frozenset(Confirmation)
    )
    assert not again.saved and again.applicator is None
    with pytest.raises(InvalidInput, match="No applicator"):
        b.finalise(there)
    [kept] = b.rows(APPLICATORS, APPLICATORS.c.serial_number == SERIAL, APPLICATORS.c.deleted_at.is_(None))
    assert kept["treatment_id"] == here


def test_removing_an_inserted_applicator_to_settle_a_clash_needs_a_supervisor(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    a, b = laptops("a"), laptops("b")
    here, _there, mine, theirs = both_scan_offline(a, b)
    walk(a, mine["id"], S.INSERTED)
    walk(b, theirs["id"], S.INSERTED)  # recorded as inserted on both: one record is wrong
    sync_twice_each(a, b)
    [item] = conflicts_awaiting(b.station)

    with pytest.raises(NotPermitted, match="Only a supervisor"):
        keep_in_treatment(b.station, NURSE, item.conflict_id, here, "Wrong patient on laptop b")
    keep_in_treatment(b.station, ALPHATAU, item.conflict_id, here, "Wrong patient on laptop b")
    sync_twice_each(b, a)

    assert {r.resolved_by for r in cloud_pair(cloud, mine, theirs)} == {ALPHATAU.user_id}
    a.finalise(here)
    assert conflicts_awaiting(a.station) == []
