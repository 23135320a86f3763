"""/treatment/{id}: every scan outcome said in words, status moves, packages, photos, live progress.

Scans are typed into the scan field the way a keyboard-wedge scanner types them (barcodes.tsv rows,
group separators included) and end with Enter; the store fixtures (tests/utils/data.py) give every
outcome of domain.md's scan table.
"""

import base64
from pathlib import Path

import pytest
from nicegui.testing import User

from store import lookups
from store.enums import ApplicatorStatus, SignatureMode
from store.station import Station
from store.treatments import EmergencyPatient, finalise_treatment, start_continuation, start_insertion
from tests.ui.helpers_pages import (  # noqa: F401 (fixtures)
    app_station_fixture,
    by_testid,
    clinician_fixture,
    has_testid,
    text_of,
)
from tests.utils.data import ADMIN, NURSE, OTHER_HOSPITAL_SITE, TODAY, FakeClock, barcode_rows, scanner_input
from tests.utils.flows import PATHS, finalised_insertion, insertion, move, scan

S = ApplicatorStatus
WAIT = 30  # should_see retries (0.1 s apart): the page answers through a worker thread

# A 1x1 PNG: the smallest real picture.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


async def open_treatment(user: User, treatment_id: str) -> None:
    await user.open(f"/treatment/{treatment_id}")
    await user.should_see("Applicators", retries=WAIT)


async def scan_in(user: User, raw: str) -> None:
    """Type what the scanner types, then Enter."""
    by_testid(user, "scan-input").type(raw).trigger("keydown.enter")


def notice(user: User) -> str:
    return text_of(user, "notice-title")


async def see_notice(user: User, title: str) -> None:
    """Wait for the page's outcome notice to say `title` (a dialog may say it too, briefly)."""
    await user.should_see(marker="notice-title", content=title, retries=WAIT)
    assert notice(user) == title


def applicators(station: Station, treatment_id: str) -> list[dict]:
    return lookups.insertion_view(station, NURSE, treatment_id).applicators


# --- what the page shows -------------------------------------------------------------------------------
async def test_the_patient_and_site_stay_in_view_with_the_scan_field(
    clinician: User, app_station: Station
) -> None:
    treatment_id = insertion(app_station)
    await open_treatment(clinician, treatment_id)
    assert text_of(clinician, "patient-name") == "Patient: Cohen, Miriam"
    assert text_of(clinician, "patient-site") == "Site TLV-1"
    field = by_testid(clinician, "scan-input").elements.pop()
    assert "autofocus" in field.props
    assert text_of(clinician, "progress-seeds") == "Seeds deployed: 0 of 80 planned (0%)"
    await clinician.should_see("No applicator recorded yet. Scan the first one.")


async def test_a_treatment_of_another_hospital_is_refused_in_words(
    clinician: User, app_station: Station
) -> None:
    change = start_insertion(
        app_station,
        ADMIN,
        site=OTHER_HOSPITAL_SITE,
        day=TODAY,
        surgeon="Dr. Rosen",
        emergency=EmergencyPatient(subject_id="MRN-9", patient_label="Haifa, Patient"),
    )
    await clinician.open(f"/treatment/{change.record['id']}")
    await clinician.should_see(f"You are not authorised for site {OTHER_HOSPITAL_SITE}.", retries=WAIT)
    await clinician.should_not_see("Haifa, Patient")
    assert not has_testid(clinician, "scan-input")


async def test_an_unknown_treatment_is_refused_in_words(clinician: User) -> None:
    await clinician.open("/treatment/no-such-treatment")
    await clinician.should_see("This treatment does not exist or was deleted.", retries=WAIT)


# --- every scan outcome --------------------------------------------------------------------------------
CLEAN_CLASSES = sorted({r["class"] for r in barcode_rows() if r["serial"] and not r["expected_error"]})


