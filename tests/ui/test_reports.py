"""The insertion and removal reports: PDF text and JSON from the store, local times, and their downloads."""

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from nicegui.testing import User
from pypdf import PdfReader

from store.applicators import change_status
from store.enums import ApplicatorStatus, SignatureMode
from store.removal import fill_removal_form, remove_applicator, remove_single_seed
from store.station import Settings, Station, open_station
from store.treatments import EmergencyPatient, finalise_treatment, start_insertion, start_removal
from store.validation_cache import install_bundle
from tests.ui.helpers_pages import (  # noqa: F401 (fixtures)
    app_station_fixture,
    by_testid,
    clinician_fixture,
    text_of,
)
from tests.utils.data import NURSE, SITE, TODAY, FakeClock, make_bundle
from tests.utils.flows import PATHS, insertion, move, scan
from ui.reports import insertion_report_json, insertion_report_pdf, removal_report_json, removal_report_pdf

S = ApplicatorStatus
WAIT = 30


@pytest.fixture
def jerusalem(tmp_path: Path) -> Iterator[tuple[Station, FakeClock]]:
    """A station in the hospital's zone (UTC+2 in November): 09:00 UTC is 11:00 on the reports."""
    clock = FakeClock()
    station = open_station(tmp_path / "jlm", clock=clock, settings=Settings(timezone="Asia/Jerusalem"))
    install_bundle(station, make_bundle())
    yield station, clock
    station.close()


def pdf_text(content: bytes) -> str:
    assert content.startswith(b"%PDF-")
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


def finished_insertion(station: Station) -> str:
    treatment_id = insertion(station)
    inserted = scan(station, treatment_id, "DART-9000-00001")
    move(station, inserted["id"], PATHS["loaded"][S.INSERTED])
    faulty = scan(station, treatment_id, "DART-8000-00001")
    move(station, faulty["id"], [S.OPENED])
    change_status(
        station,
        NURSE,
        applicator_id=faulty["id"],
        status=S.FAULTY,
        comment="Needle bent",
        deployed_seeds=7,
        confirm_permanent=True,
    )
    unused = scan(station, treatment_id, "DART-9000-00002")
    move(station, unused["id"], PATHS["loaded"][S.DISPOSED])
    finalise_treatment(station, NURSE, treatment_id=treatment_id, mode=SignatureMode.OFFLINE_PIN)
    return treatment_id


def test_the_insertion_pdf_carries_patient_applicators_summary_and_signature(jerusalem) -> None:
    station, _ = jerusalem
    text = pdf_text(insertion_report_pdf(station, finished_insertion(station)))
    for expected in (
        "Alpha DaRT insertion report",
        "Finalised and signed.",
        "Patient Cohen, Miriam",
        "Patient identifier SO2611001",
        "Site TLV-1",
        "Procedure pancreas",
        "Date 26 Nov 2026",
        "DART-9000-00001 DART-PAN-10 Pancreas applicator 10 10 26 Nov 2026 11:00 Inserted Full use 10",
        "DART-8000-00001 DART-PAN-10 Pancreas applicator 20 10 26 Nov 2026 11:00 Faulty Faulty 7 Needle bent",
        "Disposed Not used 0 recorded in test",
        "Start time 26 Nov 2026 11:00",  # the hospital's time, not UTC
        "Surgeon Dr. Gold",
        "Applicators used 1",
        "Faulty 1",
        "Not used 1",
        "Seeds deployed 17 of 80 planned (21%)",
        "Total activity 42.5 µCi",
        "Signed by Dana Shapiro",
        "Position Nurse",
        "How signed offline with PIN",
        "Status signed offline, awaiting cloud confirmation",
    ):
        assert expected in text, expected


def test_the_insertion_json_is_the_same_report_as_data(jerusalem) -> None:
    station, _ = jerusalem
    treatment_id = finished_insertion(station)
    data = json.loads(insertion_report_json(station, treatment_id))
    assert data["patient"]["name"] == "Cohen, Miriam" and data["patient"]["site"] == SITE
    assert {a["serial"]: (a["usage"], a["deployed_seeds"]) for a in data["applicators"]} == {
        "DART-9000-00001": ("Full use", 10),
        "DART-8000-00001": ("Faulty", 7),
        "DART-9000-00002": ("Not used", 0),
    }
    summary = data["summary"]
    assert (summary["seeds_deployed"], summary["total_activity_uci"], summary["start_time"]) == (
        17,
        42.5,
        "26 Nov 2026 11:00",
    )
    assert data["signature"]["status"] == "signed offline, awaiting cloud confirmation"


