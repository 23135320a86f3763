"""What the next simulated station starts with: set by the `user` fixture, read by station_main.py.

The `User` fixture runs a main file (like `python run.py station`) for every test; a main file takes no
arguments, so the fixture leaves the station's data directory, clock and options here first.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from store.station import Settings


@dataclass
class StationConfig:
    data_dir: Path
    clock: Callable[[], datetime]
    settings: Settings | None = None
    start_sync: bool = False  # tests that need the background sync turn it on (a linked cloud)


CONFIG: StationConfig | None = None
