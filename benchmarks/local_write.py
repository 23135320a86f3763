"""Local write throughput: durable scans through the domain command against the same rows in raw sqlite3.

    python benchmarks/local_write.py [--scans 2000] [--treatments 20] [--dir PATH] [--profile FILE]

(a) `scan_applicator` on a station with a fixed clock (so the validation bundle stays valid), each
    call timed. Every scan is one durable transaction: WAL, synchronous=FULL.
(b) The baseline: the very rows (a) wrote - the applicator, its sync-queue entry, its audit entry
    and the device_state update - copied from (a)'s database and written with plain sqlite3, the
    same pragmas, one BEGIN IMMEDIATE ... COMMIT per scan, into a fresh copy of the schema made by
    the project's migrations.

The ratio is raw throughput / command throughput: what the checks, the SQLAlchemy layer, the
hashing and the JSON cost on top of the unavoidable fsync per scan. Both runs use the same
directory (by default a temporary one; --dir puts them on the disk you want to measure, since
fsync cost is a property of the disk).

The last line is `RESULT scans_per_s=<n> ratio_vs_raw=<x> p99_ms=<ms>` (the command's figures).
"""

import argparse
import cProfile
import pstats
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from store.clock import HLC
from store.engine import BUSY_TIMEOUT_MS
from store.enums import Role
from store.migrate import migrate
from store.scanning import scan_applicator
from store.station import DB_FILE, Actor, Station, open_station
from store.treatments import start_insertion
from store.validation_cache import bundle_checksum, install_bundle

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
SITE = "TLV-1"
NURSE = Actor("u-nurse", "Dana Shapiro", Role.HOSPITAL, frozenset({SITE}), "Nurse")
WARM_UP_SCANS = 50  # first calls compile and cache SQLAlchemy statements; not what a long shift sees

RAW_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
)


def order_name(number: int) -> str:
    return f"SO-BENCH-{number:03d}"


def serial(order: int, index: int) -> str:
    return f"DART-B{order:03d}-{index:05d}"


