"""Cloud sync throughput: push over HTTP into PostgreSQL, pull on a second device, and the bundle.

    python benchmarks/cloud_sync.py [--ops 20000] [--batch 50] [--inventory 100000]
                                    [--server process|thread] [--devices 4] [--device-ops 1000]
                                    [--pg-url URL]

Everything runs against the machine's PostgreSQL in two fresh databases (`dart_bench_<uuid>`,
migrated with cloud.migrate.upgrade, always dropped at the end), served by the real app
(cloud.app.create_app) with uvicorn on 127.0.0.1, connected as the service role `dart_app`, so
row-level security, the ledger trigger and every check of cloud/push.py are paid for.

(a) push: `--ops` operations in the wire format of sync/protocol.py, as a station's sync_queue
    holds them: per treatment one insert, 35 or 45 applicator scans (inserts depending on the
    treatment's insert), 8 status changes (two applicators OPENED -> LOADED -> INSERTED, two
    OPENED; each depending on the applicator's previous op) and a finalise (is_complete, signed,
    depending on every op of the treatment), 50 ops per treatment on average, so batches straddle
    treatments and some dependencies are checked in the ledger rather than in the batch. Patient
    fields travel in clear beside the station's own ciphertext (which the cloud drops). Every
    scanned serial is in Priority's inventory, so each scan is re-checked against it and each
    INSERTED applicator queues a write-back. Sent by one device in batches of `--batch` (the
    station's default, 50) over one keep-alive connection; every result must be `applied`. Two
    warm-up treatments (100 ops) go first, untimed; then the tables are analyzed, as autovacuum
    would have done on a live cloud: it is off on this server, and without statistics the plans
    cached while the tables were empty find a record by its site alone, reading the whole site
    for every lookup (the push then slows down as the site grows, whatever the code does).
(b) pull: a second device of the same sites pulls everything from cursor 0 in pages, at the
    default page size (500, the RESULT figure) and at the maximum (5000); each time the number of
    changes must equal the number of operations pushed (the warm-up's included).
(c) bundle: priority_applicators is filled with `--inventory` rows for the site (straight SQL,
    as the Priority refresh would), then GET /api/v1/sync/bundle is timed end to end (built,
    sent, received and parsed) for a device of that site; the body must verify with
    store.validation_cache.bundle_checksum (timed apart: it is the station's work) and list every
    row.
(d) the baseline: the very rows (a) left - the clinical rows with their final `data` and
    `field_hlc`, the op_ledger rows with their results, the change_log rows - written again with
    psycopg executemany (pipelined) into the second database, as `dart_app` with the same site
    scope, one transaction per `--batch` operations in the same order: INSERT for an insert op,
    UPDATE for an update op, then the ledger and change_log rows (under the same advisory lock),
    after the same warm-up rows and ANALYZE. The write-back queue rows (3 per treatment) are not
    repeated. The ratio is the baseline's operations/s divided by the push's: what HTTP, the
    validation, the checks (cloud/push.py reads and writes a batch set-based: a lock, a read and
    a write statement per batch) and the SQLAlchemy layer cost on top of the unavoidable writes.
    Both sides share the machine's two cores with whatever else runs: compare the ratio, and run
    it a few times.
(e) `--devices N` (default 4, 0 for none): after (a), N more devices push `--device-ops` each at
    once, one thread each; reported on its own line, not in RESULT.

The server runs by default in its own process (`--server process`: uvicorn, one worker, started
from this file), because a station and the cloud are different machines: in one process the
client's JSON work and the server's would share one GIL and the figures would measure that.
`--server thread` serves it in a thread of this process, as the tests do, for comparison: on this
2-core machine it pushed 6,000 ops at 546/s against 592/s in a process (the client's share of the
work is small); pulls lose more, since the client parses as much JSON as the server writes. Either
way the client, the server and the PostgreSQL backend share two cores.

The last line is
`RESULT push_ops_per_s=<n> pull_rows_per_s=<n> push_ratio_vs_direct=<x> bundle_100k_s=<s>`.
Targets: 2,000 ops/s pushed, 10,000 rows/s pulled, a 100,000-row bundle in under 10 s.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

SERVER_URL = os.environ.get(
    "DART_BENCH_PG_URL", os.environ.get("DART_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
)
DATABASE_PREFIX = "dart_bench_"
APP_ROLE = "dart_app"
SITE, SECOND_SITE = "TLV-1", "TLV-2"
WARM_UP_OPS = 100  # two treatments, pushed first and untimed; then the tables are analyzed
PUSH_PATH, PULL_PATH, BUNDLE_PATH = "/api/v1/sync/push", "/api/v1/sync/pull", "/api/v1/sync/bundle"
PER_ORDER = 50  # inventory serials listed per Priority order
STARTUP_TIMEOUT_S = 60


# --- databases ---------------------------------------------------------------------------------
def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def as_role(url: str, role: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{role}@{rest.partition('@')[2]}"


@contextmanager
def bench_database(server_url: str) -> Iterator[str]:
    """Create `dart_bench_<uuid>`, yield its SQLAlchemy URL (owner), always drop it."""
    name = f"{DATABASE_PREFIX}{uuid.uuid4().hex}"
    maintenance = f"{libpq(server_url)}/postgres"
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{server_url}/{name}"
    finally:
        with psycopg.connect(maintenance, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def analyze(owner_url: str) -> None:
    """What autovacuum would have done on a live cloud (it is off on this server): without any
    statistics, plans cached while the tables were empty look records up by site alone, and every
    lookup then reads the whole site."""
    with psycopg.connect(libpq(owner_url), autocommit=True) as conn:
        conn.execute("ANALYZE")


def scoped(conn: psycopg.Connection, sites: str = "", *, all_sites: bool = False) -> None:
    conn.execute(
        "SELECT set_config('dart.sites', %s, true), set_config('dart.all_sites', %s, true)",
        (sites, "on" if all_sites else "off"),
    )


# --- the cloud's data: sites, devices, a user, Priority's orders and inventory ------------------
def order_name(number: int) -> str:
    return f"SO-BENCH-{number:05d}"


def serial(order: int, index: int) -> str:
    return f"DART-{order:05d}-{index:05d}"


def add_device(conn: psycopg.Connection, sites: tuple[str, ...], name: str) -> tuple[str, str]:
    from cloud.tokens import digest, new_token

    token, device_id = new_token(), f"st-{uuid.uuid4().hex[:12]}"
    conn.execute(
        "INSERT INTO devices (id, name, sites, credential_hash, enrolled_by) "
        "VALUES (%s, %s, %s, %s, 'bench')",
        (device_id, name, list(sites), digest(token)),
    )
    return device_id, token


def seed_cloud(owner_url: str, key_file: Path, inventory: int, orders: int, now: datetime) -> None:
    """Sites, a nurse, today's orders and `inventory` applicators at SITE (as the refresh stores them)."""
    from cloud.cipher import load_cipher, seal_record

    cipher = load_cipher(key_file)
    with psycopg.connect(libpq(owner_url)) as conn:
        scoped(conn, all_sites=True)
        conn.execute(
            "INSERT INTO sites (code, name, hospital) VALUES (%s, %s, 'T'), (%s, %s, 'T')",
            (SITE, SITE, SECOND_SITE, SECOND_SITE),
        )
        conn.execute(
            "INSERT INTO users (id, email, name, role, sites, position, pin_hash) "
            "VALUES ('u-nurse', 'nurse@hospital.example', 'Dana Shapiro', 'hospital', %s, 'Nurse', "
            "'$argon2id$bench')",
            ([SITE, SECOND_SITE],),
        )
        with conn.cursor().copy(
            "COPY priority_orders (site, order_name, day, data, refreshed_at) FROM STDIN"
        ) as copy:
            for o in range(orders):
                entry = {
                    "order_name": order_name(o),
                    "patient_label": f"Patient {o}",
                    "site": SITE,
                    "day": now.date().isoformat(),
                    "indication": "pancreas",
                    "seeds": 10 * PER_ORDER,
                    "activity_per_seed": 2.5,
                    "seed_length": 10.0,
                }
                sealed = orjson.dumps(seal_record(entry, cipher)).decode()
                copy.write_row((SITE, order_name(o), now.date(), sealed, now))
        with conn.cursor().copy(
            "COPY priority_applicators (site, serial, order_name, data, refreshed_at) FROM STDIN"
        ) as copy:
            for n in range(inventory):
                o, i = divmod(n, PER_ORDER)
                item = {
                    "serial": serial(o, i),
                    "order_name": order_name(o),
                    "site": SITE,
                    "catalogue_number": "DART-PAN-10",
                    "applicator_type": "Pancreas applicator",
                    "seeds": 10,
                    "seed_length": 10.0,
                    "expiry": "2027-06-30",
                    "lot": f"LOT-{o:05d}",
                    "usage": None,
                    "priority_order": order_name(o),
                    "kline": i + 1,
                }
                copy.write_row((SITE, serial(o, i), order_name(o), orjson.dumps(item).decode(), now))
        conn.execute("ANALYZE priority_orders, priority_applicators")  # as autovacuum would after a refresh


