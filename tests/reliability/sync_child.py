"""A station process that works and syncs without pause, for test_kill_sync.py to kill.

Run from the project root:

    python -m tests.reliability.sync_child <data_dir> <first_order> <scans> <seed>

It imports everything, then waits for a line on stdin (the parent's go; an empty line or end of
file: not needed, exit). Then, for ever: a few clinical changes through the real commands
(tests/reliability/workload.py), each followed by `CONFIRMED <op_id>` once the command returned,
and one sync round whose phases it reports:

    PHASE pull / DONE pull <s> / PHASE push / DONE push <s> / ROUND <outcome> <error>

Every line is written and flushed at once, so the parent knows which phase the process is in
when it kills it, and which changes the clinician saw confirmed.
"""

import random
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from store.station import open_station
from sync.client import SyncClient
from sync.engine import RoundReport, SyncEngine, SyncSettings
from tests.reliability.workload import Plan, next_change

# Small batches and pages: each round has several of each, so kills land between and inside them.
SETTINGS = SyncSettings(batch_size=5, page_size=5, bundle_interval=timedelta(days=365), timeout_s=20)
CHANGES_PER_ROUND = (4, 16)


def emit(line: str) -> float:
    """Write one whole line at once and flush it; the moment it was written."""
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()
    return time.perf_counter()


class PhaseReportingEngine(SyncEngine):
    """The real engine; the pull and the push each announce their start and their end."""

    def _pull(self, client: SyncClient, report: RoundReport) -> None:
        started = emit("PHASE pull")
        super()._pull(client, report)
        emit(f"DONE pull {time.perf_counter() - started:.4f}")

    def _push(self, client: SyncClient, report: RoundReport) -> None:
        started = emit("PHASE push")
        super()._push(client, report)
        emit(f"DONE push {time.perf_counter() - started:.4f}")


def run(data_dir: Path, plan: Plan, seed: int) -> int:
    rng = random.Random(seed)
    station = open_station(data_dir)
    engine = PhaseReportingEngine(station, settings=SETTINGS)
    try:
        while True:
            for _ in range(rng.randint(*CHANGES_PER_ROUND)):
                emit(f"CONFIRMED {next_change(station, plan)}")
            report = engine.run_round()
            emit(f"ROUND {report.outcome.value} {_one_line(report.error)}")
    finally:
        station.close()


def _one_line(text: Any) -> str:
    return " ".join(str(text or "").split())


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 64
    data_dir, first_order, scans, seed = argv
    if not sys.stdin.readline().strip():
        return 0  # the parent closed stdin: this spare child is not needed
    return run(Path(data_dir), Plan(first_order=int(first_order), scans=int(scans)), int(seed))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