@pytest.mark.parametrize("klass", CLEAN_CLASSES)
async def test_valid_scan_shows_the_applicator_filled_in(
    clinician: User, app_station: Station, klass: str
) -> None:
    row = next(r for r in barcode_rows() if r["class"] == klass and not r["expected_error"])
    treatment_id = insertion(app_station)
    await open_treatment(clinician, treatment_id)
    await scan_in(clinician, row["raw"])
    await see_notice(clinician, "Applicator recorded")
    card = f"applicator-{row['serial']}"
    assert text_of(clinician, "applicator-status", within=card) == "Sealed"
    await clinician.should_see(f"Applicator {row['serial']} added: 10 seeds, status Sealed.")
    await clinician.should_see("Pancreas applicator · Cat. DART-PAN-10 · Length 10 mm", retries=WAIT)
    assert by_testid(clinician, "scan-input").elements.pop().value == ""  # ready for the next label
    assert [a["serial_number"] for a in applicators(app_station, treatment_id)] == [row["serial"]]


async def test_the_enter_keystroke_carries_the_scanned_text(clinician: User, app_station: Station) -> None:
    treatment_id = insertion(app_station)
    await open_treatment(clinician, treatment_id)
    # The browser sends the field's text with the Enter (the field's own value may lag behind it).
    by_testid(clinician, "scan-input").trigger("keydown.enter", args=scanner_input("B018"))
    await see_notice(clinician, "Applicator recorded")
    assert [a["serial_number"] for a in applicators(app_station, treatment_id)] == ["DART-2687-13704"]


async def test_expiring_within_30_days_is_recorded_with_a_warning(
    clinician: User, app_station: Station
) -> None:
    await open_treatment(clinician, insertion(app_station))
    await scan_in(clinician, scanner_input("B009"))
    await see_notice(clinician, "Applicator recorded")
    assert "It expires soon, on 27 Nov 2026." in text_of(clinician, "notice-message")
    assert by_testid(clinician, "notice").elements.pop().classes.count("bg-amber-100") == 1


async def test_already_scanned_is_stopped_and_nothing_saved(clinician: User, app_station: Station) -> None:
    treatment_id = insertion(app_station)
    scan(app_station, treatment_id, "DART-9000-00001")
    await open_treatment(clinician, treatment_id)
    await scan_in(clinician, " dart-9000-00001 ")
    await see_notice(clinician, "Already scanned: nothing saved")
    assert "is already in this treatment" in text_of(clinician, "notice-message")
    assert len(applicators(app_station, treatment_id)) == 1


async def test_wrong_treatment_names_the_patient_and_is_recorded_after_confirmation(
    clinician: User, app_station: Station
) -> None:
    treatment_id = insertion(app_station)
    await open_treatment(clinician, treatment_id)
    await scan_in(clinician, "DART-7000-00001")  # tomorrow's patient's applicator
    await clinician.should_see("Wrong patient? This applicator was meant for another patient", retries=WAIT)
    assert "Levi, Amir" in text_of(clinician, "confirm-message")
    assert applicators(app_station, treatment_id) == []  # nothing saved while the question is open
    by_testid(clinician, "confirm-ok").click()
    await see_notice(clinician, "Recorded after confirmation")
    saved = applicators(app_station, treatment_id)
    assert [a["scan_outcome"] for a in saved] == ["wrong_treatment"]


async def test_wrong_treatment_declined_is_not_recorded(clinician: User, app_station: Station) -> None:
    treatment_id = insertion(app_station)
    await open_treatment(clinician, treatment_id)
    await scan_in(clinician, "DART-7000-00002")
    await clinician.should_see("Wrong patient? This applicator was meant for another patient", retries=WAIT)
    by_testid(clinician, "confirm-cancel").click()
    await see_notice(clinician, "Not recorded: meant for another patient")
    assert applicators(app_station, treatment_id) == []


async def test_previously_no_use_is_recorded_after_confirmation(
    clinician: User, app_station: Station
) -> None:
    treatment_id = insertion(app_station)
    await open_treatment(clinician, treatment_id)
    await scan_in(clinician, "DART-0000-NOUSE")
    await clinician.should_see("This applicator was recorded as not used before", retries=WAIT)
    assert "recorded as not used" in text_of(clinician, "confirm-message")
    by_testid(clinician, "confirm-ok").click()
    await see_notice(clinician, "Recorded after confirmation")
    assert [a["scan_outcome"] for a in applicators(app_station, treatment_id)] == ["previously_no_use"]