# --- the station's operations, in the wire format ------------------------------------------------
@dataclass
class Journal:
    """A station's sync_queue, in device_seq order, as the sync engine sends it."""

    device_id: str
    wall_ms: int
    ops: list[dict[str, Any]] = field(default_factory=list)
    _counter: int = 0

    def hlc(self) -> str:
        self._counter += 1
        return f"{self.wall_ms:015d}-{self._counter:06d}-{self.device_id}"

    def add(self, **op: Any) -> dict[str, Any]:
        entry = {
            "op_id": str(uuid.uuid4()),
            "device_id": self.device_id,
            "device_seq": len(self.ops) + 1,
            "changed": {},
            "base_version": None,
            "hlc": op["payload"]["hlc"],
            "clock_offset_ms": 0,
            "depends_on": [],
            **op,
        }
        self.ops.append(entry)
        return entry


def station_ciphertext(text: str) -> str:
    # Stands for the station's own AES-GCM token (same length class); the cloud drops it.
    return "v1:" + orjson.dumps(text).hex()[:56]


def treatment_payload(
    journal: Journal, treatment_id: str, site: str, order: str, at: str, hlc: str
) -> dict[str, Any]:
    label = f"Patient {order[-5:]}"
    return {
        "activity_per_seed": 2.5,
        "created_at": at,
        "date": at[:10],
        "device_id": journal.device_id,
        "hlc": hlc,
        "id": treatment_id,
        "indication": "pancreas",
        "is_complete": False,
        "needs_reconciliation": False,
        "order_hashes": [uuid.uuid5(uuid.NAMESPACE_OID, order).hex * 2],
        "patient_label_enc": station_ciphertext(label),
        "planned_seeds": 80,
        "site": site,
        "started_at": at,
        "started_by": "u-nurse",
        "subject_hash": uuid.uuid5(uuid.NAMESPACE_OID, order).hex * 2,
        "subject_id_enc": station_ciphertext(order),
        "surgeon": "Dr. Gold",
        "type": "insertion",
        "updated_at": at,
        "subject_id": order,
        "patient_label": label,
    }


