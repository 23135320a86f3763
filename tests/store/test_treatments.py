"""Starting, finalising, locking and deleting treatments, and what each refuses."""

from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from store.applicators import amend_status, change_status, create_package, update_details
from store.enums import ApplicatorStatus, ConflictStatus, Priority, SignatureMode, SignatureStatus
from store.errors import (
    ConfirmationRequired,
    InvalidInput,
    NotFound,
    NotPermitted,
    TransitionNotAllowed,
    TreatmentLocked,
)
from store.guards import APPLICATORS, TREATMENTS
from store.journal import QUEUE
from store.models import SyncConflict
from store.scanning import scan_applicator
from store.station import Station
from store.treatments import (
    EmergencyPatient,
    delete_treatment,
    finalise_treatment,
    start_continuation,
    start_insertion,
    start_removal,
    treatment_summary,
)
from tests.utils.data import ADMIN, ALPHATAU, NURSE, OUTSIDER, SITE, TODAY
from tests.utils.flows import PATHS, finalised_insertion, insertion, move, scan

S = ApplicatorStatus


def _treatment(station: Station, treatment_id: str) -> dict:
    with station.engine.connect() as conn:
        return dict(conn.execute(select(TREATMENTS).where(TREATMENTS.c.id == treatment_id)).mappings().one())


def _queue(station: Station) -> list[dict]:
    with station.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(QUEUE).order_by(QUEUE.c.device_seq)).mappings()]


# --- starting ----------------------------------------------------------------------------------
def test_insertion_takes_the_order_and_keeps_the_patient_encrypted(station: Station) -> None:
    treatment = _treatment(station, insertion(station))
    assert treatment["planned_seeds"] == 80 and treatment["activity_per_seed"] == 2.5
    assert treatment["indication"] == "pancreas" and treatment["site"] == SITE
    assert "Cohen" not in treatment["patient_label_enc"] and "SO2611001" not in treatment["subject_id_enc"]
    summary = treatment_summary(station, treatment)
    assert summary["patient_label"] == "Cohen, Miriam" and summary["subject_id"] == "SO2611001"
    assert treatment["subject_hash"] == station.cipher.lookup_hash("SO2611001")


def test_combined_orders_sum_their_seeds(station: Station) -> None:
    from store.validation_cache import install_bundle
    from tests.utils.data import make_bundle

    bundle = make_bundle()
    bundle["schedule"].append({**bundle["schedule"][0], "order_name": "SO2611001B", "seeds": 20})
    from store.validation_cache import bundle_checksum

    bundle["checksum"] = bundle_checksum(bundle)
    install_bundle(station, bundle)
    change = start_insertion(
        station, NURSE, site=SITE, day=TODAY, surgeon="Dr. Gold", order_names=["SO2611001", "SO2611001B"]
    )
    treatment = treatment_summary(station, change.record)
    assert treatment["subject_id"] == "SO2611001+SO2611001B" and treatment["planned_seeds"] == 100
    assert len(treatment["order_hashes"]) == 2
    # applicators of either order are on this treatment's order
    assert scan_applicator(station, NURSE, treatment_id=change.record["id"], raw="DART-9000-00001").saved


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"day": TODAY + timedelta(days=2)}, InvalidInput, "date"),
        ({"surgeon": "  "}, InvalidInput, "surgeon"),
        ({"order_names": ["SO9999999"]}, InvalidInput, "order"),
        ({"order_names": ["SO2611002"]}, InvalidInput, "order"),  # scheduled tomorrow, not today
        ({"order_names": None}, InvalidInput, "order"),
        ({"site": "HFA-1"}, NotPermitted, "site"),
    ],
)
def test_start_insertion_refusals(station: Station, kwargs: dict, error: type, field: str) -> None:
    args = {"site": SITE, "day": TODAY, "surgeon": "Dr. Gold", "order_names": ["SO2611001"], **kwargs}
    with pytest.raises(error) as refused:
        start_insertion(station, NURSE, **args)
    assert refused.value.field == field and refused.value.message


