"""Send again: a held change goes back to the queue under the same op id, its dependants with it,
audited, only by someone allowed at its site, and only while it is still held."""

import sqlite3
from typing import Any

import pytest
from sqlalchemy import select

from store import remote
from store.errors import InvalidInput, NotPermitted
from store.journal import AUDIT, QUEUE, verify_audit_chain
from store.quarantine import can_send_again, send_again
from store.station import Station
from sync.engine import SyncEngine, push_order
from sync.protocol import OpResult
from tests.utils.data import NURSE, OUTSIDER
from tests.utils.flows import insertion, scan

SERIAL = "DART-9000-00000"  # on Cohen's order (SO2611001)
WHY = "Priority's inventory was corrected by the site's pharmacist"


def _entry(station: Station, op_id: str) -> dict[str, Any]:
    with station.engine.connect() as conn:
        return dict(conn.execute(select(QUEUE).where(QUEUE.c.op_id == op_id)).mappings().one())


def _audits(station: Station) -> list[dict[str, Any]]:
    with station.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(AUDIT).order_by(AUDIT.c.device_seq)).mappings()]


def _sendable(station: Station) -> set[str]:
    order, _ = push_order(remote.open_schedule(station), station.now())
    return {e["op_id"] for e in order}


@pytest.fixture
def held(station: Station) -> tuple[str, str]:
    """A treatment's insert quarantined with an attempt counted and a backoff, and the applicator
    scanned into it (which depends on it, so is held back): their op ids."""
    treatment_id = insertion(station)
    scan(station, treatment_id, SERIAL)
    treatment_op, applicator_op = (e["op_id"] for e in remote.open_entries(station))
    entry = {**_entry(station, treatment_op), "attempts": 3}
    remote.quarantine_unsendable(
        station, entry, "not sent: the payload is larger than 32 KiB", at=station.now()
    )
    assert _entry(station, applicator_op)["depends_on"] == [treatment_op]
    return treatment_op, applicator_op


def test_send_again_puts_it_back_pending_with_the_same_op_id_and_a_fresh_start(
    station: Station, held: tuple[str, str]
) -> None:
    treatment_op, _ = held
    assert _entry(station, treatment_op)["status"] == "quarantined"
    send_again(station, NURSE, treatment_op, WHY)
    entry = _entry(station, treatment_op)
    assert entry["op_id"] == treatment_op  # never a new id: the cloud's ledger still dedupes
    assert (entry["status"], entry["attempts"], entry["next_attempt_at"]) == ("pending", 0, None)
    assert entry["last_error"] is None and entry["result"] is None
    with station.engine.connect() as conn:
        assert conn.execute(select(QUEUE.c.op_id)).scalars().all().count(treatment_op) == 1


def test_the_changes_that_depend_on_it_become_sendable_again(station: Station, held: tuple[str, str]) -> None:
    treatment_op, applicator_op = held
    assert _sendable(station) == set()  # the applicator waits behind the quarantined treatment
    send_again(station, NURSE, treatment_op, WHY)
    order, waiting = push_order(remote.open_schedule(station), station.now())
    assert [e["op_id"] for e in order] == [treatment_op, applicator_op]
    assert waiting == 0


def test_it_is_audited_with_who_which_entry_and_why(station: Station, held: tuple[str, str]) -> None:
    treatment_op, _ = held
    before = len(_audits(station))
    send_again(station, NURSE, treatment_op, f"  {WHY}  ")
    audits = _audits(station)
    [audit] = audits[before:]
    assert audit["action"] == "sync_op_sent_again"
    assert (audit["user_id"], audit["reason"]) == (NURSE.user_id, WHY)
    assert audit["table_name"] == "treatments"
    assert audit["created_at"] == station.now()
    assert audit["new_values"]["op_id"] == treatment_op
    assert audit["new_values"]["was"] == "quarantined" and audit["new_values"]["attempts"] == 3
    assert audit["new_values"]["message"] == "not sent: the payload is larger than 32 KiB"
    assert verify_audit_chain(audits) is None


def test_someone_not_allowed_at_the_site_is_refused_and_nothing_changes(
    station: Station, held: tuple[str, str]
) -> None:
    treatment_op, _ = held
    before, audits = _entry(station, treatment_op), len(_audits(station))
    with pytest.raises(NotPermitted, match="not authorised for site TLV-1"):
        send_again(station, OUTSIDER, treatment_op, WHY)
    assert _entry(station, treatment_op) == before
    assert len(_audits(station)) == audits


def test_an_entry_no_longer_held_is_refused_clearly_and_left_alone(
    station: Station, held: tuple[str, str]
) -> None:
    treatment_op, _ = held
    send_again(station, NURSE, treatment_op, WHY)  # someone else was first
    before, audits = _entry(station, treatment_op), len(_audits(station))
    with pytest.raises(InvalidInput, match="no longer held: someone sent it again already"):
        send_again(station, NURSE, treatment_op, "I fixed it too")
    assert _entry(station, treatment_op) == before
    assert len(_audits(station)) == audits


def test_a_reason_is_required(station: Station, held: tuple[str, str]) -> None:
    treatment_op, _ = held
    with pytest.raises(InvalidInput) as refused:
        send_again(station, NURSE, treatment_op, "   ")
    assert refused.value.field == "reason"
    assert _entry(station, treatment_op)["status"] == "quarantined"


def test_a_failure_after_the_reset_writes_nothing(station: Station, held: tuple[str, str]) -> None:
    """The audit entry cannot be written (the database refuses it): the reset is rolled back too."""
    treatment_op, _ = held
    with station.writer.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TRIGGER refuse_send_again BEFORE INSERT ON {AUDIT.name} "
            "WHEN NEW.action = 'sync_op_sent_again' BEGIN SELECT RAISE(ABORT, 'audit refused'); END"
        )
    before, audits = _entry(station, treatment_op), len(_audits(station))
    with pytest.raises(sqlite3.IntegrityError, match="audit refused"):
        send_again(station, NURSE, treatment_op, WHY)
    assert _entry(station, treatment_op) == before
    assert len(_audits(station)) == audits
    assert _sendable(station) == set()


@pytest.mark.parametrize("code", ["record_exists", "already_resolved", "signature_unverified"])
def test_a_refusal_the_cloud_keeps_for_good_is_not_sent_again(station: Station, code: str) -> None:
    insertion(station)
    [treatment_op] = [e["op_id"] for e in remote.open_entries(station)]
    entry = _entry(station, treatment_op)
    answer = OpResult(op_id=treatment_op, status="rejected", code=code, message="refused by the cloud")
    verdict = SyncEngine(station).verdict(entry, answer, station.now())
    remote.record_results(station, [verdict], at=station.now())
    assert _entry(station, treatment_op)["status"] == "quarantined"
    assert not can_send_again(code)
    with pytest.raises(InvalidInput, match="refused this change for good"):
        send_again(station, NURSE, treatment_op, WHY)
    assert _entry(station, treatment_op)["status"] == "quarantined"
    assert not [a for a in _audits(station) if a["action"] == "sync_op_sent_again"]
