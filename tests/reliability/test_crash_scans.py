"""Invariants 1 and 2 under kill -9: a station process killed at random moments loses nothing it confirmed.

A child process (crash_child.py) scans applicators into one treatment and prints a line after each
saved scan. The test reads a random number of those lines, then SIGKILLs the child wherever it is
(usually inside the next scan's transaction, often inside its commit), and starts the next one.
Afterwards every confirmed scan must be in the database exactly once, the file must be intact, and
every applicator must have its sync-queue entry and audit entry and nothing else may be orphaned.

SIGKILL does not lose the OS page cache, so this proves atomicity and that a confirmation is only
printed after a commit; power loss is covered by the pragmas (WAL, synchronous=FULL), which each
child reports from its own connection and which are checked here too.

The random sequence is seeded (CRASH_SEED overrides it) and the seed is in every failure message.
"""

import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import IO

import pytest
from sqlalchemy import select as sql_select

from store.engine import make_engine
from store.journal import AUDIT, verify_audit_chain
from store.station import DB_FILE, GENESIS_HASH, open_station
from store.treatments import start_insertion
from store.validation_cache import install_bundle
from tests.reliability.crash_child import INVENTORY_SIZE, ORDER, crash_bundle, serial_for
from tests.utils.data import NURSE, SITE

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("CRASH_SEED", "20261126"))
# Generous: a line normally arrives within milliseconds; this only turns a hung child into a failure.
LINE_TIMEOUT_S = 60.0


class _Lines:
    """Whole lines from a child's stdout pipe, with a deadline, and the rest once the child is dead."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._fd = stream.fileno()
        self._buffer = b""
        self._eof = False

    def next(self, timeout: float = LINE_TIMEOUT_S) -> str | None:
        """The next line, or None at end of file (the child exited)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if self._eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line from the child within {timeout:.0f} s")
            readable, _, _ = select.select([self._fd], [], [], remaining)
            if readable:
                self._read()
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def keep_reading(self, seconds: float) -> None:
        """Go on taking in output (kept for `next` and `rest`) for `seconds`, or until end of file."""
        deadline = time.monotonic() + seconds
        while not self._eof and (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self._fd], [], [], remaining)
            if readable:
                self._read()

    def rest(self) -> list[str]:
        """Every complete line left in the pipe; only call once the writer is dead (it ends in EOF)."""
        while not self._eof:
            self._read()
        lines = self._buffer.split(b"\n")
        # A last line without its newline was cut off by the kill: never fully shown, not confirmed.
        self._buffer = b""
        return [line.decode() for line in lines[:-1]]

    def _read(self) -> None:
        chunk = os.read(self._fd, 65536)
        self._eof = not chunk
        self._buffer += chunk


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    lines: _Lines
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]


@dataclass
class _Run:
    """What the clinician saw across all the killed children."""

    confirmed: list[str] = field(default_factory=list)
    # Per round, the serial after its last confirmed one: the only row a kill may leave unconfirmed
    # (committed, then killed before the line was printed).
    may_be_unconfirmed: set[str] = field(default_factory=set)
    kills: int = 0
    arrivals: list[float] = field(default_factory=list)  # when each confirmation was read

    def scan_interval(self) -> float:
        """The typical time between two confirmations on this machine (0 until there are two)."""
        recent = self.arrivals[-50:]
        gaps = sorted(b - a for a, b in pairwise(recent) if b > a)
        return gaps[len(gaps) // 2] if gaps else 0.0


def _prepare_station(data_dir: Path) -> str:
    """A station with the crash bundle and an insertion started today (real clock, as in the children)."""
    station = open_station(data_dir)
    try:
        install_bundle(station, crash_bundle(station.local_today()))
        change = start_insertion(
            station, NURSE, site=SITE, day=station.local_today(), surgeon="Dr. Crash", order_names=[ORDER]
        )
        return str(change.record["id"])
    finally:
        station.close()


def _spawn(data_dir: Path, treatment_id: str, number: int) -> _Child:
    """A child that imports everything and then waits for its start index on stdin."""
    stderr_path = data_dir.parent / f"child-{number:03d}.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.crash_child", str(data_dir), treatment_id, "-"],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert proc.stdout is not None
    return _Child(proc, _Lines(proc.stdout), stderr_path)


