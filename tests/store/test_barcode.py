import csv
import time
from dataclasses import FrozenInstanceError
from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store.barcode import GS, BarcodeProblem, BarcodeReading, parse_scan

# Shared test data sits next to the project checkout, here and in CI.
BARCODES_TSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "barcodes.tsv"
# barcodes.tsv states its expiry outcomes relative to this day.
TODAY = date(2026, 11, 26)


def _load_rows() -> list[dict[str, str]]:
    with BARCODES_TSV.open(newline="", encoding="utf-8") as f:
        # QUOTE_NONE: scans are raw keyboard input, a quote in one is data, not CSV quoting.
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    for row in rows:
        row["raw"] = row["raw"].replace("<GS>", GS)
    return rows


ROWS = _load_rows()
ROWS_BY_ID = {row["id"]: row for row in ROWS}


def _row_params(rows: list[dict[str, str]]) -> list:
    return [pytest.param(row, id=f"{row['id']}-{row['class']}") for row in rows]


def _scan(raw: str, **kwargs) -> BarcodeReading:
    return parse_scan(raw, today=kwargs.pop("today", TODAY), **kwargs)


def _gs1(*fields: str, sep: str = GS) -> str:
    return sep.join(fields)


def test_the_data_file_covers_every_class_of_scan() -> None:
    problems = {row["expected_error"] for row in ROWS}
    assert problems == {"", *(problem.value for problem in BarcodeProblem)}


@pytest.mark.parametrize("row", _row_params(ROWS))
def test_reading_matches_barcodes_tsv(row: dict[str, str]) -> None:
    reading = _scan(row["raw"])

    assert reading.raw == row["raw"]
    assert reading.gtin == (row["gtin"] or None)
    assert reading.serial == (row["serial"] or None)
    assert reading.lot == (row["lot"] or None)
    assert reading.expiry == (date.fromisoformat(row["expiry"]) if row["expiry"] else None)
    assert reading.problem == (BarcodeProblem(row["expected_error"]) if row["expected_error"] else None)


@pytest.mark.parametrize("row", _row_params(ROWS))
def test_message_is_given_exactly_when_there_is_a_problem(row: dict[str, str]) -> None:
    reading = _scan(row["raw"])

    if reading.problem is None:
        assert reading.message is None
    else:
        assert reading.message
        assert "applicator" in reading.message
        for jargon in ("Traceback", "Error", "biip", "None", "\\x", "GS1 AI"):
            assert jargon not in reading.message


@pytest.mark.parametrize("row", _row_params([row for row in ROWS if not row["serial"]]))
def test_rows_without_a_serial_never_give_one(row: dict[str, str]) -> None:
    reading = _scan(row["raw"])

    assert reading.serial is None
    assert not reading.usable


@pytest.mark.parametrize("row", _row_params(ROWS))
def test_usable_exactly_when_the_file_expects_a_serial_and_at_most_a_warning(row: dict[str, str]) -> None:
    expected = bool(row["serial"]) and row["expected_error"] in ("", "expiry_warning")

    assert _scan(row["raw"]).usable is expected


@pytest.mark.parametrize("row", _row_params([row for row in ROWS if GS in row["raw"]]))
def test_scanner_configured_to_send_another_separator(row: dict[str, str]) -> None:
    with_gs = _scan(row["raw"])
    with_tilde = _scan(row["raw"].replace(GS, "~"), group_separator="~")

    assert (with_tilde.gtin, with_tilde.serial, with_tilde.lot, with_tilde.expiry, with_tilde.problem) == (
        with_gs.gtin,
        with_gs.serial,
        with_gs.lot,
        with_gs.expiry,
        with_gs.problem,
    )


def test_custom_separator_still_accepts_a_real_group_separator() -> None:
    reading = _scan(ROWS_BY_ID["B001"]["raw"], group_separator="~")

    assert reading.serial == "DART-2698-07602"
    assert reading.usable


def test_tilde_is_not_a_separator_unless_configured() -> None:
    # Without the setting "~" is just a character no GS1 field may contain.
    reading = _scan(ROWS_BY_ID["B002"]["raw"].replace(GS, "~"))

    assert reading.serial is None
    assert reading.problem == BarcodeProblem.UNREADABLE


