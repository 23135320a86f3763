"""The real station (`python run.py station`, a subprocess on loopback) answers only requests addressed
to itself, gives each browser an HttpOnly same-site session cookie, and the kiosk launcher opens the
browser on it only once it answers.

A page elsewhere that resolves its own name to 127.0.0.1 (DNS rebinding) sends its own name as Host:
refused, for pages, the API and NiceGUI's websocket alike.
"""

import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_run_station import ROOT, _env_outside_pytest, _wait_for_line
from tests.utils.servers import free_port
from ui.kiosk import KIOSK_FLAGS, open_kiosk_when_ready

# Chromium is an outside system: this stand-in records how it was started and what the station said then.
FAKE_BROWSER = """#!{python}
import sys, urllib.request
url = next(a for a in sys.argv if a.startswith("--app=")).removeprefix("--app=")
health = urllib.request.urlopen(url + "health", timeout=5).read().decode()
open({record!r}, "w").write("\\n".join(sys.argv[1:]) + "\\nHEALTH " + health)
"""


@pytest.fixture(scope="module")
def station_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """`python run.py station` on a free port; yields (port, its data directory)."""
    port = free_port()
    data_dir = tmp_path_factory.mktemp("host-check") / "station"
    process = subprocess.Popen(
        [sys.executable, "run.py", "station", "--data-dir", str(data_dir), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env_outside_pytest(),
    )
    try:
        _wait_for_line(process, "ready to go", timeout=60)
        with httpx.Client(transport=httpx.HTTPTransport(retries=6), timeout=10) as client:
            assert client.get(f"http://127.0.0.1:{port}/health").status_code == 200
        yield port, data_dir
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def get(port: int, path: str, host: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}, timeout=10)


def test_the_station_answers_its_own_addresses(station_port: tuple[int, Path]) -> None:
    port, _ = station_port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        reply = get(port, "/health", host)
        assert reply.status_code == 200 and reply.json()["status"] == "ok", host


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:{port}", "127.0.0.1", "127.0.0.1:{other}", "192.168.1.5:{port}", ""],
)
@pytest.mark.parametrize(
    "path", ["/health", "/login", "/today", "/_nicegui_ws/socket.io/?EIO=4&transport=polling"]
)
def test_any_other_host_is_refused_for_every_path(
    station_port: tuple[int, Path], host: str, path: str
) -> None:
    port, _ = station_port
    reply = get(port, path, host.format(port=port, other=port + 1))
    assert reply.status_code == 421
    assert "answers only http://127.0.0.1:<port>" in reply.text
    assert "set-cookie" not in reply.headers


def test_each_browser_gets_an_httponly_same_site_session_cookie(station_port: tuple[int, Path]) -> None:
    port, _ = station_port
    reply = get(port, "/login", f"127.0.0.1:{port}")
    assert reply.status_code == 200 and "Sign in" in reply.text
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith("dart_session=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    other = get(port, "/login", f"127.0.0.1:{port}").headers["set-cookie"]
    assert other.split(";")[0] != cookie.split(";")[0]  # every browser its own session


def test_the_kiosk_opens_chromium_on_the_station_once_it_answers(
    station_port: tuple[int, Path], tmp_path: Path
) -> None:
    port, data_dir = station_port
    record = tmp_path / "browser-args.txt"
    browser = tmp_path / "chromium"
    browser.write_text(FAKE_BROWSER.format(python=sys.executable, record=str(record)))
    browser.chmod(0o755)
    kiosk = open_kiosk_when_ready(port, data_dir=data_dir, browser=str(browser))
    assert kiosk.thread is not None
    kiosk.thread.join(timeout=60)
    assert kiosk.process is not None
    assert kiosk.process.wait(timeout=30) == 0
    args = record.read_text().splitlines()
    assert f"--app=http://127.0.0.1:{port}/" in args
    assert set(KIOSK_FLAGS) <= set(args) and "--kiosk" in args and "--incognito" in args
    assert f"--user-data-dir={data_dir / 'kiosk-profile'}" in args
    assert stat.S_IMODE((data_dir / "kiosk-profile").stat().st_mode) == 0o700
    assert args[-1].startswith("HEALTH ") and '"status":"ok"' in args[-1].replace(" ", "")
