"""The insertion and removal reports, as PDF (fpdf2) and JSON, and their download buttons.

The report functions are pure reads of the store: they take the station and a treatment id and
return bytes, so the pages, a test or a later export job produce the same document. Patient data is
decrypted only into the report itself, and every time is shown in the hospital's zone
(`Settings.timezone`), the way the clinicians saw it on the day.
"""

from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
from fpdf import FPDF
from fpdf.fonts import FontFace
from nicegui import run, ui

from store.enums import ApplicatorStatus, Role, SignatureMode, SignatureStatus, TreatmentType
from store.lookups import insertion_view, removal_view, seed_reason_label
from store.station import Actor, Station

# A Unicode font, so patient names in Hebrew, Arabic or Cyrillic print; Helvetica (Latin-1 only) is the
# fallback on a machine without it (docs/operations.md: install fonts-dejavu-core).
UNICODE_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
UNICODE_BOLD = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")

USAGE_LABELS = {"full": "Full use", "faulty": "Faulty", "none": "Not used"}
_APPLICATOR_HEADINGS = (
    "Serial",
    "Catalogue no.",
    "Type",
    "Seeds",
    "Length",
    "Time",
    "Status",
    "Usage",
    "Deployed",
    "Comment",
)
SIGNATURE_LABELS = {
    SignatureMode.SELF.value: "signed by the user",
    SignatureMode.CODE.value: "signed with a verification code",
    SignatureMode.OFFLINE_PIN.value: "signed offline with PIN",
}


# --- the documents --------------------------------------------------------------------------------
def insertion_report(station: Station, treatment_id: str, *, actor: Actor | None = None) -> dict[str, Any]:
    """The insertion report as data (the JSON download is exactly this)."""
    view = insertion_view(station, actor or _REPORTER, treatment_id)
    t = view.treatment
    names = view.names
    progress = view.progress
    applicators = [_applicator_entry(station, a, view.packages) for a in view.applicators]
    usage = [a["usage"] for a in applicators]
    return {
        "report": "insertion",
        "treatment_id": t["id"],
        "finalised": bool(t["is_complete"]),
        "patient": _patient(t),
        "continuation_of": view.parent["id"] if view.parent else None,
        "applicators": applicators,
        "summary": {
            "start_time": _local(station, t["started_at"]),
            "started_by": names.get(t["started_by"], t["started_by"]),
            "surgeon": t["surgeon"],
            "applicators": len(applicators),
            "used": usage.count(USAGE_LABELS["full"]),
            "faulty": usage.count(USAGE_LABELS["faulty"]),
            "not_used": usage.count(USAGE_LABELS["none"]),
            "planned_seeds": progress.planned_seeds,
            "seeds_deployed": progress.deployed_seeds,
            "percent_deployed": None if progress.percent is None else round(progress.percent, 1),
            "activity_per_seed_uci": t["activity_per_seed"],
            "total_activity_uci": progress.total_activity,
            "by_capacity": {str(k): v for k, v in progress.by_capacity.items()},
        },
        "signature": _signature(station, t),
    }


def removal_report(station: Station, treatment_id: str, *, actor: Actor | None = None) -> dict[str, Any]:
    """The removal report as data: the form, the groups, the single seeds and the clarification."""
    view = removal_view(station, actor or _REPORTER, treatment_id)
    r = view.removal
    counts = view.counts
    return {
        "report": "removal",
        "treatment_id": r["id"],
        "insertion_id": view.insertion["id"],
        "insertion_date": _day(view.insertion["date"]),
        "finalised": bool(r["is_complete"]),
        "patient": _patient(r),
        "form": {
            "removal_date": _day(r["removal_date"]),
            "all_removed_same_day": r["removal_all_same_day"],
            "other_date": _day(r["removal_other_date"]),
            "other_date_reason": r["removal_other_reason"],
        },
        "groups": [asdict(g) | {"remaining": g.remaining} for g in view.groups],
        "removed_applicators": [
            {
                "serial": a["serial_number"],
                "seeds_in_applicator": a["seed_quantity"],
                "deployed_seeds": a["deployed_seeds"],
                "removal_time": _local(station, a["removal_time"]),
                "comment": a["removal_comment"],
            }
            for a in view.removed
        ],
        "single_seeds": [
            {
                "time": _local(station, s["removed_at"]),
                "reason": seed_reason_label(s["reason"], s["reason_text"]),
            }
            for s in view.single_seeds
        ],
        "counts": {
            "deployed": counts.deployed,
            "removed_with_applicators": counts.removed_with_applicators,
            "single_seeds": counts.single_seeds,
            "removed": counts.removed,
            "difference": counts.gap,
        },
        "clarification": {
            "lost": r["gap_lost"],
            "retrieved_to_site": r["gap_retrieved"],
            "remained_in_tissue": r["gap_in_tissue"],
            "other": r["gap_other"],
            "other_description": r["gap_other_text"],
        },
        "signature": _signature(station, r),
    }