def test_an_insertion_is_not_started_twice(station: Station) -> None:
    insertion(station)
    with pytest.raises(InvalidInput, match="already been started"):
        insertion(station)


def test_emergency_insertion_is_flagged_for_reconciliation(station: Station) -> None:
    change = start_insertion(
        station,
        NURSE,
        site=SITE,
        day=TODAY,
        surgeon="Dr. Gold",
        emergency=EmergencyPatient(subject_id="MRN-42", planned_seeds=30),
    )
    assert change.record["needs_reconciliation"] is True and change.record["order_hashes"] == []
    with pytest.raises(InvalidInput, match="negative"):
        start_insertion(
            station,
            NURSE,
            site=SITE,
            day=TODAY,
            surgeon="Dr. Gold",
            emergency=EmergencyPatient(subject_id="MRN-43", planned_seeds=-1),
        )


def test_removal_window_asks_for_confirmation(station: Station, clock) -> None:
    insertion_id = finalised_insertion(station, ["DART-9000-00001"])
    clock.advance(days=5)
    with pytest.raises(ConfirmationRequired, match="5 days after"):
        start_removal(station, NURSE, insertion_id=insertion_id)
    removal = start_removal(station, NURSE, insertion_id=insertion_id, confirm_outside_window=True)
    assert removal.record["insertion_treatment_id"] == insertion_id
    assert removal.record["subject_hash"] == _treatment(station, insertion_id)["subject_hash"]
    with pytest.raises(InvalidInput, match="already exists"):
        start_removal(station, NURSE, insertion_id=insertion_id, confirm_outside_window=True)


def test_removal_needs_a_finalised_insertion(station: Station, clock) -> None:
    treatment_id = insertion(station)
    clock.advance(days=14)
    with pytest.raises(InvalidInput, match="not finalised"):
        start_removal(station, NURSE, insertion_id=treatment_id)


def test_continuation_within_24_hours_only(station: Station, clock) -> None:
    parent = finalised_insertion(station, ["DART-9000-00001"])
    clock.advance(hours=23)
    child = start_continuation(station, NURSE, parent_id=parent)
    assert child.record["parent_treatment_id"] == parent
    assert child.record["subject_hash"] == _treatment(station, parent)["subject_hash"]
    other = finalised_insertion(station, ["DART-3000-00001"], order="SO2611006")
    clock.advance(hours=25)
    with pytest.raises(InvalidInput, match="24 hours"):
        start_continuation(station, NURSE, parent_id=other)


# --- status details ----------------------------------------------------------------------------
def test_faulty_needs_a_comment_and_a_deployed_count(station: Station) -> None:
    applicator = scan(station, insertion(station), "DART-9000-00001")
    move(station, applicator["id"], [S.OPENED])
    with pytest.raises(InvalidInput) as refused:
        change_status(
            station,
            NURSE,
            applicator_id=applicator["id"],
            status=S.FAULTY,
            deployed_seeds=2,
            confirm_permanent=True,
        )
    assert refused.value.field == "comment"
    with pytest.raises(InvalidInput) as refused:
        change_status(
            station,
            NURSE,
            applicator_id=applicator["id"],
            status=S.FAULTY,
            comment="bent",
            confirm_permanent=True,
        )
    assert refused.value.field == "deployed_seeds"
    with pytest.raises(InvalidInput, match="between 0 and 10"):
        change_status(
            station,
            NURSE,
            applicator_id=applicator["id"],
            status=S.FAULTY,
            comment="bent",
            deployed_seeds=11,
            confirm_permanent=True,
        )
    change = change_status(
        station,
        NURSE,
        applicator_id=applicator["id"],
        status=S.FAULTY,
        comment="bent",
        deployed_seeds=4,
        confirm_permanent=True,
    )
    assert change.record["deployed_seeds"] == 4 and change.record["comments"] == "bent"


