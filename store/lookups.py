"""Reads for the clinical pages and the reports: what a treatment looks like right now.

Nothing here writes. The pages call these through `run.io_bound` (no SQL in the UI), and every
read checks that the actor may see the treatment's site, exactly as the commands do. Counts are
derived on each read (architecture.md, "Counts are derived, never stored").
"""

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, RowMapping, select, text

from store.engine import read_transaction
from store.enums import CacheType, SeedRemovalReason, TreatmentType
from store.errors import InvalidInput, StoreError
from store.guards import APPLICATORS, live_applicators, load_treatment, require_access
from store.models import ApplicatorPackage, RemovedSeed, User, ValidationCacheEntry
from store.removal import REMOVABLE
from store.removal_counts import RemovalCounts, insertion_family, removal_counts
from store.station import Actor, Station
from store.treatments import (
    _require_all_terminal,
    _require_no_safety_conflict,
    _require_removal_form_complete,
    treatment_summary,
)
from store.validation_cache import suggest_serials

PACKAGES = ApplicatorPackage.__table__
SEEDS = RemovedSeed.__table__
USERS = User.__table__
CACHE = ValidationCacheEntry.__table__

SUGGESTION_LIMIT = 5

_PROGRESS = text(
    "SELECT planned_seeds, activity_per_seed, applicator_count, deployed_seeds, total_activity,"
    " percent_deployed FROM treatment_progress WHERE treatment_id = :treatment_id"
)
_CAPACITIES = text(
    "SELECT seed_quantity, COUNT(*) FROM applicators WHERE treatment_id = :treatment_id"
    " AND deleted_at IS NULL GROUP BY seed_quantity ORDER BY seed_quantity"
)
_STATUSES = text(
    "SELECT status, COUNT(*) FROM applicators WHERE treatment_id = :treatment_id"
    " AND deleted_at IS NULL GROUP BY status"
)


@dataclass(frozen=True)
class Progress:
    """Deployed versus planned seeds, and the counts the page and the report show."""

    planned_seeds: int | None
    deployed_seeds: int
    percent: float | None
    total_activity: float | None  # µCi: deployed seeds x activity per seed
    applicators: int
    by_status: dict[str, int]
    by_capacity: dict[int, int]


@dataclass(frozen=True)
class InventoryChoice:
    """An applicator of this treatment's order that has not been scanned into it yet."""

    serial: str
    applicator_type: str | None
    seeds: int | None
    expiry: str | None


@dataclass(frozen=True)
class CapacityGroup:
    """The insertion's applicators that deployed seeds, of one capacity, for the removal page."""

    capacity: int
    total: int
    removed: int
    deployed_seeds: int
    removed_seeds: int

    @property
    def remaining(self) -> int:
        return self.total - self.removed


@dataclass(frozen=True)
class RemovalView:
    removal: dict[str, Any]
    insertion: dict[str, Any]
    groups: list[CapacityGroup]
    removed: list[dict[str, Any]]  # applicators taken out in this removal, in order
    single_seeds: list[dict[str, Any]]
    counts: RemovalCounts


@dataclass(frozen=True)
class InsertionView:
    treatment: dict[str, Any]
    applicators: list[dict[str, Any]]
    packages: dict[str, str]  # package id -> label (P1, P2, ...)
    progress: Progress
    parent: dict[str, Any] | None = None
    names: dict[str, str] = field(default_factory=dict)  # user id -> name


# --- treatments -----------------------------------------------------------------------------------
def treatment(station: Station, actor: Actor, treatment_id: str) -> dict[str, Any]:
    """The treatment with its patient fields decrypted (NotFound / NotPermitted as the commands raise)."""
    with read_transaction(station.engine) as conn:
        return _treatment(station, conn, actor, treatment_id)


