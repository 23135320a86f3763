"""`python run.py station` starts, migrates its database, answers /health, and listens on loopback only."""

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_line(process: subprocess.Popen, needle: str, timeout: float) -> list[str]:
    """Read the server's output until it says `needle` (no sleeping: select on the pipe)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
        if not ready:
            break
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"the station never said {needle!r}; it said: {''.join(seen)[-2000:]}")


def _env_outside_pytest() -> dict[str, str]:
    # NiceGUI switches to its test mode when it sees pytest's variables; the station must run for real.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def test_station_starts_on_loopback_and_reports_health(tmp_path: Path) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "run.py", "station", "--data-dir", str(tmp_path / "st"), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env_outside_pytest(),
    )
    try:
        _wait_for_line(process, "ready to go", timeout=60)
        # NiceGUI says it is ready just before uvicorn binds: let the client retry the connection.
        with httpx.Client(transport=httpx.HTTPTransport(retries=6), timeout=10) as client:
            health = client.get(f"http://127.0.0.1:{port}/health").json()
        assert health["status"] == "ok" and health["device_id"].startswith("st-")
        assert health == {**health, "treatments": 0, "waiting": 0}
        assert (tmp_path / "st" / "station.db").exists()
        assert oct((tmp_path / "st" / "data.key").stat().st_mode & 0o777) == "0o600"
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        local_addresses = [line.split()[3] for line in listening.splitlines()]
        assert local_addresses and all(a == f"127.0.0.1:{port}" for a in local_addresses), local_addresses
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Chromium is an outside system: this stand-in says on the station's console how it was started and
# what the station answered at that moment (the kiosk inherits the station's output).
_FAKE_CHROMIUM = """#!{python}
import sys, urllib.request
url = next(a for a in sys.argv if a.startswith("--app=")).removeprefix("--app=")
health = urllib.request.urlopen(url + "health", timeout=5).read().decode()
print("KIOSK", " ".join(sys.argv[1:]), "HEALTH", health.replace(" ", ""), flush=True)
"""


def test_station_with_kiosk_opens_the_browser_full_screen_on_itself(tmp_path: Path) -> None:
    port = _free_port()
    browser = tmp_path / "chromium"
    browser.write_text(_FAKE_CHROMIUM.format(python=sys.executable))
    browser.chmod(0o755)
    command = [sys.executable, "run.py", "station", "--kiosk", "--data-dir", str(tmp_path / "st")]
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**_env_outside_pytest(), "DART_KIOSK_BROWSER": str(browser)},
    )
    try:
        kiosk_line = _wait_for_line(process, "KIOSK ", timeout=90)[-1]
        assert f"--app=http://127.0.0.1:{port}/" in kiosk_line.split()
        assert "--kiosk" in kiosk_line.split() and "--incognito" in kiosk_line.split()
        assert '"status":"ok"' in kiosk_line  # opened only once the station answered
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