@pytest.mark.parametrize("group_separator", ["", "~~", "A", "7"])
def test_a_separator_setting_that_cannot_be_one_falls_back_to_gs(group_separator: str) -> None:
    reading = _scan(ROWS_BY_ID["B001"]["raw"], group_separator=group_separator)

    assert reading.serial == "DART-2698-07602"
    assert reading.usable


@pytest.mark.parametrize("identifier", ["]d2", "]C1", "]Q3", "]e0", "]J1"])
def test_gs1_symbology_identifiers_are_stripped(identifier: str) -> None:
    reading = _scan(identifier + ROWS_BY_ID["B002"]["raw"])

    assert reading.gtin == "07290166131868"
    assert reading.serial == "DART-2430-74115"
    assert reading.usable


@pytest.mark.parametrize("identifier", ["]C0", "]A0", "]d1", "]Q1"])
def test_plain_serial_behind_a_non_gs1_symbology_identifier(identifier: str) -> None:
    reading = _scan(identifier + "DART-2636-46591")

    assert reading.serial == "DART-2636-46591"
    assert reading.problem is None


def test_gs1_symbology_identifier_with_non_gs1_content_is_unreadable() -> None:
    reading = _scan("]d2DART-2636-46591")

    assert reading.problem == BarcodeProblem.UNREADABLE
    assert reading.serial is None


def test_expired_message_names_the_date() -> None:
    reading = _scan(ROWS_BY_ID["B007"]["raw"])

    assert reading.message == "This applicator expired on 9 Sep 2026. Do not use it."


def _with_expiry(expiry: date) -> str:
    return _gs1(f"010729052601815017{expiry:%y%m%d}10L619D", "21DART-2698-07602")


@pytest.mark.parametrize(
    ("days_left", "problem"),
    [
        (-1, BarcodeProblem.EXPIRED),
        (0, BarcodeProblem.EXPIRY_WARNING),
        (1, BarcodeProblem.EXPIRY_WARNING),
        (30, BarcodeProblem.EXPIRY_WARNING),
        (31, None),
    ],
)
def test_expiry_boundaries(days_left: int, problem: BarcodeProblem | None) -> None:
    reading = _scan(_with_expiry(TODAY + timedelta(days=days_left)))

    assert reading.problem == problem
    assert reading.usable is (problem is not BarcodeProblem.EXPIRED)


def test_expiry_today_says_today() -> None:
    reading = _scan(_with_expiry(TODAY))

    assert reading.message is not None
    assert "expires today (26 Nov 2026)" in reading.message


def test_warn_days_is_configurable() -> None:
    in_ten_days = _with_expiry(TODAY + timedelta(days=10))

    assert _scan(in_ten_days, warn_days=7).problem is None
    assert _scan(in_ten_days, warn_days=10).problem == BarcodeProblem.EXPIRY_WARNING


def test_day_00_in_a_leap_year_is_the_29th() -> None:
    reading = _scan(_gs1("010729052601815017280200", "21DART-2698-07602"))

    assert reading.expiry == date(2028, 2, 29)


def test_impossible_expiry_date_is_unreadable() -> None:
    reading = _scan(_gs1("010729052601815017270231", "21DART-2698-07602"))

    assert reading.problem == BarcodeProblem.UNREADABLE
    assert reading.serial is None


def test_expired_outranks_a_missing_serial() -> None:
    # Otherwise the clinician would be told to type the serial of an expired applicator.
    reading = _scan("01072905260181501726010110L619D21DART-2698-07602")

    assert reading.problem == BarcodeProblem.EXPIRED
    assert reading.serial is None


def test_bad_check_digit_reads_the_serial_but_is_not_usable() -> None:
    reading = _scan(ROWS_BY_ID["B006"]["raw"])

    assert reading.serial == "DART-2524-10728"
    assert reading.problem == BarcodeProblem.INVALID_GTIN
    assert not reading.usable
    assert reading.message is not None
    assert "07290579754327" in reading.message


