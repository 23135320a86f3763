"""Cloud killed mid-batch: the cloud's process SIGKILLed while a push batch is inside its PostgreSQL
transaction, several times, each time replaced by a new process on the same database; the station
keeps working and syncing, and afterwards nothing is lost, nothing applied twice, nothing stuck.

The cloud runs in its own process (cloud_child.py); the station reaches it through the fault proxy
(fault_proxy.py, faults off), which says when a push is forwarded and not answered yet. While it is,
the test watches PostgreSQL for a transaction of the cloud's role that has written (a transaction id
assigned) and kills the process at a random moment after that, so each kill lands inside a batch:
the batch's transaction is rolled back by PostgreSQL, or (when the commit won the race) the answer is
lost and the station's resend is answered from the ledger. The next process is started beforehand,
so the proxy switches to it at once.

Seeded (CLOUD_KILL_SEED overrides it); the seed is in every failure message.
"""

import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from sqlalchemy import Engine, insert

from cloud.cipher import load_cipher
from cloud.schema import sites
from store.station import DB_FILE
from sync.engine import RoundReport, SyncEngine
from tests.cloud.conftest import CloudDatabase, cloud_db, owner_engine  # noqa: F401  (fixtures by name)
from tests.cloud.test_push import STATION_SITES, Cloud
from tests.reliability.fault_proxy import FaultProxy
from tests.reliability.linking import linked_station, settings
from tests.reliability.sync_checks import assert_converged, cloud_view, station_view
from tests.reliability.test_crash_scans import _Lines
from tests.reliability.workload import Plan, next_change

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("CLOUD_KILL_SEED", "20261129"))
KILLS = 5
CHANGES_PER_ROUND = 40
PLAN = Plan(first_order=0, scans=4)
HEAL_DEADLINE_S = 30.0
START_TIMEOUT_S = 60.0
WRITING = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = %s AND usename = 'dart_app' AND backend_xid IS NOT NULL"
)


@dataclass
class _CloudProcess:
    proc: subprocess.Popen[bytes]
    port: int

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _start_cloud(database: CloudDatabase, key_file: Path, log: Path) -> _CloudProcess:
    with log.open("ab") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.cloud_child", database.app_url, str(key_file)],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert proc.stdout is not None
    line = _Lines(proc.stdout).next(START_TIMEOUT_S)
    assert line is not None and line.startswith("LISTENING "), f"the cloud did not start: {log.read_text()}"
    return _CloudProcess(proc, int(line.split()[1]))


class _Round(threading.Thread):
    """One sync round in a worker thread, as the station's job runs it."""

    def __init__(self, engine: SyncEngine) -> None:
        super().__init__(name="sync-round", daemon=True)
        self.engine = engine
        self.report: RoundReport | None = None

    def run(self) -> None:
        self.report = self.engine.run_round()


def _kill_inside_a_batch(
    cloud: _CloudProcess, proxy: FaultProxy, watch: psycopg.Connection, database: str, delay: float
) -> bool:
    """Kill the cloud once a push is in flight, its transaction has written and `delay` has passed;
    False when the push was answered first."""
    started = time.monotonic()
    while proxy.push_in_flight:
        writing = watch.execute(WRITING, (database,)).fetchone()
        if writing and writing[0] and time.monotonic() - started >= delay:
            cloud.kill()
            return True
    return False


def _usual(latencies: list[float]) -> float:
    """The median push so far (a first guess before any)."""
    return statistics.median(latencies) if latencies else 0.05


def test_the_cloud_killed_inside_push_batches_loses_and_repeats_nothing(
    tmp_path: Path,
    cloud_db: CloudDatabase,  # noqa: F811
    owner_engine: Engine,  # noqa: F811
) -> None:
    context = f"seed={SEED}"
    rng = random.Random(SEED)
    with owner_engine.begin() as conn:
        conn.execute(insert(sites), [{"code": c, "name": c, "hospital": "T"} for c in STATION_SITES])
    key_file, log = tmp_path / "cloud-data.key", tmp_path / "cloud.stderr"
    database = urlsplit(cloud_db.owner_url).path.lstrip("/")
    processes = [_start_cloud(cloud_db, key_file, log)]
    processes.append(_start_cloud(cloud_db, key_file, log))  # the next one, ready before the kill
    kills, rounds_killed = 0, 0
    try:
        with (
            FaultProxy(processes[0].port, seed=SEED, fault_rate=0.0) as proxy,
            psycopg.connect(cloud_db.owner_url.replace("+psycopg", ""), autocommit=True) as watch,
        ):
            cloud = Cloud(proxy.url, owner_engine, load_cipher(key_file))
            station, device = linked_station(tmp_path / "station", cloud, PLAN, url=proxy.url)
            engine = SyncEngine(station, settings=settings(batch_size=10, timeout_s=10))
            made: list[str] = []
            try:
                while kills < KILLS:
                    made += [next_change(station, PLAN) for _ in range(CHANGES_PER_ROUND)]
                    current = processes[-2]
                    sync = _Round(engine)
                    sync.start()
                    killed = False
                    while sync.is_alive() and not killed:
                        if proxy.wait_for_push(timeout=0.05):
                            delay = rng.random() * 1.2 * _usual(proxy.push_latencies)
                            killed = _kill_inside_a_batch(current, proxy, watch, database, delay)
                    sync.join()
                    assert sync.report is not None
                    if not killed:
                        assert sync.report.outcome == "ok", f"{context}: {sync.report.error}"
                        continue
                    kills += 1
                    rounds_killed += sync.report.outcome == "offline"
                    proxy.upstream_port = processes[-1].port
                    processes.append(_start_cloud(cloud_db, key_file, log))

                healed = time.monotonic()
                while stuck := station_view(tmp_path / "station" / DB_FILE).stuck:
                    assert time.monotonic() - healed < HEAL_DEADLINE_S, (
                        f"{context}: the queue did not empty: {len(stuck)} left, first {stuck[:3]}"
                    )
                    report = engine.run_round()
                    assert report.outcome == "ok", f"{context}: {report.error}"
                final = engine.run_round()  # pulls back the last pushes, so the cursor reaches the end
                assert final.outcome == "ok", f"{context}: {final.error}"
            finally:
                station.close()
    finally:
        for process in processes:
            process.kill()

    assert kills == KILLS and rounds_killed == KILLS, f"{context}: {kills} kills, {rounds_killed} rounds cut"
    view = station_view(tmp_path / "station" / DB_FILE)
    assert len(view.queue) == len(made), f"{context}: {len(view.queue)} queue entries, {len(made)} changes"
    assert_converged(view, cloud_view(owner_engine, device.device_id), confirmed=made, context=context)
