"""/review's "Send again": a held change goes back to the queue with a recorded reason, and the next
round with its cause fixed delivers it under the same op id (the cloud answers applied)."""

from pathlib import Path

import pytest
from nicegui.testing import User
from sqlalchemy import select

from store import remote
from store.journal import AUDIT, QUEUE
from store.quarantine import send_again
from store.station import Station, open_station
from store.treatments import start_insertion
from sync.engine import SyncEngine
from tests.ui.conftest import CloudLink
from tests.ui.helpers_pages import by_testid
from tests.ui.test_login import WAIT
from tests.utils.data import NURSE, SITE, FakeClock
from tests.utils.flows import insertion

WHY = "The payload limit was raised in the station update"


async def test_send_again_needs_a_reason_then_puts_the_change_back_in_the_queue(
    nurse: User, station: Station
) -> None:
    insertion(station, "SO2611006")
    [entry] = remote.open_entries(station)
    remote.quarantine_unsendable(station, entry, "the payload is larger than 32 KiB", at=station.now())
    op_id = entry["op_id"]
    await nurse.open("/review")
    await nurse.should_see("Refused by the cloud: insert of treatments", retries=WAIT)
    by_testid(nurse, f"send-again-{op_id}").click()
    await nurse.should_see("Give the reason for sending it again", retries=WAIT)
    assert [e["status"] for e in remote.open_entries(station)] == ["quarantined"]
    by_testid(nurse, f"reason-{op_id}").type(WHY)
    by_testid(nurse, f"send-again-{op_id}").click()
    await nurse.should_see("Nothing waits for a person.", retries=WAIT)
    [again] = remote.open_entries(station)
    assert (again["op_id"], again["status"], again["attempts"]) == (op_id, "pending", 0)
    with station.engine.connect() as conn:
        audit = conn.execute(select(AUDIT).where(AUDIT.c.action == "sync_op_sent_again")).mappings().one()
    assert (audit["user_id"], audit["reason"], audit["new_values"]["op_id"]) == (NURSE.user_id, WHY, op_id)


@pytest.mark.postgres
def test_after_send_again_a_round_delivers_it_and_the_cloud_applies_it(
    cloud_link: CloudLink, station_dir: Path, real_clock: FakeClock
) -> None:
    station = open_station(station_dir, clock=real_clock)
    try:
        change = start_insertion(
            station,
            NURSE,
            site=SITE,
            day=station.local_today(),
            surgeon="Dr. Gold",
            order_names=["SO2611006"],
        )
        [entry] = remote.open_entries(station)
        # Held on this station (it never reached the cloud): nothing goes out while it is quarantined.
        remote.quarantine_unsendable(station, entry, "not sent: the site was unknown", at=station.now())
        engine = SyncEngine(station)
        assert engine.run_round().outcome == "ok"
        assert [e["status"] for e in remote.open_entries(station)] == ["quarantined"]

        send_again(station, NURSE, entry["op_id"], "The treatment's site is known now")
        assert engine.run_round().outcome == "ok"
        with station.engine.connect() as conn:
            row = conn.execute(select(QUEUE).where(QUEUE.c.op_id == entry["op_id"])).mappings().one()
        assert row["status"] == "done"
        assert row["result"]["status"] == "applied" and row["result"]["op_id"] == entry["op_id"]
        assert row["server_version"] == 1
        assert change.record["id"] == row["record_id"]
    finally:
        station.close()
