"""Appending to the cloud's audit trail (audit_events: append-only, row-level secured by site).

An event is written in the same transaction as the change it records, so neither exists without
the other. That transaction must be scoped to the event's site (`scoped_transaction`); events of
no one site (identity: logins, devices) carry site '*', which only an all-sites scope may write,
so only an all-sites reader (admin) sees them. Nothing here may hold a full e-mail address or
phone number: callers pass identifiers masked (`cloud.auth.mask`).
"""

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine, insert

from cloud.db import SiteScope, scoped_transaction
from cloud.schema import audit_events

NO_SITE = "*"  # events of no one site (identity, devices)


def append(
    conn: Connection,
    action: str,
    *,
    site: str = NO_SITE,
    actor: str | None = None,
    device_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """One event, inside the caller's transaction (row-level security refuses a site out of scope)."""
    conn.execute(
        insert(audit_events).values(
            site=site, actor=actor, device_id=device_id, action=action, details=dict(details or {})
        )
    )


def append_alone(
    engine: Engine,
    action: str,
    *,
    site: str = NO_SITE,
    actor: str | None = None,
    device_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """One event in a transaction of its own: for what happens after the change committed
    (a code handed to a gateway after the request was answered)."""
    scope = SiteScope.everything() if site == NO_SITE else SiteScope(frozenset({site}))
    with scoped_transaction(engine, scope) as conn:
        append(conn, action, site=site, actor=actor, device_id=device_id, details=details)
