"""The validation cache: what the cloud sent ahead so that scans are checked with no network.

A bundle holds the users allowed at the station's sites, the scheduled treatments (Priority
orders) and the applicator inventory. It is installed whole or not at all: a bundle whose checksum
does not match leaves the previous one in place. Patient fields are encrypted before they are
stored and order names are kept only as keyed hashes.
"""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from store.enums import CacheType, Role
from store.errors import InvalidInput
from store.fastsql import codec
from store.journal import transaction
from store.models import User, ValidationCacheEntry
from store.station import Station
from store.types import dumps

CACHE = ValidationCacheEntry.__table__
USERS = User.__table__

_ENTRY_COLUMNS = ("payload", "bundle_version", "valid_until")


def _entry(conn: Connection, cache_type: CacheType, key: str) -> dict[str, Any] | None:
    rows = codec(CACHE).select(
        conn, "cache_type = ? AND cache_key = ?", (cache_type.value, key), _ENTRY_COLUMNS
    )
    return rows[0] if rows else None


class BundleRejected(InvalidInput):
    code = "bundle_rejected"


@dataclass(frozen=True)
class InventoryItem:
    serial: str
    order_hash: str | None
    site: str | None
    catalogue_number: str | None
    applicator_type: str | None
    seeds: int | None
    seed_length: float | None
    expiry: date | None
    lot: str | None
    usage: str | None  # Priority's USINGTYPE when the applicator was already used
    bundle_version: str
    valid_until: datetime


@dataclass(frozen=True)
class ScheduledOrder:
    order_hash: str
    order_name_enc: str
    patient_label_enc: str | None
    site: str
    day: date
    seeds: int | None
    activity_per_seed: float | None
    indication: str
    seed_length: float | None
    bundle_version: str
    valid_until: datetime


