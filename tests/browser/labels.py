"""What a USB scanner types for an applicator: real rows of barcodes.tsv carrying fake Priority's serials.

The rows of `/work/shared/data/barcodes.tsv` are what scanners really send (symbology identifiers,
GS1 application identifiers in the order the label has them, the group separator 0x1D between
variable-length fields). Fake Priority's applicators have serials of their own, so a label for one of
them is a clean row of the file with its serial, lot and expiry replaced: the framing stays the
scanner's.
"""

from datetime import date
from itertools import cycle

from tests.browser.world import Applicator
from tests.utils.data import barcode_rows

GS = "\x1d"
# The clean GS1 classes of the file, one of each framing.
CLEAN_CLASSES = ("gs1_full", "gs1_serial_first", "gs1_128_symbology", "gs1_no_symbology_id")


def templates() -> list[dict[str, str]]:
    rows = [r for r in barcode_rows() if r["class"] in CLEAN_CLASSES and not r["expected_error"]]
    assert all(GS in r["raw"] for r in rows), "a clean GS1 row of barcodes.tsv lost its group separator"
    return sorted(rows, key=lambda r: (CLEAN_CLASSES.index(r["class"]), r["id"]))


def label(template: dict[str, str], applicator: Applicator) -> str:
    """`template`'s framing with the applicator's serial, lot and (when the label has one) expiry."""
    raw = template["raw"].replace(template["serial"], applicator.serial)
    if template["lot"]:
        raw = raw.replace(f"10{template['lot']}", f"10{applicator.lot}")
    if template["expiry"]:
        raw = raw.replace(f"17{_yymmdd(template)}", f"17{applicator.expiry:%y%m%d}")
    assert applicator.serial in raw and GS in raw
    return raw


def labels(applicators: list[Applicator]) -> list[str]:
    """One label per applicator, the framings taking turns."""
    return [label(t, a) for t, a in zip(cycle(templates()), applicators, strict=False)]


def row(row_id: str) -> dict[str, str]:
    return next(r for r in barcode_rows() if r["id"] == row_id)


def _yymmdd(template: dict[str, str]) -> str:
    # Day 00 ("last day of the month") labels are not clean rows; a clean row's date is its label's.
    return f"{date.fromisoformat(template['expiry']):%y%m%d}"