FINALISE_FIELDS = {
    "completed_at": None,
    "completed_by": "u-nurse",
    "is_complete": True,
    "signature_mode": "self",
    "signature_status": "confirmed",
    "signed_at": None,
    "signed_by_user_id": "u-nurse",
    "signer_name": "Dana Shapiro",
    "signer_position": "Nurse",
}
TREATMENT_NULLS = [
    "deleted_at",
    "deleted_by",
    "deleted_reason",
    "gap_in_tissue",
    "gap_lost",
    "gap_other",
    "gap_other_text",
    "gap_retrieved",
    "insertion_treatment_id",
    "parent_treatment_id",
    "removal_all_same_day",
    "removal_date",
    "removal_other_date",
    "removal_other_reason",
]
APPLICATOR_NULLS = [
    "amended_at",
    "amended_by",
    "amendment_reason",
    "comments",
    "deleted_at",
    "deleted_by",
    "deleted_reason",
    "package_id",
    "photo_path",
    "removal_comment",
    "removal_photo_path",
    "removal_time",
    "removal_treatment_id",
    "removed_by",
    "reused_from_id",
    "status_changed_at",
]


def applicator_payload(
    journal: Journal, applicator_id: str, treatment_id: str, serial_number: str, at: str, hlc: str
) -> dict[str, Any]:
    return {
        "applicator_type": "Pancreas applicator",
        "bundle_version": "b-bench",
        "catalogue_number": "DART-PAN-10",
        "created_at": at,
        "deployed_seeds": 0,
        "device_id": journal.device_id,
        "expiry_date": "2027-06-30",
        "gtin": None,
        "hlc": hlc,
        "id": applicator_id,
        "is_removed": False,
        "lot": serial_number[5:10],
        "scan_outcome": "valid",
        "scan_warnings": [],
        "scanned_at": at,
        "scanned_by": "u-nurse",
        "seed_length": 10.0,
        "seed_quantity": 10,
        "serial_number": serial_number,
        "status": "SEALED",
        "treatment_id": treatment_id,
        "updated_at": at,
    }