def _stop(child: _Child) -> None:
    if child.proc.poll() is None:
        child.proc.kill()
    child.proc.wait()
    for stream in (child.proc.stdin, child.proc.stdout):
        if stream is not None:
            stream.close()


def _crash_rounds(tmp_path: Path, *, rounds: int, max_lines: int, seed: int) -> tuple[Path, str, _Run]:
    data_dir = tmp_path / "station"
    treatment_id = _prepare_station(data_dir)
    rng = random.Random(seed)
    run = _Run()
    next_index = 0
    spare: _Child | None = _spawn(data_dir, treatment_id, 0)
    children: list[_Child] = [spare]
    try:
        for number in range(rounds):
            assert spare is not None
            child = spare
            # The next child pays its imports now, while this one scans.
            spare = _spawn(data_dir, treatment_id, number + 1) if number + 1 < rounds else None
            if spare is not None:
                children.append(spare)
            assert child.proc.stdin is not None
            child.proc.stdin.write(f"{next_index}\n".encode())
            child.proc.stdin.close()

            context = f"seed={seed} round={number}"
            header = child.lines.next()
            assert header is not None, f"{context}: child exited before scanning:\n{child.stderr()}"
            name, *pairs = header.split()
            pragmas = dict(pair.split("=", 1) for pair in pairs)
            # Invariant 1's settings, as seen by the connection that is about to be killed.
            assert name == "PRAGMAS", f"{context}: {header}\n{child.stderr()}"
            assert pragmas["journal_mode"] == "wal", f"{context}: {header}"
            assert pragmas["synchronous"] == "2", f"{context}: {header} (2 is FULL)"
            assert pragmas["foreign_keys"] == "1", f"{context}: {header}"
            assert int(pragmas["busy_timeout"]) > 0, f"{context}: {header}"

            wanted = rng.randint(1, max_lines)
            seen: list[str] = []
            while len(seen) < wanted:
                line = child.lines.next()
                assert line is not None and line.startswith("CONFIRMED "), (
                    f"{context}: child stopped after {len(seen)} scans: {line!r}\n{child.stderr()}"
                )
                seen.append(line.removeprefix("CONFIRMED "))
                run.arrivals.append(time.monotonic())
            # Killing as soon as a line is read mostly hits the child in its print or in the next
            # scan's connection checkout, before BEGIN. A random offset of up to one scan interval
            # spreads the kills over the whole scan, commit included. This picks the moment only:
            # nothing waits on it and every outcome of the race is a valid crash.
            child.lines.keep_reading(rng.random() * run.scan_interval())
            child.proc.send_signal(signal.SIGKILL)
            returncode = child.proc.wait()
            assert returncode == -signal.SIGKILL, f"{context}: exit {returncode}\n{child.stderr()}"
            # Lines the child printed before it died were shown too, even if we had not read them yet.
            for line in child.lines.rest():
                assert line.startswith("CONFIRMED "), f"{context}: unexpected line {line!r}"
                seen.append(line.removeprefix("CONFIRMED "))
            _stop(child)

            run.confirmed += seen
            run.kills += 1
            last_index = int(seen[-1].rsplit("-", 1)[1])
            run.may_be_unconfirmed.add(serial_for(last_index + 1))
            next_index = last_index + 1
            assert next_index + max_lines * 4 < INVENTORY_SIZE, f"{context}: the crash inventory ran out"
    finally:
        for leftover in children:
            _stop(leftover)
    return data_dir / DB_FILE, treatment_id, run