def test_lot_that_swallows_the_serial_up_to_the_end_gives_no_serial() -> None:
    # Short enough that biip parses it all as one lot: no error, but no AI 21 either.
    reading = _scan("010729052601815010L121DART-1")

    assert reading.serial is None
    assert reading.problem == BarcodeProblem.NO_SERIAL


def test_missing_separator_after_a_good_serial_is_unreadable() -> None:
    # The serial was delimited, but the lot ran into the field after it, which may have been the expiry.
    reading = _scan(_gs1("010729052601815021DART-2698-07602", "10" + "L619D" * 4 + "17270304"))

    assert reading.problem == BarcodeProblem.UNREADABLE
    assert reading.serial is None


def test_serial_first_without_separator_never_takes_a_serial() -> None:
    reading = _scan("010729090996030421DART-2685-174551727030410L396G")

    assert reading.serial is None
    assert not reading.usable


def test_conflicting_repeated_field_is_unreadable() -> None:
    reading = _scan(_gs1("010729052601815021DART-1", "21DART-2"))

    assert reading.problem == BarcodeProblem.UNREADABLE
    assert reading.serial is None


def test_typed_human_readable_line_is_read() -> None:
    reading = _scan("(01)07290526018150(17)270304(10)L619D(21)DART-2698-07602")

    assert (reading.gtin, reading.serial, reading.lot, reading.expiry) == (
        "07290526018150",
        "DART-2698-07602",
        "L619D",
        date(2027, 3, 4),
    )
    assert reading.usable


def test_product_only_barcode_gives_gtin_without_serial() -> None:
    reading = _scan("7290526018150")

    assert reading.gtin == "07290526018150"
    assert reading.serial is None
    assert reading.problem == BarcodeProblem.NO_SERIAL


@pytest.mark.parametrize("raw", ["7290526018151", "12345678", "ABC-123", "dart_2636/46591.a"])
def test_plain_serials(raw: str) -> None:
    reading = _scan(raw)

    assert reading.serial == raw
    assert reading.problem is None
    assert reading.usable


@pytest.mark.parametrize(
    "raw",
    ["01", "0107", "0107290526018", "DA", "DART 2636 46591", "-DART-1", "DART\x00-1", "A" * 65, "<GS>"],
)
def test_unreadable(raw: str) -> None:
    reading = _scan(raw)

    assert reading.problem == BarcodeProblem.UNREADABLE
    assert reading.serial is None


@pytest.mark.parametrize("raw", ["", " ", "\t\r\n", GS * 3, "\x02\x03", "\ufeff\u200b", "~~"])
def test_empty(raw: str) -> None:
    reading = _scan(raw, group_separator="~")

    assert reading.problem == BarcodeProblem.EMPTY


def test_scanner_framing_characters_are_ignored() -> None:
    reading = _scan("\x02DART-2636-46591\x03\r")

    assert reading.serial == "DART-2636-46591"


def test_hibc_message_explains_what_to_do() -> None:
    reading = _scan(ROWS_BY_ID["B012"]["raw"])

    assert reading.message is not None
    assert "HIBC labels are not supported" in reading.message
    assert "GS1 DataMatrix" in reading.message
    assert "type the serial" in reading.message


@pytest.mark.parametrize(
    "raw",
    ["+d2" + ROWS_BY_ID["B002"]["raw"], "+C1" + ROWS_BY_ID["B002"]["raw"], "+Q3" + ROWS_BY_ID["B005"]["raw"]],
)
def test_keyboard_layout_error_is_not_hibc(raw: str) -> None:
    reading = _scan(raw)

    assert reading.problem == BarcodeProblem.UNREADABLE
    assert reading.serial is None
    assert reading.message is not None
    assert "keyboard layout" in reading.message


def test_secondary_only_hibc() -> None:
    assert _scan("+$$3617674X").problem == BarcodeProblem.HIBC_UNSUPPORTED