def test_an_unfinished_insertion_is_marked_as_a_draft(jerusalem) -> None:
    station, _ = jerusalem
    treatment_id = insertion(station)
    text = pdf_text(insertion_report_pdf(station, treatment_id))
    assert "DRAFT: this treatment is not finalised." in text
    assert "Signed not signed yet" in text
    assert json.loads(insertion_report_json(station, treatment_id))["signature"] is None


def test_a_patient_name_outside_latin_1_does_not_break_the_report(jerusalem) -> None:
    station, _ = jerusalem
    change = start_insertion(
        station,
        NURSE,
        site=SITE,
        day=TODAY,
        surgeon="ד״ר גולד",
        emergency=EmergencyPatient(subject_id="MRN-1", patient_label="כהן, מרים"),
    )
    content = insertion_report_pdf(station, change.record["id"])
    text = pdf_text(content)
    assert "MRN-1" in text and "emergency treatment without a Priority order" in text
    assert json.loads(insertion_report_json(station, change.record["id"]))["patient"]["name"] == "כהן, מרים"


def test_the_removal_report_carries_form_groups_single_seeds_and_clarification(jerusalem) -> None:
    station, clock = jerusalem
    insertion_id = finished_insertion(station)
    clock.advance(days=14)
    install_bundle(station, make_bundle(clock.now))
    removal_id = start_removal(station, NURSE, insertion_id=insertion_id).record["id"]
    remove_applicator(station, NURSE, removal_id=removal_id, capacity=10, comment="Clean")
    remove_single_seed(station, NURSE, removal_id=removal_id, reason="other", reason_text="In the dressing")
    # Deployed 17; removed 10 + 1 single seed: 6 to explain.
    fill_removal_form(
        station,
        NURSE,
        removal_id=removal_id,
        removal_date=station.local_today(),
        all_same_day=False,
        other_date=station.local_today(),
        other_reason="Faulty applicator left for the next day",
        lost=1,
        in_tissue=5,
    )
    finalise_treatment(station, NURSE, treatment_id=removal_id, mode=SignatureMode.SELF)
    text = pdf_text(removal_report_pdf(station, removal_id))
    for expected in (
        "Alpha DaRT removal report",
        "Patient Cohen, Miriam",
        "Insertion date 26 Nov 2026",
        "Removal date 10 Dec 2026",
        "Everything removed the same day No",
        "Reason Faulty applicator left for the next day",
        "10 1 1 0 10 10",  # the inserted 10-seed applicator, removed
        "20 1 0 1 7 0",  # the faulty 20-seed one: 7 deployed, still in the patient
        "DART-9000-00001 10 10 10 Dec 2026 11:00 Clean",
        "10 Dec 2026 11:00 Other: In the dressing",
        "Deployed at insertion 17",
        "Removed in total 11",
        "Difference 6",
        "Lost 1",
        "Remained in tissue 5",
        "Status confirmed",
    ):
        assert expected in text, expected
    data = json.loads(removal_report_json(station, removal_id))
    assert data["counts"] == {
        "deployed": 17,
        "removed_with_applicators": 10,
        "single_seeds": 1,
        "removed": 11,
        "difference": 6,
    }
    assert data["clarification"]["remained_in_tissue"] == 5
    assert data["single_seeds"] == [{"time": "10 Dec 2026 11:00", "reason": "Other: In the dressing"}]


async def test_the_finalise_page_downloads_both_reports(clinician: User, app_station: Station) -> None:
    treatment_id = finished_insertion(app_station)
    await clinician.open(f"/finalise/{treatment_id}")
    await clinician.should_see("Finalised and locked: nothing can be added or changed.", retries=WAIT)
    by_testid(clinician, "download-pdf").click()
    response = await clinician.download.next(timeout=10)
    text = pdf_text(response.content)
    assert "Patient Cohen, Miriam" in text and "Seeds deployed 17 of 80 planned (21%)" in text
    by_testid(clinician, "download-json").click()
    response = await clinician.download.next(timeout=10)
    assert json.loads(response.content)["treatment_id"] == treatment_id
