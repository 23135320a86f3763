"""Clinical work for the sync reliability tests and the catch-up benchmark, through the real commands.

A station works through insertions one after another: start an insertion on the next order,
scan its applicators, move each one OPENED -> LOADED -> INSERTED, finalise. What to do next is
read from the station's committed rows every time (never from memory), so a process killed at
any moment and started again carries on where the database says it stopped, and a refused or
repeated command can only be a bug.

Each device works on its own range of orders (`first_order`): two devices never start the same
patient's insertion nor scan the same serial, so no safety conflict is expected anywhere.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from store.applicators import change_status
from store.enums import ApplicatorStatus, SignatureMode
from store.scanning import scan_applicator
from store.station import Station
from store.treatments import finalise_treatment, start_insertion
from store.validation_cache import bundle_checksum
from tests.utils.data import NURSE, SITE, inventory_item

S = ApplicatorStatus
PATH = (S.OPENED, S.LOADED, S.INSERTED)
SEEDS_PER_APPLICATOR = 10
VALID_DAYS = 3650  # the processes run on the real clock: the bundle must not go stale mid-run


def order_name(number: int) -> str:
    return f"SO-REL-{number:05d}"


def serial(order: int, index: int) -> str:
    return f"DART-R{order:05d}-{index:03d}"


@dataclass(frozen=True)
class Plan:
    """Which orders a device works on and how many applicators each insertion gets."""

    first_order: int = 0
    scans: int = 4
    order_name: Callable[[int], str] = order_name
    serial: Callable[[int, int], str] = serial

    @property
    def ops_per_treatment(self) -> int:
        return 1 + self.scans * (1 + len(PATH)) + 1


def bundle(today: date, orders: range, plan: Plan = Plan(), *, version: str = "rel-1") -> dict[str, Any]:
    """Today's orders `orders` (one patient each) and `plan.scans` applicators of stock per order."""
    body: dict[str, Any] = {
        "version": version,
        "valid_until": f"{(today + timedelta(days=VALID_DAYS)).isoformat()}T00:00:00+00:00",
        "users": [
            {
                "id": NURSE.user_id,
                "name": NURSE.name,
                "role": NURSE.role.value,
                "sites": sorted(NURSE.sites),
                "position": NURSE.position,
            }
        ],
        "schedule": [
            {
                "order_name": plan.order_name(o),
                "patient_label": f"Patient {o:05d}",
                "site": SITE,
                "day": today.isoformat(),
                "indication": "pancreas",
                "seeds": plan.scans * SEEDS_PER_APPLICATOR,
                "activity_per_seed": 2.5,
                "seed_length": 10.0,
            }
            for o in orders
        ],
        "inventory": [
            inventory_item(plan.serial(o, i), plan.order_name(o), seeds=SEEDS_PER_APPLICATOR)
            for o in orders
            for i in range(plan.scans)
        ],
    }
    body["checksum"] = bundle_checksum(body)
    return body


def next_change(station: Station, plan: Plan) -> str:
    """Make the next change of this device's work and return its operation id (once committed)."""
    with station.engine.connect() as conn:
        mine = conn.exec_driver_sql(
            "SELECT id, is_complete FROM treatments WHERE device_id = ? ORDER BY created_at, id",
            (station.device_id,),
        ).all()
        open_ids = [t for t, complete in mine if not complete]
        applicators = (
            conn.exec_driver_sql(
                "SELECT id, status FROM applicators WHERE treatment_id = ? ORDER BY created_at, id",
                (open_ids[0],),
            ).all()
            if open_ids
            else []
        )
    if not open_ids:
        order = plan.first_order + len(mine)
        change = start_insertion(
            station,
            NURSE,
            site=SITE,
            day=station.local_today(),
            surgeon="Dr. Reliable",
            order_names=[plan.order_name(order)],
        )
        return change.op_id
    treatment_id = open_ids[0]
    if len(applicators) < plan.scans:
        order = plan.first_order + len(mine) - 1
        result = scan_applicator(
            station, NURSE, treatment_id=treatment_id, raw=plan.serial(order, len(applicators))
        )
        if not result.saved or result.op_id is None:
            raise RuntimeError(f"scan refused: {result.outcome} {result.message}")
        return result.op_id
    for applicator_id, status in applicators:
        if status != S.INSERTED.value:
            following = PATH[PATH.index(S(status)) + 1] if status in PATH else PATH[0]
            change = change_status(
                station, NURSE, applicator_id=applicator_id, status=following, confirm_permanent=True
            )
            return change.op_id
    return finalise_treatment(station, NURSE, treatment_id=treatment_id, mode=SignatureMode.SELF).op_id