@pytest.mark.parametrize(
    ("serial", "problem", "usable"),
    [
        ("DART-1", None, True),
        ("DART-1", BarcodeProblem.EXPIRY_WARNING, True),
        ("DART-1", BarcodeProblem.EXPIRED, False),
        ("DART-1", BarcodeProblem.INVALID_GTIN, False),
        (None, None, False),
        (None, BarcodeProblem.EXPIRY_WARNING, False),
        (None, BarcodeProblem.NO_SERIAL, False),
    ],
)
def test_usable(serial: str | None, problem: BarcodeProblem | None, usable: bool) -> None:
    reading = BarcodeReading(
        raw="x", serial=serial, gtin=None, lot=None, expiry=None, problem=problem, message=None
    )

    assert reading.usable is usable


def test_reading_is_frozen() -> None:
    reading = _scan("DART-1")

    with pytest.raises(FrozenInstanceError):
        reading.serial = "DART-2"  # type: ignore[misc]


def test_problem_values() -> None:
    assert [problem.value for problem in BarcodeProblem] == [
        "no_serial",
        "invalid_gtin",
        "expired",
        "expiry_warning",
        "hibc_unsupported",
        "unreadable",
        "empty",
    ]


def test_huge_input_returns_quickly() -> None:
    for raw in (" " * 5_000_000 + "x", "\x00 " * 2_500_000, "01" * 2_500_000, "DART-" * 1_000_000):
        started = time.perf_counter()
        reading = _scan(raw)
        assert time.perf_counter() - started < 1.0
        assert reading.serial is None


# Biased towards what scanners actually send, so the search reaches the GS1, HIBC and layout branches.
_SCAN_ALPHABET = st.sampled_from([*"0123456789]+$/-.~() dDCQeAJLRTx", GS, "\x00", "\r", "\x7f", "é"])
_SCAN_FRAGMENTS = st.sampled_from(
    [row["raw"] for row in ROWS if len(row["raw"]) < 100]
    + ["]d2", "]C1", "+d2", "+A", "01", "0107290526018150", "10", "17", "170231", "21", "(01)", "(21)", GS]
)
_SCANS = st.one_of(
    st.text(),
    st.text(alphabet=_SCAN_ALPHABET, max_size=80),
    st.lists(_SCAN_FRAGMENTS, max_size=6).map("".join),
    st.tuples(_SCAN_FRAGMENTS, st.integers(0, 60), st.integers(0, 60)).map(
        lambda t: t[0][t[1] : t[1] + t[2]]
    ),
)


@settings(max_examples=1000, deadline=timedelta(seconds=1), suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=_SCANS,
    today=st.dates(),
    group_separator=st.one_of(st.just(GS), st.just("~"), st.text(max_size=2)),
    warn_days=st.integers(-1000, 1000),
)
def test_never_raises_and_answers_consistently(
    raw: str, today: date, group_separator: str, warn_days: int
) -> None:
    reading = parse_scan(raw, today=today, group_separator=group_separator, warn_days=warn_days)

    assert isinstance(reading, BarcodeReading)
    assert reading.raw == raw
    assert (reading.problem is None) == (reading.message is None)
    if reading.usable:
        assert reading.serial
    if reading.serial is not None:
        # A serial is only ever copied from the scan, never made up.
        assert reading.serial in raw
    if reading.problem in (BarcodeProblem.EMPTY, BarcodeProblem.UNREADABLE, BarcodeProblem.HIBC_UNSUPPORTED):
        assert (reading.serial, reading.gtin, reading.lot, reading.expiry) == (None, None, None, None)


def test_damaged_character_after_a_field_is_unreadable_not_a_missing_separator() -> None:
    reading = _scan(_gs1("0107290526018150", "21DART-1²"))

    assert reading.problem == BarcodeProblem.UNREADABLE
    assert reading.serial is None


@pytest.mark.parametrize("raw", ["01" + "١" * 14 + "21DART-1", "]d2" + "0١" * 8 + GS + "21DART-1", "DАRT-1"])
def test_non_ascii_lookalikes_are_unreadable(raw: str) -> None:
    # "١" is an Arabic-Indic digit one, "А" a Cyrillic capital A.
    reading = _scan(raw)

    assert reading.problem == BarcodeProblem.UNREADABLE
    assert reading.serial is None
