"""The station as `python run.py station` builds it, for NiceGUI's simulated `User` (tests/ui/conftest.py).

Never `import run` in a test (docs: the fixture re-runs the main file for every test): this file does
what run.py's `run_station` does, with the data directory and clock the fixture chose, and accepts the
test client's Host ("test") besides the station's own.
"""

from nicegui import ui

from tests.ui import harness
from ui.station_app import register_station

config = harness.CONFIG
assert config is not None, "tests/ui/conftest.py sets harness.CONFIG before the station starts"
register_station(
    config.data_dir,
    settings=config.settings,
    clock=config.clock,
    extra_hosts=("test",),
    start_sync=config.start_sync,
)
ui.run(title="DaRT station", reload=False, show=False)
