"""Pull: the changes above a cursor, for the device's sites, in pages (invariant 4).

The cursor is a change_log sequence number, never a timestamp. Writers append change_log rows
under one advisory lock held until their commit (cloud.push.append_changes), so once a reader
sees seq N, every smaller seq is either visible too or will never exist: paging by `seq > cursor`
never skips a change that commits later, and never repeats one. Each entry carries the record's
current state; a record changed twice appears twice (once per change), both times as it is now.
"""

from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, Engine, select, tuple_

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
        records = _current_records(conn, page)
    changes = []
    for row in page:
        current = records.get((row.table_name, row.site, row.record_id))
        if current is None:
            continue  # cannot happen for a visible change (records are never removed); never guess one
        changes.append(_change(row, current, cipher))
    next_cursor = page[-1].seq if page else cursor
    return PullReply(changes=changes, next_cursor=next_cursor, has_more=len(rows) > limit)


def _page(conn: Connection, scope: SiteScope, cursor: int, count: int) -> list[Any]:
    query = (
        select(change_log.c.seq, change_log.c.site, change_log.c.table_name, change_log.c.record_id)
        .where(change_log.c.seq > cursor)
        .order_by(change_log.c.seq)
        .limit(count)
    )
    if not scope.all_sites:
        # Row-level security filters too; saying it here lets PostgreSQL use (site, seq).
        query = query.where(change_log.c.site.in_(sorted(scope.sites)))
    return list(conn.execute(query))


def _current_records(conn: Connection, page: list[Any]) -> dict[tuple[str, str, str], Any]:
    """The current row of every record in the page: one query per table."""
    wanted: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for row in page:
        wanted[row.table_name].add((row.site, row.record_id))
    found: dict[tuple[str, str, str], Any] = {}
    for table_name, keys in wanted.items():
        table = TABLES[table_name]
        query = select(
            table.c.site, table.c.id, table.c.version, table.c.deleted, table.c.data, table.c.field_hlc
        )
        for record in conn.execute(query.where(tuple_(table.c.site, table.c.id).in_(sorted(keys)))):
            found[(table_name, record.site, record.id)] = record
    return found


def _change(row: Any, current: Any, cipher: PatientCipher) -> PullChange:
    clocks = {k: v for k, v in (current.field_hlc or {}).items() if k != OFFSETS_KEY and isinstance(v, str)}
    return PullChange(
        seq=row.seq,
        table=row.table_name,
        record_id=row.record_id,
        site=row.site,
        version=current.version,
        deleted=current.deleted,
        record=open_record(current.data, cipher),
        field_hlc=clocks,
    )
