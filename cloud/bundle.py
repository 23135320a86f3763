"""The validation bundle: what a station needs to check scans and logins with no network.

Read from what the Priority refresh last stored (priority_orders, priority_applicators) and from
`users`, for the device's sites only, in the station's own format (store/validation_cache.py
install_bundle). The checksum is store.validation_cache.bundle_checksum over the JSON exactly as
sent, so the station verifies it with the very function it installs with.

What this module reads from `data` (docs/sync-protocol.md, "Bundle"; the refresh writes it so):

- priority_orders (site, order_name, day columns): data = {order_name, patient_label_enc (sealed
  with cloud/cipher.py), site, day, indication, seeds, activity_per_seed, seed_length}
- priority_applicators (site, serial upper-cased, order_name columns): data = {serial, order_name,
  site, catalogue_number, applicator_type, seeds, seed_length, expiry, lot, usage}
"""

import hashlib
import logging
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, Engine, or_, select

from cloud.db import SiteScope, scoped_transaction
from cloud.schema import priority_applicators, priority_orders, users
from store.crypto import PatientCipher
from store.types import dumps
from store.validation_cache import bundle_checksum
from sync.protocol import Bundle, BundleItem, BundleOrder, BundleUser

log = logging.getLogger(__name__)

BUNDLE_VALID_HOURS = 24
DAYS_BEFORE = 1  # a treatment may be started for yesterday (domain.md), so yesterday's orders come too
ALL_SITE_ROLES = ("alphatau", "admin")


def build_bundle(
    engine: Engine, scope: SiteScope, cipher: PatientCipher, *, now: datetime, days: int = 7
) -> dict[str, Any]:
    """The bundle as JSON-ready data, checksum included (send it as it is)."""
    with scoped_transaction(engine, scope) as conn:
        content = {
            "users": _users(conn, scope, now),
            "schedule": _schedule(conn, cipher, now, days),
            "inventory": _inventory(conn),
        }
    bundle = Bundle(
        version=_version(content),
        valid_until=now + timedelta(hours=BUNDLE_VALID_HOURS),
        checksum="",
        **content,
    )
    body = bundle.model_dump(mode="json")
    body["checksum"] = bundle_checksum(body)
    return body


def _users(conn: Connection, scope: SiteScope, now: datetime) -> list[BundleUser]:
    """Active users allowed at the sites, with their offline PIN (argon2id hash) while it is valid."""
    query = select(users).where(users.c.is_active).order_by(users.c.id)
    if not scope.all_sites:
        query = query.where(or_(users.c.role.in_(ALL_SITE_ROLES), users.c.sites.overlap(sorted(scope.sites))))
    found = []
    for row in conn.execute(query):
        pin_valid = row.pin_hash is not None and (row.pin_valid_until is None or row.pin_valid_until > now)
        # The station needs only its own sites; the others are none of its business.
        sites = sorted(row.sites) if scope.all_sites else sorted(set(row.sites) & scope.sites)
        found.append(
            BundleUser(
                id=row.id,
                name=row.name,
                role=row.role,
                sites=sites,
                email=row.email,
                phone=row.phone,
                position=row.position,
                pin_hash=row.pin_hash if pin_valid else None,
                pin_valid_until=row.pin_valid_until if pin_valid else None,
            )
        )
    return found


def _schedule(conn: Connection, cipher: PatientCipher, now: datetime, days: int) -> list[BundleOrder]:
    first, last = now.date() - timedelta(days=DAYS_BEFORE), now.date() + timedelta(days=days - 1)
    rows = conn.execute(
        select(priority_orders)
        .where(priority_orders.c.day >= first, priority_orders.c.day <= last)
        .order_by(priority_orders.c.site, priority_orders.c.day, priority_orders.c.order_name)
    )
    found = []
    for row in rows:
        data = row.data or {}
        values = {
            **{k: data.get(k) for k in ("indication", "seeds", "activity_per_seed", "seed_length")},
            "indication": data.get("indication") or "unknown",
            "order_name": row.order_name,
            "patient_label": cipher.decrypt(data.get("patient_label_enc")),
            "site": row.site,
            "day": row.day,
        }
        _append_valid(found, BundleOrder, values, f"order {row.order_name} at {row.site}")
    return found


def _inventory(conn: Connection) -> list[BundleItem]:
    rows = conn.execute(
        select(priority_applicators).order_by(priority_applicators.c.site, priority_applicators.c.serial)
    )
    found = []
    for row in rows:
        data = row.data or {}
        fields = ("catalogue_number", "applicator_type", "seeds", "seed_length", "expiry", "lot", "usage")
        values = {k: data.get(k) for k in fields}
        values |= {"serial": row.serial, "order_name": row.order_name, "site": row.site}
        _append_valid(found, BundleItem, values, f"applicator {row.serial} at {row.site}")
    return found


def _append_valid(found: list[Any], model: type[BaseModel], values: dict[str, Any], what: str) -> None:
    # One damaged row from Priority must not take every station's offline data down with it.
    try:
        found.append(model.model_validate(values))
    except ValidationError as exc:
        log.warning("bundle: %s left out: %s", what, exc.errors()[0].get("msg"))


def _version(content: dict[str, list[Any]]) -> str:
    """The same content gives the same version, so a station can tell a new bundle from a refresh."""
    canonical = dumps({k: [item.model_dump(mode="json") for item in v] for k, v in content.items()})
    return f"b-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"
