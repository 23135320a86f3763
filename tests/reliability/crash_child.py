"""A station process that scans applicators as fast as it can, for the crash test to kill.

Run from the project root:

    python -m tests.reliability.crash_child <data_dir> <treatment_id> <start_index>

It scans `DART-CRSH-<index>` serials from `start_index` on into the treatment and, after each
scan that `scan_applicator` saved, prints `CONFIRMED <serial>` and flushes: that line is the
confirmation the clinician saw, so it is printed only once the command has returned.

With `-` as `start_index` the child imports everything first and then reads the index from a
line on stdin. The imports cost most of a child's start-up, so the test starts the next child
while the current one is still scanning and only tells it where to begin once the current one has
been killed (the index depends on what the killed one confirmed).

The first line printed is `PRAGMAS name=value ...`, the durability settings of the child's own
connection, so that the parent can check invariant 1's configuration in the process it kills.
"""

import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from store.engine import pragma_values
from store.scanning import ScanOutcome, scan_applicator
from store.station import Station, open_station
from store.validation_cache import bundle_checksum, current_bundle_version, install_bundle
from tests.utils.data import NURSE, SITE, inventory_item

ORDER = "SO2611001"
INVENTORY_SIZE = 5000
BUNDLE_VERSION = "crash-1"
VALID_DAYS = 3650  # the children run on the real clock: the bundle must not go stale mid-run


def serial_for(index: int) -> str:
    return f"DART-CRSH-{index:05d}"


def crash_bundle(today: date) -> dict[str, Any]:
    """One order scheduled for `today` (the real one: the children use the real clock) and its stock."""
    bundle: dict[str, Any] = {
        "version": BUNDLE_VERSION,
        "valid_until": f"{(today + timedelta(days=VALID_DAYS)).isoformat()}T00:00:00+00:00",
        "users": [
            {
                "id": NURSE.user_id,
                "name": NURSE.name,
                "role": NURSE.role.value,
                "sites": sorted(NURSE.sites),
                "position": NURSE.position,
            }
        ],
        "schedule": [
            {
                "order_name": ORDER,
                "patient_label": "Cohen, Miriam",
                "site": SITE,
                "day": today.isoformat(),
                "indication": "pancreas",
                "seeds": 80,
                "activity_per_seed": 2.5,
                "seed_length": 10.0,
            }
        ],
        "inventory": [inventory_item(serial_for(i), ORDER) for i in range(INVENTORY_SIZE)],
    }
    bundle["checksum"] = bundle_checksum(bundle)
    return bundle


def ensure_bundle(station: Station) -> None:
    """Install the crash bundle unless the station already has one (a later child finds it there)."""
    with station.engine.connect() as conn:
        installed = current_bundle_version(conn)
    if installed is None:
        install_bundle(station, crash_bundle(station.local_today()))


def _emit(line: str) -> None:
    # One write per line, flushed: the parent reads whole lines from the pipe.
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


def run(data_dir: Path, treatment_id: str, start_index: int) -> int:
    station = open_station(data_dir)
    try:
        ensure_bundle(station)
        with station.engine.connect() as conn:
            pragmas = pragma_values(conn)
        _emit("PRAGMAS " + " ".join(f"{name}={value}" for name, value in pragmas.items()))
        for index in range(start_index, INVENTORY_SIZE):
            serial = serial_for(index)
            result = scan_applicator(station, NURSE, treatment_id=treatment_id, raw=serial)
            if result.saved:
                _emit(f"CONFIRMED {serial}")
            elif result.outcome is not ScanOutcome.ALREADY_SCANNED:
                # ALREADY_SCANNED is expected: a killed predecessor committed this serial after its
                # last printed line. Anything else means the scan itself is broken.
                _emit(f"REFUSED {serial} {result.outcome.value} {result.message}")
                return 2
        _emit("EXHAUSTED")
        return 0
    finally:
        station.close()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 64
    data_dir, treatment_id, start = argv
    if start == "-":
        start = sys.stdin.readline().strip()
        if not start:
            return 0  # the parent closed stdin: this spare child is not needed
    return run(Path(data_dir), treatment_id, int(start))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
