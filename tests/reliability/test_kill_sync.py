"""Kill during sync: a station process SIGKILLed at random moments of its pull and its push loses nothing,
repeats nothing and leaves nothing stuck (invariants 1, 3 and 4).

The station is a child process (sync_child.py) that keeps making confirmed changes through the
real commands and running sync rounds against the real cloud (uvicorn in a thread of this test,
PostgreSQL). It reports each phase on its stdout pipe; the test picks a phase for each child,
waits for it to begin and kills the child at a random point of the phase's usual length, then
starts the next child on the same files. Between children another laptop (in this process)
makes changes at the same sites and pushes them, so every pull has work.

After the kills and one clean sync of each laptop: every change either laptop confirmed is in the
cloud's ledger and change log exactly once, each record's version counts its operations, each
laptop holds every record of the cloud as the cloud holds it, no queue entry is left open, and the
killed station's file passes integrity_check. The kills must have landed inside both phases.

Seeded (SYNC_KILL_SEED overrides it); the seed is in every failure message.
"""

import os
import random
import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from store.station import DB_FILE, Station, open_station
from sync.engine import SyncEngine
from tests.cloud.conftest import app_engine, cloud_db, owner_engine  # noqa: F401  (fixtures by name)
from tests.cloud.test_push import Cloud, cloud  # noqa: F401  (fixture by name)
from tests.reliability.linking import linked_station, settings
from tests.reliability.sync_checks import assert_converged, cloud_view, station_view
from tests.reliability.test_crash_scans import _Lines
from tests.reliability.workload import Plan, next_change

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("SYNC_KILL_SEED", "20261127"))
KILLS = 32
PHASES = ("pull", "push")
STATION_PLAN = Plan(first_order=0, scans=3)
OTHER_PLAN = Plan(first_order=5000, scans=3)
FIRST_GUESS_S = 0.3  # a phase's length before any was measured


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    lines: _Lines
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@dataclass
class _Run:
    confirmed: list[str] = field(default_factory=list)
    kills_inside: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    durations: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    rounds: int = 0
    kills: int = 0

    def usual(self, phase: str) -> float:
        recent = self.durations[phase][-20:]
        return statistics.median(recent) if recent else FIRST_GUESS_S


def _spawn(data_dir: Path, number: int, seed: int) -> _Child:
    stderr_path = data_dir.parent / f"sync-child-{number:03d}.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.reliability.sync_child",
                str(data_dir),
                str(STATION_PLAN.first_order),
                str(STATION_PLAN.scans),
                str(seed + number),
            ],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert proc.stdout is not None
    return _Child(proc, _Lines(proc.stdout), stderr_path)


def _kill_in_phase(child: _Child, phase: str, rng: random.Random, run: _Run, context: str) -> list[str]:
    """Start the child, wait until `phase` begins, kill it at a random point of the phase's usual
    length; every line it printed, in order."""
    assert child.proc.stdin is not None
    child.proc.stdin.write(b"go\n")
    child.proc.stdin.close()
    seen: list[str] = []
    while not seen or seen[-1] != f"PHASE {phase}":
        line = child.lines.next()
        assert line is not None, f"{context}: the child exited before its {phase}:\n{child.stderr()}"
        seen.append(line)
    # Picks the moment only: nothing waits on it, and every outcome of the race is a valid crash.
    child.lines.keep_reading(rng.random() * 1.2 * run.usual(phase))
    child.proc.send_signal(signal.SIGKILL)
    returncode = child.proc.wait()
    assert returncode == -signal.SIGKILL, f"{context}: exit {returncode}\n{child.stderr()}"
    run.kills += 1
    seen += child.lines.rest()
    return seen


def _take_in(seen: list[str], phase: str, run: _Run, context: str) -> None:
    """The confirmed changes, the phases' lengths and whether the kill landed inside `phase`."""
    last_begin = max(i for i, line in enumerate(seen) if line == f"PHASE {phase}")
    for index, line in enumerate(seen):
        kind, _, rest = line.partition(" ")
        if kind == "CONFIRMED":
            run.confirmed.append(rest)
        elif kind == "DONE":
            name, seconds = rest.split()
            run.durations[name].append(float(seconds))
        elif kind == "ROUND":
            # Whatever the previous child left half done, a round on the healthy cloud succeeds.
            assert rest.startswith("ok"), f"{context}: round {index} ended {rest}"
            run.rounds += 1
        else:
            assert kind == "PHASE", f"{context}: unexpected line {line!r}"
    finished = any(line.startswith(f"DONE {phase}") for line in seen[last_begin:])
    if not finished:
        run.kills_inside[phase] += 1


def _other_laptop_works(station: Station, engine: SyncEngine, rng: random.Random, made: list[str]) -> None:
    for _ in range(rng.randint(2, 8)):
        made.append(next_change(station, OTHER_PLAN))
    report = engine.run_round()
    assert report.outcome == "ok", report.error


@pytest.mark.slow
def test_a_station_killed_in_push_and_pull_loses_repeats_and_strands_nothing(
    tmp_path: Path,
    cloud: Cloud,  # noqa: F811
) -> None:
    context = f"seed={SEED}"
    data_dir = tmp_path / "station"
    station, device = linked_station(data_dir, cloud, STATION_PLAN)
    station.close()  # from now on only the children open it, until the clean sync
    other, other_device = linked_station(tmp_path / "other", cloud, OTHER_PLAN)
    other_engine = SyncEngine(other, settings=settings())
    other_made: list[str] = []

    rng = random.Random(SEED)
    run = _Run()
    spare = _spawn(data_dir, 0, SEED)
    children = [spare]
    try:
        for number in range(KILLS):
            child = spare
            spare = _spawn(data_dir, number + 1, SEED)  # pays its imports while this one works
            children.append(spare)
            _other_laptop_works(other, other_engine, rng, other_made)
            phase = rng.choice(PHASES)
            seen = _kill_in_phase(child, phase, rng, run, f"{context} child={number}")
            _take_in(seen, phase, run, f"{context} child={number}")
            child.stop()
    finally:
        for leftover in children:
            leftover.stop()

    assert run.kills >= 30, f"{context}: {run.kills} kills"
    for phase in PHASES:
        assert run.kills_inside[phase] >= 5, f"{context}: only {run.kills_inside} kills landed inside phases"
    assert station_view(data_dir / DB_FILE).integrity == ["ok"], context

    # The clean sync: each laptop pushes what is left and pulls the other's work.
    station = open_station(data_dir)
    try:
        engine = SyncEngine(station, settings=settings())
        for laptop_engine in (other_engine, engine, engine, other_engine):
            report = laptop_engine.run_round()
            assert report.outcome == "ok", f"{context}: {report.error}"
    finally:
        station.close()
        other.close()

    mine = station_view(data_dir / DB_FILE)
    assert_converged(
        mine, cloud_view(cloud.owner, device.device_id), confirmed=run.confirmed, context=context
    )
    theirs = station_view(tmp_path / "other" / DB_FILE)
    assert_converged(
        theirs,
        cloud_view(cloud.owner, other_device.device_id),
        confirmed=other_made,
        context=f"{context} other",
    )
    # The test did what it says: many confirmed changes, both laptops' records on the killed one.
    assert len(run.confirmed) > KILLS * 4, f"{context}: {len(run.confirmed)} confirmed"
    assert sum(1 for k in mine.records if k in theirs.records) == len(theirs.records)