def test_inserted_deploys_the_whole_capacity(station: Station) -> None:
    applicator = scan(station, insertion(station), "DART-8000-00001")  # a 20-seed applicator
    move(station, applicator["id"], [S.OPENED, S.LOADED])
    with pytest.raises(InvalidInput, match="Faulty"):
        change_status(
            station,
            NURSE,
            applicator_id=applicator["id"],
            status=S.INSERTED,
            deployed_seeds=12,
            confirm_permanent=True,
        )
    change = change_status(
        station, NURSE, applicator_id=applicator["id"], status=S.INSERTED, confirm_permanent=True
    )
    assert change.record["deployed_seeds"] == 20


def test_unknown_status_is_refused_in_words(station: Station) -> None:
    applicator = scan(station, insertion(station), "DART-9000-00001")
    with pytest.raises(InvalidInput, match="not an applicator status"):
        change_status(station, NURSE, applicator_id=applicator["id"], status="BROKEN")  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        change_status(station, NURSE, applicator_id="no-such-id", status=S.OPENED)


def test_packages_load_four_opened_applicators_together(station: Station) -> None:
    treatment_id = insertion(station)
    ids = []
    for i in range(8):
        applicator = scan(station, treatment_id, f"DART-9000-{i:05d}")
        move(station, applicator["id"], [S.OPENED])
        ids.append(applicator["id"])
    first = create_package(station, NURSE, treatment_id=treatment_id, applicator_ids=ids[:4])
    second = create_package(station, NURSE, treatment_id=treatment_id, applicator_ids=ids[4:])
    assert [first[0].record["label"], second[0].record["label"]] == ["P1", "P2"]
    assert all(c.record["status"] == S.LOADED for c in first[1:])
    with pytest.raises(InvalidInput, match="exactly 4"):
        create_package(station, NURSE, treatment_id=treatment_id, applicator_ids=ids[:3])
    with pytest.raises(InvalidInput, match="Only opened"):
        create_package(station, NURSE, treatment_id=treatment_id, applicator_ids=ids[:4])


def test_package_needs_one_capacity(station: Station) -> None:
    treatment_id = insertion(station)
    ids = []
    for serial in ["DART-9000-00001", "DART-9000-00002", "DART-9000-00003", "DART-8000-00001"]:
        applicator = scan(station, treatment_id, serial)
        move(station, applicator["id"], [S.OPENED])
        ids.append(applicator["id"])
    with pytest.raises(InvalidInput, match="same number of seeds"):
        create_package(station, NURSE, treatment_id=treatment_id, applicator_ids=ids)


def test_amendment_is_for_supervisors_with_a_reason(station: Station) -> None:
    applicator = scan(station, insertion(station), "DART-9000-00001")
    move(station, applicator["id"], PATHS["loaded"][S.INSERTED])
    with pytest.raises(TransitionNotAllowed, match="final status"):
        change_status(
            station,
            NURSE,
            applicator_id=applicator["id"],
            status=S.FAULTY,
            comment="x",
            deployed_seeds=1,
            confirm_permanent=True,
        )
    with pytest.raises(NotPermitted):
        amend_status(station, NURSE, applicator_id=applicator["id"], status=S.FAULTY, reason="typo")
    with pytest.raises(InvalidInput, match="reason"):
        amend_status(station, ADMIN, applicator_id=applicator["id"], status=S.FAULTY, reason=" ")
    change = amend_status(
        station,
        ALPHATAU,
        applicator_id=applicator["id"],
        status=S.FAULTY,
        reason="only 6 seeds left it",
        comment="partial",
        deployed_seeds=6,
    )
    assert change.record["amended_by"] == ALPHATAU.user_id and change.record["deployed_seeds"] == 6


# --- finalising and locking --------------------------------------------------------------------
def test_finalise_needs_every_applicator_terminal(station: Station) -> None:
    treatment_id = insertion(station)
    with pytest.raises(InvalidInput, match="No applicator"):
        finalise_treatment(station, NURSE, treatment_id=treatment_id, mode=SignatureMode.SELF)
    done = scan(station, treatment_id, "DART-9000-00001")
    move(station, done["id"], PATHS["loaded"][S.INSERTED])
    scan(station, treatment_id, "DART-9000-00002")
    with pytest.raises(InvalidInput, match="DART-9000-00002"):
        finalise_treatment(station, NURSE, treatment_id=treatment_id, mode=SignatureMode.SELF)


