"""The station's engine: durable on every connection, atomic per transaction, one writer at a time,
and patient data unreadable in the database file (architecture.md, invariants 1 and 2; data at rest).
"""

import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import IntegrityError

from store.crypto import KeyFileError, PatientCipher
from store.engine import BUSY_TIMEOUT_MS, make_engine, pragma_values, read_transaction, write_transaction
from store.migrate import migrate
from store.station import DB_FILE, KEY_FILE, Station, open_station
from store.treatments import start_insertion
from tests.utils.data import NURSE, SITE, TODAY

DURABLE = {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": BUSY_TIMEOUT_MS}
# Long enough that a blocked thread is a hang worth failing, never a wait the test relies on.
THREAD_TIMEOUT_S = 30


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    path = tmp_path / "station.db"
    migrate(path)
    engine = make_engine(path)
    yield engine
    engine.dispose()


@pytest.fixture
def counter_engine(tmp_path: Path) -> Iterator[Engine]:
    """A bare database with one counter row: what matters here is the engine, not the schema."""
    engine = make_engine(tmp_path / "counter.db")
    with write_transaction(engine) as conn:
        conn.exec_driver_sql("CREATE TABLE counter (id INTEGER PRIMARY KEY, value INTEGER NOT NULL)")
        conn.exec_driver_sql("INSERT INTO counter (id, value) VALUES (1, 0)")
    yield engine
    engine.dispose()


CACHE_ROW = (
    "INSERT INTO validation_cache (cache_type, cache_key, payload, bundle_version, valid_until, fetched_at) "
    "VALUES ('bundle', 'current', '{}', 'b-1', '2026-12-03 09:00:00', '2026-11-26 09:00:00')"
)
ORPHAN_SEED = (
    "INSERT INTO removed_seeds (id, treatment_id, reason, removed_at, removed_by, device_id, local_version, "
    "sync_status, hlc, created_at, updated_at) VALUES ('s1', 'no-such-treatment', 'applicator_rupture', "
    "'2026-11-26 09:00:00', 'u', 'd', 1, 'pending', 'h', '2026-11-26 09:00:00', '2026-11-26 09:00:00')"
)


def _count(conn: Connection, table: str) -> int:
    return conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()


# --- pragmas on every pooled connection ----------------------------------------------------------
def test_pragmas_hold_on_every_connection_checked_out_at_once(engine: Engine) -> None:
    # Three connections at the same time force the pool to open three DBAPI connections: a pragma
    # set once on the first would be missing on the second and third.
    with engine.connect() as first, engine.connect() as second, engine.connect() as third:
        dbapi_ids = {id(c.connection.dbapi_connection) for c in (first, second, third)}
        assert len(dbapi_ids) == 3
        for conn in (first, second, third):
            assert pragma_values(conn) == DURABLE


def test_pragmas_hold_on_overflow_connections(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "station.db", pool_size=1)
    try:
        with engine.connect() as pooled, engine.connect() as overflow:
            assert pragma_values(pooled) == DURABLE
            assert pragma_values(overflow) == DURABLE
    finally:
        engine.dispose()


def test_pragmas_hold_inside_write_and_read_transactions(engine: Engine) -> None:
    with write_transaction(engine) as writer:
        assert pragma_values(writer)["foreign_keys"] == 1
    with read_transaction(engine) as reader:
        assert pragma_values(reader) == DURABLE


def test_foreign_keys_are_enforced_on_a_second_connection(engine: Engine) -> None:
    # The behaviour behind the pragma: a row pointing at nothing is refused on any connection.
    with engine.connect() as first, engine.connect() as second:
        for conn in (first, second):
            with pytest.raises(IntegrityError, match="FOREIGN KEY constraint failed"):
                conn.exec_driver_sql(ORPHAN_SEED)
            conn.rollback()


# --- atomicity ----------------------------------------------------------------------------------
def test_a_write_transaction_that_raises_leaves_nothing(engine: Engine) -> None:
    with pytest.raises(RuntimeError, match="power cut"), write_transaction(engine) as conn:
        conn.exec_driver_sql(CACHE_ROW)
        conn.exec_driver_sql(
            "INSERT INTO device_state (id, device_id, last_device_seq, last_audit_seq, last_audit_hash, "
            "hlc_wall_ms, hlc_counter, created_at) VALUES (1, 'st-1', 7, 7, 'h', 0, 0, '2026-11-26 09:00:00')"
        )
        assert _count(conn, "validation_cache") == 1  # written, inside the transaction
        raise RuntimeError("power cut")
    with read_transaction(engine) as conn:
        assert _count(conn, "validation_cache") == 0
        assert _count(conn, "device_state") == 0


def test_a_refused_statement_rolls_back_the_statements_before_it(engine: Engine) -> None:
    with pytest.raises(IntegrityError, match="ck_device_state_single_row"), write_transaction(engine) as conn:
        conn.exec_driver_sql(CACHE_ROW)
        conn.exec_driver_sql(
            "INSERT INTO device_state (id, device_id, last_device_seq, last_audit_seq, last_audit_hash, "
            "hlc_wall_ms, hlc_counter, created_at) VALUES (2, 'st-1', 0, 0, 'h', 0, 0, '2026-11-26 09:00:00')"
        )
    with read_transaction(engine) as conn:
        assert _count(conn, "validation_cache") == 0


def test_a_committed_write_transaction_is_visible_to_another_connection(engine: Engine) -> None:
    with write_transaction(engine) as conn:
        conn.exec_driver_sql(CACHE_ROW)
    with read_transaction(engine) as conn:
        assert _count(conn, "validation_cache") == 1


# --- one writer at a time -----------------------------------------------------------------------
def _increment(engine: Engine) -> int:
    """Read-modify-write: two of these started DEFERRED would deadlock on the upgrade to a write lock
    (one gets 'database is locked' at once) or lose an update; BEGIN IMMEDIATE serialises them."""
    with write_transaction(engine) as conn:
        value = conn.exec_driver_sql("SELECT value FROM counter WHERE id = 1").scalar_one()
        conn.exec_driver_sql("UPDATE counter SET value = ? WHERE id = 1", (value + 1,))
        return value


def test_a_second_writer_waits_for_the_first_and_sees_its_write(counter_engine: Engine) -> None:
    first_has_read = threading.Event()
    second_has_begun = threading.Event()
    second_thread: list[threading.Thread] = []

    def trace(statement: str) -> None:
        # SQLite reports a statement as it starts to run, before it waits for a lock: this is how the
        # first writer knows, without sleeping, that the second one is already at its BEGIN.
        if statement.startswith("BEGIN") and threading.current_thread() in second_thread:
            second_has_begun.set()

    event.listen(counter_engine, "checkout", lambda dbapi, _record, _proxy: dbapi.set_trace_callback(trace))

    def first() -> int:
        with write_transaction(counter_engine) as conn:
            value = conn.exec_driver_sql("SELECT value FROM counter WHERE id = 1").scalar_one()
            first_has_read.set()
            # Hold the write lock until the second writer has issued its BEGIN.
            assert second_has_begun.wait(THREAD_TIMEOUT_S)
            conn.exec_driver_sql("UPDATE counter SET value = ? WHERE id = 1", (value + 1,))
            return value

    def second() -> int:
        second_thread.append(threading.current_thread())
        assert first_has_read.wait(THREAD_TIMEOUT_S)
        return _increment(counter_engine)

    with ThreadPoolExecutor(max_workers=2) as pool:
        first_future = pool.submit(first)
        second_future = pool.submit(second)
        seen_by_first = first_future.result(timeout=THREAD_TIMEOUT_S)
        seen_by_second = second_future.result(timeout=THREAD_TIMEOUT_S)
    # The second transaction began while the first held the lock, waited at BEGIN IMMEDIATE (not
    # failing with 'database is locked'), and then read the first one's committed value.
    assert (seen_by_first, seen_by_second) == (0, 1)
    with read_transaction(counter_engine) as conn:
        assert conn.exec_driver_sql("SELECT value FROM counter").scalar_one() == 2


def test_concurrent_writers_serialise_without_lock_errors_or_lost_updates(counter_engine: Engine) -> None:
    rounds = 25
    start_together = threading.Barrier(2, timeout=THREAD_TIMEOUT_S)

    def writer() -> list[int]:
        seen = []
        for _ in range(rounds):
            start_together.wait()  # both threads race for the lock in every round
            seen.append(_increment(counter_engine))
        return seen

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(writer) for _ in range(2)]
        seen = [v for f in futures for v in f.result(timeout=THREAD_TIMEOUT_S)]
    # Every increment read a distinct value: no two transactions overlapped.
    assert sorted(seen) == list(range(2 * rounds))
    with read_transaction(counter_engine) as conn:
        assert conn.exec_driver_sql("SELECT value FROM counter").scalar_one() == 2 * rounds