def _check_database(db_path: Path, treatment_id: str, run: _Run, seed: int) -> None:
    context = f"seed={seed}"
    engine = make_engine(db_path)
    try:
        with engine.connect() as conn:
            integrity = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check")]
            foreign_keys = list(conn.exec_driver_sql("PRAGMA foreign_key_check"))
            applicators = [
                dict(r)
                for r in conn.exec_driver_sql(
                    "SELECT id, serial_number, treatment_id FROM applicators"
                ).mappings()
            ]
            queue = [
                dict(r)
                for r in conn.exec_driver_sql(
                    "SELECT op_id, device_seq, table_name, record_id, kind FROM sync_queue"
                ).mappings()
            ]
            audit_rows = [
                dict(r) for r in conn.execute(sql_select(AUDIT).order_by(AUDIT.c.device_seq)).mappings()
            ]
            treatment_ids = {r[0] for r in conn.exec_driver_sql("SELECT id FROM treatments")}
            state = dict(conn.exec_driver_sql("SELECT * FROM device_state").mappings().one())
    finally:
        engine.dispose()

    assert integrity == ["ok"], f"{context}: integrity_check {integrity}"
    assert foreign_keys == [], f"{context}: foreign_key_check {foreign_keys}"

    # Every confirmed scan is there, once, in the treatment it was scanned into.
    assert len(set(run.confirmed)) == len(run.confirmed), f"{context}: a serial was confirmed twice"
    by_serial = Counter(a["serial_number"] for a in applicators)
    missing = [s for s in run.confirmed if by_serial[s] != 1]
    assert not missing, f"{context}: confirmed scans lost or doubled: {missing[:10]}"
    assert {a["treatment_id"] for a in applicators} == {treatment_id}
    unconfirmed = set(by_serial) - set(run.confirmed)
    assert unconfirmed <= run.may_be_unconfirmed, (
        f"{context}: rows nobody confirmed and no kill explains: "
        f"{sorted(unconfirmed - run.may_be_unconfirmed)}"
    )

    # Invariant 2: each applicator row has exactly its queue entry and its audit entry.
    applicator_ids = {a["id"] for a in applicators}
    inserts = Counter(
        q["record_id"] for q in queue if q["table_name"] == "applicators" and q["kind"] == "insert"
    )
    scans = Counter(
        a["record_id"]
        for a in audit_rows
        if a["action"] == "applicator_scanned" and a["table_name"] == "applicators"
    )
    wrong_queue = {i: inserts[i] for i in applicator_ids if inserts[i] != 1}
    assert not wrong_queue, f"{context}: rows without exactly one queue entry (id: count): {wrong_queue}"
    wrong_audit = {i: scans[i] for i in applicator_ids if scans[i] != 1}
    assert not wrong_audit, f"{context}: rows without exactly one audit entry (id: count): {wrong_audit}"
    # ... and no entry exists without its row.
    rows_by_table = {"applicators": applicator_ids, "treatments": treatment_ids}
    orphan_ops = [q for q in queue if q["record_id"] not in rows_by_table.get(q["table_name"], set())]
    assert not orphan_ops, f"{context}: queue entries without their row: {orphan_ops[:5]}"
    orphan_audit = [
        a["event_id"]
        for a in audit_rows
        if a["table_name"] is not None and a["record_id"] not in rows_by_table.get(a["table_name"], set())
    ]
    assert not orphan_audit, f"{context}: audit entries without their row: {orphan_audit[:5]}"
    op_of = {q["record_id"]: q["op_id"] for q in queue if q["table_name"] == "applicators"}
    assert all(
        a["op_id"] == op_of.get(a["record_id"]) for a in audit_rows if a["table_name"] == "applicators"
    )

    # The device counters moved in the same transactions as the rows they number.
    seqs = sorted(q["device_seq"] for q in queue)
    assert seqs == list(range(1, len(queue) + 1)), f"{context}: queue sequence has gaps"
    assert state["last_device_seq"] == seqs[-1], f"{context}: {state['last_device_seq']} != {seqs[-1]}"
    assert state["last_audit_seq"] == audit_rows[-1]["device_seq"] == len(audit_rows)
    assert state["last_audit_hash"] == audit_rows[-1]["hash"]
    assert verify_audit_chain(audit_rows, GENESIS_HASH) is None, f"{context}: audit chain broken"


@pytest.mark.slow
def test_confirmed_scans_survive_sigkill(tmp_path: Path) -> None:
    """At least 30 kills at random moments of a steadily scanning station."""
    db_path, treatment_id, run = _crash_rounds(tmp_path, rounds=32, max_lines=40, seed=SEED)
    assert run.kills >= 30
    _check_database(db_path, treatment_id, run, SEED)


@pytest.mark.slow
def test_confirmed_scans_survive_dense_sigkill(tmp_path: Path) -> None:
    """Many short-lived children, each killed within its first few scans (just after WAL recovery)."""
    seed = SEED + 1
    db_path, treatment_id, run = _crash_rounds(tmp_path, rounds=12, max_lines=3, seed=seed)
    _check_database(db_path, treatment_id, run, seed)