def bundle_checksum(bundle: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON of everything but the checksum itself."""
    body = {k: v for k, v in bundle.items() if k != "checksum"}
    return hashlib.sha256(dumps(body).encode()).hexdigest()


def install_bundle(station: Station, bundle: Mapping[str, Any], *, verify: bool = True) -> str:
    """Replace the cache with `bundle` in one transaction; returns the installed version."""
    if verify and bundle.get("checksum") != bundle_checksum(bundle):
        raise BundleRejected("The validation data is damaged (checksum mismatch); the previous data is kept.")
    version = str(bundle["version"])
    valid_until = _as_datetime(bundle["valid_until"])
    with transaction(station, None) as journal:
        now = journal.now
        conn = journal.conn
        conn.execute(delete(CACHE))
        rows = [
            *(
                _schedule_row(station, order, version, valid_until, now)
                for order in bundle.get("schedule", [])
            ),
            *(
                _inventory_row(station, item, version, valid_until, now)
                for item in bundle.get("inventory", [])
            ),
        ]
        rows.append(
            {
                "cache_type": CacheType.BUNDLE.value,
                "cache_key": "current",
                "site": None,
                "day": None,
                "payload": {"version": version, "checksum": bundle.get("checksum")},
                "bundle_version": version,
                "valid_until": valid_until,
                "fetched_at": now,
            }
        )
        conn.execute(insert(CACHE), rows)
        _replace_users(conn, bundle.get("users", []), now)
        journal.audit_only(
            "validation_bundle_installed",
            new={
                "version": version,
                "orders": len(bundle.get("schedule", [])),
                "applicators": len(bundle.get("inventory", [])),
                "users": len(bundle.get("users", [])),
            },
        )
    return version


def find_inventory(conn: Connection, serial: str) -> InventoryItem | None:
    row = _entry(conn, CacheType.INVENTORY, serial.upper())
    if row is None:
        return None
    p = row["payload"]
    return InventoryItem(
        serial=p["serial"],
        order_hash=p.get("order_hash"),
        site=p.get("site"),
        catalogue_number=p.get("catalogue_number"),
        applicator_type=p.get("applicator_type"),
        seeds=p.get("seeds"),
        seed_length=p.get("seed_length"),
        expiry=date.fromisoformat(p["expiry"]) if p.get("expiry") else None,
        lot=p.get("lot"),
        usage=p.get("usage"),
        bundle_version=row["bundle_version"],
        valid_until=row["valid_until"],
    )


def find_order(conn: Connection, order_hash: str) -> ScheduledOrder | None:
    row = _entry(conn, CacheType.SCHEDULE, order_hash)
    return None if row is None else _order(row["payload"], row["bundle_version"], row["valid_until"])


def orders_for_day(conn: Connection, site: str, day: date) -> list[ScheduledOrder]:
    rows = conn.execute(
        select(CACHE.c.payload, CACHE.c.bundle_version, CACHE.c.valid_until).where(
            CACHE.c.cache_type == CacheType.SCHEDULE.value, CACHE.c.site == site, CACHE.c.day == day
        )
    )
    return [_order(r.payload, r.bundle_version, r.valid_until) for r in rows]


def suggest_serials(conn: Connection, text: str, *, site: str, limit: int = 5) -> list[str]:
    """Up to `limit` inventory serials at the site containing the typed text."""
    needle = text.strip().upper()
    if len(needle) < 2:
        return []
    rows = conn.execute(
        select(CACHE.c.cache_key)
        .where(
            CACHE.c.cache_type == CacheType.INVENTORY.value,
            CACHE.c.site == site,
            CACHE.c.cache_key.contains(needle, autoescape=True),
        )
        .order_by(CACHE.c.cache_key)
        .limit(limit)
    )
    return list(rows.scalars())


def current_bundle_version(conn: Connection) -> str | None:
    return conn.execute(
        select(CACHE.c.bundle_version).where(
            CACHE.c.cache_type == CacheType.BUNDLE.value, CACHE.c.cache_key == "current"
        )
    ).scalar()


def _order(payload: dict[str, Any], version: str, valid_until: datetime) -> ScheduledOrder:
    return ScheduledOrder(
        order_hash=payload["order_hash"],
        order_name_enc=payload["order_name_enc"],
        patient_label_enc=payload.get("patient_label_enc"),
        site=payload["site"],
        day=date.fromisoformat(payload["day"]),
        seeds=payload.get("seeds"),
        activity_per_seed=payload.get("activity_per_seed"),
        indication=payload.get("indication") or "unknown",
        seed_length=payload.get("seed_length"),
        bundle_version=version,
        valid_until=valid_until,
    )


def _schedule_row(
    station: Station, order: Mapping[str, Any], version: str, valid_until: datetime, now: datetime
) -> dict[str, Any]:
    order_hash = station.cipher.lookup_hash(order["order_name"])
    day = date.fromisoformat(str(order["day"]))
    payload = {
        "order_hash": order_hash,
        "order_name_enc": station.cipher.encrypt(order["order_name"]),
        "patient_label_enc": station.cipher.encrypt(order.get("patient_label")),
        "site": order["site"],
        "day": day.isoformat(),
        "seeds": order.get("seeds"),
        "activity_per_seed": order.get("activity_per_seed"),
        "indication": order.get("indication") or "unknown",
        "seed_length": order.get("seed_length"),
    }
    return {
        "cache_type": CacheType.SCHEDULE.value,
        "cache_key": order_hash,
        "site": order["site"],
        "day": day,
        "payload": payload,
        "bundle_version": version,
        "valid_until": _as_datetime(order.get("valid_until", valid_until)),
        "fetched_at": now,
    }


def _inventory_row(
    station: Station, item: Mapping[str, Any], version: str, valid_until: datetime, now: datetime
) -> dict[str, Any]:
    serial = str(item["serial"]).strip().upper()
    payload = {
        "serial": serial,
        "order_hash": station.cipher.lookup_hash(item["order_name"]) if item.get("order_name") else None,
        "site": item.get("site"),
        "catalogue_number": item.get("catalogue_number"),
        "applicator_type": item.get("applicator_type"),
        "seeds": item.get("seeds"),
        "seed_length": item.get("seed_length"),
        "expiry": str(item["expiry"]) if item.get("expiry") else None,
        "lot": item.get("lot"),
        "usage": item.get("usage"),
    }
    return {
        "cache_type": CacheType.INVENTORY.value,
        "cache_key": serial,
        "site": item.get("site"),
        "day": None,
        "payload": payload,
        "bundle_version": version,
        "valid_until": _as_datetime(item.get("valid_until", valid_until)),
        "fetched_at": now,
    }


def _replace_users(conn: Connection, users: list[Mapping[str, Any]], now: datetime) -> None:
    """Users not in the bundle lose access at this station (revocation reaches it at the next sync)."""
    keep = {str(u["id"]) for u in users}
    existing = {r.id: r for r in conn.execute(select(USERS.c.id, USERS.c.created_at))}
    for user in users:
        values = {
            "name": user["name"],
            "email": user.get("email"),
            "phone": user.get("phone"),
            "position": user.get("position"),
            "role": Role(user["role"]).value,
            "sites": list(user.get("sites", [])),
            "pin_hash": user.get("pin_hash"),
            "pin_valid_until": _as_datetime(user["pin_valid_until"]) if user.get("pin_valid_until") else None,
            "is_active": bool(user.get("is_active", True)),
            "updated_at": now,
        }
        if str(user["id"]) in existing:
            conn.execute(USERS.update().where(USERS.c.id == str(user["id"])).values(values))
        else:
            conn.execute(
                insert(USERS).values(id=str(user["id"]), created_at=now, failed_attempts=0, **values)
            )
    for user_id in set(existing) - keep:
        conn.execute(
            USERS.update()
            .where(USERS.c.id == user_id)
            .values(is_active=False, pin_hash=None, pin_valid_until=None, updated_at=now)
        )


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise BundleRejected(f"The validation data has a time without a time zone: {value!r}")
    return parsed
