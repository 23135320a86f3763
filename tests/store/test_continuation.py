"""A continuation takes over the parent's opened or loaded applicators, and nothing else."""

import pytest

from store.applicators import amend_status
from store.continuation import reusable_applicators, reuse_applicator
from store.enums import ApplicatorStatus, SignatureMode
from store.errors import InvalidInput
from store.guards import live_applicators
from store.journal import QUEUE
from store.scanning import ScanOutcome, scan_applicator
from store.station import Station
from store.treatments import finalise_treatment, start_continuation
from tests.utils.data import ADMIN, NURSE
from tests.utils.flows import PATHS, insertion, move, scan

S = ApplicatorStatus


def _parent_with_leftovers(station: Station) -> tuple[str, dict[str, str]]:
    """A finalised insertion with one inserted applicator and two whose final status a supervisor
    corrected afterwards (disposed and discharged by mistake) to opened and loaded: the only way a
    finalised insertion holds unused applicators, since finalising needs every one in a final status."""
    parent = insertion(station)
    ids = {}
    for serial, path in (
        ("DART-9000-00001", PATHS["loaded"][S.INSERTED]),
        ("DART-9000-00002", PATHS["loaded"][S.DISPOSED]),
        ("DART-9000-00003", PATHS["loaded"][S.DISCHARGED]),
    ):
        ids[serial] = scan(station, parent, serial)["id"]
        move(station, ids[serial], path)
    finalise_treatment(station, NURSE, treatment_id=parent, mode=SignatureMode.SELF)
    for serial, status in (("DART-9000-00002", S.OPENED), ("DART-9000-00003", S.LOADED)):
        amend_status(station, ADMIN, applicator_id=ids[serial], status=status, reason="recorded by mistake")
    return start_continuation(station, NURSE, parent_id=parent).record["id"], ids


def test_opened_and_loaded_applicators_are_taken_over_with_their_status(station: Station) -> None:
    child, ids = _parent_with_leftovers(station)
    offered = {a["serial_number"] for a in reusable_applicators(station, NURSE, treatment_id=child)}
    assert offered == {"DART-9000-00002", "DART-9000-00003"}
    change = reuse_applicator(station, NURSE, treatment_id=child, parent_applicator_id=ids["DART-9000-00003"])
    record = change.record
    assert (record["status"], record["scan_outcome"], record["reused_from_id"]) == (
        "LOADED",
        "reused",
        ids["DART-9000-00003"],
    )
    with station.engine.connect() as conn:
        assert conn.execute(QUEUE.select().where(QUEUE.c.op_id == change.op_id)).first() is not None
    offered = {a["serial_number"] for a in reusable_applicators(station, NURSE, treatment_id=child)}
    assert offered == {"DART-9000-00002"}
    # The same applicator scanned again is already here.
    again = scan_applicator(station, NURSE, treatment_id=child, raw="DART-9000-00003")
    assert again.outcome is ScanOutcome.ALREADY_SCANNED


def test_a_terminal_applicator_is_never_taken_over(station: Station) -> None:
    child, ids = _parent_with_leftovers(station)
    with pytest.raises(InvalidInput, match="only opened or loaded"):
        reuse_applicator(station, NURSE, treatment_id=child, parent_applicator_id=ids["DART-9000-00001"])
    with station.engine.connect() as conn:
        assert live_applicators(conn, [child]) == []


def test_taking_over_twice_or_into_a_non_continuation_is_refused(station: Station) -> None:
    child, ids = _parent_with_leftovers(station)
    reuse_applicator(station, NURSE, treatment_id=child, parent_applicator_id=ids["DART-9000-00002"])
    with pytest.raises(InvalidInput, match="already been taken over"):
        reuse_applicator(station, NURSE, treatment_id=child, parent_applicator_id=ids["DART-9000-00002"])
    other = insertion(station, "SO2611006")
    with pytest.raises(InvalidInput, match="Only a continuation"):
        reuse_applicator(station, NURSE, treatment_id=other, parent_applicator_id=ids["DART-9000-00003"])
