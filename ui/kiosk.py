"""`python run.py station --kiosk`: once the station answers, Chromium opens it full screen, alone.

The browser is started only when /health answers (NiceGUI says it is ready a moment before uvicorn
binds), so the first thing the clinician sees is the station, never a connection error. It runs
incognito: no page with a patient's name is written to the browser's disk cache. Its profile lives in
the station's data directory, apart from any desktop user's browser. docs/kiosk.md explains making it
the OR laptop's only session.
"""

import contextlib
import logging
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
READY_TIMEOUT_S = 60.0
PROBE_INTERVAL_S = 0.25

# Full screen with no way out to the desktop, no first-run or crash bubbles, no translation offer, no
# pinch or swipe navigation (gloved hands), nothing fetched from the internet in the background.
KIOSK_FLAGS = (
    "--kiosk",
    "--incognito",
    "--no-first-run",
    "--no-default-browser-check",
    "--noerrdialogs",
    "--disable-infobars",
    "--disable-session-crashed-bubble",
    "--disable-translate",
    "--disable-features=Translate,TranslateUI",
    "--disable-pinch",
    "--overscroll-history-navigation=0",
    "--disable-background-networking",
    "--disable-component-update",
    "--password-store=basic",
    "--check-for-update-interval=31536000",
)


def kiosk_command(port: int, *, profile_dir: Path, browser: str = CHROMIUM) -> list[str]:
    """The Chromium command line that shows the station on this port, and nothing else."""
    url = f"http://127.0.0.1:{port}/"
    return [browser, *KIOSK_FLAGS, f"--user-data-dir={profile_dir}", f"--app={url}"]


@dataclass
class Kiosk:
    """The waiting thread and, once started, the browser."""

    port: int
    profile_dir: Path
    browser: str
    thread: threading.Thread | None = None
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()


def open_kiosk_when_ready(port: int, *, data_dir: Path, browser: str = CHROMIUM) -> Kiosk:
    """Start (in a thread) waiting for the station, then Chromium in kiosk mode on it."""
    kiosk = Kiosk(port, data_dir / "kiosk-profile", browser)
    kiosk.thread = threading.Thread(target=_open_when_ready, args=(kiosk,), name="kiosk", daemon=True)
    kiosk.thread.start()
    return kiosk


def wait_until_ready(port: int, *, timeout_s: float = READY_TIMEOUT_S) -> bool:
    """Whether http://127.0.0.1:<port>/health answered "ok" before the deadline (a readiness probe)."""
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{port}/health"
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            if httpx.get(url, timeout=2.0).json().get("status") == "ok":
                return True
        time.sleep(PROBE_INTERVAL_S)  # polling a real socket of another component, with a deadline
    return False


def _open_when_ready(kiosk: Kiosk) -> None:
    if not wait_until_ready(kiosk.port):
        log.warning(
            "the station did not answer on port %s within %.0f s: no kiosk", kiosk.port, READY_TIMEOUT_S
        )
        return
    if not Path(kiosk.browser).exists():
        log.warning("%s is not installed: open http://127.0.0.1:%s/ in a browser", kiosk.browser, kiosk.port)
        return
    kiosk.profile_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    command = kiosk_command(kiosk.port, profile_dir=kiosk.profile_dir, browser=kiosk.browser)
    kiosk.process = subprocess.Popen(command, start_new_session=True)