def bench_bundle(day: date, orders: int, per_order: int) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "version": "bench-1",
        "valid_until": (NOW + timedelta(days=7)).isoformat(),
        "users": [
            {"id": NURSE.user_id, "name": NURSE.name, "role": NURSE.role.value, "sites": [SITE]},
        ],
        "schedule": [
            {
                "order_name": order_name(o),
                "patient_label": f"Patient {o}",
                "site": SITE,
                "day": day.isoformat(),
                "indication": "pancreas",
                "seeds": 10 * per_order,
                "activity_per_seed": 2.5,
                "seed_length": 10.0,
            }
            for o in range(orders)
        ],
        "inventory": [
            {
                "serial": serial(o, i),
                "order_name": order_name(o),
                "site": SITE,
                "catalogue_number": "DART-PAN-10",
                "applicator_type": "Pancreas applicator",
                "seeds": 10,
                "seed_length": 10.0,
                "expiry": "2027-06-30",
                "lot": f"LOT-{o:03d}",
            }
            for o in range(orders)
            for i in range(per_order)
        ],
    }
    bundle["checksum"] = bundle_checksum(bundle)
    return bundle


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def command_run(
    station: Station, treatments: list[str], per_order: int, scans: int, profile: cProfile.Profile | None
) -> tuple[list[float], float, set[str]]:
    """Scan `scans` applicators (spread over the treatments); per-call seconds, wall seconds, serials."""
    plan = [(t, serial(o, i)) for i in range(per_order) for o, t in enumerate(treatments)]
    warm_up, timed = plan[:WARM_UP_SCANS], plan[WARM_UP_SCANS : WARM_UP_SCANS + scans]
    for treatment_id, raw in warm_up:
        assert scan_applicator(station, NURSE, treatment_id=treatment_id, raw=raw).saved
    latencies: list[float] = []
    if profile is not None:
        profile.enable()
    started = time.perf_counter()
    for treatment_id, raw in timed:
        t0 = time.perf_counter()
        result = scan_applicator(station, NURSE, treatment_id=treatment_id, raw=raw)
        latencies.append(time.perf_counter() - t0)
        if not result.saved:
            raise RuntimeError(f"scan of {raw} not saved: {result.outcome} {result.message}")
    wall = time.perf_counter() - started
    if profile is not None:
        profile.disable()
    return latencies, wall, {raw for _, raw in timed}


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    # table_info leaves out generated columns (applicators.usage), which cannot be inserted.
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def _insert_sql(table: str, columns: list[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def raw_run(station_db: Path, raw_db: Path, serials: set[str]) -> tuple[list[float], float]:
    """Write the timed scans' rows again with plain sqlite3; per-scan seconds and wall seconds."""
    migrate(raw_db)
    source = sqlite3.connect(station_db)
    tables = ("treatments", "applicators", "sync_queue", "audit_logs", "device_state")
    cols = {t: _columns(source, t) for t in tables}

    def rows(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return list(source.execute(sql, params))

    treatments = rows(f"SELECT {', '.join(cols['treatments'])} FROM treatments")
    device = rows(f"SELECT {', '.join(cols['device_state'])} FROM device_state")
    # Insertion order: applicators has a text key, so its rowid is the order the command wrote.
    applicators = [
        r
        for r in rows(f"SELECT {', '.join(cols['applicators'])} FROM applicators ORDER BY rowid")
        if r[cols["applicators"].index("serial_number")] in serials
    ]
    queue_by_record = {
        r[cols["sync_queue"].index("record_id")]: r
        for r in rows(
            f"SELECT {', '.join(cols['sync_queue'])} FROM sync_queue WHERE table_name = 'applicators'"
        )
    }
    audit_by_record = {
        r[cols["audit_logs"].index("record_id")]: r
        for r in rows(
            f"SELECT {', '.join(cols['audit_logs'])} FROM audit_logs WHERE action = 'applicator_scanned'"
        )
    }
    source.close()

    conn = sqlite3.connect(raw_db, isolation_level=None)
    for pragma in RAW_PRAGMAS:
        conn.execute(pragma)
    # The treatments and the device row exist before the scans in (a) too; not timed.
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(_insert_sql("treatments", cols["treatments"]), treatments)
    conn.execute("DELETE FROM device_state")
    conn.executemany(_insert_sql("device_state", cols["device_state"]), device)
    conn.execute("COMMIT")

    insert_applicator = _insert_sql("applicators", cols["applicators"])
    insert_queue = _insert_sql("sync_queue", cols["sync_queue"])
    insert_audit = _insert_sql("audit_logs", cols["audit_logs"])
    update_device = (
        "UPDATE device_state SET last_device_seq = ?, last_audit_seq = ?, last_audit_hash = ?, "
        "hlc_wall_ms = ?, hlc_counter = ? WHERE id = 1"
    )
    id_at = cols["applicators"].index("id")
    seq_at = cols["sync_queue"].index("device_seq")
    hlc_at = cols["sync_queue"].index("hlc")
    audit_seq_at = cols["audit_logs"].index("device_seq")
    hash_at = cols["audit_logs"].index("hash")
    work = []
    for applicator in applicators:
        queue = queue_by_record[applicator[id_at]]
        audit = audit_by_record[applicator[id_at]]
        hlc = HLC.parse(queue[hlc_at])
        device_values = (queue[seq_at], audit[audit_seq_at], audit[hash_at], hlc.wall_ms, hlc.counter)
        work.append((applicator, queue, audit, device_values))

    latencies: list[float] = []
    started = time.perf_counter()
    for applicator, queue, audit, device_values in work:
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(insert_applicator, applicator)
        conn.execute(insert_queue, queue)
        conn.execute(insert_audit, audit)
        conn.execute(update_device, device_values)
        conn.execute("COMMIT")
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    written = conn.execute("SELECT count(*) FROM applicators").fetchone()[0]
    conn.close()
    if written != len(serials):
        raise RuntimeError(f"the baseline wrote {written} applicators, not {len(serials)}")
    return latencies, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--scans", type=int, default=2000)
    parser.add_argument("--treatments", type=int, default=20)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to put the databases (default: a temp dir)"
    )
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile of the timed scans here")
    args = parser.parse_args()

    per_order = -(-(args.scans + WARM_UP_SCANS) // args.treatments)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="local_write-") as tmp:
        work_dir = Path(tmp)
        station = open_station(work_dir / "station", clock=lambda: NOW)
        try:
            install_bundle(station, bench_bundle(station.local_today(), args.treatments, per_order))
            treatments = [
                str(
                    start_insertion(
                        station,
                        NURSE,
                        site=SITE,
                        day=station.local_today(),
                        surgeon="Dr. Bench",
                        order_names=[order_name(o)],
                    ).record["id"]
                )
                for o in range(args.treatments)
            ]
            profile = cProfile.Profile() if args.profile else None
            cmd_lat, cmd_wall, serials = command_run(station, treatments, per_order, args.scans, profile)
        finally:
            station.close()
        raw_lat, raw_wall = raw_run(work_dir / "station" / DB_FILE, work_dir / "raw.db", serials)

    cmd_rate = len(cmd_lat) / cmd_wall
    raw_rate = len(raw_lat) / raw_wall
    print(f"sqlite {sqlite3.sqlite_version}, {args.scans} scans over {args.treatments} treatments, ", end="")
    print(f"{WARM_UP_SCANS} warm-up scans not timed, directory {args.dir or tempfile.gettempdir()}")
    print(f"{'':18} {'scans':>6} {'total s':>8} {'scans/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for name, lat, wall in (("scan_applicator", cmd_lat, cmd_wall), ("raw sqlite3", raw_lat, raw_wall)):
        print(
            f"{name:18} {len(lat):6d} {wall:8.2f} {len(lat) / wall:8.0f} "
            f"{statistics.median(lat) * 1e3:7.2f} {percentile(lat, 0.99) * 1e3:7.2f} {max(lat) * 1e3:7.2f}"
        )
    if profile is not None and args.profile is not None:
        profile.dump_stats(args.profile)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)
    p99_ms = percentile(cmd_lat, 0.99) * 1e3
    print(f"RESULT scans_per_s={cmd_rate:.0f} ratio_vs_raw={raw_rate / cmd_rate:.2f} p99_ms={p99_ms:.2f}")


if __name__ == "__main__":
    main()