def insertion_report_json(station: Station, treatment_id: str, *, actor: Actor | None = None) -> bytes:
    return orjson.dumps(insertion_report(station, treatment_id, actor=actor), option=orjson.OPT_INDENT_2)


def removal_report_json(station: Station, treatment_id: str, *, actor: Actor | None = None) -> bytes:
    return orjson.dumps(removal_report(station, treatment_id, actor=actor), option=orjson.OPT_INDENT_2)


def insertion_report_pdf(station: Station, treatment_id: str, *, actor: Actor | None = None) -> bytes:
    data = insertion_report(station, treatment_id, actor=actor)
    pdf = _Document("Alpha DaRT insertion report")
    pdf.status_line(data["finalised"])
    pdf.pairs(_patient_pairs(data["patient"]))
    pdf.heading("Applicators")
    pdf.grid(
        list(_APPLICATOR_HEADINGS),
        [
            [
                a["serial"],
                a["catalogue_number"],
                a["type"],
                a["seeds"],
                a["seed_length_mm"],
                a["time"],
                a["status"],
                a["usage"],
                a["deployed_seeds"],
                a["comment"],
            ]
            for a in data["applicators"]
        ],
        widths=(34, 26, 34, 13, 15, 30, 26, 20, 17, 62),
    )
    s = data["summary"]
    pdf.heading("Summary")
    pdf.pairs(
        [
            ("Start time", s["start_time"]),
            ("Surgeon", s["surgeon"]),
            ("Applicators used", s["used"]),
            ("Faulty", s["faulty"]),
            ("Not used", s["not_used"]),
            ("Seeds deployed", _of(s["seeds_deployed"], s["planned_seeds"], s["percent_deployed"])),
            ("Total activity", _activity(s["total_activity_uci"])),
        ]
    )
    pdf.signature(data["signature"])
    return pdf.bytes()


def removal_report_pdf(station: Station, treatment_id: str, *, actor: Actor | None = None) -> bytes:
    data = removal_report(station, treatment_id, actor=actor)
    pdf = _Document("Alpha DaRT removal report")
    pdf.status_line(data["finalised"])
    pdf.pairs([*_patient_pairs(data["patient"]), ("Insertion date", data["insertion_date"])])
    form = data["form"]
    pdf.heading("Removal form")
    pdf.pairs(
        [
            ("Removal date", form["removal_date"]),
            ("Everything removed the same day", _yes_no(form["all_removed_same_day"])),
            ("Other removal date", form["other_date"]),
            ("Reason", form["other_date_reason"]),
        ]
    )
    pdf.heading("Applicators by capacity")
    pdf.grid(
        ["Seeds per applicator", "Applicators", "Removed", "Remaining", "Seeds deployed", "Seeds removed"],
        [
            [g["capacity"], g["total"], g["removed"], g["remaining"], g["deployed_seeds"], g["removed_seeds"]]
            for g in data["groups"]
        ],
        widths=(45, 40, 35, 35, 45, 45),
    )
    pdf.heading("Removed applicators")
    pdf.grid(
        ["Serial", "Seeds", "Deployed", "Removed at", "Comment"],
        [
            [a["serial"], a["seeds_in_applicator"], a["deployed_seeds"], a["removal_time"], a["comment"]]
            for a in data["removed_applicators"]
        ],
        widths=(50, 20, 25, 40, 142),
    )
    pdf.heading("Single seeds")
    pdf.grid(
        ["Removed at", "Reason"],
        [[s["time"], s["reason"]] for s in data["single_seeds"]],
        widths=(45, 232),
    )
    c = data["counts"]
    g = data["clarification"]
    pdf.heading("Seeds")
    pdf.pairs(
        [
            ("Deployed at insertion", c["deployed"]),
            ("Removed with applicators", c["removed_with_applicators"]),
            ("Removed one at a time", c["single_seeds"]),
            ("Removed in total", c["removed"]),
            ("Difference", c["difference"]),
            ("Lost", g["lost"]),
            ("Retrieved to site", g["retrieved_to_site"]),
            ("Remained in tissue", g["remained_in_tissue"]),
            ("Other", _other(g["other"], g["other_description"])),
        ]
    )
    pdf.signature(data["signature"])
    return pdf.bytes()


