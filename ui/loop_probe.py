"""Opt-in measurement of the station's own event loop, for benchmarks/scan_latency.py.

With `DART_LOOP_PROBE=1` in the station's environment, a heartbeat task wakes every 100 ms and records
how late it woke: every click and every scan waits at least that long while something holds the loop.
`/health` then reports `loop_stall_ms`, the worst lateness since the previous `/health` answer (so a
benchmark reads it once before and once after what it measures), and `loop_beats`, the heartbeats in
that span. A watchdog thread logs, at WARNING, what the loop was running when a heartbeat is more
than `WATCH_S` late (its stack), which names the code to move off the loop. The garbage collector's
full passes are timed too (`gc_full_worst_ms`, `gc_full_passes`): the thread that triggers one holds
the GIL for all of it, so a long pass stalls the loop whichever thread ran it. Without the variable
nothing runs and `/health` says nothing more.
"""

import asyncio
import gc
import logging
import os
import sys
import threading
import time
import traceback

from nicegui import background_tasks

log = logging.getLogger(__name__)

ENV = "DART_LOOP_PROBE"
INTERVAL_S = 0.1
WATCH_S = 0.1  # lateness worth a stack in the log


class LoopProbe:
    def __init__(self) -> None:
        self.worst_s = 0.0
        self.beats = 0
        self.gc_worst_s = 0.0
        self.gc_passes = 0
        self._gc_started: float | None = None
        self._due = time.monotonic() + INTERVAL_S
        self._loop_thread = threading.get_ident()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        threading.Thread(target=self._watch, name="event loop watchdog", daemon=True).start()
        while True:
            due = loop.time() + INTERVAL_S
            self._due = time.monotonic() + INTERVAL_S
            await asyncio.sleep(INTERVAL_S)
            self.worst_s = max(self.worst_s, loop.time() - due)
            self.beats += 1

    def take(self) -> dict[str, float]:
        """The worst stall, the heartbeats and the full collections since the last call; start over."""
        report = {
            "loop_stall_ms": round(self.worst_s * 1000, 1),
            "loop_beats": self.beats,
            "gc_full_worst_ms": round(self.gc_worst_s * 1000, 1),
            "gc_full_passes": self.gc_passes,
        }
        self.worst_s, self.beats, self.gc_worst_s, self.gc_passes = 0.0, 0, 0.0, 0
        return report

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """gc.callbacks: time each full (generation 2) collection."""
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self.gc_worst_s = max(self.gc_worst_s, time.perf_counter() - self._gc_started)
            self.gc_passes += 1
            self._gc_started = None

    def _watch(self) -> None:
        reported = 0.0
        while True:
            time.sleep(WATCH_S / 2)
            due = self._due
            late = time.monotonic() - due
            if late > WATCH_S and due != reported:
                reported = due
                frame = sys._current_frames().get(self._loop_thread)
                inner = (
                    traceback.extract_stack(frame)[-12:] if frame else []
                )  # where it is, not how it got there
                stack = "".join(traceback.format_list(inner)) or "(no frame)\n"
                log.warning("event loop %.0f ms late; it is running:\n%s", late * 1000, stack)


_probe: LoopProbe | None = None


def start() -> None:
    """Start the heartbeat on the running loop when the environment asks for it."""
    global _probe
    if os.environ.get(ENV) != "1" or _probe is not None:
        return
    _probe = LoopProbe()
    gc.callbacks.append(_probe.on_gc)
    background_tasks.create(_probe.run(), name="event loop probe")


def report() -> dict[str, float]:
    """What /health adds: nothing unless the probe runs."""
    return _probe.take() if _probe is not None else {}
