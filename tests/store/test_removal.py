"""A removal: applicators out by capacity group, single seeds, the form and its clarification."""

from datetime import timedelta

import pytest
from sqlalchemy import select

from store.applicators import amend_status
from store.enums import ApplicatorStatus, SeedRemovalReason, SignatureMode
from store.errors import InvalidInput, NotFound, TreatmentLocked
from store.guards import APPLICATORS, TREATMENTS
from store.removal import fill_removal_form, remove_applicator, remove_single_seed
from store.removal_counts import removal_counts
from store.station import Station
from store.treatments import finalise_treatment, start_removal
from tests.utils.data import ADMIN, NURSE, TODAY
from tests.utils.flows import PATHS, insertion, move, scan

S = ApplicatorStatus
REMOVAL_DAY = TODAY + timedelta(days=14)


@pytest.fixture
def removal_id(station: Station, clock) -> str:
    """An insertion of two 10-seed applicators, one 20-seed, one faulty (4 of 10 seeds deployed),
    one disposed; a removal 14 days later."""
    treatment_id = insertion(station)
    for serial in ("DART-9000-00001", "DART-9000-00002", "DART-8000-00001"):
        move(station, scan(station, treatment_id, serial)["id"], PATHS["loaded"][S.INSERTED])
    move(station, scan(station, treatment_id, "DART-9000-00003")["id"], PATHS["loaded"][S.FAULTY], deployed=4)
    move(station, scan(station, treatment_id, "DART-9000-00004")["id"], PATHS["loaded"][S.DISPOSED])
    finalise_treatment(station, NURSE, treatment_id=treatment_id, mode=SignatureMode.SELF)
    clock.advance(days=14)
    return start_removal(station, NURSE, insertion_id=treatment_id).record["id"]


def _counts(station: Station, removal_id: str):
    with station.engine.connect() as conn:
        removal = conn.execute(select(TREATMENTS).where(TREATMENTS.c.id == removal_id)).mappings().one()
        return removal_counts(conn, removal)


def test_removed_seeds_count_what_was_deployed(station: Station, removal_id: str) -> None:
    assert _counts(station, removal_id).deployed == 10 + 10 + 20 + 4  # the disposed one deployed nothing
    first = remove_applicator(station, NURSE, removal_id=removal_id, capacity=10, comment="intact")
    assert first.record["is_removed"] and first.record["removal_treatment_id"] == removal_id
    remove_applicator(station, NURSE, removal_id=removal_id, capacity=10)
    remove_applicator(station, NURSE, removal_id=removal_id, capacity=10)  # the faulty one: 4 seeds
    with pytest.raises(NotFound, match="already been removed"):
        remove_applicator(station, NURSE, removal_id=removal_id, capacity=10)
    counts = _counts(station, removal_id)
    assert counts.removed_with_applicators == 24 and counts.gap == 20


def test_single_seeds_need_a_reason(station: Station, removal_id: str) -> None:
    remove_single_seed(station, NURSE, removal_id=removal_id, reason=SeedRemovalReason.APPLICATOR_RUPTURE)
    with pytest.raises(InvalidInput, match="description"):
        remove_single_seed(station, NURSE, removal_id=removal_id, reason=SeedRemovalReason.OTHER)
    remove_single_seed(
        station,
        NURSE,
        removal_id=removal_id,
        reason=SeedRemovalReason.OTHER,
        reason_text="found on the dressing",
    )
    with pytest.raises(InvalidInput, match="why"):
        remove_single_seed(station, NURSE, removal_id=removal_id, reason="dropped")  # type: ignore[arg-type]
    assert _counts(station, removal_id).single_seeds == 2


def test_clarification_must_explain_the_gap_exactly(station: Station, removal_id: str) -> None:
    remove_applicator(station, NURSE, removal_id=removal_id, capacity=20)  # 20 of 44 removed: gap 24
    with pytest.raises(InvalidInput, match="difference is 24") as refused:
        fill_removal_form(
            station, NURSE, removal_id=removal_id, removal_date=REMOVAL_DAY, all_same_day=True, lost=10
        )
    assert refused.value.field == "gap_lost"
    with pytest.raises(InvalidInput, match="description"):
        fill_removal_form(
            station,
            NURSE,
            removal_id=removal_id,
            removal_date=REMOVAL_DAY,
            all_same_day=True,
            lost=10,
            in_tissue=10,
            other=4,
        )
    change = fill_removal_form(
        station,
        NURSE,
        removal_id=removal_id,
        removal_date=REMOVAL_DAY,
        all_same_day=True,
        lost=10,
        in_tissue=10,
        other=4,
        other_text="sent to physics",
    )
    assert change.record["gap_in_tissue"] == 10


def test_not_the_same_day_needs_the_other_date_and_reason(station: Station, removal_id: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        fill_removal_form(
            station, NURSE, removal_id=removal_id, removal_date=REMOVAL_DAY, all_same_day=False, lost=44
        )
    assert refused.value.field == "other_date"


def test_removal_finalises_only_with_its_form_complete(station: Station, removal_id: str) -> None:
    with pytest.raises(InvalidInput, match="removal form"):
        finalise_treatment(station, NURSE, treatment_id=removal_id, mode=SignatureMode.SELF)
    for capacity in (10, 10, 10, 20):
        remove_applicator(station, NURSE, removal_id=removal_id, capacity=capacity)
    fill_removal_form(station, NURSE, removal_id=removal_id, removal_date=REMOVAL_DAY, all_same_day=True)
    change = finalise_treatment(station, NURSE, treatment_id=removal_id, mode=SignatureMode.SELF)
    assert change.record["is_complete"]
    with pytest.raises(TreatmentLocked):
        remove_single_seed(station, NURSE, removal_id=removal_id, reason=SeedRemovalReason.PATIENT_FROM_HOME)


def test_finalise_rechecks_the_gap(station: Station, removal_id: str) -> None:
    for capacity in (10, 10, 10, 20):
        remove_applicator(station, NURSE, removal_id=removal_id, capacity=capacity)
    fill_removal_form(station, NURSE, removal_id=removal_id, removal_date=REMOVAL_DAY, all_same_day=True)
    remove_single_seed(station, NURSE, removal_id=removal_id, reason=SeedRemovalReason.PATIENT_FROM_HOME)
    with pytest.raises(InvalidInput, match="difference of 1"):
        finalise_treatment(station, NURSE, treatment_id=removal_id, mode=SignatureMode.SELF)


def test_removed_applicator_cannot_be_amended(station: Station, removal_id: str) -> None:
    change = remove_applicator(station, NURSE, removal_id=removal_id, capacity=20)
    with pytest.raises(InvalidInput, match="removed"):
        amend_status(
            station,
            ADMIN,
            applicator_id=change.record["id"],
            status=S.FAULTY,
            reason="x",
            comment="y",
            deployed_seeds=1,
        )
    with station.engine.connect() as conn:
        status = conn.execute(
            select(APPLICATORS.c.status).where(APPLICATORS.c.id == change.record["id"])
        ).scalar()
    assert status == S.INSERTED


def test_removal_commands_refuse_an_insertion(station: Station, removal_id: str) -> None:
    with station.engine.connect() as conn:
        treatment_id = conn.execute(
            select(TREATMENTS.c.insertion_treatment_id).where(TREATMENTS.c.id == removal_id)
        ).scalar_one()
    with pytest.raises(InvalidInput, match="not a removal"):
        remove_single_seed(
            station, NURSE, removal_id=treatment_id, reason=SeedRemovalReason.APPLICATOR_RUPTURE
        )
