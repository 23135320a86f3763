"""The resolution commands on one station: who may decide, what one decision writes, all or nothing.

The conflict is a real one, found the way a station finds it: a second laptop's scan of the same
serial into another patient arrives as a pulled change (store.remote.apply_pulled), and the pull
holds a serial in two treatments for a person. No cloud is needed for what is checked here; the
decision's way to the cloud is in tests/sync/test_resolution_sync.py.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from store import remote
from store.enums import ApplicatorStatus, SignatureMode
from store.errors import InvalidInput, NotPermitted
from store.journal import AUDIT, QUEUE, verify_audit_chain
from store.models import SyncConflict
from store.resolution import conflicts_awaiting, keep_in_treatment, keep_merged
from store.scanning import Confirmation, scan_applicator
from store.station import Station, open_station
from store.treatments import finalise_treatment
from store.validation_cache import install_bundle
from sync.protocol import PullChange, Resolution
from sync.wire import TABLES, clear_record
from tests.utils.data import ALPHATAU, NURSE, OUTSIDER, SITE, FakeClock, make_bundle
from tests.utils.flows import PATHS, insertion, move, scan

CONFLICTS = SyncConflict.__table__
SERIAL = "DART-9000-00000"


@pytest.fixture
def other(tmp_path: Path, clock: FakeClock) -> Iterator[Station]:
    station = open_station(tmp_path / "other-laptop", clock=clock)
    install_bundle(station, make_bundle())
    yield station
    station.close()


def pull(into: Station, source: Station, table: str, record_id: str, seq: int) -> None:
    """`source`'s record arrives at `into` as the cloud would send it."""
    with source.engine.connect() as conn:
        row = dict(
            conn.execute(TABLES[table].select().where(TABLES[table].c.id == record_id)).mappings().one()
        )
    change = PullChange(
        seq=seq, table=table, record_id=record_id, site=SITE, version=1, deleted=False,
        record=clear_record(source.cipher, row),
    )  # fmt: skip
    remote.apply_pulled(into, [change], cursor=remote.load_state(into).pull_cursor, next_cursor=seq)


@pytest.fixture
def clash(station: Station, other: Station) -> dict[str, Any]:
    """This station scanned the serial into patient 1; the other laptop into patient 2, pulled here."""
    here = insertion(station, "SO2611001")
    mine = scan(station, here, SERIAL)
    there = insertion(other, "SO2611006")
    result = scan_applicator(
        other, NURSE, treatment_id=there, raw=SERIAL, confirmed=frozenset({Confirmation.WRONG_TREATMENT})
    )
    assert result.applicator is not None
    pull(station, other, "treatments", there, 1)
    pull(station, other, "applicators", result.applicator["id"], 2)
    return {"here": here, "there": there, "mine": mine, "theirs": result.applicator}


def rows(station: Station, table: Any) -> list[dict[str, Any]]:
    with station.engine.connect() as conn:
        return [dict(r) for r in conn.execute(table.select()).mappings()]


def test_a_serial_in_two_treatments_is_one_item_awaiting_a_person(station: Station, clash: dict) -> None:
    [item] = conflicts_awaiting(station)
    assert (item.rule, item.is_safety, item.admin_only) == ("serial_in_two_treatments", True, False)
    assert set(item.treatment_ids) == {clash["here"], clash["there"]} and len(item.row_ids) == 2
    assert "say which treatment keeps it" in item.summary


@pytest.mark.parametrize(
    ("actor", "call", "error", "words"),
    [
        (OUTSIDER, "keep", NotPermitted, "not authorised for site"),
        (NURSE, "no_reason", InvalidInput, "reason"),
        (NURSE, "merge", InvalidInput, "cannot be merged"),
        (NURSE, "stranger", InvalidInput, "is not one of the two treatments"),
    ],
)
def test_a_refused_decision_says_why_and_writes_nothing(
    station: Station, clash: dict, actor: Any, call: str, error: type, words: str
) -> None:
    [item] = conflicts_awaiting(station)
    before = (rows(station, QUEUE), rows(station, AUDIT), rows(station, CONFLICTS))
    with pytest.raises(error, match=words):
        if call == "keep":
            keep_in_treatment(station, actor, item.conflict_id, clash["here"], "checked the label")
        elif call == "no_reason":
            keep_in_treatment(station, actor, item.conflict_id, clash["here"], "   ")
        elif call == "merge":
            keep_merged(station, actor, item.conflict_id, {"serial_number": SERIAL}, "both")
        else:
            keep_in_treatment(station, actor, item.conflict_id, "no-such-treatment", "checked the label")
    assert (rows(station, QUEUE), rows(station, AUDIT), rows(station, CONFLICTS)) == before


def test_removing_an_inserted_applicator_is_a_supervisors_decision(station: Station, clash: dict) -> None:
    move(station, clash["mine"]["id"], PATHS["loaded"][ApplicatorStatus.INSERTED])
    [item] = conflicts_awaiting(station)
    with pytest.raises(NotPermitted, match="Only a supervisor"):
        keep_in_treatment(station, NURSE, item.conflict_id, clash["there"], "the other patient's")
    keep_in_treatment(station, ALPHATAU, item.conflict_id, clash["there"], "the other patient's")
    [gone] = [a for a in rows(station, TABLES["applicators"]) if a["id"] == clash["mine"]["id"]]
    assert gone["deleted_by"] == ALPHATAU.user_id


def test_one_decision_closes_both_rows_queues_one_entry_and_unblocks_the_winner(
    station: Station, clash: dict
) -> None:
    move(station, clash["mine"]["id"], PATHS["loaded"][ApplicatorStatus.INSERTED])
    with pytest.raises(InvalidInput, match="safety conflict"):
        finalise_treatment(station, NURSE, treatment_id=clash["here"], mode=SignatureMode.SELF)
    queued_before = len(rows(station, QUEUE))
    [item] = conflicts_awaiting(station)

    change = keep_in_treatment(station, NURSE, item.conflict_id, clash["here"], "Label reads Cohen")

    queue = rows(station, QUEUE)
    assert len(queue) == queued_before + 1
    [entry] = [e for e in queue if e["op_id"] == change.op_id]
    assert (entry["table_name"], entry["record_id"], entry["kind"]) == (
        "applicators",
        clash["theirs"]["id"],
        "update",
    )
    assert set(entry["changed_fields"]) == {"deleted_at", "deleted_by", "deleted_reason"}
    decision = Resolution.model_validate(entry["resolution"])  # what the wire will carry
    # keep_local or keep_server depending on which of the two rows the page passed: the treatment says
    assert decision.how in ("keep_local", "keep_server")
    assert (decision.resolved_by, decision.keep_treatment_id) == (NURSE.user_id, clash["here"])
    assert {s.record_id for s in decision.settles} == {clash["mine"]["id"], clash["theirs"]["id"]}
    closed = rows(station, CONFLICTS)
    assert {(c["status"], c["resolved_by"], c["reason"]) for c in closed} == {
        ("resolved", NURSE.user_id, "Label reads Cohen")
    }
    [audit] = [r for r in rows(station, AUDIT) if r["action"] == "conflict_resolved"]
    assert audit["op_id"] == change.op_id and audit["reason"] == "Label reads Cohen"
    assert verify_audit_chain(sorted(rows(station, AUDIT), key=lambda r: r["device_seq"])) is None
    assert conflicts_awaiting(station) == []
    with pytest.raises(InvalidInput, match="already resolved"):
        keep_in_treatment(station, NURSE, item.conflict_id, clash["here"], "again")
    finalise_treatment(station, NURSE, treatment_id=clash["here"], mode=SignatureMode.SELF)
