"""The garbage collector set up for the station's long-running process (docs/performance.md, sync_catchup).

CPython's full (generation 2) collection walks every container object the process holds, and the
thread that runs it holds the GIL for the whole pass. The station's imports alone (NiceGUI, FastAPI,
SQLAlchemy, pydantic, the pages) leave about 200,000 such objects, so a full pass that happened to
run in the sync worker thread during a catch-up froze the event loop for 80 to 235 ms: every click
and every scan waited that long. Those objects live as long as the process; scanning them again and
again finds nothing to free.

`settle_after_startup()` therefore collects once and then freezes whatever survived start-up
(`gc.freeze`): frozen objects are never scanned again, so a full pass only walks what the station
made since. Collections still run for everything made after start-up, the young ones less often
(`YOUNG_THRESHOLD`, below).
"""

import gc
import logging
import threading

log = logging.getLogger(__name__)

# Young collections every 10,000 new container objects instead of CPython's 700: the pages and the sync
# allocate fast, and at 700 so many short-lived objects were promoted that a full pass (57 to 70 ms with
# 200 applicator rows on screen) ran about every 10 s of scanning; at 10,000 none ran during 200 scans
# and a 5,000-change sync, and a young pass stays a few ms (docs/performance.md, scan_latency).
YOUNG_THRESHOLD = 10_000

_settled = False
_lock = threading.Lock()


def settle_after_startup() -> int:
    """Collect, then freeze every object that survived start-up; once per process (later calls do
    nothing: a process that restarts its app, as the tests do, keeps its first freeze). Returns how
    many objects are frozen."""
    global _settled
    with _lock:
        if not _settled:
            # Garbage still waiting for a pass would otherwise be frozen too, and never freed.
            gc.collect()
            gc.freeze()
            gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
            _settled = True
            log.debug("garbage collector: %d start-up objects frozen", gc.get_freeze_count())
        return gc.get_freeze_count()
