"""A station's audit chain arriving in the cloud: verified link by link, stored once, never changed.

The architecture: "Audit log: append-only, hash-chained; the cloud verifies each station's chain on
arrival". Each device has one chain in `station_audit` (the uploading device's, from its
credential). A batch is taken only when all of it holds together with what the cloud already has:

- every entry's hash is recomputed with the station's own function (`sync.audit_protocol.entry_hash`
  -> `store.journal.audit_hash`): an entry altered after it was written no longer matches;
- the sequence numbers follow each other without a gap or a step back, from at most one past the
  last entry held; each entry names the previous entry's hash as its `prev_hash` (the first of a
  chain names the genesis hash);
- an entry the cloud already holds (a batch re-sent after a lost reply) must be the very same entry:
  it is skipped, and the answer is the one the first delivery got;
- once the chain holds an entry written under this device's id, every later one carries it too
  (earlier ones may carry the id the station had before it was enrolled as this device).

A batch that breaks the chain is refused whole (`ChainBroken`: HTTP 409), nothing of it stored, and
ONE incident per broken position is raised at each of the device's sites, however often the
station sends it again. A batch is also refused (HTTP 422) when an entry names a site the device
does not serve: entries are filed at their site, which row-level security keeps to the device's.

Auditors read the chains with `audit_trail`, in their own site scope.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, null, select, text
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cloud.db import SiteScope, scoped_transaction, set_scope
from cloud.schema import incidents, station_audit
from sync.audit_protocol import GENESIS_HASH, AuditEntry, AuditReply, AuditUpload, entry_hash

INCIDENT_KIND = "audit_chain_broken"
# Incident ids: uuid5 of (device, broken position), so a batch sent again raises nothing new.
INCIDENT_NAMESPACE = uuid.UUID("5f3c9d2e-8a41-4b7e-9c0d-3e2f1a6b7c84")
_CHAIN_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended('station_audit:' || :device, 0))")


class ChainBroken(Exception):
    """The batch does not continue the chain the cloud holds for the device; nothing was stored."""

    def __init__(self, device_seq: int, held_seq: int, message: str) -> None:
        super().__init__(message)
        self.device_seq = device_seq  # the first entry that breaks the chain
        self.held_seq = held_seq  # the last entry the cloud holds


class SiteRefused(ValueError):
    """An entry names a site the device does not serve."""


@dataclass(frozen=True)
class Tail:
    """The last entry the cloud holds of a device's chain."""

    seq: int = 0
    hash: str = GENESIS_HASH
    own_id_seen: bool = False  # the chain already holds an entry written under the device's own id


def receive(engine: Engine, device_id: str, device_sites: frozenset[str], upload: AuditUpload) -> AuditReply:
    """Verify and store one batch of `device_id`'s chain; raises ChainBroken or SiteRefused."""
    outside = sorted({e.site for e in upload.entries if e.site is not None and e.site not in device_sites})
    if outside:
        raise SiteRefused(
            f"entries name site(s) {', '.join(outside)}, which this device does not serve "
            f"(it serves {', '.join(sorted(device_sites)) or 'no site'}); nothing was stored"
        )
    if not device_sites:
        raise SiteRefused("this device serves no site, so its audit entries have nowhere to be filed")
    try:
        with scoped_transaction(engine, SiteScope(device_sites)) as conn:
            # One upload of a device at a time: two deliveries of one batch must not both append it.
            conn.execute(_CHAIN_LOCK, {"device": device_id})
            tail = _tail(conn, device_id)
            if upload.acknowledged_seq > tail.seq:
                # The station believes the cloud holds more than it does (it was linked to another
                # cloud, or this one was restored): nothing is checked or stored; it sends again
                # from the position answered. A deleted entry is still caught: the station's next
                # batch then starts after a gap, which `verify` refuses.
                return _reply(tail)
            held = _held_hashes(conn, device_id, upload.entries, tail)
            fresh = verify(device_id, upload.entries, tail, held)
            if fresh:
                _store(conn, device_id, device_sites, fresh)
                tail = Tail(fresh[-1].device_seq, fresh[-1].hash)
            return _reply(tail)
    except ChainBroken as broken:
        # Outside the refused batch's transaction (rolled back): the incident is kept, the batch is not.
        raise_incident(engine, device_id, device_sites, broken)
        raise


