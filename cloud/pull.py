"""Pull: the changes above a cursor, for the device's sites, in pages (invariant 4).

The cursor is a change_log sequence number, never a timestamp. Writers append change_log rows
under one advisory lock held until their commit (cloud.push.append_changes), so once a reader
sees seq N, every smaller seq is either visible too or will never exist: paging by `seq > cursor`
never skips a change that commits later, and never repeats one. Each entry carries the record's
current state; a record changed twice appears twice (once per change), both times as it is now.

A page is ONE statement: the page of change_log joined to each change's current record. A record
without patient fields (every applicator) goes out as the JSON text PostgreSQL gave
(`orjson.Fragment`), never parsed here; only a record with sealed patient fields is opened in
Python, to decrypt them. (`field_hlc` is cleaned of `$offsets` here: in SQL that cost PostgreSQL
twice the time orjson takes.)
"""

from typing import Any

import orjson
from sqlalchemy import Engine, text

from cloud.cipher import SEALED_FIELDS, open_record
from cloud.db import SiteScope, scoped_transaction
from cloud.push import OFFSETS_KEY, TABLES
from store.crypto import PatientCipher
from sync.protocol import PROTOCOL_VERSION, PULL_DEFAULT_LIMIT, PullReply


def pull_changes(
    engine: Engine, scope: SiteScope, cipher: PatientCipher, *, cursor: int, limit: int = PULL_DEFAULT_LIMIT
) -> PullReply:
    """At most `limit` changes with seq > cursor, oldest first, and where to continue."""
    return PullReply.model_validate_json(pull_page(engine, scope, cipher, cursor=cursor, limit=limit))


def pull_page(
    engine: Engine, scope: SiteScope, cipher: PatientCipher, *, cursor: int, limit: int = PULL_DEFAULT_LIMIT
) -> bytes:
    """`pull_changes` as the JSON body of the reply (what the route sends)."""
    rows: list[Any] = []
    if scope.all_sites or scope.sites:
        with scoped_transaction(engine, scope) as conn:
            params: dict[str, Any] = {"cursor": cursor, "count": limit + 1}  # one more: another page?
            params.update({f"site_{i}": site for i, site in enumerate(sorted(scope.sites))})
            rows = conn.execute(_page_statement(0 if scope.all_sites else len(scope.sites)), params).all()
    page = rows[:limit]
    changes = []
    for seq, site, table, record_id, version, deleted, data, plain, clocks in page:
        if version is None:
            continue  # cannot happen for a visible change (records are never removed); never guess one
        changes.append(
            {
                "seq": seq,
                "table": table,
                "record_id": record_id,
                "site": site,
                "version": version,
                "deleted": deleted,
                "record": orjson.Fragment(data) if plain else open_record(orjson.loads(data), cipher),
                "field_hlc": _clocks(clocks),
            }
        )
    next_cursor = page[-1][0] if page else cursor
    reply = {"protocol": PROTOCOL_VERSION, "changes": changes, "next_cursor": next_cursor}
    return orjson.dumps({**reply, "has_more": len(rows) > limit})


def _clocks(raw: str) -> dict[str, str]:
    """Each field's clock, without the writers' offsets (`$offsets`: the cloud's own bookkeeping)."""
    stored = orjson.loads(raw) or {}
    return {k: v for k, v in stored.items() if k != OFFSETS_KEY and isinstance(v, str)}


def _page_statement(site_count: int) -> Any:
    """The page (`site_count` 0: every site) joined to the current record of each change."""
    return _PAGES.setdefault(site_count, text(_page_sql(site_count)))


def _page_sql(site_count: int) -> str:
    if site_count == 0:
        page = f"{_CHANGES} WHERE seq > :cursor ORDER BY seq LIMIT :count"
    else:
        # Row-level security filters too; saying it lets PostgreSQL use (site, seq). One ordered,
        # limited read of that index per site, merged: `site IN (...) ORDER BY seq` would read and
        # sort every change above the cursor for each page (a whole pull grew with its square).
        per_site = " UNION ALL ".join(
            f"({_CHANGES} WHERE site = :site_{i} AND seq > :cursor ORDER BY seq LIMIT :count)"
            for i in range(site_count)
        )
        page = f"SELECT * FROM ({per_site}) AS merged ORDER BY seq LIMIT :count"
    # Each change's record by its primary key (one index lookup; the other tables' branches are
    # switched off by their one-time filter on the table name).
    records = " UNION ALL ".join(
        f"SELECT t.version, t.deleted, t.data, t.field_hlc FROM {table} AS t "
        f"WHERE p.table_name = '{table}' AND t.site = p.site AND t.id = p.record_id"
        for table in TABLES
    )
    sealed = ", ".join(f"'{name}'" for name in sorted(SEALED_FIELDS))
    return (
        f"WITH p AS MATERIALIZED ({page}) "
        "SELECT p.seq, p.site, p.table_name, p.record_id, r.version, r.deleted, r.data::text, "
        # plain: nothing to open (no sealed patient field, nor the cloud's hash)
        f"jsonb_typeof(r.data) = 'object' AND NOT r.data ?| ARRAY[{sealed}], r.field_hlc::text "
        f"FROM p LEFT JOIN LATERAL ({records}) AS r ON true ORDER BY p.seq"
    )


_CHANGES = "SELECT seq, site, table_name, record_id FROM change_log"
_PAGES: dict[int, Any] = {}