async def test_used_elsewhere_is_stopped_with_the_other_patient(
    clinician: User, app_station: Station
) -> None:
    finalised_insertion(app_station, ["DART-3000-00002"], order="SO2611006")
    treatment_id = insertion(app_station)
    await open_treatment(clinician, treatment_id)
    await scan_in(clinician, "DART-3000-00002")
    await see_notice(clinician, "Stop: this applicator is used elsewhere")
    message = text_of(clinician, "notice-message")
    assert "inserted" in message and "Friedman, Ada" in message
    assert not has_testid(clinician, "confirm-dialog")  # no way to confirm past it
    assert applicators(app_station, treatment_id) == []


@pytest.mark.parametrize(
    "raw", [scanner_input("B007"), "DART-0000-OLD"], ids=["gs1_expiry", "inventory_expiry"]
)
async def test_expired_is_stopped(clinician: User, app_station: Station, raw: str) -> None:
    treatment_id = insertion(app_station)
    await open_treatment(clinician, treatment_id)
    await scan_in(clinician, raw)
    await see_notice(clinician, "Stop: expired applicator")
    assert "expired on" in text_of(clinician, "notice-message")
    assert applicators(app_station, treatment_id) == []


@pytest.mark.parametrize(
    "serial", ["DART-0000-OTHERSITE", "DART-6000-00001"], ids=["other_site", "far_order"]
)
async def test_not_allowed_is_stopped(clinician: User, app_station: Station, serial: str) -> None:
    treatment_id = insertion(app_station)
    await open_treatment(clinician, treatment_id)
    await scan_in(clinician, serial)
    await see_notice(clinician, "Stop: not allowed for this treatment")
    assert "Do not use it." in text_of(clinician, "notice-message")
    assert applicators(app_station, treatment_id) == []


async def test_unknown_seed_count_is_an_error_never_a_default(clinician: User, app_station: Station) -> None:
    treatment_id = insertion(app_station)
    await open_treatment(clinician, treatment_id)
    await scan_in(clinician, "DART-0000-NOSEEDS")
    await see_notice(clinician, "Cannot record this scan")
    assert "seed count" in text_of(clinician, "notice-message")
    assert applicators(app_station, treatment_id) == []


# One row per kind of unusable input (the store's tests read every row of the file).
UNREADABLE = list(
    {
        r["class"]: r
        for r in reversed(barcode_rows())
        if r["expected_error"] not in ("", "expiry_warning", "expired")
    }.values()
)


@pytest.mark.parametrize("row", UNREADABLE, ids=lambda r: f"{r['id']}-{r['class']}")
async def test_unreadable_scanner_input_is_refused_in_words(
    clinician: User, app_station: Station, row: dict
) -> None:
    treatment_id = insertion(app_station)
    await open_treatment(clinician, treatment_id)
    await scan_in(clinician, row["raw"])
    await see_notice(clinician, "Cannot record this scan")
    message = text_of(clinician, "notice-message")
    expected = {
        "hibc": "HIBC labels are not supported.",
        "gs1_missing_separator": "group separator",
        "gs1_bad_check_digit": "is not valid",
        "empty": "Nothing was scanned",
        "control_chars_only": "Nothing was scanned",
        "truncated": "only partly read",
        "garbage_long": "far too long",
        "keyboard_layout_error": "keyboard layout",
    }[row["class"]]
    assert expected in message and "Traceback" not in message
    assert applicators(app_station, treatment_id) == []


async def test_stale_validation_data_needs_confirmation(
    clinician: User, app_station: Station, ui_clock: FakeClock
) -> None:
    treatment_id = insertion(app_station)
    ui_clock.advance(days=8)  # the bundle was valid for 7 days
    await open_treatment(clinician, treatment_id)
    await scan_in(clinician, "DART-9000-00002")
    await clinician.should_see("The validation data is out of date", retries=WAIT)
    by_testid(clinician, "confirm-ok").click()
    await see_notice(clinician, "Recorded after confirmation")
    assert applicators(app_station, treatment_id)[0]["scan_warnings"] == ["stale_cache"]