def insertion_view(station: Station, actor: Actor, treatment_id: str) -> InsertionView:
    """Everything the insertion page shows, read in one snapshot."""
    with read_transaction(station.engine) as conn:
        row = _treatment(station, conn, actor, treatment_id)
        if row["type"] != TreatmentType.INSERTION:
            raise InvalidInput("This is a removal; open it from the removal page.")
        parent = None
        if row["parent_treatment_id"]:
            parent = treatment_summary(station, load_treatment(conn, row["parent_treatment_id"]))
        applicators = live_applicators(conn, [treatment_id])
        return InsertionView(
            treatment=row,
            applicators=applicators,
            packages=_packages(conn, treatment_id),
            progress=_progress(conn, treatment_id),
            parent=parent,
            names=_names(conn),
        )


def progress(station: Station, treatment_id: str) -> Progress:
    with read_transaction(station.engine) as conn:
        return _progress(conn, treatment_id)


def packages(station: Station, treatment_id: str) -> dict[str, str]:
    with read_transaction(station.engine) as conn:
        return _packages(conn, treatment_id)


def user_names(station: Station) -> dict[str, str]:
    with read_transaction(station.engine) as conn:
        return _names(conn)


# --- scanning helpers -----------------------------------------------------------------------------
def suggestions(station: Station, actor: Actor, treatment_id: str, typed: str) -> list[str]:
    """Up to five inventory serials at the treatment's site that contain what was typed.

    Serials already in this treatment are left out: suggesting them would only lead to "already scanned".
    """
    with read_transaction(station.engine) as conn:
        row = _treatment(station, conn, actor, treatment_id)
        taken = {a["serial_number"] for a in live_applicators(conn, [treatment_id])}
        found = suggest_serials(conn, typed, site=row["site"], limit=SUGGESTION_LIMIT + len(taken))
    return [serial for serial in found if serial not in taken][:SUGGESTION_LIMIT]


def inventory_choices(station: Station, actor: Actor, treatment_id: str) -> list[InventoryChoice]:
    """ "Choose from list": the order's applicators not yet in this treatment.

    An emergency treatment has no order, so its list is the site's stock on no order, the stock
    the scan accepts for it.
    """
    with read_transaction(station.engine) as conn:
        row = _treatment(station, conn, actor, treatment_id)
        taken = {a["serial_number"] for a in live_applicators(conn, [treatment_id])}
        payloads = conn.execute(
            select(CACHE.c.payload)
            .where(CACHE.c.cache_type == CacheType.INVENTORY.value, CACHE.c.site == row["site"])
            .order_by(CACHE.c.cache_key)
        ).scalars()
        wanted = set(row["order_hashes"])
        choices = []
        for item in payloads:
            on_order = item.get("order_hash") in wanted if wanted else item.get("order_hash") is None
            if on_order and item["serial"] not in taken:
                choices.append(
                    InventoryChoice(
                        serial=item["serial"],
                        applicator_type=item.get("applicator_type"),
                        seeds=item.get("seeds"),
                        expiry=item.get("expiry"),
                    )
                )
        return choices


# --- finalising -----------------------------------------------------------------------------------
def finalise_problems(station: Station, actor: Actor, treatment_id: str) -> list[str]:
    """What still stands in the way of finalising, in the store's own words (empty: ready to sign).

    The checks are the very ones `finalise_treatment` runs, so the page never shows a rule of its own.
    """
    problems: list[str] = []
    with read_transaction(station.engine) as conn:
        row = load_treatment(conn, treatment_id)
        require_access(actor, row)
        checks = [lambda: _require_no_safety_conflict(conn, treatment_id)]
        if row["type"] == TreatmentType.INSERTION:
            checks.append(lambda: _require_all_terminal(conn, treatment_id))
        else:
            checks.append(lambda: _require_removal_form_complete(conn, row))
        for check in checks:
            try:
                check()
            except StoreError as refusal:
                problems.append(refusal.message)
    return problems