# Status changes per treatment: (applicator index, statuses in order). 8 updates.
MOVES = ((0, ("OPENED", "LOADED", "INSERTED")), (1, ("OPENED", "LOADED", "INSERTED")), (2, ("OPENED",)))
MOVES += ((3, ("OPENED",)),)


def treatment_ops(journal: Journal, site: str, order: int, scans: int, at: datetime) -> None:
    """One treatment as the station journals it: start, scans, status changes, finalise."""
    stamp = at.isoformat()
    treatment_id, name = str(uuid.uuid4()), order_name(order)
    hlc = journal.hlc()
    record = treatment_payload(journal, treatment_id, site, name, stamp, hlc)
    start = journal.add(
        site=site, table="treatments", record_id=treatment_id, kind="insert", payload=record, priority=1
    )
    mine = [start["op_id"]]
    last_op: dict[str, dict[str, Any]] = {}
    for index in range(scans):
        applicator_id, hlc = str(uuid.uuid4()), journal.hlc()
        payload = applicator_payload(journal, applicator_id, treatment_id, serial(order, index), stamp, hlc)
        scan = journal.add(
            site=site,
            table="applicators",
            record_id=applicator_id,
            kind="insert",
            payload=payload,
            priority=4,
            depends_on=[start["op_id"]],
        )
        last_op[applicator_id] = scan
        mine.append(scan["op_id"])
    applicator_ids = list(last_op)
    for index, statuses in MOVES:
        applicator_id = applicator_ids[index]
        for status in statuses:
            before = last_op[applicator_id]
            base = {**{k: None for k in APPLICATOR_NULLS}, **before["payload"]}
            changes: dict[str, Any] = {"status": status, "hlc": journal.hlc(), "updated_at": stamp}
            if status == "OPENED":
                changes["status_changed_at"] = stamp
            if status == "INSERTED":
                changes["deployed_seeds"] = 10
            after = {**base, **changes}
            changed = {k: [base.get(k), v] for k, v in changes.items() if k not in ("hlc", "updated_at")}
            move = journal.add(
                site=site,
                table="applicators",
                record_id=applicator_id,
                kind="update",
                payload=after,
                changed=changed,
                hlc=changes["hlc"],
                priority=5,
                depends_on=[before["op_id"]],
            )
            last_op[applicator_id] = move
            mine.append(move["op_id"])
    hlc = journal.hlc()
    final_fields = {**FINALISE_FIELDS, "completed_at": stamp, "signed_at": stamp}
    base = {**{k: None for k in (*TREATMENT_NULLS, *FINALISE_FIELDS)}, **record}
    base["is_complete"] = False
    finalised = {**base, **final_fields, "hlc": hlc, "updated_at": stamp}
    journal.add(
        site=site,
        table="treatments",
        record_id=treatment_id,
        kind="update",
        payload=finalised,
        changed={k: [base.get(k), v] for k, v in final_fields.items()},
        priority=2,
        depends_on=mine,
    )


