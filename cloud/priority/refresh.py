"""Refreshing the cloud's copy of Priority: sites, staff, the orders of the coming days, inventory.

Only the cloud talks to Priority. The refresh reads everything first and then replaces the copy in
one transaction, so a Priority that fails halfway leaves the previous copy whole; the failure and
the time of the last success are recorded for /health, and stations keep validating against the
last good data. Patient labels are encrypted before they reach PostgreSQL.
"""

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, insert, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cloud.cipher import seal_record
from cloud.db import SiteScope, scoped_transaction
from cloud.priority.adapter import PriorityClient, PriorityFailure
from cloud.priority.orders import bundle_lists, complete_references
from cloud.schema import priority_applicators, priority_orders, priority_refresh, sites, users
from store.crypto import PatientCipher

DAYS_BACK = 3  # a removal or a continuation looks at recent insertions' orders
DAYS_AHEAD = 14


@dataclass
class RefreshReport:
    ok: bool
    orders: int = 0
    applicators: int = 0
    users: int = 0
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def refresh(engine: Engine, client: PriorityClient, cipher: PatientCipher, *, today: date) -> RefreshReport:
    """Read Priority and replace the cloud's copy; on failure keep the copy and record why."""
    now = datetime.now(UTC)
    try:
        site_rows = client.sites()
        staff = client.staff()
        orders = client.orders(today - timedelta(days=DAYS_BACK), today + timedelta(days=DAYS_AHEAD))
        context = complete_references(orders, client.orders_named)
    except PriorityFailure as exc:
        _record(engine, attempted=now, error=f"{type(exc).__name__}: {exc}")
        return RefreshReport(ok=False, error=str(exc))
    lists = bundle_lists(orders, staff, site_rows, context=context)
    # Where each serial sits in Priority, for the write-back of its use (not sent to stations).
    lines = {a.serial.upper(): (o.name, a.kline) for o in orders for a in o.applicators if a.serial}
    with scoped_transaction(engine, SiteScope.everything()) as conn:
        for site in site_rows:
            conn.execute(
                pg_insert(sites)
                .values(code=site.code, name=site.name, hospital=_hospital(site.code))
                .on_conflict_do_update(index_elements=["code"], set_={"name": site.name})
            )
        conn.execute(delete(priority_orders))
        if lists.schedule:
            conn.execute(
                insert(priority_orders), [_order_row(entry, cipher, now) for entry in lists.schedule]
            )
        conn.execute(delete(priority_applicators))
        if lists.inventory:
            rows = [_applicator_row(item, lines.get(item["serial"]), now) for item in lists.inventory]
            conn.execute(insert(priority_applicators), rows)
        _upsert_users(conn, lists.users, now)
        _record_in(conn, attempted=now, succeeded=now, error=None)
    return RefreshReport(
        ok=True,
        orders=len(lists.schedule),
        applicators=len(lists.inventory),
        users=len(lists.users),
        warnings=lists.warnings,
    )


def _order_row(entry: dict[str, Any], cipher: PatientCipher, now: datetime) -> dict[str, Any]:
    return {
        "site": entry["site"],
        "order_name": entry["order_name"],
        "day": date.fromisoformat(entry["day"]),
        "data": seal_record(entry, cipher),
        "refreshed_at": now,
    }


def _applicator_row(item: dict[str, Any], line: tuple[str, int] | None, now: datetime) -> dict[str, Any]:
    order, kline = line or (None, None)
    return {
        "site": item["site"],
        "serial": item["serial"],
        "order_name": item.get("order_name"),
        "data": {**item, "priority_order": order, "kline": kline},
        "refreshed_at": now,
    }


def _upsert_users(conn: Any, staff: list[dict[str, Any]], now: datetime) -> None:
    """Priority is the staff directory: its people are (re)activated, those it dropped lose access."""
    seen = set()
    for person in staff:
        seen.add(person["id"])
        values = {
            "email": person.get("email"),
            "phone": person.get("phone"),
            "name": person["name"],
            "position": person.get("position"),
            "role": person["role"],
            "sites": person["sites"],
            "is_active": True,
            "updated_at": now,
        }
        statement = pg_insert(users).values(id=person["id"], source="priority", **values)
        # An administrator's role is the cloud's own decision, not Priority's.
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["id"],
                set_={k: v for k, v in values.items() if k != "role"} | {"role": _role_update(statement)},
            )
        )
    conn.execute(
        update(users)
        .where(users.c.source == "priority", users.c.id.not_in(seen) if seen else true(), users.c.is_active)
        .values(is_active=False, updated_at=now)
    )


def _role_update(statement: Any) -> Any:
    from sqlalchemy import case

    return case((users.c.role == "admin", users.c.role), else_=statement.excluded.role)


def _hospital(site_code: str) -> str:
    return site_code.split("-", 1)[0]


def _record(engine: Engine, *, attempted: datetime, error: str | None) -> None:
    with engine.begin() as conn:
        _record_in(conn, attempted=attempted, succeeded=None, error=error)


def _record_in(conn: Any, *, attempted: datetime, succeeded: datetime | None, error: str | None) -> None:
    values: dict[str, Any] = {"last_attempt_at": attempted, "last_error": error}
    if succeeded is not None:
        values["last_success_at"] = succeeded
    statement = pg_insert(priority_refresh).values(id=1, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=["id"], set_=values))


def last_success(engine: Engine) -> datetime | None:
    with engine.connect() as conn:
        return conn.execute(select(priority_refresh.c.last_success_at)).scalar()
