"""Turn what a USB barcode scanner typed into the scan field into an applicator reading.

Scanners act as keyboards, so the station only ever sees characters: GS1 element strings from the
applicator's DataMatrix, a serial typed or scanned from a plain label, or whatever else ended up in
the field. `parse_scan` never raises and never takes a serial it is not sure of: when in doubt it
returns a reading with a `problem` and a `message` a clinician can act on.
"""

import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Literal

from biip import ParseConfig, ParseError
from biip.gs1_element_strings import GS1ElementString
from biip.gs1_messages import GS1Message
from biip.gtin import Gtin

GS = "\x1d"

# Far above the longest DaRT label (GTIN, expiry, 20-character lot and serial, separators and a
# symbology identifier come to about 75 characters), so anything longer is something else pasted or
# several scans run together; capping also bounds the work done on hostile input.
MAX_SCAN_LENGTH = 150

AI_GTIN = "01"
AI_LOT = "10"
AI_EXPIRY = "17"
AI_SERIAL = "21"

# Scanners may frame a scan with control characters (STX/ETX, CR) and editors may leave invisible
# format characters (BOM, zero-width space); none of them can be part of a label.
_BLANK = "".join(
    ch for ch in map(chr, range(0x10000)) if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf")
)

# ISO/IEC 15424 symbology identifier: the scanner says which kind of barcode it read.
_SYMBOLOGY_ID = re.compile(r"\][A-Za-z][0-9A-Za-z]")
# Identifiers whose barcode carries GS1 element strings: DataMatrix, GS1-128, QR, DataBar, DotCode.
_GS1_SYMBOLOGIES = frozenset({"]d2", "]C1", "]Q3", "]e0", "]J1"})

# A US-layout scanner on a station set to another layout (German, Swiss...) types "+" for "]", so a
# symbology identifier such as "]d2" arrives as "+d2"; lowercase never occurs in HIBC.
_MANGLED_SYMBOLOGY_ID = re.compile(r"\+[a-z][0-9]")
_MANGLED_UPPER_SYMBOLOGY_ID = re.compile(r"\+[A-Z][0-9]")
# HIBC starts with "+" and a labeler code whose first character is a letter, or "+$" for data that
# only carries lot/serial/expiry.
_HIBC = re.compile(r"\+(?:[A-Z][0-9A-Z]{3}|\$)[0-9A-Z\-. $/+%]*")

_PLAIN_SERIAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-_/.]{2,63}")
# A complete AI 01 at the start marks a GS1 string even when the separators went missing.
_STARTS_WITH_GTIN_AI = re.compile(r"01[0-9]{14}")
# ASCII digits only: str.isdigit() and \d also accept digits from other scripts.
_DIGITS = re.compile(r"[0-9]+")
# biip describes each AI's data as e.g. "N2+X..20": up to 20 characters after the AI.
_MAX_LENGTH = re.compile(r"\.\.([0-9]+)$")
# The product-only barcodes on packaging (UPC-A, EAN-13, ITF-14).
_BARE_GTIN_LENGTHS = (12, 13, 14)

# Spelled out so messages don't depend on the station's locale.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_RESCAN = "Scan the applicator's label again, or type the serial number."


class BarcodeProblem(StrEnum):
    NO_SERIAL = "no_serial"
    INVALID_GTIN = "invalid_gtin"
    EXPIRED = "expired"
    EXPIRY_WARNING = "expiry_warning"
    HIBC_UNSUPPORTED = "hibc_unsupported"
    UNREADABLE = "unreadable"
    EMPTY = "empty"


@dataclass(frozen=True)
class BarcodeReading:
    raw: str
    serial: str | None
    gtin: str | None
    lot: str | None
    expiry: date | None
    problem: BarcodeProblem | None
    message: str | None

    @property
    def usable(self) -> bool:
        # An imminent expiry is worth telling the clinician about but must not stop the treatment.
        return self.serial is not None and self.problem in (None, BarcodeProblem.EXPIRY_WARNING)


def parse_scan(raw: str, *, today: date, group_separator: str = GS, warn_days: int = 30) -> BarcodeReading:
    """Read one scan, as typed into the scan field without the final Enter.

    `group_separator` is the character the scanner sends between variable-length GS1 fields when it
    is configured to substitute one for GS; GS itself is always accepted too. A setting that cannot
    be a separator (not exactly one character, or a letter or digit) is ignored in favour of GS,
    which can at worst cost a serial (`no_serial`), never give a wrong one.
    """
    try:
        return _parse(raw, today=today, separators=_separators(group_separator), warn_days=warn_days)
    except Exception:
        # Last line of defence for the promise that a scan never crashes the station: biip or an
        # unforeseen input could still surprise us, and the clinician needs words, not a traceback.
        return _failure(
            raw if isinstance(raw, str) else repr(raw),
            BarcodeProblem.UNREADABLE,
            f"This barcode could not be read. {_RESCAN}",
        )


