"""Sync catch-up: a station back online after a long time offline, with 10,000 changes queued.

    python benchmarks/sync_catchup.py [--changes 10000] [--scans 10] [--batch 50] [--profile] [--no-freeze]

The station is real: a SQLite file (WAL, synchronous=FULL) filled offline through the store's own
commands (tests/reliability/workload.py: start an insertion, scan `--scans` applicators, move each
OPENED -> LOADED -> INSERTED, finalise; 42 changes per treatment by default) until `--changes`
changes are queued, in a process that holds what the station's holds (NiceGUI and every page
imported) and starts the way the station starts (ui/station_app.py: the database opened, then the
garbage collector settled by ui/gc_tuning.py; `--no-freeze` leaves that out, to compare). The cloud
is the real app in its own process (uvicorn, one worker) over a fresh PostgreSQL database with
row-level security, seeded with Priority's orders and inventory for those serials (so every scan is
re-checked), warmed up with 100 operations of another device and ANALYZEd - all of it
benchmarks/cloud_sync.py's own helpers.

Timed: the station reconnects and syncs the way the station does - "sync now" of its
`sync.service.SyncService` on an asyncio event loop, each round in a worker thread - from the
start of the first round until its queue is empty (every entry acknowledged; a watcher on the loop
counts the open entries every 50 ms); then the cloud's ledger must hold every operation. The rounds
go on after that (the audit upload, sync/audit_upload.py): their whole length is printed apart.
Split: the pushes' exchanges with the cloud, request out to answer in (`RoundReport.push_exchange_s`,
`cloud_s`), and the rest, the station's own time between them (`station_s`): the pipelined push
(sync/engine.py) does most of the station's work while a batch is at the cloud, so only what it
could not hide is left there. Beside them: the station's CPU time, and the direct push's exchange,
which is shorter when nothing else on the two cores wants a CPU.
Meanwhile a heartbeat task on the loop wakes every 5 ms and records how late it woke: the worst
lateness is `loop_stall_ms`, what a clinician's click would wait for while the station catches up;
the same less the longest time one of the station's threads waited for a CPU meanwhile (Linux
schedstat: other processes on the machine), the hypervisor's CPU steal, and every garbage collection
(`gc.callbacks`) with the CPU time its thread had during it are printed beside it.

Baseline, same run: the very same operations (the station's queue in the wire format, in queue
order) pushed straight over HTTP by cloud_sync.push_all - the cloud benchmark's push - into a
second fresh database served the same way, seeded and warmed up the same way. The ratio is the
baseline's operations/s divided by the catch-up's: what the station's side of a round costs on top
of the cloud's.

The last line is `RESULT catchup_s=<s> ops_per_s=<n> ratio_vs_direct_push=<x> loop_stall_ms=<ms>
cloud_s=<s> station_s=<s>`. Targets: 10,000 changes in under 10 s, a worst loop stall under 50 ms.
"""

import argparse
import asyncio
import cProfile
import gc
import importlib
import os
import pstats
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the workload lives with the reliability tests

from cloud_sync import (  # noqa: E402  (benchmarks/ is this script's own directory)
    APP_ROLE,
    PER_ORDER,
    SECOND_SITE,
    SERVER_URL,
    SITE,
    WARM_UP_OPS,
    add_device,
    analyze,
    as_role,
    bench_database,
    build_ops,
    cloud_process,
    libpq,
    order_name,
    orders_for,
    push_all,
    seed_cloud,
    serial,
)