def orders_for(count: int) -> int:
    """At least as many treatments (one order each) as build_ops makes for `count` operations."""
    return count // 45 + 1


def build_ops(device_id: str, site: str, count: int, first_order: int, at: datetime) -> list[dict[str, Any]]:
    """`count` operations: treatments of 45 and 55 ops in turn (35 or 45 scans), cut at `count`."""
    journal = Journal(device_id, int(at.timestamp() * 1000))
    order = first_order
    while len(journal.ops) < count:
        treatment_ops(journal, site, order, 35 if order % 2 == 0 else 45, at)
        order += 1
    return journal.ops[:count]


# --- the cloud over HTTP -----------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_here(database_url: str, key_file: Path, port: int) -> None:
    """The `--serve` mode: this file as the cloud's process (uvicorn, one worker)."""
    import uvicorn

    from cloud.app import create_app
    from cloud.config import CloudSettings

    settings = CloudSettings(database_url=database_url, data_key_file=key_file)
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextmanager
def cloud_process(database_url: str, key_file: Path) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, __file__, "--serve", database_url, str(key_file), str(port)]
    server = subprocess.Popen(command)
    try:
        yield wait_until_up(f"http://127.0.0.1:{port}", server)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextmanager
def cloud_thread(database_url: str, key_file: Path) -> Iterator[str]:
    import uvicorn

    from cloud.app import create_app
    from cloud.config import CloudSettings

    class Server(uvicorn.Server):
        def install_signal_handlers(self) -> None:  # a thread cannot own signal handlers
            pass

    port = free_port()
    app = create_app(CloudSettings(database_url=database_url, data_key_file=key_file))
    server = Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        yield wait_until_up(f"http://127.0.0.1:{port}", None)
    finally:
        server.should_exit = True
        thread.join(STARTUP_TIMEOUT_S)


def wait_until_up(url: str, process: subprocess.Popen[bytes] | None) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the cloud process exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the cloud at {url} did not answer within {STARTUP_TIMEOUT_S} s")


