"""Pull: the changes above a cursor, for the device's sites, in pages (invariant 4).

The cursor is a change_log sequence number, never a timestamp. Writers append change_log rows
under one advisory lock held until their commit (cloud.push.append_changes), so once a reader
sees seq N, every smaller seq is either visible too or will never exist: paging by `seq > cursor`
never skips a change that commits later, and never repeats one. Each entry carries the record's
current state; a record changed twice appears twice (once per change), both times as it is now.
"""

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, String, Text, any_, bindparam, select, union_all
from sqlalchemy.dialects.postgresql import ARRAY

from cloud.cipher import open_record
from cloud.db import SiteScope, scoped_transaction
from cloud.push import OFFSETS_KEY, TABLES
from cloud.schema import change_log
from store.crypto import PatientCipher
from sync.protocol import PULL_DEFAULT_LIMIT, PullChange, PullReply


def pull_changes(
    engine: Engine, scope: SiteScope, cipher: PatientCipher, *, cursor: int, limit: int = PULL_DEFAULT_LIMIT
) -> PullReply:
    """At most `limit` changes with seq > cursor, oldest first, and where to continue."""
    with scoped_transaction(engine, scope) as conn:
        rows = _page(conn, scope, cursor, limit + 1)  # one more than asked: is there another page?
        page = rows[:limit]
        records = _current_records(conn, page, cipher)
    changes = []
    for row in page:
        current = records.get((row.table_name, row.site, row.record_id))
        if current is None:
            continue  # cannot happen for a visible change (records are never removed); never guess one
        changes.append(_change(row, current))
    next_cursor = page[-1].seq if page else cursor
    return PullReply(changes=changes, next_cursor=next_cursor, has_more=len(rows) > limit)


def _page(conn: Connection, scope: SiteScope, cursor: int, count: int) -> list[Any]:
    columns = (change_log.c.seq, change_log.c.site, change_log.c.table_name, change_log.c.record_id)
    if scope.all_sites:
        query = select(*columns).where(change_log.c.seq > cursor).order_by(change_log.c.seq).limit(count)
        return list(conn.execute(query))
    if not scope.sites:
        return []
    # Row-level security filters too; saying it here lets PostgreSQL use (site, seq). One ordered,
    # limited read of that index per site, merged: `site IN (...) ORDER BY seq` would read and
    # sort every change above the cursor for each page (a whole pull grew with the square of it).
    per_site = [
        select(*columns)
        .where(change_log.c.site == site, change_log.c.seq > cursor)
        .order_by(change_log.c.seq)
        .limit(count)
        for site in sorted(scope.sites)
    ]
    if len(per_site) == 1:
        return list(conn.execute(per_site[0]))
    merged = union_all(*per_site).subquery()
    return list(conn.execute(select(merged).order_by(merged.c.seq).limit(count)))


@dataclass(frozen=True)
class _Current:
    """A record as it is now, ready for the wire (opened once, however often the page names it)."""

    version: int
    deleted: bool
    record: dict[str, Any]
    field_hlc: dict[str, str]


def _current_records(
    conn: Connection, page: list[Any], cipher: PatientCipher
) -> dict[tuple[str, str, str], _Current]:
    """The current row of every record in the page: one query per table."""
    wanted: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for row in page:
        wanted[row.table_name].add((row.site, row.record_id))
    found: dict[tuple[str, str, str], _Current] = {}
    for table_name, keys in wanted.items():
        sites = sorted({site for site, _ in keys})
        ids = sorted({record_id for _, record_id in keys})
        for row in conn.execute(_RECORDS[table_name], {"sites": sites, "ids": ids}):
            stored_clocks = orjson.loads(row.field_hlc) or {}
            clocks = {k: v for k, v in stored_clocks.items() if k != OFFSETS_KEY and isinstance(v, str)}
            record = open_record(orjson.loads(row.data), cipher)
            # (a record of the same id at another site of the scope is read too, and never asked for)
            found[(table_name, row.site, row.id)] = _Current(row.version, row.deleted, record, clocks)
    return found


def _records_query(table_name: str) -> Any:
    # Sites and ids as two arrays, not a list of (site, id) pairs: PostgreSQL turns such a list into
    # one OR per pair and checked it against every row of the site, so each page slowed down as the
    # site grew; `id = ANY(array)` is looked up in the primary key. The JSON comes as text for
    # orjson, which reads it several times faster than the driver's json.loads.
    table = TABLES[table_name]
    return select(
        table.c.site,
        table.c.id,
        table.c.version,
        table.c.deleted,
        table.c.data.cast(Text).label("data"),
        table.c.field_hlc.cast(Text).label("field_hlc"),
    ).where(
        table.c.site.in_(bindparam("sites", expanding=True)),
        table.c.id == any_(bindparam("ids", type_=ARRAY(String))),
    )


_RECORDS = {table_name: _records_query(table_name) for table_name in TABLES}


def _change(row: Any, current: _Current) -> PullChange:
    return PullChange(
        seq=row.seq,
        table=row.table_name,
        record_id=row.record_id,
        site=row.site,
        version=current.version,
        deleted=current.deleted,
        record=current.record,
        field_hlc=current.field_hlc,
    )