# --- download wiring ------------------------------------------------------------------------------
REPORTS = {
    TreatmentType.INSERTION: (insertion_report_pdf, insertion_report_json),
    TreatmentType.REMOVAL: (removal_report_pdf, removal_report_json),
}


def download_buttons(station: Station, actor: Actor, treatment: dict[str, Any]) -> None:
    """Two big buttons that build the treatment's report off the event loop and download it."""
    kind = TreatmentType(treatment["type"])
    make_pdf, make_json = REPORTS[kind]
    stem = f"{kind.value}-report-{treatment['date']:%Y-%m-%d}-{treatment['id'][:8]}"

    async def download(maker: Any, suffix: str, media_type: str) -> None:
        content = await run.io_bound(maker, station, treatment["id"], actor=actor)
        ui.download.content(content, f"{stem}.{suffix}", media_type)

    with ui.row().classes("gap-4"):
        ui.button(
            f"Download {kind.value} report (PDF)",
            icon="picture_as_pdf",
            on_click=lambda: download(make_pdf, "pdf", "application/pdf"),
        ).props("size=lg data-testid=download-pdf")
        ui.button(
            f"Download {kind.value} report (JSON)",
            icon="data_object",
            on_click=lambda: download(make_json, "json", "application/json"),
        ).props("size=lg outline data-testid=download-json")


# --- formatting -----------------------------------------------------------------------------------
# A report built outside a page (an export job, a test) reads as the system: any site on this station.
# A page always passes its signed-in actor, so the store's site check applies there.
_REPORTER = Actor("system:report", "Report", Role.ADMIN)


def _applicator_entry(station: Station, a: dict[str, Any], packages: dict[str, str]) -> dict[str, Any]:
    return {
        "serial": a["serial_number"],
        "catalogue_number": a["catalogue_number"],
        "type": a["applicator_type"],
        "seeds": a["seed_quantity"],
        "seed_length_mm": a["seed_length"],
        "time": _local(station, a["status_changed_at"] or a["scanned_at"]),
        "status": ApplicatorStatus(a["status"]).label,
        "usage": USAGE_LABELS[ApplicatorStatus(a["status"]).usage.value],
        "deployed_seeds": a["deployed_seeds"],
        "comment": a["comments"],
        "package": packages.get(a["package_id"]) if a["package_id"] else None,
        "lot": a["lot"],
        "expiry": _day(a["expiry_date"]),
    }


def _patient(t: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": t["patient_label"],
        "subject_id": t["subject_id"],
        "site": t["site"],
        "procedure": t["indication"],
        "date": _day(t["date"]),
        "emergency_without_order": bool(t["needs_reconciliation"]),
    }


def _patient_pairs(p: dict[str, Any]) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [
        ("Patient", p["name"]),
        ("Patient identifier", p["subject_id"]),
        ("Site", p["site"]),
        ("Procedure", p["procedure"]),
        ("Date", p["date"]),
    ]
    if p["emergency_without_order"]:
        pairs.append(("Order", "emergency treatment without a Priority order"))
    return pairs