HEARTBEAT_S = 0.005
WATCH_S = 0.05  # how often the open entries are counted during the catch-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--changes", type=int, default=10_000, help="changes queued while offline")
    parser.add_argument("--scans", type=int, default=10, help="applicators per treatment")
    parser.add_argument("--batch", type=int, default=50, help="operations per push (the station's default)")
    parser.add_argument("--pg-url", default=SERVER_URL, help="the PostgreSQL server (a superuser)")
    parser.add_argument("--profile", action="store_true", help="cProfile the catch-up's worker thread")
    parser.add_argument(
        "--no-freeze", action="store_true", help="skip the start-up's gc freeze (ui/gc_tuning.py), to compare"
    )
    args = parser.parse_args()

    from store.station import open_station
    from store.validation_cache import install_bundle
    from tests.reliability.workload import Plan, bundle
    from ui.gc_tuning import settle_after_startup

    import_the_station()

    total_started = time.perf_counter()
    now = datetime.now(UTC).replace(microsecond=0)
    plan = Plan(scans=args.scans, order_name=order_name, serial=serial)
    orders = args.changes // plan.ops_per_treatment + 1
    warm_up_first = orders  # the warm-up device's treatments come after the station's
    inventory = (warm_up_first + orders_for(WARM_UP_OPS)) * PER_ORDER
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sync_catchup-")))
        key_file = tmp / "cloud-data.key"
        station = open_station(tmp / "station")
        stack.callback(station.close)
        if not args.no_freeze:
            settle_after_startup()  # as the station's start-up does (ui/station_app.py), right after this
        install_bundle(station, bundle(station.local_today(), range(orders), plan))
        made_s = queue_offline(station, plan, args.changes)

        clouds = []
        for _ in range(2):  # the catch-up's cloud, then the baseline's
            owner_url = stack.enter_context(bench_database(args.pg_url))
            prepare_cloud(owner_url, key_file, inventory, warm_up_first + orders_for(WARM_UP_OPS), now)
            token = enrol(owner_url, station.device_id)
            clouds.append((owner_url, token))

        (owner_url, token), (direct_owner_url, direct_token) = clouds
        with cloud_process(as_role(owner_url, APP_ROLE), key_file) as url:
            warm_up(url, owner_url, warm_up_first, now)
            catchup = catch_up(station, url, token, args.batch, args.profile)
        ledger = ledger_rows(owner_url, station.device_id)
        if ledger != args.changes:
            raise RuntimeError(
                f"the cloud's ledger holds {ledger} of the station's {args.changes} operations"
            )

        ops = wire_ops(station)
        with cloud_process(as_role(direct_owner_url, APP_ROLE), key_file) as url:
            warm_up(url, direct_owner_url, warm_up_first, now)
            direct = push_all(url, direct_token, ops, args.batch)

    rate = args.changes / catchup.seconds
    ratio = direct.rate / rate
    station_s = catchup.seconds - catchup.cloud_s
    print(
        f"{args.changes} changes queued offline in {made_s:.1f} s ({plan.ops_per_treatment} per treatment), "
        f"{args.batch} ops per push, {os.cpu_count()} cores, "
        f"total run {time.perf_counter() - total_started:.1f} s"
    )
    print(f"catch-up (queue empty): {catchup.seconds:.2f} s, {rate:.0f} ops/s")
    pushes = -(-args.changes // args.batch)
    each, direct_each = catchup.cloud_s / pushes * 1e3, direct.wall / pushes * 1e3
    print(
        f"  the pushes' exchanges with the cloud {catchup.cloud_s:.2f} s ({each:.1f} ms each; the direct "
        f"push's {direct_each:.1f} ms), the station's own time between them "
        f"{station_s:.2f} s; the station's CPU time {catchup.cpu_s:.2f} s"
    )
    print(
        f"  the whole round(s), audit upload included: {catchup.rounds_s:.2f} s in {catchup.rounds} round(s)"
    )
    print(f"  garbage collections: {catchup.gc.summary()}")
    print(f"direct push of the same operations: {direct.wall:.2f} s, {direct.rate:.0f} ops/s")
    print(
        f"event loop during the round(s): worst stall {catchup.worst_stall * 1e3:.1f} ms, "
        f"p99 {catchup.p99_stall * 1e3:.1f} ms over {catchup.beats} beats of {HEARTBEAT_S * 1e3:.0f} ms; "
        f"less the waits for a CPU: {catchup.worst_own_stall * 1e3:.1f} ms; "
        f"CPU steal until the queue was empty {catchup.steal:.0%}"
    )
    print(
        f"RESULT catchup_s={catchup.seconds:.2f} ops_per_s={rate:.0f} ratio_vs_direct_push={ratio:.2f} "
        f"loop_stall_ms={catchup.worst_stall * 1e3:.1f} cloud_s={catchup.cloud_s:.2f} "
        f"station_s={station_s:.2f}"
    )


# --- the station, offline ----------------------------------------------------------------------
def import_the_station() -> None:
    """What the station process holds when it starts (ui/station_app.py registers every page before
    its start-up handler runs): NiceGUI and the pages. A full garbage collection walks all of it, so
    the catch-up runs in a process of the station's size, not a benchmark's."""
    from ui.station_app import PAGE_MODULES

    for name in PAGE_MODULES:
        importlib.import_module(name)


def queue_offline(station: Any, plan: Any, changes: int) -> float:
    from tests.reliability.workload import next_change

    started = time.perf_counter()
    for _ in range(changes):
        next_change(station, plan)
    return time.perf_counter() - started


def wire_ops(station: Any) -> list[dict[str, Any]]:
    """The station's queue as the wire's operations, in queue order (dependencies first)."""
    from sqlalchemy import select

    from store.journal import QUEUE
    from sync.wire import operation

    with station.engine.connect() as conn:
        entries = [dict(r) for r in conn.execute(select(QUEUE).order_by(QUEUE.c.device_seq)).mappings()]
    sites = {e["record_id"]: e["payload"]["site"] for e in entries if e["table_name"] == "treatments"}
    return [operation(station.cipher, e, site_of(e, sites)) for e in entries]


def site_of(entry: dict[str, Any], sites: dict[str, str]) -> str:
    if entry["table_name"] == "treatments":
        return str(entry["payload"]["site"])
    return sites[str(entry["payload"]["treatment_id"])]


# --- the cloud ----------------------------------------------------------------------------------
def prepare_cloud(owner_url: str, key_file: Path, inventory: int, orders: int, now: datetime) -> None:
    from cloud.migrate import upgrade

    upgrade(owner_url)
    seed_cloud(owner_url, key_file, inventory, orders, now)


def enrol(owner_url: str, device_id: str) -> str:
    """The station's own device id enrolled at the cloud; its credential."""
    from cloud.tokens import digest, new_token

    token = new_token()
    with psycopg.connect(libpq(owner_url)) as conn:
        conn.execute(
            "INSERT INTO devices (id, name, sites, credential_hash, enrolled_by) "
            "VALUES (%s, 'OR laptop (catch-up)', %s, %s, 'bench')",
            (device_id, [SITE, SECOND_SITE], digest(token)),
        )
    return token


def warm_up(url: str, owner_url: str, first_order: int, now: datetime) -> None:
    """Another device's 100 operations, then ANALYZE, as cloud_sync.py does before timing."""
    with psycopg.connect(libpq(owner_url)) as conn:
        device_id, token = add_device(conn, (SITE, SECOND_SITE), "OR laptop (warm-up)")
    push_all(url, token, build_ops(device_id, SITE, WARM_UP_OPS, first_order, now), 50)
    analyze(owner_url)


def ledger_rows(owner_url: str, device_id: str) -> int:
    with psycopg.connect(libpq(owner_url)) as conn:
        row = conn.execute("SELECT count(*) FROM op_ledger WHERE device_id = %s", (device_id,)).fetchone()
    return row[0] if row else 0


# --- the catch-up, as the station's job runs it -------------------------------------------------
class GcPasses:
    """Every garbage collection while installed (`gc.callbacks`), in any thread: its generation, its
    length, and the CPU time its thread had during it (much less: the thread was waiting for a CPU)."""

    def __init__(self) -> None:
        self.passes: list[tuple[int, float, float]] = []
        self._began: dict[int, tuple[float, float]] = {}

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began[threading.get_ident()] = (time.perf_counter(), time.thread_time())
            return
        began = self._began.pop(threading.get_ident(), None)
        if began is not None:
            wall, cpu = time.perf_counter() - began[0], time.thread_time() - began[1]
            self.passes.append((info["generation"], wall, cpu))

    def summary(self) -> str:
        parts = []
        for generation in (0, 1, 2):
            passes = [(wall, cpu) for g, wall, cpu in self.passes if g == generation]
            if passes:
                wall, cpu = max(passes)
                longest = f"longest {wall * 1e3:.1f} ms ({cpu * 1e3:.1f} ms on a CPU)"
                parts.append(f"gen {generation}: {len(passes)}, {longest}")
        return "; ".join(parts) or "none"


class CatchUp:
    def __init__(self) -> None:
        self.seconds = 0.0  # until the queue was empty
        self.rounds_s = 0.0  # until the round that emptied it ended
        self.rounds = 0
        self.stalls: list[float] = []
        self.own_stalls: list[float] = []  # each stall less the longest wait for a CPU of a thread here
        self.steal = 0.0  # the share of the machine's CPU time the hypervisor took (/proc/stat)
        self.cloud_s = 0.0  # the pushes' exchanges with the cloud (RoundReport.push_exchange_s)
        self.cpu_s = 0.0  # CPU time of the station's process (every thread) until the queue was empty
        self.gc = GcPasses()

    @property
    def beats(self) -> int:
        return len(self.stalls)

    @property
    def worst_stall(self) -> float:
        return max(self.stalls, default=0.0)

    @property
    def worst_own_stall(self) -> float:
        return max(self.own_stalls, default=0.0)

    @property
    def p99_stall(self) -> float:
        ordered = sorted(self.stalls)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


def catch_up(station: Any, url: str, token: str, batch: int, profile: bool) -> CatchUp:
    """ "Sync now" of the station's own SyncService (each round in a worker thread) until the queue is
    empty, with a heartbeat on the same event loop."""
    from store import remote
    from sync.engine import SyncSettings
    from sync.service import SyncService

    remote.link_cloud(station, cloud_url=url, credential=token, device_id=station.device_id)
    service = SyncService(station, settings=SyncSettings(batch_size=batch))
    result = CatchUp()
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        unprofiled = service.engine.run_round
        service.engine.run_round = lambda: profiler.runcall(unprofiled)  # type: ignore[method-assign]

    async def heartbeat(stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        run_queue_s = CpuWaits()
        queued_before = run_queue_s()
        while not stop.is_set():
            due = loop.time() + HEARTBEAT_S
            await asyncio.sleep(HEARTBEAT_S)
            late = max(0.0, loop.time() - due)
            queued = run_queue_s()
            result.stalls.append(late)
            waited = max((queued[t] - queued_before.get(t, queued[t]) for t in queued), default=0.0)
            result.own_stalls.append(max(0.0, late - waited))
            queued_before = queued
        run_queue_s.close()

    async def rounds() -> None:
        while True:
            report = await service.sync_now()
            result.rounds += 1
            result.cloud_s += report.push_exchange_s
            if report.outcome != "ok":
                raise RuntimeError(f"a catch-up round ended {report.outcome}: {report.error}")
            if not await asyncio.to_thread(open_count, station):
                return

    async def run() -> None:
        stop = asyncio.Event()
        beating = asyncio.create_task(heartbeat(stop))
        gc.callbacks.append(result.gc)
        started, cpu_started, steal_started = time.perf_counter(), time.process_time(), cpu_steal()
        try:
            syncing = asyncio.create_task(rounds())
            while await asyncio.to_thread(open_count, station) and not syncing.done():
                await asyncio.sleep(WATCH_S)
            result.seconds = time.perf_counter() - started
            result.cpu_s = time.process_time() - cpu_started
            stolen, total = (now - then for now, then in zip(cpu_steal(), steal_started, strict=True))
            result.steal = stolen / total if total else 0.0
            await syncing  # its error, if it ended with one
            result.rounds_s = time.perf_counter() - started
        finally:
            gc.callbacks.remove(result.gc)
        stop.set()
        await beating

    asyncio.run(run())
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(r"(store|sync)/", 40)
    return result


class CpuWaits:
    """How long each thread of this process has waited for a CPU so far (Linux schedstat; nothing
    where there is none). A thread that holds the GIL while it waits keeps the loop waiting too: the
    part of a loop stall that the machine's other work caused, not the station's code. Read on every
    heartbeat, so each thread's file is opened once and re-read in place (about 40 us a beat)."""

    def __init__(self) -> None:
        self._files: dict[int, int] = {}

    def __call__(self) -> dict[int, float]:
        waits = {}
        with suppress(OSError):
            for name in os.listdir("/proc/self/task"):
                tid = int(name)
                with suppress(OSError, IndexError, ValueError):
                    if tid not in self._files:
                        self._files[tid] = os.open(f"/proc/self/task/{name}/schedstat", os.O_RDONLY)
                    waits[tid] = int(os.pread(self._files[tid], 128, 0).split()[1]) / 1e9
        return waits

    def close(self) -> None:
        for fd in self._files.values():
            with suppress(OSError):
                os.close(fd)


def cpu_steal() -> tuple[int, int]:
    """The machine's stolen and total CPU time so far (/proc/stat, in ticks; zeros where there is none)."""
    with suppress(OSError, IndexError, ValueError):
        ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return ticks[7], sum(ticks)
    return 0, 0


def open_count(station: Any) -> int:
    """Entries the cloud has not acknowledged (read through the queue's status index)."""
    from store.remote import OPEN_QUEUE

    statuses = ", ".join(f"'{status.value}'" for status in OPEN_QUEUE)
    with station.engine.connect() as conn:
        return conn.exec_driver_sql(
            f"SELECT count(*) FROM sync_queue WHERE status IN ({statuses})"
        ).scalar_one()


if __name__ == "__main__":
    main()