async def test_typed_serial_without_exact_match_offers_up_to_five_suggestions(
    clinician: User, app_station: Station
) -> None:
    treatment_id = insertion(app_station)
    await open_treatment(clinician, treatment_id)
    await scan_in(clinician, "9000-0000")
    await see_notice(clinician, "Stop: not allowed for this treatment")
    await clinician.should_see("Did you mean:", retries=WAIT)
    offered = [
        e.props["label"]
        for e in by_testid(clinician, "suggestions").elements.pop().descendants()
        if "label" in e.props
    ]
    assert len(offered) == 5 and all("9000-0000" in s for s in offered)
    by_testid(clinician, "suggestion-DART-9000-00003").click()
    await see_notice(clinician, "Applicator recorded")
    assert [a["serial_number"] for a in applicators(app_station, treatment_id)] == ["DART-9000-00003"]


async def test_choose_from_list_records_the_chosen_applicator(clinician: User, app_station: Station) -> None:
    treatment_id = insertion(app_station)
    scan(app_station, treatment_id, "DART-9000-00001")
    await open_treatment(clinician, treatment_id)
    by_testid(clinician, "choose-from-list").click()
    await clinician.should_see("Choose the applicator", retries=WAIT)
    assert not has_testid(clinician, "choice-DART-9000-00001")  # already in this treatment
    assert not has_testid(clinician, "choice-DART-7000-00001")  # another patient's order
    by_testid(clinician, "choice-DART-8000-00002").click()
    await see_notice(clinician, "Applicator recorded")
    assert {a["serial_number"] for a in applicators(app_station, treatment_id)} == {
        "DART-9000-00001",
        "DART-8000-00002",
    }


# --- the list and the progress -------------------------------------------------------------------------
def shown_rows(user: User) -> list[str]:
    """The applicator rows' test ids in the order the page shows them."""
    listed = by_testid(user, "applicator-list").elements.pop()
    return [
        str(e.props["data-testid"])
        for e in listed.descendants()
        if str(e.props.get("data-testid", "")).startswith("applicator-DART")
    ]


async def test_a_scan_adds_one_row_and_leaves_the_others_in_place(
    clinician: User, app_station: Station, ui_clock: FakeClock
) -> None:
    treatment_id = insertion(app_station)
    for i in range(5):
        scan(app_station, treatment_id, f"DART-9000-0000{i}")
        ui_clock.advance(seconds=30)
    await open_treatment(clinician, treatment_id)
    before = {
        e.id
        for e in clinician.client.elements.values()
        if str(e.props.get("data-testid", "")).startswith("applicator-DART")
    }
    await scan_in(clinician, "DART-8000-00000")
    await see_notice(clinician, "Applicator recorded")
    after = {
        e.id
        for e in clinician.client.elements.values()
        if str(e.props.get("data-testid", "")).startswith("applicator-DART")
    }
    assert before < after and len(after - before) == 1  # the five rows are the same elements, not redrawn
    # Newest first, the rows drawn with the page as well as the one just scanned.
    assert shown_rows(clinician) == ["applicator-DART-8000-00000"] + [
        f"applicator-DART-9000-0000{i}" for i in reversed(range(5))
    ]


async def test_progress_counts_per_status_and_capacity_and_total_activity(
    clinician: User, app_station: Station
) -> None:
    treatment_id = insertion(app_station)
    ten = scan(app_station, treatment_id, "DART-9000-00001")
    scan(app_station, treatment_id, "DART-8000-00001")
    move(app_station, ten["id"], PATHS["loaded"][S.LOADED])
    await open_treatment(clinician, treatment_id)
    assert text_of(clinician, "progress-capacity") == "By capacity: 1 × 10 seeds, 1 × 20 seeds"
    assert text_of(clinician, "progress-status") == "Applicators: 2 — Sealed 1, Loaded 1"
    by_testid(clinician, "move-inserted", within="applicator-DART-9000-00001").click()
    await clinician.should_see("Applicator DART-9000-00001: Inserted", retries=WAIT)
    by_testid(clinician, "status-save").click()
    await clinician.should_see("Inserted is permanent", retries=WAIT)
    by_testid(clinician, "status-save").click()
    await see_notice(clinician, "Applicator DART-9000-00001: Inserted")
    await clinician.should_see("Seeds deployed: 10 of 80 planned (12%)", retries=WAIT)
    assert text_of(clinician, "progress-activity") == "Total activity: 25 µCi"
    assert text_of(clinician, "progress-status") == "Applicators: 2 — Sealed 1, Inserted 1"