def verify(
    device_id: str, entries: Sequence[AuditEntry], tail: Tail, held: dict[int, str]
) -> list[AuditEntry]:
    """The entries the cloud does not hold yet, once the whole batch is shown to continue the chain.

    `held`: the hashes the cloud holds for the batch's positions at or below `tail.seq`."""
    # Order first: a batch out of order would otherwise be reported as a gap at its first step back.
    for before, entry in pairwise(entries):
        if entry.device_seq <= before.device_seq:
            raise ChainBroken(
                entry.device_seq,
                tail.seq,
                f"audit entry {entry.device_seq} of device {device_id}: comes after entry "
                f"{before.device_seq}: the entries are out of order",
            )
    own_id_seen = tail.own_id_seen
    previous: AuditEntry | None = None
    fresh: list[AuditEntry] = []
    for entry in entries:
        seq = entry.device_seq

        def broken(problem: str, at: int = seq) -> ChainBroken:
            return ChainBroken(at, tail.seq, f"audit entry {at} of device {device_id}: {problem}")

        if entry_hash(entry) != entry.hash:
            raise broken(f"'{entry.action}' does not match its hash: it was changed after it was written")
        if previous is None and seq > tail.seq + 1:
            raise broken(f"{_missing(tail.seq + 1, seq - 1)} (the cloud holds the chain up to {tail.seq})")
        if previous is not None and seq != previous.device_seq + 1:
            raise broken(_missing(previous.device_seq + 1, seq - 1))
        if own_id_seen and entry.device_id != device_id:
            raise broken(f"was written by device {entry.device_id}, not {device_id}: another device's chain")
        own_id_seen = own_id_seen or entry.device_id == device_id
        if seq <= tail.seq:
            if held.get(seq) != entry.hash:
                raise broken("differs from the entry the cloud received before: it was changed since")
        else:
            expected = previous.hash if previous is not None else tail.hash
            if entry.prev_hash != expected:
                raise broken(f"does not continue the chain: its previous hash is not entry {seq - 1}'s")
            fresh.append(entry)
        previous = entry
    return fresh


def raise_incident(engine: Engine, device_id: str, device_sites: frozenset[str], broken: ChainBroken) -> None:
    """One incident per broken position, at each of the device's sites (its hospital sees it)."""
    incident = str(uuid.uuid5(INCIDENT_NAMESPACE, f"{device_id}:{broken.device_seq}"))
    details = {
        "device_id": device_id,
        "device_seq": broken.device_seq,
        "acknowledged_seq": broken.held_seq,
        "problem": str(broken),
    }
    rows = [
        {"id": incident, "site": site, "kind": INCIDENT_KIND, "record_id": None, "details": details}
        for site in sorted(device_sites)
    ]
    with scoped_transaction(engine, SiteScope(device_sites)) as conn:
        conn.execute(pg_insert(incidents).values(rows).on_conflict_do_nothing(index_elements=["site", "id"]))


def audit_trail(
    engine: Engine,
    scope: SiteScope,
    *,
    device_id: str | None = None,
    action: str | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """The stations' audit entries an auditor in `scope` may read, each once, oldest first per device.

    An entry of the station as a whole is filed at each of its sites; it is listed once, with the
    sites the reader sees it at."""
    entry = [c for c in station_audit.columns if c.name not in ("id", "site", "received_at")]
    query = select(
        *entry,
        func.array_agg(aggregate_order_by(station_audit.c.site, station_audit.c.site)).label("sites"),
        func.min(station_audit.c.received_at).label("received_at"),
    ).group_by(*entry)
    if device_id is not None:
        query = query.where(station_audit.c.device_id == device_id)
    if action is not None:
        query = query.where(station_audit.c.action == action)
    query = query.order_by(station_audit.c.device_id, station_audit.c.device_seq).limit(limit)
    with scoped_transaction(engine, scope) as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


# --- helpers ---------------------------------------------------------------------------------------
def _tail(conn: Connection, device_id: str) -> Tail:
    # The chain is the device's wherever its rows are filed: read across sites (only this device's
    # own rows, and only their hashes and positions leave this function).
    set_scope(conn, SiteScope.everything())
    row = conn.execute(
        select(station_audit.c.device_seq, station_audit.c.hash, station_audit.c.recorded_device_id)
        .where(station_audit.c.device_id == device_id)
        .order_by(station_audit.c.device_seq.desc())
        .limit(1)
    ).first()
    if row is None:
        return Tail()
    # Once the device's own id appears, every later entry carries it: the last entry tells.
    return Tail(row.device_seq, row.hash, row.recorded_device_id == device_id)


def _held_hashes(
    conn: Connection, device_id: str, entries: Sequence[AuditEntry], tail: Tail
) -> dict[int, str]:
    first = entries[0].device_seq
    if first > tail.seq:
        return {}
    rows = conn.execute(
        select(station_audit.c.device_seq, station_audit.c.hash)
        .where(
            station_audit.c.device_id == device_id,
            station_audit.c.device_seq.between(first, min(entries[-1].device_seq, tail.seq)),
        )
        .distinct()
    )
    return {row.device_seq: row.hash for row in rows}


def _store(
    conn: Connection, device_id: str, device_sites: frozenset[str], entries: Sequence[AuditEntry]
) -> None:
    # Written in the device's own scope: row-level security refuses any site outside it.
    set_scope(conn, SiteScope(device_sites))
    rows = [
        {**_columns(entry), "device_id": device_id, "site": site}
        for entry in entries
        for site in ([entry.site] if entry.site is not None else sorted(device_sites))
    ]
    conn.execute(insert(station_audit), rows)


def _columns(entry: AuditEntry) -> dict[str, Any]:
    values = entry.hashed()
    values["recorded_device_id"] = values.pop("device_id")
    for name in ("old_values", "new_values"):  # no values: SQL NULL, not a JSON null
        values[name] = null() if values[name] is None else values[name]
    return {**values, "hash": entry.hash}


def _missing(first: int, last: int) -> str:
    return f"entry {first} is missing" if first == last else f"entries {first}..{last} are missing"


def _reply(tail: Tail) -> AuditReply:
    return AuditReply(acknowledged_seq=tail.seq, acknowledged_hash=tail.hash)