def _separators(group_separator: str) -> str:
    if isinstance(group_separator, str) and len(group_separator) == 1 and not group_separator.isalnum():
        return GS if group_separator == GS else GS + group_separator
    return GS


def _parse(raw: str, *, today: date, separators: str, warn_days: int) -> BarcodeReading:
    text = raw.strip(_BLANK + separators)
    if not text:
        return _failure(raw, BarcodeProblem.EMPTY, f"Nothing was scanned. {_RESCAN}")
    if len(text) > MAX_SCAN_LENGTH:
        return _failure(
            raw,
            BarcodeProblem.UNREADABLE,
            f"The scan is {len(text)} characters long, far too long for an applicator label. "
            "Clear the scan field, then scan the applicator's label again.",
        )
    if _MANGLED_SYMBOLOGY_ID.match(text) or (
        _MANGLED_UPPER_SYMBOLOGY_ID.match(text) and _looks_gs1(text[3:], separators)
    ):
        # Not repaired by swapping "+" back to "]": the same layout mix-up silently changes other
        # characters (Y/Z, punctuation), so a serial read from it could be wrong.
        return _failure(
            raw,
            BarcodeProblem.UNREADABLE,
            "The scanner's keyboard layout looks wrong (it typed '+' where the barcode has ']'), so "
            "this applicator's label may have been read with wrong characters. Ask for the scanner's "
            "keyboard layout to be corrected, or type the serial number.",
        )

    symbology = None
    if _SYMBOLOGY_ID.match(text):
        symbology, text = text[:3], text[3:].strip(_BLANK + separators)
        if not text:
            return _failure(raw, BarcodeProblem.EMPTY, f"The scan had no data. {_RESCAN}")

    if not text.isascii():
        # Every format the station reads is ASCII; biip's patterns would accept digits from other
        # scripts, and a serial containing lookalike letters would never match the applicator's record.
        return _failure(
            raw,
            BarcodeProblem.UNREADABLE,
            f"This scan contains characters that cannot be on an applicator label. {_RESCAN}",
        )
    if _HIBC.fullmatch(text):
        return _failure(
            raw,
            BarcodeProblem.HIBC_UNSUPPORTED,
            "HIBC labels are not supported. Scan the GS1 DataMatrix on the applicator's label, or type "
            "the serial number.",
        )
    if text.startswith("("):
        return _read_hri(raw, text, today=today, separators=separators, warn_days=warn_days)
    if symbology in _GS1_SYMBOLOGIES or _looks_gs1(text, separators):
        elements, stop = _walk_gs1(text, separators)
        return _reading(raw, elements, stop, today=today, warn_days=warn_days)
    if _DIGITS.fullmatch(text) and len(text) in _BARE_GTIN_LENGTHS:
        bare = _bare_gtin(raw, text)
        if bare is not None:
            return bare
    if _PLAIN_SERIAL.fullmatch(text):
        return BarcodeReading(
            raw=raw, serial=text, gtin=None, lot=None, expiry=None, problem=None, message=None
        )
    return _failure(
        raw,
        BarcodeProblem.UNREADABLE,
        f"This is not an applicator barcode or serial number the station recognises. {_RESCAN}",
    )


def _looks_gs1(text: str, separators: str) -> bool:
    # Digits starting with "01" are a GS1 string cut short, not a serial: reading them as one would
    # take part of the GTIN as the applicator's serial.
    return (
        any(sep in text for sep in separators)
        or bool(_STARTS_WITH_GTIN_AI.match(text))
        or (text.startswith("01") and bool(_DIGITS.fullmatch(text)))
    )


_Stop = Literal["garbled", "ran_together"]


def _walk_gs1(text: str, separators: str) -> tuple[dict[str, GS1ElementString], _Stop | None]:
    """Split GS1 element strings with biip, keeping only those whose boundaries are certain.

    This is biip's own GS1Message.parse loop, done here because that loop drops everything on the
    first error and hides where each field ended, and both matter: a variable-length field that is
    neither last nor followed by a separator but filled to its maximum length means the scanner
    dropped the separator and the field swallowed the next one (typically the lot eating the serial).
    """
    config = ParseConfig(separator_chars=tuple(separators))
    elements: dict[str, GS1ElementString] = {}
    rest = text
    while rest:
        try:
            element = GS1ElementString.extract(rest, config=config)
        except (ParseError, ValueError):
            return elements, "garbled"
        rest = rest[len(element) :]
        if element.ai.separator_required and rest and rest[0] not in separators:
            return elements, "ran_together" if _filled(element) else "garbled"
        if not _add(elements, element):
            return elements, "garbled"
        rest = rest.lstrip(separators)
    return elements, None


def _filled(element: GS1ElementString) -> bool:
    # Only a field cut at its maximum length can have swallowed its neighbour; one that stopped short
    # stopped at a character it cannot contain, which is damage, not a missing separator.
    match = _MAX_LENGTH.search(element.ai.format)
    return match is None or len(element.value) >= int(match.group(1))


