"""Regressions found by the convergence test (tests/reliability/test_convergence.py), each shrunk to
the few steps that showed it, with real stations and the real cloud (tests/sync/conftest.py).
"""

from typing import Any

from sqlalchemy import select

from cloud.cipher import open_record
from cloud.push import TABLES as CLOUD_TABLES
from cloud.schema import conflicts as cloud_conflicts
from store.applicators import change_status
from store.enums import ApplicatorStatus
from store.removal import fill_removal_form
from store.treatments import start_removal
from sync.wire import TABLES as STATION_TABLES
from sync.wire import local_record, typed_record
from tests.cloud.test_push import Cloud
from tests.sync.conftest import Laptop, LaptopFactory, walk
from tests.utils.data import NURSE, FakeClock

S = ApplicatorStatus


def records(laptop: Laptop, table_name: str) -> dict[str, dict[str, Any]]:
    """A station's records as the wire carries them (patient fields decrypted, bookkeeping left out)."""
    rows = laptop.rows(STATION_TABLES[table_name])
    return {r["id"]: local_record(laptop.station.cipher, table_name, r) for r in rows}


def cloud_records(cloud: Cloud, table_name: str) -> dict[str, dict[str, Any]]:
    table = CLOUD_TABLES[table_name]
    return {
        r.id: typed_record(table_name, open_record(r.data, cloud.cipher))
        for r in cloud.rows(select(table.c.id, table.c.data))
    }


def test_the_same_status_set_on_two_laptops_leaves_both_with_the_clouds_record_stamps(
    laptops: LaptopFactory, cloud: Cloud, clock: FakeClock
) -> None:
    """Found as: A3 holds hlc and updated_at of its own edit, the cloud those of A1's.

    Both laptops open one applicator. The first push sets the cloud's record; the second laptop
    pulls it while its own move is pending (merged), then pushes a change the cloud already has
    (nothing taken, no new version). The second laptop must end with the cloud's record, stamps
    included, or the two laptops show different "last changed" times for ever.
    """
    a, b = laptops("a"), laptops("b")
    applicator = a.scan(a.insertion(), "DART-9000-00000")
    a.sync()
    b.sync()
    change_status(a.station, NURSE, applicator_id=applicator["id"], status=S.OPENED)
    clock.advance(seconds=5)
    change_status(b.station, NURSE, applicator_id=applicator["id"], status=S.OPENED)

    a.sync()
    b.sync()  # pulls a's move while its own is pending, then pushes it: nothing new for the cloud
    a.sync()

    in_cloud = cloud_records(cloud, "applicators")[applicator["id"]]
    for laptop in (a, b):
        assert differences(records(laptop, "applicators")[applicator["id"]], in_cloud) == {}


def differences(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {
        k: (mine.get(k), theirs.get(k)) for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)
    }


def test_two_final_statuses_no_move_joins_are_held_and_both_laptops_show_the_clouds_seed_count(
    laptops: LaptopFactory, cloud: Cloud, clock: FakeClock
) -> None:
    """Found as: A2 holds FAULTY with 0 seeds deployed, the cloud FAULTY with 9.

    One laptop disposes of an opened applicator while the other records it FAULTY with 9 seeds
    deployed. No move joins the two: the status is held for a person. Meanwhile every laptop must
    show the cloud's record, and a status must never stand beside another status's seed count.
    """
    a, b = laptops("a"), laptops("b")
    applicator = a.scan(a.insertion(), "DART-9000-00000")
    a.sync()
    b.sync()
    change_status(b.station, NURSE, applicator_id=applicator["id"], status=S.OPENED)
    change_status(
        b.station,
        NURSE,
        applicator_id=applicator["id"],
        status=S.DISPOSED,
        comment="dropped",
        confirm_permanent=True,
    )
    clock.advance(seconds=5)
    change_status(a.station, NURSE, applicator_id=applicator["id"], status=S.OPENED)
    change_status(
        a.station,
        NURSE,
        applicator_id=applicator["id"],
        status=S.FAULTY,
        comment="stuck",
        deployed_seeds=9,
        confirm_permanent=True,
    )

    for laptop in (a, b, a, b):
        laptop.sync()

    in_cloud = cloud_records(cloud, "applicators")[applicator["id"]]
    assert (in_cloud["status"], in_cloud["deployed_seeds"]) == ("FAULTY", 9)
    held = cloud.rows(select(cloud_conflicts.c.field).where(cloud_conflicts.c.status == "open"))
    assert "status" in {r.field for r in held}
    for laptop in (a, b):
        assert differences(records(laptop, "applicators")[applicator["id"]], in_cloud) == {}


def test_two_explanations_of_one_removal_gap_are_held_not_added_up(
    laptops: LaptopFactory, cloud: Cloud, clock: FakeClock
) -> None:
    """Two laptops explain the same 10 missing seeds differently (lost; remained in tissue). Merged
    field by field without care, the cloud's form would explain 20 seeds of a gap of 10. Checked
    while writing the convergence test's oracle: it holds, both explanations wait for a person."""
    a, b = laptops("a"), laptops("b")
    insertion = a.insertion()
    walk(a, a.scan(insertion, "DART-9000-00000")["id"], S.INSERTED)
    a.finalise(insertion)
    removal = start_removal(a.station, NURSE, insertion_id=insertion, confirm_outside_window=True)
    a.sync()
    b.sync()
    today = a.station.local_today()
    removal_id = removal.record["id"]
    fill_removal_form(a.station, NURSE, removal_id=removal_id, removal_date=today, all_same_day=True, lost=10)
    fill_removal_form(
        b.station, NURSE, removal_id=removal_id, removal_date=today, all_same_day=True, in_tissue=10
    )

    for laptop in (a, b, a, b):
        laptop.sync()

    form = cloud_records(cloud, "treatments")[removal_id]
    explained = sum(form[k] or 0 for k in ("gap_lost", "gap_retrieved", "gap_in_tissue", "gap_other"))
    held = {
        r.field for r in cloud.rows(select(cloud_conflicts.c.field).where(cloud_conflicts.c.status == "open"))
    }
    assert explained == 10 or held & {"gap_lost", "gap_in_tissue"}, (form, held)