# --- status moves -------------------------------------------------------------------------------------
def _moves(user: User, serial: str) -> set[str]:
    return {
        e.props["data-testid"].removeprefix("move-")
        for e in user.client.elements.values()
        if str(e.props.get("data-testid", "")).startswith("move-")
        and any(a.props.get("data-testid") == f"applicator-{serial}" for a in e.ancestors())
    }


async def test_only_the_allowed_moves_are_offered(clinician: User, app_station: Station) -> None:
    pancreas = insertion(app_station)
    scan(app_station, pancreas, "DART-9000-00001")
    await open_treatment(clinician, pancreas)
    assert _moves(clinician, "DART-9000-00001") == {"opened"}
    by_testid(clinician, "move-opened", within="applicator-DART-9000-00001").click()
    await see_notice(clinician, "Applicator DART-9000-00001: Opened")
    assert _moves(clinician, "DART-9000-00001") == {"loaded", "faulty", "disposed"}
    skin = insertion(app_station, "SO2611004")
    scan(app_station, skin, "DART-5000-00001")
    await open_treatment(clinician, skin)
    assert _moves(clinician, "DART-5000-00001") == {"inserted", "faulty"}
    assert not has_testid(clinician, "make-package")  # skin treatments have no packages


async def test_a_terminal_status_offers_no_move(clinician: User, app_station: Station) -> None:
    treatment_id = insertion(app_station)
    applicator = scan(app_station, treatment_id, "DART-9000-00001")
    move(app_station, applicator["id"], PATHS["loaded"][S.DISPOSED])
    await open_treatment(clinician, treatment_id)
    assert _moves(clinician, "DART-9000-00001") == set()
    assert text_of(clinician, "applicator-status", within="applicator-DART-9000-00001") == "Disposed"


async def test_faulty_needs_deployed_seeds_a_comment_and_the_permanent_confirmation(
    clinician: User, app_station: Station
) -> None:
    treatment_id = insertion(app_station)
    applicator = scan(app_station, treatment_id, "DART-9000-00001")
    move(app_station, applicator["id"], [S.OPENED])
    await open_treatment(clinician, treatment_id)
    by_testid(clinician, "move-faulty", within="applicator-DART-9000-00001").click()
    await clinician.should_see("Applicator DART-9000-00001: Faulty", retries=WAIT)
    by_testid(clinician, "status-save").click()
    await clinician.should_see("Say why the applicator is faulty (a comment is required).", retries=WAIT)
    by_testid(clinician, "status-comment").type("Plunger jammed")
    by_testid(clinician, "status-save").click()
    await clinician.should_see("Enter how many seeds were deployed (0 to 10).", retries=WAIT)
    by_testid(clinician, "status-deployed").elements.pop().value = 11
    by_testid(clinician, "status-save").click()
    await clinician.should_see("Seeds deployed must be between 0 and 10.", retries=WAIT)
    by_testid(clinician, "status-deployed").elements.pop().value = 3
    by_testid(clinician, "status-save").click()
    await clinician.should_see(
        "Faulty is permanent: applicator DART-9000-00001 can never change status again. Confirm to continue.",
        retries=WAIT,
    )
    assert applicators(app_station, treatment_id)[0]["status"] == "OPENED"  # nothing saved before confirming
    by_testid(clinician, "status-save").click()
    await see_notice(clinician, "Applicator DART-9000-00001: Faulty")
    saved = applicators(app_station, treatment_id)[0]
    assert (saved["status"], saved["deployed_seeds"], saved["comments"]) == ("FAULTY", 3, "Plunger jammed")
    await clinician.should_see("Faulty, 3 deployed")
    await clinician.should_see("Comment: Plunger jammed")