def _add(elements: dict[str, GS1ElementString], element: GS1ElementString) -> bool:
    # A repeated AI with another value leaves no way to tell which one is the applicator's.
    known = elements.setdefault(element.ai.ai, element)
    return known.value == element.value


def _read_hri(raw: str, text: str, *, today: date, separators: str, warn_days: int) -> BarcodeReading:
    # Someone typed the human-readable line under the barcode, "(01)...(17)...(10)...(21)...": the
    # parentheses delimit every field, so nothing can run together.
    try:
        message = GS1Message.parse_hri(text, config=ParseConfig(separator_chars=tuple(separators)))
    except (ParseError, ValueError):
        return _reading(raw, {}, "garbled", today=today, warn_days=warn_days)
    elements: dict[str, GS1ElementString] = {}
    for element in message.element_strings:
        if not _add(elements, element):
            return _reading(raw, {}, "garbled", today=today, warn_days=warn_days)
    return _reading(raw, elements, None, today=today, warn_days=warn_days)


def _reading(
    raw: str,
    elements: dict[str, GS1ElementString],
    stop: _Stop | None,
    *,
    today: date,
    warn_days: int,
) -> BarcodeReading:
    if stop == "garbled":
        return _failure(
            raw,
            BarcodeProblem.UNREADABLE,
            "The applicator's label was only partly read or contains data the station cannot "
            f"interpret. {_RESCAN}",
        )
    gtin_element = elements.get(AI_GTIN)
    serial_element = elements.get(AI_SERIAL)
    lot_element = elements.get(AI_LOT)
    expiry_element = elements.get(AI_EXPIRY)
    if stop == "ran_together" and serial_element is not None:
        # The serial is sound but a later field swallowed its neighbour, which may have been the expiry.
        return _failure(
            raw,
            BarcodeProblem.UNREADABLE,
            "The fields on this applicator's label ran together because the scanner did not send the "
            "group separator, so the expiry date could not be checked. Check the scanner's separator "
            "setting, or type the serial number.",
        )

    gtin = gtin_element.value if gtin_element else None
    expiry = expiry_element.date if expiry_element else None
    problem: BarcodeProblem | None = None
    message: str | None = None
    # Ordered by what matters most: an expired applicator must be stopped even if the clinician could
    # type the serial by hand, and a bad GTIN means the label itself is suspect.
    if expiry is not None and expiry < today:
        problem = BarcodeProblem.EXPIRED
        message = f"This applicator expired on {_day(expiry)}. Do not use it."
    elif gtin_element is not None and gtin_element.gtin_error:
        problem = BarcodeProblem.INVALID_GTIN
        message = (
            f"The product code on this applicator's label (GTIN {gtin}) is not valid: its check digit "
            "is wrong, so the label may be damaged, misprinted or misread. Scan it again; if this "
            "repeats, do not use this applicator and report the label."
        )
    elif serial_element is None:
        problem = BarcodeProblem.NO_SERIAL
        message = (
            "The applicator's serial number could not be read: the fields on the label ran together "
            "because the scanner did not send the group separator. Check the scanner's separator "
            "setting, or type the serial number."
            if stop == "ran_together"
            else "No applicator serial number was found on this label. If the label shows one, the "
            "scanner may not be sending the group separator: check its settings, or type the serial "
            "number."
        )
    elif expiry is not None and (expiry - today).days <= warn_days:
        problem = BarcodeProblem.EXPIRY_WARNING
        days = (expiry - today).days
        when = "today" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"
        message = f"This applicator expires {when} ({_day(expiry)}). Make sure it will be used before then."
    return BarcodeReading(
        raw=raw,
        serial=serial_element.value if serial_element else None,
        gtin=gtin,
        lot=lot_element.value if lot_element else None,
        expiry=expiry,
        problem=problem,
        message=message,
    )


def _bare_gtin(raw: str, text: str) -> BarcodeReading | None:
    try:
        gtin = Gtin.parse(text)
    except ParseError:
        # Not a product code after all; it may still be a numeric serial.
        return None
    gtin_14 = gtin.as_gtin_14()
    return BarcodeReading(
        raw=raw,
        serial=None,
        gtin=gtin_14,
        lot=None,
        expiry=None,
        problem=BarcodeProblem.NO_SERIAL,
        message=(
            f"This is the product barcode (GTIN {gtin_14}), which does not say which applicator this is. "
            "Scan the square DataMatrix on the applicator's label, or type the serial number."
        ),
    )


def _failure(raw: str, problem: BarcodeProblem, message: str) -> BarcodeReading:
    return BarcodeReading(
        raw=raw, serial=None, gtin=None, lot=None, expiry=None, problem=problem, message=message
    )


def _day(day: date) -> str:
    return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"