# --- removal --------------------------------------------------------------------------------------
def removal_view(station: Station, actor: Actor, removal_id: str) -> RemovalView:
    with read_transaction(station.engine) as conn:
        removal = _treatment(station, conn, actor, removal_id)
        if removal["type"] != TreatmentType.REMOVAL:
            raise InvalidInput("This is an insertion; open it from the insertion page.")
        insertion = treatment_summary(station, load_treatment(conn, removal["insertion_treatment_id"]))
        family = insertion_family(conn, removal["insertion_treatment_id"])
        applicators = live_applicators(conn, family)
        in_patient = [a for a in applicators if a["status"] in REMOVABLE and a["deployed_seeds"] > 0]
        groups = []
        for capacity in sorted({a["seed_quantity"] for a in in_patient}):
            members = [a for a in in_patient if a["seed_quantity"] == capacity]
            taken = [a for a in members if a["is_removed"]]
            groups.append(
                CapacityGroup(
                    capacity=capacity,
                    total=len(members),
                    removed=len(taken),
                    deployed_seeds=sum(a["deployed_seeds"] for a in members),
                    removed_seeds=sum(a["deployed_seeds"] for a in taken),
                )
            )
        removed = sorted(
            (a for a in applicators if a["is_removed"] and a["removal_treatment_id"] == removal_id),
            key=lambda a: (a["removal_time"], a["id"]),
        )
        seeds = [
            dict(r)
            for r in conn.execute(
                select(SEEDS)
                .where(SEEDS.c.treatment_id == removal_id, SEEDS.c.deleted_at.is_(None))
                .order_by(SEEDS.c.removed_at, SEEDS.c.id)
            ).mappings()
        ]
        return RemovalView(
            removal=removal,
            insertion=insertion,
            groups=groups,
            removed=removed,
            single_seeds=seeds,
            counts=removal_counts(conn, removal),
        )


def seed_reason_label(reason: str, reason_text: str | None) -> str:
    labels = {
        SeedRemovalReason.APPLICATOR_RUPTURE: "Applicator rupture",
        SeedRemovalReason.PATIENT_FROM_HOME: "Patient arrived from home",
        SeedRemovalReason.OTHER: "Other",
    }
    label = labels.get(SeedRemovalReason(reason), reason)
    return f"{label}: {reason_text}" if reason_text else label


# --- helpers --------------------------------------------------------------------------------------
def _treatment(station: Station, conn: Connection, actor: Actor, treatment_id: str) -> dict[str, Any]:
    row = load_treatment(conn, treatment_id)
    require_access(actor, row)
    return treatment_summary(station, row)


def _progress(conn: Connection, treatment_id: str) -> Progress:
    view = conn.execute(_PROGRESS, {"treatment_id": treatment_id}).mappings().first()
    by_status = {status: int(n) for status, n in conn.execute(_STATUSES, {"treatment_id": treatment_id})}
    by_capacity = {int(c): int(n) for c, n in conn.execute(_CAPACITIES, {"treatment_id": treatment_id})}
    if view is None:
        return Progress(None, 0, None, None, 0, by_status, by_capacity)
    return _as_progress(view, by_status, by_capacity)


def _as_progress(view: RowMapping, by_status: dict[str, int], by_capacity: dict[int, int]) -> Progress:
    return Progress(
        planned_seeds=view["planned_seeds"],
        deployed_seeds=int(view["deployed_seeds"]),
        percent=None if view["percent_deployed"] is None else float(view["percent_deployed"]),
        total_activity=None if view["total_activity"] is None else float(view["total_activity"]),
        applicators=int(view["applicator_count"]),
        by_status=by_status,
        by_capacity=by_capacity,
    )


def _packages(conn: Connection, treatment_id: str) -> dict[str, str]:
    rows = conn.execute(
        select(PACKAGES.c.id, PACKAGES.c.label).where(
            PACKAGES.c.treatment_id == treatment_id, PACKAGES.c.deleted_at.is_(None)
        )
    )
    return {package_id: label for package_id, label in rows}


def _names(conn: Connection) -> dict[str, str]:
    return {user_id: name for user_id, name in conn.execute(select(USERS.c.id, USERS.c.name))}


def applicator(station: Station, applicator_id: str) -> dict[str, Any]:
    """One applicator as stored now (for refreshing one row after a change)."""
    with read_transaction(station.engine) as conn:
        rows = conn.execute(select(APPLICATORS).where(APPLICATORS.c.id == applicator_id)).mappings().all()
    if not rows:
        raise InvalidInput("This applicator is not recorded.")
    return dict(rows[0])
