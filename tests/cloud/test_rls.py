"""Row-level security by site (invariant 7), proven through the service role `dart_app`.

A hospital sees only its own sites' rows, enforced inside PostgreSQL: forced row-level security on
every hospital table, a service role that owns nothing, and a site context that lives exactly as
long as one transaction. The tests here:

- the matrix: every hospital table x select / insert / update / delete x every kind of caller
  (a user of hospital A, of hospital B, a station enrolled at one site, alphatau, admin, a
  transaction with no context, a context with an empty site list);
- keys: an identifier taken at another hospital is free here, so no unique-key error tells one
  hospital that a row exists at another;
- pooled connections: a context never reaches the next transaction on the same connection (with a
  negative control that shows a session-level setting would leak and be caught);
- the catalogue: RLS enabled and forced with a site policy on every table that has a `site`
  column, and a service role that owns nothing, bypasses nothing and cannot become the owner.

One database for the whole module, seeded once by the owner with one row per site in every
hospital table (the rows are generated from `cloud.schema`, so a new hospital table is covered
the day it is added). Each case runs in its own transaction and rolls back; the cases that must
commit (update and delete, checked afterwards by the owner) put the seed back.
"""

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from psycopg import errors as pg_errors
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError

from cloud.db import SiteScope, make_engine, scoped_transaction, set_scope
from cloud.deps import Principal
from cloud.migrate import upgrade
from cloud.schema import HOSPITAL_TABLES, cloud_metadata
from tests.cloud.conftest import CloudDatabase, service_url
from tests.cloud.utils import HOSPITAL_A_SITES, HOSPITAL_B_SITES
from tests.pg import fresh_database

pytestmark = pytest.mark.postgres

APP_ROLE = "dart_app"
# A site of no hospital: audit events that belong to no one site carry it ('*'); only the
# all-sites scopes (alphatau, admin) may see or write it.
UNOWNED_SITE = "*"
SEEDED_SITES = (*HOSPITAL_A_SITES, *HOSPITAL_B_SITES, UNOWNED_SITE)
TABLES: dict[str, Table] = {name: cloud_metadata.tables[name] for name in HOSPITAL_TABLES}

# Privileges migrations 0002 and 0003 take from the service: refused for every caller, whatever the scope.
REVOKED = frozenset(
    {
        ("audit_events", "update"),
        ("audit_events", "delete"),
        ("station_audit", "update"),
        ("station_audit", "delete"),
        ("op_ledger", "delete"),
        ("change_log", "delete"),
        ("change_log", "update"),
    }
)
# Columns under a CHECK (... IN (...)): a value the check accepts.
CHECKED_VALUES: dict[tuple[str, str], Any] = {("writeback_queue", "kind"): "applicator"}

POLICY_REFUSAL = "violates row-level security policy"
LEDGER_WRITTEN_ONCE = "op_ledger results are written once"
PERMISSION_DENIED = "permission denied for table"

Row = dict[str, Any]
Seed = dict[str, dict[str, Row]]  # table -> site -> the one row seeded at that site


def _scope_of(role: str | None, sites: tuple[str, ...] = ()) -> SiteScope:
    """The scope the service derives for a caller (cloud.deps.Principal), not one made up here."""
    if role is None:  # a station's own credential: the sites it is enrolled at
        return Principal(device_id="st-test", device_sites=frozenset(sites)).scope
    return Principal(
        device_id="st-test",
        device_sites=frozenset(),
        user_id=f"u-{role}",
        role=role,
        user_sites=frozenset(sites),
    ).scope


# None: a plain transaction in which nobody called set_config at all.
CALLERS: dict[str, SiteScope | None] = {
    "hospital_a": _scope_of("hospital", HOSPITAL_A_SITES),
    "hospital_b": _scope_of("hospital", HOSPITAL_B_SITES),
    "station_at_a_tlv": _scope_of(None, ("A-TLV",)),
    "alphatau": _scope_of("alphatau"),
    "admin": _scope_of("admin"),
    "no_context": None,
    "empty_site_list": _scope_of("hospital", ()),
}
MATRIX = [
    pytest.param(table, caller, id=f"{table}-{caller}") for table in HOSPITAL_TABLES for caller in CALLERS
]