async def test_cancelling_a_move_changes_nothing(clinician: User, app_station: Station) -> None:
    treatment_id = insertion(app_station)
    applicator = scan(app_station, treatment_id, "DART-9000-00001")
    move(app_station, applicator["id"], [S.OPENED])
    await open_treatment(clinician, treatment_id)
    by_testid(clinician, "move-disposed", within="applicator-DART-9000-00001").click()
    await clinician.should_see("Applicator DART-9000-00001: Disposed", retries=WAIT)
    by_testid(clinician, "status-cancel").click()
    await see_notice(clinician, "Nothing changed")
    assert applicators(app_station, treatment_id)[0]["status"] == "OPENED"


# --- packages -----------------------------------------------------------------------------------------
async def test_four_opened_applicators_are_loaded_as_a_package(clinician: User, app_station: Station) -> None:
    treatment_id = insertion(app_station)
    serials = [f"DART-9000-0000{i}" for i in range(4)]
    for serial in serials:
        move(app_station, scan(app_station, treatment_id, serial)["id"], [S.OPENED])
    await open_treatment(clinician, treatment_id)
    by_testid(clinician, "make-package").click()
    await clinician.should_see(
        "Load a package: choose 4 opened applicators of the same capacity", retries=WAIT
    )
    for serial in serials[:3]:
        by_testid(clinician, f"package-pick-{serial}").click()
    by_testid(clinician, "package-load").click()
    await clinician.should_see("A package holds exactly 4 different applicators.", retries=WAIT)
    by_testid(clinician, f"package-pick-{serials[3]}").click()
    by_testid(clinician, "package-load").click()
    await see_notice(clinician, "Package P1 loaded")
    for serial in serials:
        assert text_of(clinician, "applicator-status", within=f"applicator-{serial}") == "Loaded"
    await clinician.should_see("Package P1")
    assert {a["status"] for a in applicators(app_station, treatment_id)} == {"LOADED"}


# --- photos -------------------------------------------------------------------------------------------
async def test_a_photo_file_is_stored_under_the_data_dir_and_named_in_the_row(
    clinician: User, app_station: Station
) -> None:
    from nicegui import ui

    treatment_id = insertion(app_station)
    scan(app_station, treatment_id, "DART-9000-00001")
    await open_treatment(clinician, treatment_id)
    by_testid(clinician, "applicator-photo", within="applicator-DART-9000-00001").click()
    await clinician.should_see("Photo of applicator DART-9000-00001", retries=WAIT)
    upload = by_testid(clinician, "photo-upload").elements.pop()
    assert isinstance(upload, ui.upload)
    await upload.handle_uploads([ui.upload.SmallFileUpload("not-a-photo.png", "image/png", b"hello")])
    await see_notice(clinician, "The photo of applicator DART-9000-00001 was not saved")
    assert "not a photo" in text_of(clinician, "notice-message")
    by_testid(clinician, "applicator-photo", within="applicator-DART-9000-00001").click()
    await clinician.should_see("Photo of applicator DART-9000-00001", retries=WAIT)
    upload = by_testid(clinician, "photo-upload").elements.pop()
    await upload.handle_uploads([ui.upload.SmallFileUpload("wound.png", "image/png", PNG)])
    await see_notice(clinician, "Photo of applicator DART-9000-00001 saved")
    relative = applicators(app_station, treatment_id)[0]["photo_path"]
    assert relative.startswith(f"photos/{treatment_id}/") and relative.endswith(".png")
    assert (Path(app_station.data_dir) / relative).read_bytes() == PNG
    assert has_testid(clinician, "applicator-has-photo", within="applicator-DART-9000-00001")