def test_finalised_treatment_is_locked(station: Station) -> None:
    treatment_id = finalised_insertion(station, ["DART-9000-00001"])
    treatment = _treatment(station, treatment_id)
    assert treatment["is_complete"] and treatment["signer_name"] == NURSE.name
    assert treatment["signature_status"] == SignatureStatus.CONFIRMED
    with pytest.raises(TreatmentLocked):
        scan_applicator(station, NURSE, treatment_id=treatment_id, raw="DART-9000-00002")
    with station.engine.connect() as conn:
        applicator_id = conn.execute(
            select(APPLICATORS.c.id).where(APPLICATORS.c.treatment_id == treatment_id)
        ).scalar()
    with pytest.raises(TreatmentLocked):
        update_details(station, NURSE, applicator_id=applicator_id, comment="late note")
    with pytest.raises(TreatmentLocked):
        finalise_treatment(station, NURSE, treatment_id=treatment_id, mode=SignatureMode.SELF)
    with pytest.raises(TreatmentLocked):
        delete_treatment(station, ADMIN, treatment_id=treatment_id, reason="mistake")


def test_signing_modes_follow_roles(station: Station) -> None:
    treatment_id = insertion(station, actor=ALPHATAU)
    applicator = scan(station, treatment_id, "DART-9000-00001", actor=ALPHATAU)
    move(station, applicator["id"], PATHS["loaded"][S.INSERTED], actor=ALPHATAU)
    with pytest.raises(NotPermitted, match="chooses a hospital signer"):
        finalise_treatment(station, ALPHATAU, treatment_id=treatment_id, mode=SignatureMode.SELF)
    with pytest.raises(NotPermitted, match="signs for themselves"):
        finalise_treatment(station, NURSE, treatment_id=treatment_id, mode=SignatureMode.CODE)
    with pytest.raises(InvalidInput, match="staff list"):
        finalise_treatment(
            station, ALPHATAU, treatment_id=treatment_id, mode=SignatureMode.CODE, signer_name="Dr. Gold"
        )
    change = finalise_treatment(
        station,
        ALPHATAU,
        treatment_id=treatment_id,
        mode=SignatureMode.CODE,
        signer_name="Dr. Gold",
        signer_position="Surgeon",
        signer_user_id="u-gold",
    )
    assert (
        change.record["signed_by_user_id"] == "u-gold" and change.record["completed_by"] == ALPHATAU.user_id
    )


def test_offline_signature_awaits_the_cloud(station: Station) -> None:
    treatment_id = insertion(station)
    move(station, scan(station, treatment_id, "DART-9000-00001")["id"], PATHS["loaded"][S.INSERTED])
    change = finalise_treatment(station, NURSE, treatment_id=treatment_id, mode=SignatureMode.OFFLINE_PIN)
    assert change.record["signature_status"] == SignatureStatus.AWAITING_CLOUD


def test_open_safety_conflict_blocks_finalising(station: Station) -> None:
    treatment_id = insertion(station)
    applicator = scan(station, treatment_id, "DART-9000-00001")
    move(station, applicator["id"], PATHS["loaded"][S.INSERTED])
    with station.engine.begin() as conn:
        conn.execute(
            insert(SyncConflict.__table__).values(
                id="c-1",
                table_name="applicators",
                record_id=applicator["id"],
                field="serial_number",
                is_safety=True,
                status=ConflictStatus.OPEN.value,
                detected_at=station.now(),
            )
        )
    with pytest.raises(InvalidInput, match="safety conflict"):
        finalise_treatment(station, NURSE, treatment_id=treatment_id, mode=SignatureMode.SELF)


