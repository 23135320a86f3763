"""Test data: sites, users, a week's orders and an inventory built from what scanners really type."""

import csv
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from store.enums import Role
from store.station import Actor
from store.validation_cache import bundle_checksum

SHARED = Path(__file__).resolve().parents[3] / "shared"
BARCODES = SHARED / "data" / "barcodes.tsv"

TODAY = date(2026, 11, 26)  # barcodes.tsv's expiry outcomes are relative to this day
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
SITE = "TLV-1"
SECOND_SITE = "TLV-2"
OTHER_HOSPITAL_SITE = "HFA-1"

NURSE = Actor("u-nurse", "Dana Shapiro", Role.HOSPITAL, frozenset({SITE, SECOND_SITE}), "Nurse")
OUTSIDER = Actor("u-haifa", "Yossi Katz", Role.HOSPITAL, frozenset({OTHER_HOSPITAL_SITE}), "Nurse")
ALPHATAU = Actor("u-at", "Noa Alpha", Role.ALPHATAU, frozenset(), "Clinical specialist")
ADMIN = Actor("u-admin", "Ari Admin", Role.ADMIN, frozenset(), "Administrator")

# Orders: name -> (patient, site, day offset from TODAY, indication, seeds, activity per seed)
ORDERS: dict[str, tuple[str, str, int, str, int, float]] = {
    "SO2611001": ("Cohen, Miriam", SITE, 0, "pancreas", 80, 2.5),
    "SO2611002": ("Levi, Amir", SITE, 1, "prostate", 60, 2.0),
    "SO2611003": ("Peretz, Ruth", SITE, 5, "pancreas", 40, 2.5),
    "SO2611004": ("Mizrahi, Tal", SITE, 0, "skin", 20, 1.5),
    "SO2611005": ("Biton, Eli", SITE, 0, "unknown", 40, 2.0),
    "SO2611006": ("Friedman, Ada", SITE, 0, "pancreas", 30, 2.5),
}


@dataclass
class FakeClock:
    """The station's clock, moved by tests instead of waiting."""

    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def barcode_rows() -> list[dict[str, str]]:
    with BARCODES.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    for row in rows:
        row["raw"] = row["raw"].replace("<GS>", "\x1d")
    return rows


def scanner_input(row_id: str) -> str:
    return next(r["raw"] for r in barcode_rows() if r["id"] == row_id)


def inventory_item(
    serial: str, order: str | None, *, seeds: int | None = 10, site: str = SITE, **extra: Any
) -> dict[str, Any]:
    return {
        "serial": serial,
        "order_name": order,
        "site": site,
        "catalogue_number": "DART-PAN-10",
        "applicator_type": "Pancreas applicator",
        "seeds": seeds,
        "seed_length": 10.0,
        **extra,
    }


def default_inventory() -> list[dict[str, Any]]:
    """Every readable serial of barcodes.tsv on the first order, so real scanner strings validate."""
    items = [inventory_item(r["serial"], "SO2611001") for r in barcode_rows() if r["serial"]]
    items += [inventory_item(f"DART-9000-{i:05d}", "SO2611001", seeds=10) for i in range(8)]
    items += [inventory_item(f"DART-8000-{i:05d}", "SO2611001", seeds=20) for i in range(4)]
    items += [inventory_item(f"DART-7000-{i:05d}", "SO2611002") for i in range(4)]  # tomorrow's patient
    items += [inventory_item(f"DART-6000-{i:05d}", "SO2611003") for i in range(2)]  # five days away
    items += [inventory_item(f"DART-5000-{i:05d}", "SO2611004", seeds=5) for i in range(4)]  # skin
    items += [inventory_item(f"DART-4000-{i:05d}", "SO2611005") for i in range(6)]  # unknown indication
    items += [inventory_item(f"DART-3000-{i:05d}", "SO2611006") for i in range(4)]
    items += [
        inventory_item("DART-0000-NOSEEDS", "SO2611001", seeds=None),
        inventory_item("DART-0000-USED", "SO2611001", usage="Full use"),
        inventory_item("DART-0000-NOUSE", "SO2611001", usage="No Use"),
        inventory_item("DART-0000-OLD", "SO2611001", expiry="2026-10-01"),
        inventory_item("DART-0000-SOON", "SO2611001", expiry="2026-12-05"),
        inventory_item("DART-0000-SPARE", None),  # site stock on no order
        inventory_item("DART-0000-OTHERSITE", "SO2611001", site=OTHER_HOSPITAL_SITE),
    ]
    return items


def make_bundle(
    now: datetime = NOW,
    *,
    valid_days: int = 7,
    inventory: list[dict[str, Any]] | None = None,
    version: str = "b-1",
) -> dict[str, Any]:
    schedule = [
        {
            "order_name": name,
            "patient_label": patient,
            "site": site,
            "day": (TODAY + timedelta(days=offset)).isoformat(),
            "indication": indication,
            "seeds": seeds,
            "activity_per_seed": activity,
            "seed_length": 10.0,
        }
        for name, (patient, site, offset, indication, seeds, activity) in ORDERS.items()
    ]
    users = [
        {
            "id": a.user_id,
            "name": a.name,
            "role": a.role.value,
            "sites": sorted(a.sites),
            "position": a.position,
        }
        for a in (NURSE, ALPHATAU, ADMIN)
    ]
    bundle = {
        "version": version,
        "valid_until": (now + timedelta(days=valid_days)).isoformat(),
        "users": users,
        "schedule": schedule,
        "inventory": default_inventory() if inventory is None else inventory,
    }
    bundle["checksum"] = bundle_checksum(bundle)
    return bundle