def client(url: str, token: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return httpx.Client(base_url=url, headers=headers, timeout=120)


@dataclass
class Timing:
    items: int
    wall: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.items / self.wall


def push_all(url: str, token: str, ops: list[dict[str, Any]], batch: int) -> Timing:
    """Push in batches over one keep-alive connection; every result must be `applied`."""
    from sync.protocol import PROTOCOL_VERSION

    latencies: list[float] = []
    with client(url, token) as http:
        started = time.perf_counter()
        for first in range(0, len(ops), batch):
            chunk = ops[first : first + batch]
            body = {"protocol": PROTOCOL_VERSION, "device_seq_high": chunk[-1]["device_seq"], "ops": chunk}
            t0 = time.perf_counter()
            response = http.post(PUSH_PATH, content=orjson.dumps(body))
            if response.status_code != 200:
                raise RuntimeError(f"push answered {response.status_code}: {response.text[:500]}")
            results = orjson.loads(response.content)["results"]
            latencies.append(time.perf_counter() - t0)
            refused = [r for r in results if r["status"] != "applied"]
            if refused or len(results) != len(chunk):
                raise RuntimeError(f"not applied: {refused[:2]}")
        wall = time.perf_counter() - started
    return Timing(len(ops), wall, latencies)


def push_concurrently(url: str, devices: list[tuple[str, list[dict[str, Any]]]], batch: int) -> Timing:
    barrier = threading.Barrier(len(devices) + 1)
    timings: list[Timing | BaseException] = [RuntimeError("no answer")] * len(devices)

    def run(index: int, token: str, ops: list[dict[str, Any]]) -> None:
        barrier.wait()
        try:
            timings[index] = push_all(url, token, ops, batch)
        except BaseException as exc:
            timings[index] = exc

    threads = [threading.Thread(target=run, args=(i, t, o)) for i, (t, o) in enumerate(devices)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies: list[float] = []
    for timing in timings:
        if isinstance(timing, BaseException):
            raise timing
        latencies += timing.latencies
    return Timing(sum(len(o) for _, o in devices), wall, latencies)


def pull_all(url: str, token: str, limit: int) -> tuple[Timing, set[int]]:
    """Every change from cursor 0, page by page, as a station starting afresh would."""
    latencies: list[float] = []
    seqs: set[int] = set()
    count, cursor = 0, 0
    with client(url, token) as http:
        started = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            response = http.get(PULL_PATH, params={"cursor": cursor, "limit": limit})
            if response.status_code != 200:
                raise RuntimeError(f"pull answered {response.status_code}: {response.text[:500]}")
            page = orjson.loads(response.content)
            latencies.append(time.perf_counter() - t0)
            count += len(page["changes"])
            seqs.update(change["seq"] for change in page["changes"])
            cursor = page["next_cursor"]
            if not page["has_more"]:
                break
        wall = time.perf_counter() - started
    return Timing(count, wall, latencies), seqs


def fetch_bundle(url: str, token: str) -> tuple[float, float, dict[str, Any], int]:
    """Seconds to build, download and parse; seconds to verify; the body; its size in bytes."""
    from store.validation_cache import bundle_checksum

    with client(url, token) as http:
        started = time.perf_counter()
        response = http.get(BUNDLE_PATH)
        if response.status_code != 200:
            raise RuntimeError(f"bundle answered {response.status_code}: {response.text[:500]}")
        body = orjson.loads(response.content)
        fetched = time.perf_counter() - started
    started = time.perf_counter()
    if bundle_checksum(body) != body["checksum"]:
        raise RuntimeError("the bundle does not verify with bundle_checksum")
    verified = time.perf_counter() - started
    return fetched, verified, body, len(response.content)


# --- the baseline: the same rows straight into PostgreSQL ----------------------------------------
CLINICAL_COLUMNS = "site, id, version, data, field_hlc, deleted, device_id, last_op_id"


@dataclass
class DirectBatch:
    inserts: dict[str, list[tuple[Any, ...]]]
    updates: dict[str, list[tuple[Any, ...]]]
    ledger: list[tuple[Any, ...]]
    changes: list[tuple[Any, ...]]


def direct_batches(owner_url: str, ops: list[dict[str, Any]], batch: int) -> list[DirectBatch]:
    """What the push stored, grouped as it was pushed: per batch, the rows to write again."""
    with psycopg.connect(libpq(owner_url)) as conn:
        scoped(conn, all_sites=True)
        records: dict[tuple[str, str], tuple[Any, ...]] = {}
        for table in ("treatments", "applicators"):
            extra = ", treatment_id, serial_number" if table == "applicators" else ""
            query = f"SELECT {CLINICAL_COLUMNS}{extra} FROM {table}"
            for row in conn.execute(query):
                records[(table, row[1])] = row
        ledger = dict(conn.execute("SELECT op_id, result FROM op_ledger").fetchall())
        changes = {
            row[3]: row
            for row in conn.execute(
                "SELECT site, table_name, record_id, op_id, device_id, version FROM change_log"
            )
        }
    batches = []
    for first in range(0, len(ops), batch):
        work = DirectBatch(defaultdict(list), defaultdict(list), [], [])
        for op in ops[first : first + batch]:
            row = records[(op["table"], op["record_id"])]
            site, record_id, _version, data, field_hlc, deleted, device_id, _last, *extra = row
            change = changes[op["op_id"]]
            if op["kind"] == "insert":
                values = (site, record_id, 1, Jsonb(data), Jsonb(field_hlc), deleted, device_id, op["op_id"])
                work.inserts[op["table"]].append((*values, *extra))
            else:
                values = (change[5], Jsonb(data), Jsonb(field_hlc), deleted, op["op_id"], site, record_id)
                work.updates[op["table"]].append(values)
            work.ledger.append((device_id, op["op_id"], site, Jsonb(ledger[op["op_id"]])))
            work.changes.append(change)
        batches.append(work)
    return batches


def direct_run(app_url: str, batches: list[DirectBatch], sites: str, *, ledger_after: int) -> Timing:
    """Write the batches, one transaction each; the ledger must then hold `ledger_after` rows."""
    from cloud.push import CHANGE_LOG_LOCK

    inserts = {
        "treatments": f"INSERT INTO treatments ({CLINICAL_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        "applicators": f"INSERT INTO applicators ({CLINICAL_COLUMNS}, treatment_id, serial_number) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
    }
    update = (
        "UPDATE {} SET version = %s, data = %s, field_hlc = %s, deleted = %s, last_op_id = %s, "
        "updated_at = now() WHERE site = %s AND id = %s"
    )
    ledger = "INSERT INTO op_ledger (device_id, op_id, site, result) VALUES (%s, %s, %s, %s)"
    change_log = (
        "INSERT INTO change_log (site, table_name, record_id, op_id, device_id, version) "
        "VALUES (%s, %s, %s, %s, %s, %s)"
    )
    latencies: list[float] = []
    with psycopg.connect(libpq(app_url)) as conn:
        started = time.perf_counter()
        for work in batches:
            t0 = time.perf_counter()
            with conn.transaction(), conn.cursor() as cur:
                scoped(conn, sites)
                for table, rows in work.inserts.items():
                    cur.executemany(inserts[table], rows)
                for table, rows in work.updates.items():
                    cur.executemany(update.format(table), rows)
                cur.executemany(ledger, work.ledger)
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (CHANGE_LOG_LOCK,))
                cur.executemany(change_log, work.changes)
            latencies.append(time.perf_counter() - t0)
        wall = time.perf_counter() - started
        with conn.transaction():
            scoped(conn, sites)
            written = conn.execute("SELECT count(*) FROM op_ledger").fetchone()
    if written is None or written[0] != ledger_after:
        raise RuntimeError(f"the ledger holds {written} rows after the baseline, not {ledger_after}")
    return Timing(sum(len(work.ledger) for work in batches), wall, latencies)


# --- the report --------------------------------------------------------------------------------
def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def row(name: str, unit: str, timing: Timing) -> str:
    lat = timing.latencies
    return (
        f"{name:30} {timing.items:7d} {unit:7} {timing.wall:8.2f} {timing.rate:9.0f} "
        f"{len(lat):6d} {statistics.median(lat) * 1e3:8.1f} {percentile(lat, 0.99) * 1e3:8.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--ops", type=int, default=20_000, help="operations pushed by one device")
    parser.add_argument("--batch", type=int, default=50, help="operations per push (and per baseline tx)")
    parser.add_argument("--inventory", type=int, default=100_000, help="priority_applicators rows")
    parser.add_argument("--server", choices=("process", "thread"), default="process")
    parser.add_argument("--devices", type=int, default=4, help="then push from N devices at once")
    parser.add_argument("--device-ops", type=int, default=1_000, help="operations per concurrent device")
    parser.add_argument("--pg-url", default=SERVER_URL, help="the PostgreSQL server (a superuser)")
    parser.add_argument(
        "--serve", nargs=3, metavar=("DATABASE_URL", "KEY_FILE", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve:
        database_url, key_file, port = args.serve
        serve_here(database_url, Path(key_file), int(port))
        return

    from cloud.migrate import upgrade

    total_started = time.perf_counter()
    now = datetime.now(UTC).replace(microsecond=0)
    # Priority orders (one per treatment, PER_ORDER serials each): the timed device's, each
    # concurrent device's, then the warm-up's; no serial is scanned in two treatments.
    concurrent_first = orders_for(args.ops)
    warm_up_first = concurrent_first + args.devices * orders_for(args.device_ops)
    orders_needed = warm_up_first + orders_for(WARM_UP_OPS)
    if orders_needed * PER_ORDER > args.inventory:
        raise SystemExit(f"--inventory must list at least {orders_needed * PER_ORDER} serials for the scans")
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cloud_sync-")))
        key_file = tmp / "cloud-data.key"
        owner_url = stack.enter_context(bench_database(args.pg_url))
        direct_owner_url = stack.enter_context(bench_database(args.pg_url))
        upgrade(owner_url)
        upgrade(direct_owner_url)
        seed_cloud(owner_url, key_file, args.inventory, orders_needed, now)
        with psycopg.connect(libpq(owner_url)) as conn:
            pusher, push_token = add_device(conn, (SITE, SECOND_SITE), "OR laptop 1")
            _puller, pull_token = add_device(conn, (SITE, SECOND_SITE), "OR laptop 2")
            concurrent = [
                add_device(conn, (SITE, SECOND_SITE), f"OR laptop c{i}") for i in range(args.devices)
            ]
        app_url = as_role(owner_url, APP_ROLE)
        serving = cloud_process if args.server == "process" else cloud_thread
        url = stack.enter_context(serving(app_url, key_file))

        warm_up = build_ops(pusher, SITE, WARM_UP_OPS, warm_up_first, now)
        push_all(url, push_token, warm_up, args.batch)
        analyze(owner_url)
        ops = build_ops(pusher, SITE, args.ops, 0, now)
        push = push_all(url, push_token, ops, args.batch)

        concurrent_push = None
        if args.devices:
            work = []
            for index, (device_id, token) in enumerate(concurrent):
                start = concurrent_first + index * orders_for(args.device_ops)
                work.append((token, build_ops(device_id, SITE, args.device_ops, start, now)))
            concurrent_push = push_concurrently(url, work, args.batch)

        expected = len(warm_up) + args.ops + args.devices * args.device_ops
        pulls = {}
        for limit in (500, 5000):
            timing, seqs = pull_all(url, pull_token, limit)
            if timing.items != expected or len(seqs) != expected:
                raise RuntimeError(f"page {limit}: pulled {timing.items} changes, pushed {expected}")
            pulls[limit] = timing

        bundle_s, verify_s, body, size = fetch_bundle(url, push_token)
        if len(body["inventory"]) != args.inventory:
            raise RuntimeError(f"the bundle lists {len(body['inventory'])} applicators, not {args.inventory}")

        direct_url, direct_sites = as_role(direct_owner_url, APP_ROLE), f"{SITE},{SECOND_SITE}"
        warm_up_rows = direct_batches(owner_url, warm_up, args.batch)
        direct_run(direct_url, warm_up_rows, direct_sites, ledger_after=len(warm_up))
        analyze(direct_owner_url)
        batches = direct_batches(owner_url, ops, args.batch)
        direct = direct_run(direct_url, batches, direct_sites, ledger_after=len(warm_up) + len(ops))

    with psycopg.connect(f"{libpq(args.pg_url)}/postgres") as conn:
        version = conn.execute("SHOW server_version").fetchone()
    ratio = direct.rate / push.rate
    print(
        f"PostgreSQL {version[0] if version else '?'}, server in a {args.server}, {os.cpu_count()} cores, "
        f"{args.batch} ops per push, total run {time.perf_counter() - total_started:.1f} s"
    )
    print(
        f"{'':30} {'items':>7} {'':7} {'total s':>8} {'items/s':>9} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8}"
    )
    print(row("push over HTTP (1 device)", "ops", push))
    if concurrent_push is not None:
        print(row(f"push over HTTP ({args.devices} devices)", "ops", concurrent_push))
    print(row("direct psycopg (3 rows per op)", "ops", direct))
    for limit, timing in pulls.items():
        print(row(f"pull, page {limit}", "changes", timing))
    bundle = Timing(len(body["inventory"]), bundle_s, [bundle_s])
    print(row(f"bundle ({size / 1e6:.1f} MB)", "rows", bundle))
    print(f"bundle checksum verified by the station in {verify_s:.2f} s; push/direct ratio {ratio:.2f}")
    print(
        f"RESULT push_ops_per_s={push.rate:.0f} pull_rows_per_s={pulls[500].rate:.0f} "
        f"push_ratio_vs_direct={ratio:.2f} bundle_100k_s={bundle_s:.2f}"
    )


if __name__ == "__main__":
    main()