def test_a_reader_is_not_blocked_by_an_open_writer(counter_engine: Engine) -> None:
    # WAL: a page can read while a command is in the middle of its write.
    with write_transaction(counter_engine) as writer:
        writer.exec_driver_sql("UPDATE counter SET value = 41 WHERE id = 1")
        with read_transaction(counter_engine) as reader:
            assert reader.exec_driver_sql("SELECT value FROM counter").scalar_one() == 0


# --- the data key file ----------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_key_file_is_created_owner_only(tmp_path: Path) -> None:
    key = tmp_path / "keys" / KEY_FILE
    cipher = PatientCipher.load_or_create(key)
    assert _mode(key) == 0o600
    # Loading again reads the same key rather than replacing it (that would orphan every record).
    token = cipher.encrypt("Cohen, Miriam")
    assert PatientCipher.load_or_create(key).decrypt(token) == "Cohen, Miriam"
    assert _mode(key) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606, 0o777])
def test_a_key_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    key = tmp_path / KEY_FILE
    PatientCipher.load_or_create(key)
    key.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        PatientCipher.load_or_create(key)


def test_a_station_with_an_exposed_key_does_not_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "station"
    open_station(data_dir).close()
    (data_dir / KEY_FILE).chmod(0o644)
    with pytest.raises(KeyFileError):
        open_station(data_dir)
    (data_dir / KEY_FILE).chmod(0o600)
    open_station(data_dir).close()