def _signature(station: Station, t: dict[str, Any]) -> dict[str, Any] | None:
    if not t["signed_at"]:
        return None
    awaiting = t["signature_status"] == SignatureStatus.AWAITING_CLOUD.value
    return {
        "name": t["signer_name"],
        "position": t["signer_position"],
        "signed_at": _local(station, t["signed_at"]),
        "mode": SIGNATURE_LABELS.get(t["signature_mode"], t["signature_mode"]),
        "status": "signed offline, awaiting cloud confirmation" if awaiting else "confirmed",
    }


def _local(station: Station, moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(station.settings.zone).strftime("%d %b %Y %H:%M")


def _day(day: date | None) -> str | None:
    return None if day is None else day.strftime("%d %b %Y")


def _of(deployed: int, planned: int | None, percent: float | None) -> str:
    if not planned:
        return f"{deployed} (no planned total)"
    return f"{deployed} of {planned} planned ({percent:.0f}%)"


def _activity(total: float | None) -> str:
    return "unknown (no activity per seed)" if total is None else f"{total:g} µCi"


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("Yes" if value else "No")


def _other(amount: int | None, text: str | None) -> str | None:
    if amount is None:
        return None
    return f"{amount} ({text})" if text else str(amount)


class _Document:
    """A landscape A4 page with a title, label/value pairs, tables and the signature block."""

    def __init__(self, title: str) -> None:
        self.pdf = FPDF(orientation="landscape", format="A4")
        self.pdf.set_auto_page_break(auto=True, margin=12)
        self.family = "Helvetica"
        if UNICODE_FONT.is_file() and UNICODE_BOLD.is_file():
            self.pdf.add_font("DejaVu", "", str(UNICODE_FONT))
            self.pdf.add_font("DejaVu", "B", str(UNICODE_BOLD))
            self.family = "DejaVu"
        self.pdf.add_page()
        self.pdf.set_title(title)
        self.pdf.set_font(self.family, "B", 16)
        self.pdf.cell(0, 10, title, new_x="LMARGIN", new_y="NEXT")

    def status_line(self, finalised: bool) -> None:
        self.pdf.set_font(self.family, "", 10)
        text = "Finalised and signed." if finalised else "DRAFT: this treatment is not finalised."
        self.pdf.cell(0, 6, self._text(text), new_x="LMARGIN", new_y="NEXT")

    def heading(self, text: str) -> None:
        self.pdf.ln(3)
        self.pdf.set_font(self.family, "B", 12)
        self.pdf.cell(0, 8, self._text(text), new_x="LMARGIN", new_y="NEXT")

    def pairs(self, pairs: list[tuple[str, Any]]) -> None:
        for label, value in pairs:
            self.pdf.set_font(self.family, "B", 10)
            self.pdf.cell(70, 6, self._text(label))
            self.pdf.set_font(self.family, "", 10)
            self.pdf.multi_cell(0, 6, self._text(_cell(value)), new_x="LMARGIN", new_y="NEXT")

    def grid(self, headings: list[str], rows: list[list[Any]], *, widths: tuple[int, ...]) -> None:
        self.pdf.set_font(self.family, "", 8)
        if not rows:
            self.pdf.cell(0, 6, "None.", new_x="LMARGIN", new_y="NEXT")
            return
        with self.pdf.table(
            col_widths=widths,
            width=sum(widths),
            align="LEFT",
            headings_style=FontFace(emphasis="BOLD"),
            line_height=5,
        ) as table:
            table.row([self._text(h) for h in headings])
            for row in rows:
                table.row([self._text(_cell(v)) for v in row])

    def signature(self, signature: dict[str, Any] | None) -> None:
        self.heading("Signature")
        if signature is None:
            self.pairs([("Signed", "not signed yet")])
            return
        self.pairs(
            [
                ("Signed by", signature["name"]),
                ("Position", signature["position"]),
                ("Signed at", signature["signed_at"]),
                ("How", signature["mode"]),
                ("Status", signature["status"]),
            ]
        )

    def bytes(self) -> bytes:
        return bytes(self.pdf.output())

    def _text(self, text: str) -> str:
        if self.family == "Helvetica":
            # The core fonts hold Latin-1 only: show what cannot be printed as "?" rather than fail.
            return text.encode("latin-1", "replace").decode("latin-1")
        return text


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