async def test_a_camera_photo_is_stored(clinician: User, app_station: Station) -> None:
    import re

    treatment_id = insertion(app_station)
    scan(app_station, treatment_id, "DART-9000-00001")
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    # The simulated browser answers the page's camera scripts as Chromium with a camera would.
    clinician.javascript_rules[re.compile(r"(?s).*getUserMedia.*")] = lambda _: "ok"
    clinician.javascript_rules[re.compile(r"(?s).*toDataURL.*")] = lambda _: data_url
    await open_treatment(clinician, treatment_id)
    by_testid(clinician, "applicator-photo", within="applicator-DART-9000-00001").click()
    await clinician.should_see("Photo of applicator DART-9000-00001", retries=WAIT)
    by_testid(clinician, "photo-camera").click()
    by_testid(clinician, "photo-capture").click()
    await see_notice(clinician, "Photo of applicator DART-9000-00001 saved")
    relative = applicators(app_station, treatment_id)[0]["photo_path"]
    assert (Path(app_station.data_dir) / relative).read_bytes() == PNG


# --- locked and continued treatments -------------------------------------------------------------------
async def test_a_finalised_insertion_is_shown_locked_without_scan_or_moves(
    clinician: User, app_station: Station
) -> None:
    treatment_id = finalised_insertion(app_station, ["DART-9000-00001"])
    await open_treatment(clinician, treatment_id)
    await clinician.should_see("Finalised and locked: nothing can be added or changed.", retries=WAIT)
    assert not has_testid(clinician, "scan-input")
    assert _moves(clinician, "DART-9000-00001") == set()
    assert not has_testid(clinician, "applicator-photo")


async def test_a_continuation_says_what_it_continues(clinician: User, app_station: Station) -> None:
    parent = finalised_insertion(app_station, ["DART-9000-00001"])
    child = start_continuation(app_station, NURSE, parent_id=parent).record["id"]
    await open_treatment(clinician, child)
    await clinician.should_see("Continuation", retries=WAIT)
    assert text_of(clinician, "continuation-of") == "Continues the insertion of 26 Nov 2026"
    assert text_of(clinician, "patient-name") == "Patient: Cohen, Miriam"
    await scan_in(clinician, "DART-9000-00002")
    await see_notice(clinician, "Applicator recorded")


async def test_a_treatment_locked_while_open_refuses_the_scan_in_words(
    clinician: User, app_station: Station
) -> None:
    treatment_id = insertion(app_station)
    applicator = scan(app_station, treatment_id, "DART-9000-00001")
    await open_treatment(clinician, treatment_id)
    # Another tab finalises it while this page is open.
    move(app_station, applicator["id"], PATHS["loaded"][S.INSERTED])
    finalise_treatment(app_station, NURSE, treatment_id=treatment_id, mode=SignatureMode.SELF)
    await scan_in(clinician, "DART-9000-00002")
    await see_notice(clinician, "Cannot record this scan")
    assert text_of(clinician, "notice-message") == (
        "This treatment is finalised and locked; nothing can be added or changed."
    )


async def test_a_continuation_takes_over_the_earlier_insertions_unused_applicators(
    clinician: User, app_station: Station
) -> None:
    from store.applicators import amend_status
    from tests.utils.data import ADMIN

    parent = insertion(app_station)
    inserted = scan(app_station, parent, "DART-9000-00001")
    move(app_station, inserted["id"], PATHS["loaded"][S.INSERTED])
    spare = scan(app_station, parent, "DART-9000-00002")
    move(app_station, spare["id"], PATHS["loaded"][S.DISPOSED])
    finalise_treatment(app_station, NURSE, treatment_id=parent, mode=SignatureMode.SELF)
    # Disposed by mistake: a supervisor's amendment makes it opened again, so it may be used later.
    amend_status(app_station, ADMIN, applicator_id=spare["id"], status=S.OPENED, reason="still in its wrap")
    child = start_continuation(app_station, NURSE, parent_id=parent).record["id"]
    await open_treatment(clinician, child)
    assert not has_testid(clinician, "reuse-DART-9000-00001")  # inserted: never moves
    by_testid(clinician, "reuse-DART-9000-00002").click()
    await see_notice(clinician, "Applicator DART-9000-00002 taken over")
    assert text_of(clinician, "applicator-status", within="applicator-DART-9000-00002") == "Opened"
    assert not has_testid(clinician, "reuse-DART-9000-00002")
    saved = applicators(app_station, child)
    assert [(a["serial_number"], a["scan_outcome"], a["reused_from_id"]) for a in saved] == [
        ("DART-9000-00002", "reused", spare["id"])
    ]
