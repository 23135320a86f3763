"""Invariant 2: each command writes its record change, one queue entry and one audit entry, in one
transaction, and nothing at all when it fails halfway."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from store import applicators, removal, treatments
from store.enums import ApplicatorStatus, SeedRemovalReason, SignatureMode
from store.journal import AUDIT, QUEUE, Journal, verify_audit_chain
from store.models import metadata
from store.scanning import scan_applicator
from store.station import Station
from tests.utils.data import ADMIN, NURSE, SITE, TODAY, FakeClock
from tests.utils.flows import PATHS, finalised_insertion, insertion, move, scan

S = ApplicatorStatus


@dataclass
class Case:
    name: str
    setup: Callable[[Station, FakeClock], dict[str, Any]]
    run: Callable[..., Any]
    changes: int = 1  # journalled record changes (package: the package and its four applicators)


def _inserted(station: Station, _clock: FakeClock) -> dict[str, Any]:
    treatment_id = insertion(station)
    applicator = scan(station, treatment_id, "DART-9000-00001")
    move(station, applicator["id"], PATHS["loaded"][S.INSERTED])
    return {"applicator_id": applicator["id"]}


def _opened_four(station: Station, _clock: FakeClock) -> dict[str, Any]:
    treatment_id = insertion(station)
    ids = []
    for i in range(4):
        applicator = scan(station, treatment_id, f"DART-9000-{i:05d}")
        move(station, applicator["id"], [S.OPENED])
        ids.append(applicator["id"])
    return {"treatment_id": treatment_id, "applicator_ids": ids}


def _removal(station: Station, clock: FakeClock) -> dict[str, Any]:
    insertion_id = finalised_insertion(station, ["DART-9000-00001", "DART-9000-00002"])
    clock.advance(days=14)
    return {"removal_id": treatments.start_removal(station, NURSE, insertion_id=insertion_id).record["id"]}


def _removal_done(station: Station, clock: FakeClock) -> dict[str, Any]:
    ids = _removal(station, clock)
    for _ in range(2):
        removal.remove_applicator(station, NURSE, removal_id=ids["removal_id"], capacity=10)
    removal.fill_removal_form(
        station,
        NURSE,
        removal_id=ids["removal_id"],
        removal_date=TODAY + timedelta(days=14),
        all_same_day=True,
    )
    return {"treatment_id": ids["removal_id"]}


def _all_terminal(station: Station, _clock: FakeClock) -> dict[str, Any]:
    treatment_id = insertion(station)
    applicator = scan(station, treatment_id, "DART-9000-00001")
    move(station, applicator["id"], PATHS["loaded"][S.FAULTY])
    return {"treatment_id": treatment_id}


CASES = [
    Case(
        "start_insertion",
        lambda s, c: {},
        lambda s, **k: treatments.start_insertion(
            s, NURSE, site=SITE, day=TODAY, surgeon="Dr. Gold", order_names=["SO2611001"]
        ),
    ),
    Case(
        "start_emergency_insertion",
        lambda s, c: {},
        lambda s, **k: treatments.start_insertion(
            s,
            NURSE,
            site=SITE,
            day=TODAY,
            surgeon="Dr. Gold",
            emergency=treatments.EmergencyPatient(subject_id="MRN-1", patient_label="Doe, J"),
        ),
    ),
    Case(
        "scan_applicator",
        lambda s, c: {"treatment_id": insertion(s)},
        lambda s, treatment_id: scan_applicator(s, NURSE, treatment_id=treatment_id, raw="DART-9000-00001"),
    ),
    Case(
        "change_status",
        lambda s, c: {"applicator_id": scan(s, insertion(s), "DART-9000-00001")["id"]},
        lambda s, applicator_id: applicators.change_status(
            s, NURSE, applicator_id=applicator_id, status=S.OPENED
        ),
    ),
    Case(
        "update_details",
        lambda s, c: {"applicator_id": scan(s, insertion(s), "DART-9000-00001")["id"]},
        lambda s, applicator_id: applicators.update_details(
            s, NURSE, applicator_id=applicator_id, comment="tip bent", photo_path="photos/a.jpg"
        ),
    ),
    Case(
        "create_package",
        _opened_four,
        lambda s, treatment_id, applicator_ids: applicators.create_package(
            s, NURSE, treatment_id=treatment_id, applicator_ids=applicator_ids
        ),
        changes=5,
    ),
    Case(
        "amend_status",
        _inserted,
        lambda s, applicator_id: applicators.amend_status(
            s,
            ADMIN,
            applicator_id=applicator_id,
            status=S.FAULTY,
            reason="only 6 seeds left the applicator",
            comment="partial",
            deployed_seeds=6,
        ),
    ),
    Case(
        "start_removal",
        lambda s, c: _start_removal_setup(s, c),
        lambda s, insertion_id: treatments.start_removal(s, NURSE, insertion_id=insertion_id),
    ),
    Case(
        "start_continuation",
        lambda s, c: {"parent_id": finalised_insertion(s, ["DART-9000-00001"])},
        lambda s, parent_id: treatments.start_continuation(s, NURSE, parent_id=parent_id),
    ),
    Case(
        "remove_applicator",
        _removal,
        lambda s, removal_id: removal.remove_applicator(s, NURSE, removal_id=removal_id, capacity=10),
    ),
    Case(
        "remove_single_seed",
        _removal,
        lambda s, removal_id: removal.remove_single_seed(
            s, NURSE, removal_id=removal_id, reason=SeedRemovalReason.PATIENT_FROM_HOME
        ),
    ),
    Case(
        "fill_removal_form",
        _removal,
        lambda s, removal_id: removal.fill_removal_form(
            s,
            NURSE,
            removal_id=removal_id,
            removal_date=TODAY + timedelta(days=14),
            all_same_day=True,
            lost=20,
        ),
    ),
    Case(
        "finalise_insertion",
        _all_terminal,
        lambda s, treatment_id: treatments.finalise_treatment(
            s, NURSE, treatment_id=treatment_id, mode=SignatureMode.SELF
        ),
    ),
    Case(
        "finalise_removal",
        _removal_done,
        lambda s, treatment_id: treatments.finalise_treatment(
            s, NURSE, treatment_id=treatment_id, mode=SignatureMode.OFFLINE_PIN
        ),
    ),
    Case(
        "delete_treatment",
        lambda s, c: {"treatment_id": insertion(s)},
        lambda s, treatment_id: treatments.delete_treatment(
            s, ADMIN, treatment_id=treatment_id, reason="started for the wrong day"
        ),
    ),
]


def _start_removal_setup(station: Station, clock: FakeClock) -> dict[str, Any]:
    insertion_id = finalised_insertion(station, ["DART-9000-00001"])
    clock.advance(days=14)
    return {"insertion_id": insertion_id}


def _snapshot(station: Station) -> dict[str, list[tuple]]:
    with station.engine.connect() as conn:
        return {
            table.name: [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns))]
            for table in metadata.sorted_tables
        }


def _new(before: dict[str, list[tuple]], after: dict[str, list[tuple]], table: str) -> list[tuple]:
    return [row for row in after[table] if row not in before[table]]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_command_writes_change_queue_and_audit_together(
    station: Station, clock: FakeClock, case: Case
) -> None:
    kwargs = case.setup(station, clock)
    before = _snapshot(station)
    case.run(station, **kwargs)
    after = _snapshot(station)

    with station.engine.connect() as conn:
        queue = [dict(r) for r in conn.execute(select(QUEUE).order_by(QUEUE.c.device_seq)).mappings()]
        audit = [dict(r) for r in conn.execute(select(AUDIT).order_by(AUDIT.c.device_seq)).mappings()]
    new_queue = queue[len(before["sync_queue"]) :]
    new_audit = audit[len(before["audit_logs"]) :]
    assert len(new_queue) == case.changes
    assert len(new_audit) == case.changes
    changed_rows = sum(
        len(_new(before, after, t))
        for t in ("treatments", "applicators", "applicator_packages", "removed_seeds")
    )
    assert changed_rows == case.changes
    for entry, event in zip(new_queue, new_audit, strict=True):
        assert event["op_id"] == entry["op_id"]
        assert (event["table_name"], event["record_id"]) == (entry["table_name"], entry["record_id"])
        assert event["user_id"] in (NURSE.user_id, ADMIN.user_id)
        record = _record(station, entry["table_name"], entry["record_id"])
        assert record["hlc"] == entry["hlc"], "the queue entry carries the record's last change"
        assert entry["payload"]["id"] == record["id"]
        if entry["kind"] == "insert":
            assert entry["changed_fields"] == {} and event["new_values"] == entry["payload"]
        else:
            assert set(entry["changed_fields"]) == set(event["new_values"])
        assert record["updated_at"].isoformat() == entry["payload"]["updated_at"], "no trigger overwrote it"
    assert verify_audit_chain(audit) is None


@pytest.mark.parametrize("failing", ["_enqueue", "_audit"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_failure_halfway_writes_nothing(
    station: Station, clock: FakeClock, case: Case, failing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs = case.setup(station, clock)
    before = _snapshot(station)
    original = getattr(Journal, failing)
    calls = {"n": 0}

    def fail_on_last(self: Journal, *args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == case.changes:  # after every earlier write of the command has happened
            raise OSError("disk I/O error (injected)")
        return original(self, *args, **kw)

    monkeypatch.setattr(Journal, failing, fail_on_last)
    with pytest.raises(OSError, match="injected"):
        case.run(station, **kwargs)
    monkeypatch.undo()
    assert _snapshot(station) == before


def _record(station: Station, table_name: str, record_id: str) -> dict[str, Any]:
    table = metadata.tables[table_name]
    with station.engine.connect() as conn:
        return dict(conn.execute(select(table).where(table.c.id == record_id)).mappings().one())