def test_edits_stop_after_21_days_except_unused_applicators(station: Station, clock) -> None:
    treatment_id = insertion(station)
    applicator = scan(station, treatment_id, "DART-9000-00001")
    clock.advance(days=22)
    with pytest.raises(TreatmentLocked, match="21 days"):
        scan_applicator(station, NURSE, treatment_id=treatment_id, raw="DART-9000-00002")
    with pytest.raises(TreatmentLocked, match="21 days"):
        update_details(station, NURSE, applicator_id=applicator["id"], comment="late")
    change = change_status(station, NURSE, applicator_id=applicator["id"], status=S.OPENED)
    assert change.record["status"] == S.OPENED


# --- deleting ----------------------------------------------------------------------------------
def test_only_admins_delete_and_the_row_stays(station: Station) -> None:
    treatment_id = insertion(station)
    with pytest.raises(NotPermitted):
        delete_treatment(station, NURSE, treatment_id=treatment_id, reason="mistake")
    with pytest.raises(InvalidInput, match="reason"):
        delete_treatment(station, ADMIN, treatment_id=treatment_id, reason="")
    delete_treatment(station, ADMIN, treatment_id=treatment_id, reason="started for the wrong patient")
    treatment = _treatment(station, treatment_id)
    assert (
        treatment["deleted_by"] == ADMIN.user_id
        and treatment["deleted_reason"] == "started for the wrong patient"
    )
    with pytest.raises(NotFound):
        scan_applicator(station, NURSE, treatment_id=treatment_id, raw="DART-9000-00001")


def test_treatment_with_deployed_seeds_cannot_be_deleted(station: Station) -> None:
    treatment_id = insertion(station)
    move(station, scan(station, treatment_id, "DART-9000-00001")["id"], PATHS["loaded"][S.INSERTED])
    with pytest.raises(InvalidInput, match="deployed"):
        delete_treatment(station, ADMIN, treatment_id=treatment_id, reason="mistake")


def test_outsiders_see_no_treatment_of_another_hospital(station: Station) -> None:
    treatment_id = insertion(station)
    with pytest.raises(NotPermitted):
        finalise_treatment(station, OUTSIDER, treatment_id=treatment_id, mode=SignatureMode.SELF)


# --- the queue's order -------------------------------------------------------------------------
def test_queue_priorities_and_dependencies(station: Station) -> None:
    treatment_id = insertion(station)
    applicator = scan(station, treatment_id, "DART-9000-00001")
    move(station, applicator["id"], PATHS["loaded"][S.INSERTED])
    finalise_treatment(station, NURSE, treatment_id=treatment_id, mode=SignatureMode.SELF)
    start, scanned, opened, loaded, inserted, finalised = _queue(station)
    assert start["priority"] == Priority.CRITICAL_TREATMENT and start["depends_on"] == []
    assert scanned["priority"] == Priority.NEW_APPLICATOR and scanned["depends_on"] == [start["op_id"]]
    assert opened["depends_on"] == [scanned["op_id"]]
    assert inserted["depends_on"] == [loaded["op_id"]]
    assert finalised["priority"] == Priority.COMPLETED_TREATMENT
    # a finalise goes after every change of the treatment's rows still waiting
    assert set(finalised["depends_on"]) == {o["op_id"] for o in (start, scanned, opened, loaded, inserted)}
    assert [e["device_seq"] for e in _queue(station)] == [1, 2, 3, 4, 5, 6]
    assert finalised["changed_fields"]["is_complete"] == [False, True]
    assert finalised["payload"]["is_complete"] is True and "usage" not in scanned["payload"]


def test_hybrid_clock_orders_changes_when_the_wall_clock_jumps_back(station: Station, clock) -> None:
    treatment_id = insertion(station)
    clock.advance(hours=-5)
    scan(station, treatment_id, "DART-9000-00001")
    stamps = [e["hlc"] for e in _queue(station)]
    assert stamps == sorted(stamps) and stamps[0] != stamps[1]


def test_saving_the_same_form_twice_says_nothing_changed(station: Station) -> None:
    applicator = scan(station, insertion(station), "DART-9000-00001")
    update_details(station, NURSE, applicator_id=applicator["id"], comment="kinked tip")
    with pytest.raises(InvalidInput, match="Nothing was changed"):
        update_details(station, NURSE, applicator_id=applicator["id"], comment="kinked tip")