def allowed_sites(caller: str) -> list[str]:
    scope = CALLERS[caller]
    return [site for site in SEEDED_SITES if scope is not None and scope.allows(site)]


# --- fixtures: one database for the module (overriding the per-test ones of conftest.py)


@pytest.fixture(scope="module")
def cloud_db() -> Iterator[CloudDatabase]:
    with fresh_database() as url:
        upgrade(url)
        yield CloudDatabase(owner_url=url, app_url=service_url(url))


@pytest.fixture(scope="module")
def app_engine(cloud_db: CloudDatabase) -> Iterator[Engine]:
    engine = make_engine(cloud_db.app_url, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def owner_engine(cloud_db: CloudDatabase) -> Iterator[Engine]:
    engine = make_engine(cloud_db.owner_url, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def seed(owner_engine: Engine) -> Seed:
    """One row per seeded site in every hospital table, written by the owner in an all-sites scope
    (FORCE binds the owner too, unless it is a superuser), then read back as stored."""
    with scoped_transaction(owner_engine, SiteScope.everything()) as conn:
        for table in TABLES.values():
            conn.execute(insert(table), [required_row(table, site, 1) for site in SEEDED_SITES])
    return {name: rows_by_site(owner_engine, table) for name, table in TABLES.items()}


# --- the matrix


def test_the_callers_scopes_are_the_ones_the_issue_names() -> None:
    assert CALLERS["hospital_a"] == SiteScope(frozenset(HOSPITAL_A_SITES))
    assert CALLERS["hospital_b"] == SiteScope(frozenset(HOSPITAL_B_SITES))
    assert CALLERS["alphatau"] == CALLERS["admin"] == SiteScope.everything()
    assert CALLERS["empty_site_list"] == SiteScope()


@pytest.mark.parametrize(("table_name", "caller"), MATRIX)
def test_select_returns_exactly_the_callers_sites(
    app_engine: Engine, seed: Seed, table_name: str, caller: str
) -> None:
    table = TABLES[table_name]
    with as_caller(app_engine, CALLERS[caller]) as conn:
        rows = [dict(row) for row in conn.execute(select(table).order_by(table.c.site)).mappings()]
        counted = conn.execute(select(func.count()).select_from(table)).scalar_one()
    assert rows == [seed[table_name][site] for site in sorted(allowed_sites(caller))]
    assert counted == len(rows)


@pytest.mark.parametrize(("table_name", "caller"), MATRIX)
def test_insert_succeeds_only_at_the_callers_sites(app_engine: Engine, table_name: str, caller: str) -> None:
    table = TABLES[table_name]
    scope = CALLERS[caller]
    for site in SEEDED_SITES:
        row = required_row(table, site, 3)
        if site in allowed_sites(caller):
            with as_caller(app_engine, scope) as conn:
                assert inserted(conn, insert(table).values(row)) == [site]
                assert conn.execute(count_at(table, site)).scalar_one() == 2
        else:
            with refused(POLICY_REFUSAL), as_caller(app_engine, scope) as conn:
                conn.execute(insert(table).values(row))


@pytest.mark.parametrize(("table_name", "caller"), MATRIX)
def test_update_touches_exactly_the_callers_rows(
    app_engine: Engine, owner_engine: Engine, seed: Seed, table_name: str, caller: str
) -> None:
    table = TABLES[table_name]
    scope = CALLERS[caller]
    column = mutable_column(table)
    new_value = value_for(table, column, "updated", 2)
    if (table_name, "update") in REVOKED:
        with refused(PERMISSION_DENIED), as_caller(app_engine, scope) as conn:
            conn.execute(update(table).values({column.name: new_value}))
        assert rows_by_site(owner_engine, table) == seed[table_name]
        return

    mine = allowed_sites(caller)
    try:
        with as_caller(app_engine, scope, commit=True) as conn:
            assert conn.execute(update(table).values({column.name: new_value})).rowcount == len(mine)
        expected = {
            site: {**row, column.name: new_value} if site in mine else row
            for site, row in seed[table_name].items()
        }
        assert rows_by_site(owner_engine, table) == expected  # the owner's view: foreign rows untouched
    finally:  # also when a failure changed rows it should not have: the next case starts clean
        restore(owner_engine, table, seed[table_name].values())

    foreign = [site for site in SEEDED_SITES if site not in mine]
    if mine and foreign:  # a row of mine may not be moved to a site that is not mine
        # The ledger's own trigger refuses any change but the first result, before the policy looks.
        refusal = LEDGER_WRITTEN_ONCE if table_name == "op_ledger" else POLICY_REFUSAL
        with refused(refusal), as_caller(app_engine, scope) as conn:
            conn.execute(update(table).where(table.c.site == mine[0]).values(site=foreign[0]))
    elif not mine:  # nothing visible, so nothing to move into a site
        with as_caller(app_engine, scope) as conn:
            assert conn.execute(update(table).values(site=HOSPITAL_A_SITES[0])).rowcount == 0


@pytest.mark.parametrize(("table_name", "caller"), MATRIX)
def test_delete_removes_exactly_the_callers_rows(
    app_engine: Engine, owner_engine: Engine, seed: Seed, table_name: str, caller: str
) -> None:
    table = TABLES[table_name]
    scope = CALLERS[caller]
    if (table_name, "delete") in REVOKED:
        with refused(PERMISSION_DENIED), as_caller(app_engine, scope) as conn:
            conn.execute(delete(table))
        assert rows_by_site(owner_engine, table) == seed[table_name]
        return

    mine = allowed_sites(caller)
    try:
        with as_caller(app_engine, scope, commit=True) as conn:
            assert conn.execute(delete(table)).rowcount == len(mine)
        expected = {site: row for site, row in seed[table_name].items() if site not in mine}
        assert rows_by_site(owner_engine, table) == expected
    finally:  # also when a failure changed rows it should not have: the next case starts clean
        restore(owner_engine, table, seed[table_name].values())


# --- keys: no error tells one hospital that a row exists at another

# Tables whose key the caller chooses (not generated by the database); op_ledger has its own test.
CHOSEN_KEY_TABLES = [
    name
    for name, table in TABLES.items()
    if name != "op_ledger" and not any(column.identity is not None for column in table.primary_key)
]
SITE_FREE_KEY_FINDING = (
    "SECURITY FINDING: the primary key does not include `site` (conflicts, incidents, writeback_queue "
    "are keyed by `id` alone), so a hospital inserting an id used at another hospital gets a "
    "unique-key violation (or 0 rows with ON CONFLICT DO NOTHING, or a policy error with DO UPDATE): "
    "an existence oracle. Fix: PRIMARY KEY (site, id), as the clinical tables have."
)


@pytest.mark.parametrize(
    "table_name",
    [
        pytest.param(
            name,
            marks=(
                []
                if "site" in TABLES[name].primary_key.columns
                else [pytest.mark.xfail(strict=True, raises=AssertionError, reason=SITE_FREE_KEY_FINDING)]
            ),
        )
        for name in CHOSEN_KEY_TABLES
    ],
)
def test_a_key_used_at_another_hospital_is_free_here(
    app_engine: Engine, owner_engine: Engine, seed: Seed, table_name: str
) -> None:
    table = TABLES[table_name]
    a_row = seed[table_name][HOSPITAL_A_SITES[0]]
    b_site = HOSPITAL_B_SITES[0]
    key = [column.name for column in table.primary_key if column.name != "site"]
    b_row = {**required_row(table, b_site, 7), **{name: a_row[name] for name in key}}
    hospital_b = CALLERS["hospital_b"]

    try:
        with as_caller(app_engine, hospital_b, commit=True) as conn:
            try:
                conn.execute(insert(table).values(b_row))
            except DBAPIError as exc:
                raise AssertionError(
                    f"B learnt that {key}={b_row[key[0]]!r} exists elsewhere: {exc.orig}"
                ) from exc
        after = all_rows(owner_engine, table)
        assert a_row in after  # A's row, unchanged
        assert sum(row["site"] == b_site for row in after) == 2  # B's seeded row and the new one
    finally:
        restore(owner_engine, table, seed[table_name].values())

    # Nor may an upsert, as sync will write, find A's row.
    with as_caller(app_engine, hospital_b) as conn:
        upsert = pg_insert(table).values(b_row).on_conflict_do_nothing(index_elements=list(table.primary_key))
        assert inserted(conn, upsert) == [b_site], "B's upsert found a row B cannot see"


def test_op_ledger_tells_another_hospital_only_that_one_of_its_own_device_ids_is_taken(
    app_engine: Engine, owner_engine: Engine, seed: Seed
) -> None:
    """The ledger is keyed by (device_id, op_id): op ids are the device's own, and the service takes
    device_id from the caller's credential, never from the request. A device is enrolled at one
    hospital's sites, so a hospital-B request only ever writes under B's own device ids and cannot
    collide with a row of A's. Were a B request to write under an A device id (a bug of the service),
    all B would learn is that this (device, op) pair is taken: not the site, not the result, not the
    row (PostgreSQL leaves the key values out of the error when the table has RLS)."""
    ledger = TABLES["op_ledger"]
    a_row = seed["op_ledger"][HOSPITAL_A_SITES[0]]
    hospital_b = CALLERS["hospital_b"]
    b_device_row = {**required_row(ledger, HOSPITAL_B_SITES[0], 8), "op_id": a_row["op_id"]}
    with as_caller(app_engine, hospital_b) as conn:  # B's own device, the same op id as A's: no collision
        assert inserted(conn, insert(ledger).values(b_device_row)) == [HOSPITAL_B_SITES[0]]

    forged = {**b_device_row, "device_id": a_row["device_id"]}
    with pytest.raises(DBAPIError) as caught, as_caller(app_engine, hospital_b) as conn:
        conn.execute(insert(ledger).values(forged))
    error = caught.value.orig
    assert isinstance(error, pg_errors.UniqueViolation)
    assert error.diag.message_detail is None  # no "Key (device_id, op_id)=(...) already exists"
    assert str(error).strip() == 'duplicate key value violates unique constraint "pk_op_ledger"'
    with as_caller(app_engine, hospital_b) as conn:
        assert inserted(conn, pg_insert(ledger).values(forged).on_conflict_do_nothing()) == []
        assert conn.execute(select(ledger).where(ledger.c.device_id == a_row["device_id"])).all() == []
    assert rows_by_site(owner_engine, ledger) == seed["op_ledger"]


@pytest.mark.parametrize("table_name", ["change_log", "audit_events"])
def test_generated_keys_are_not_the_callers_to_choose(
    app_engine: Engine, seed: Seed, table_name: str
) -> None:
    table = TABLES[table_name]
    (key,) = table.primary_key.columns
    row = {
        **required_row(table, HOSPITAL_B_SITES[0], 9),
        key.name: seed[table_name][HOSPITAL_A_SITES[0]][key.name],
    }
    with pytest.raises(DBAPIError) as caught, as_caller(app_engine, CALLERS["hospital_b"]) as conn:
        conn.execute(insert(table).values(row))
    assert isinstance(caught.value.orig, pg_errors.GeneratedAlways)


# A site code containing a comma would grant a second site (the list travels comma-separated).
def test_a_site_code_cannot_smuggle_in_a_second_site(app_engine: Engine, seed: Seed) -> None:
    with pytest.raises(ValueError, match="commas"):
        SiteScope(frozenset({f"{HOSPITAL_A_SITES[0]},{HOSPITAL_B_SITES[0]}"}))


# --- pooled connections: a context ends with its transaction


def test_a_site_context_never_reaches_the_next_transaction_on_a_pooled_connection(
    cloud_db: CloudDatabase, seed: Seed
) -> None:
    engine = make_engine(cloud_db.app_url, pool_size=1)
    hospital_a = CALLERS["hospital_a"]
    assert hospital_a is not None
    try:
        pid, fresh = what_a_plain_transaction_sees(engine)  # a new connection: never set at all
        assert fresh == BLANK

        with scoped_transaction(engine, hospital_a) as conn:
            assert backend_pid(conn) == pid
            assert sites_seen(conn) == set(HOSPITAL_A_SITES)
        assert what_a_plain_transaction_sees(engine) == (pid, BLANK)

        with scoped_transaction(engine, SiteScope.everything()) as conn:
            assert sites_seen(conn) == set(SEEDED_SITES)
        assert what_a_plain_transaction_sees(engine) == (pid, BLANK)

        with pytest.raises(RuntimeError), scoped_transaction(engine, hospital_a) as conn:
            assert sites_seen(conn) == set(HOSPITAL_A_SITES)
            raise RuntimeError("the request failed half-way")
        assert what_a_plain_transaction_sees(engine) == (pid, BLANK)

        treatments = TABLES["treatments"]
        with pytest.raises(DBAPIError), scoped_transaction(engine, hospital_a) as conn:
            conn.execute(insert(treatments).values(required_row(treatments, HOSPITAL_B_SITES[0], 5)))
        assert what_a_plain_transaction_sees(engine) == (pid, BLANK)

        with engine.connect() as conn:  # no explicit begin: autobegin, rolled back on return to the pool
            set_scope(conn, hospital_a)
            assert sites_seen(conn) == set(HOSPITAL_A_SITES)
            conn.commit()  # a commit ends the scope too: what follows sees nothing (fails closed)
            assert sites_seen(conn) == set()
        assert what_a_plain_transaction_sees(engine) == (pid, BLANK)
    finally:
        engine.dispose()


def test_negative_control_a_session_level_setting_would_leak_and_be_caught(
    cloud_db: CloudDatabase, seed: Seed
) -> None:
    """The detector above is not blind: set_config(..., false) outlives its transaction and the next
    plain transaction on that pooled connection sees hospital A. Its own engine, disposed after."""
    engine = make_engine(cloud_db.app_url, pool_size=1)
    try:
        with engine.begin() as conn:
            pid = backend_pid(conn)
            conn.execute(
                text("SELECT set_config('dart.sites', :sites, false)"), {"sites": ",".join(HOSPITAL_A_SITES)}
            )
        leaked_pid, seen = what_a_plain_transaction_sees(engine)
        assert leaked_pid == pid
        assert seen != BLANK
        assert seen[0] == ",".join(HOSPITAL_A_SITES)
        assert seen[2] == dict.fromkeys(HOSPITAL_TABLES, len(HOSPITAL_A_SITES))  # hospital A's rows
    finally:
        engine.dispose()  # the poisoned connection is closed, never handed to another test


# --- the catalogue


def test_every_hospital_table_has_row_level_security_enabled_forced_and_a_site_policy(
    owner_engine: Engine,
) -> None:
    with owner_engine.connect() as conn:
        tables = conn.execute(
            text(
                "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
                "(SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname = ANY(:names)"
            ),
            {"names": list(HOSPITAL_TABLES)},
        ).all()
        policies = conn.execute(
            text(
                "SELECT tablename, policyname, cmd, qual, with_check "
                "FROM pg_policies WHERE schemaname = 'public'"
            )
        ).all()
    assert {t.relname: (t.relrowsecurity, t.relforcerowsecurity, t.policies > 0) for t in tables} == {
        name: (True, True, True) for name in HOSPITAL_TABLES
    }
    # Every policy restricts by the site context (a permissive policy `USING (true)` would open the table).
    for policy in policies:
        assert policy.tablename in HOSPITAL_TABLES, policy
        assert "dart.sites" in policy.qual and "site" in policy.qual, policy
        assert policy.with_check is None or "dart.sites" in policy.with_check, policy


def test_every_table_with_a_site_column_is_a_hospital_table(owner_engine: Engine) -> None:
    """A new table with a `site` column and no row-level security fails here."""
    with owner_engine.connect() as conn:
        site_tables = set(
            conn.execute(
                text(
                    "SELECT c.relname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
                    "AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attname = 'site' AND NOT a.attisdropped"
                )
            ).scalars()
        )
    assert site_tables == set(HOSPITAL_TABLES)


def test_the_service_role_owns_nothing_bypasses_nothing_and_cannot_become_the_owner(
    owner_engine: Engine, app_engine: Engine
) -> None:
    with app_engine.connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar_one() == APP_ROLE
    with owner_engine.connect() as conn:
        role = conn.execute(
            text(
                "SELECT oid, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb "
                "FROM pg_roles WHERE rolname = :r"
            ),
            {"r": APP_ROLE},
        ).one()
        assert (role.rolsuper, role.rolbypassrls, role.rolcreaterole, role.rolcreatedb) == (False,) * 4

        def names(query: str) -> list[str]:
            return list(conn.execute(text(query), {"role": role.oid}).scalars())

        assert names("SELECT relname FROM pg_class WHERE relowner = :role") == []  # tables, sequences, views
        assert names("SELECT proname FROM pg_proc WHERE proowner = :role") == []
        assert names("SELECT nspname FROM pg_namespace WHERE nspowner = :role") == []
        assert names("SELECT typname FROM pg_type WHERE typowner = :role") == []
        assert names("SELECT datname FROM pg_database WHERE datdba = :role") == []
        assert (
            names(
                "SELECT classid::regclass::text FROM pg_shdepend WHERE refobjid = :role AND deptype = 'o' "
                "AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            == []
        )
        # No membership: it cannot SET ROLE to the owner, to a superuser or to anything else.
        assert names("SELECT roleid::regrole::text FROM pg_auth_members WHERE member = :role") == []
        # TRUNCATE ignores row-level security; TRIGGER and REFERENCES would let it run or probe code.
        grants = conn.execute(
            text(
                "SELECT t, p FROM unnest(CAST(:tables AS text[])) t, "
                "unnest(ARRAY['TRUNCATE', 'TRIGGER', 'REFERENCES']) p WHERE has_table_privilege(:name, t, p)"
            ),
            {"tables": list(HOSPITAL_TABLES), "name": APP_ROLE},
        ).all()
        assert grants == []
        # CREATE in a schema would let it create (and so own) objects.
        assert not conn.execute(
            text("SELECT has_schema_privilege(:name, 'public', 'CREATE')"), {"name": APP_ROLE}
        ).scalar_one()


def test_no_view_or_function_reads_hospital_rows_with_its_owners_rights(owner_engine: Engine) -> None:
    """A view runs as its owner (and the migrations' owner may be a superuser, whom FORCE does not
    bind), a SECURITY DEFINER function likewise, and a materialized view has no row-level security."""
    with owner_engine.connect() as conn:
        views = conn.execute(
            text(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND (c.relkind = 'm' OR (c.relkind = 'v' "
                "AND NOT coalesce('security_invoker=true' = ANY(c.reloptions), false)))"
            )
        ).all()
        definers = conn.execute(
            text(
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'public' AND p.prosecdef"
            )
        ).all()
    assert views == []
    assert definers == []


def test_force_binds_a_table_owner_that_is_not_a_superuser(owner_engine: Engine, seed: Seed) -> None:
    """The tests' owner is `postgres`, a superuser, whom nothing binds; this shows FORCE doing its
    job for an ordinary owner. Everything (the role too) is rolled back."""
    owner_role = f"dart_test_owner_{uuid.uuid4().hex[:12]}"
    with owner_engine.connect() as conn:
        transaction = conn.begin()
        try:
            conn.execute(text(f'CREATE ROLE "{owner_role}" NOLOGIN NOSUPERUSER NOBYPASSRLS'))
            for name in HOSPITAL_TABLES:
                conn.execute(text(f'ALTER TABLE {name} OWNER TO "{owner_role}"'))
            conn.execute(text(f'SET LOCAL ROLE "{owner_role}"'))
            assert sites_seen(conn) == set()
            hospital_a = CALLERS["hospital_a"]
            assert hospital_a is not None
            set_scope(conn, hospital_a)
            assert sites_seen(conn) == set(HOSPITAL_A_SITES)
        finally:
            transaction.rollback()


# Reading a sequence would tell any caller every hospital's activity volume.
def test_the_service_role_cannot_read_the_global_sequences(owner_engine: Engine, app_engine: Engine) -> None:
    with owner_engine.connect() as conn:
        granted = conn.execute(
            text(
                "SELECT c.relname, p FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, "
                "unnest(ARRAY['SELECT', 'USAGE', 'UPDATE']) p WHERE n.nspname = 'public' AND c.relkind = 'S' "
                "AND has_sequence_privilege(:name, c.oid, p)"
            ),
            {"name": APP_ROLE},
        ).all()
    assert granted == []


# --- helpers

BLANK: tuple[Any, Any, dict[str, int]] = (None, None, dict.fromkeys(HOSPITAL_TABLES, 0))


def what_a_plain_transaction_sees(engine: Engine) -> tuple[int, tuple[Any, Any, dict[str, int]]]:
    """The backend, the site settings (an empty setting counts as none) and the rows per hospital
    table that a transaction without any set_config sees."""
    with engine.begin() as conn:
        sites, all_sites = conn.execute(
            text("SELECT current_setting('dart.sites', true), current_setting('dart.all_sites', true)")
        ).one()
        counts = {
            name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for name, table in TABLES.items()
        }
        return backend_pid(conn), (sites or None, all_sites or None, counts)


def backend_pid(conn: Connection) -> int:
    return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def sites_seen(conn: Connection) -> set[str]:
    """Every site whose rows this transaction sees, over all hospital tables."""
    seen: set[str] = set()
    for table in TABLES.values():
        seen.update(conn.execute(select(table.c.site).distinct()).scalars())
    return seen


@contextmanager
def as_caller(engine: Engine, scope: SiteScope | None, *, commit: bool = False) -> Iterator[Connection]:
    """One transaction of the service with the caller's site context (or none at all): rolled back
    unless `commit`, and always rolled back on an error."""
    with engine.connect() as conn, conn.begin() as transaction:
        if scope is not None:
            set_scope(conn, scope)
        yield conn
        if not commit:
            transaction.rollback()


@contextmanager
def refused(message: str) -> Iterator[None]:
    """The statement fails with SQLSTATE 42501: a policy's WITH CHECK, or a missing privilege."""
    with pytest.raises(DBAPIError) as caught:
        yield
    error = caught.value.orig
    assert isinstance(error, pg_errors.InsufficientPrivilege), error
    assert message in str(error), error


def required(column: Column) -> bool:
    return not column.nullable and column.server_default is None and column.identity is None


def required_row(table: Table, site: str, n: int) -> Row:
    """A valid row at `site`: every required column filled from its type (n varies the values)."""
    return {column.name: value_for(table, column, site, n) for column in table.columns if required(column)}


def value_for(table: Table, column: Column, site: str, n: int) -> Any:
    if column.name == "site":
        return site
    if (table.name, column.name) in CHECKED_VALUES:
        return CHECKED_VALUES[table.name, column.name]
    kind = column.type
    if isinstance(kind, JSONB):
        return {"n": n, "site": site}
    if isinstance(kind, Boolean):
        return n % 2 == 0
    if isinstance(kind, Integer):  # BigInteger too
        return n
    if isinstance(kind, DateTime):
        return datetime(2026, 11, 26, 8, 0, tzinfo=UTC) + timedelta(minutes=n)
    if isinstance(kind, Date):
        return date(2026, 11, 26) + timedelta(days=n)
    if isinstance(kind, String):  # Text too
        return f"{column.name}-{site}-{n}"[: kind.length]
    raise TypeError(f"no test value for {table.name}.{column.name} ({kind!r}): teach value_for this type")


def mutable_column(table: Table) -> Column:
    """A column an UPDATE can change: not the key, not the site, not generated, not under a CHECK."""
    return next(
        column
        for column in table.columns
        if not column.primary_key
        and column.name != "site"
        and column.identity is None
        and (table.name, column.name) not in CHECKED_VALUES
    )


def inserted(conn: Connection, statement: Any) -> list[str]:
    """The sites of the rows an INSERT wrote (RETURNING: the row must also pass the SELECT policy)."""
    return list(conn.execute(statement.returning(statement.table.c.site)).scalars())


def count_at(table: Table, site: str) -> Any:
    return select(func.count()).select_from(table).where(table.c.site == site)


def all_rows(owner: Engine, table: Table) -> list[Row]:
    """Every row of the table as the owner sees it in an all-sites scope."""
    with scoped_transaction(owner, SiteScope.everything()) as conn:
        return [dict(row) for row in conn.execute(select(table)).mappings()]


def rows_by_site(owner: Engine, table: Table) -> dict[str, Row]:
    rows = all_rows(owner, table)
    by_site = {row["site"]: row for row in rows}
    assert len(by_site) == len(rows), f"{table.name}: more than one row at a site: {rows}"
    return by_site


def restore(owner: Engine, table: Table, rows: Iterable[Row]) -> None:
    """Put the table back to exactly `rows`, generated keys included."""
    names = [column.name for column in table.columns]
    statement = text(
        f"INSERT INTO {table.name} ({', '.join(names)}) OVERRIDING SYSTEM VALUE "
        f"VALUES ({', '.join(f':{name}' for name in names)})"
    ).bindparams(*(bindparam(column.name, type_=column.type) for column in table.columns))
    with scoped_transaction(owner, SiteScope.everything()) as conn:
        conn.execute(delete(table))
        conn.execute(statement, list(rows))