def test_a_station_does_not_create_its_database_when_the_key_is_exposed(tmp_path: Path) -> None:
    data_dir = tmp_path / "station"
    data_dir.mkdir()
    key = tmp_path / "elsewhere" / KEY_FILE
    PatientCipher.load_or_create(key)
    key.chmod(0o640)
    with pytest.raises(KeyFileError):
        open_station(data_dir, key_file=key)
    assert not (data_dir / DB_FILE).exists()


# --- patient identifiers are ciphertext on disk ---------------------------------------------------
def _database_bytes(station: Station) -> bytes:
    db = station.data_dir / DB_FILE
    return b"".join(p.read_bytes() for p in (db, db.with_name(f"{DB_FILE}-wal")) if p.exists())


def test_patient_identifiers_never_reach_the_database_file_in_clear(station: Station) -> None:
    surgeon = "Dr. Sapir Avraham"
    change = start_insertion(station, NURSE, site=SITE, day=TODAY, surgeon=surgeon, order_names=["SO2611001"])
    # The treatment is real and readable through the key...
    assert station.cipher.decrypt(change.record["patient_label_enc"]) == "Cohen, Miriam"
    assert station.cipher.decrypt(change.record["subject_id_enc"]) == "SO2611001"

    on_disk = _database_bytes(station)
    # ...and the scan of the files sees what was written (the surgeon is not a patient identifier).
    assert surgeon.encode() in on_disk
    for secret in ("Cohen, Miriam", "Cohen", "Miriam", "SO2611001"):
        for encoded in (secret.encode("utf-8"), secret.upper().encode(), secret.encode("utf-16-le")):
            assert encoded not in on_disk, f"{secret!r} is stored in clear"

    # Also after the WAL is folded into the main file when the station closes.
    station.close()
    on_disk = _database_bytes(station)
    assert surgeon.encode() in on_disk
    assert b"Cohen, Miriam" not in on_disk
    assert b"SO2611001" not in on_disk


def test_the_schedule_of_other_patients_is_not_in_clear_either(station: Station) -> None:
    # The validation bundle holds the week's orders for every patient, not just the one treated.
    on_disk = _database_bytes(station)
    assert b"DART-9000-00000" in on_disk  # the inventory is there (serials are not identifiers)
    for patient, order in [("Levi, Amir", "SO2611002"), ("Peretz, Ruth", "SO2611003")]:
        assert patient.encode() not in on_disk
        assert order.encode() not in on_disk


def test_the_database_file_alone_does_not_decrypt(station: Station, tmp_path: Path) -> None:
    # A copied database with a new key (the original key stays on the laptop) reads nothing back.
    change = start_insertion(
        station, NURSE, site=SITE, day=date(2026, 11, 26), surgeon="Dr. Avraham", order_names=["SO2611001"]
    )
    stranger = PatientCipher.load_or_create(tmp_path / "other.key")
    with pytest.raises(InvalidTag):
        stranger.decrypt(change.record["patient_label_enc"])
