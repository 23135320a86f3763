"""`python run.py` is the demo: fake Priority, the cloud and a seeded station on loopback, syncing.

The demo runs as a real process (as a person starts it) on free ports, in a temporary directory and
a test database of its own (tests/pg.py), with pytest's variables removed (NiceGUI would otherwise
enter its test mode). Everything is checked over HTTP or in the databases the demo writes.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from cloud.auth import mask
from cloud.priority.fake import DEFAULT_PASSWORD, SERVICE_ROOT
from cloud.schema import devices
from cloud.schema import treatments as cloud_treatments
from store import remote
from store.engine import read_transaction
from store.enums import CacheType, Role
from store.models import User, ValidationCacheEntry
from store.station import Actor, open_station
from store.treatments import EmergencyPatient, start_insertion
from tests.pg import SERVER_URL, fresh_database
from tests.utils.servers import free_port

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[1]
SITE = "H1-TLV"  # the demo station's first site (ui/demo.py DEMO_SITES)


class Output:
    """Everything the process prints, read by a thread (a full pipe would stall the demo)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # end of output
            self._changed.notify_all()

    def wait_for(self, wanted: Callable[[str], bool], timeout_s: float) -> str:
        """The first line for which `wanted` holds; fails when the output ends or time runs out."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if line == "":
                        raise AssertionError(f"the demo ended; it said:\n{self.text[-4000:]}")
                    if wanted(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    raise AssertionError(f"the demo never said it; it said:\n{self.text[-4000:]}")

    @property
    def text(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[dict[str, str], Output, str]]:
    """The demo process with its environment, its output and its database's owner URL."""
    with fresh_database() as owner_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env |= {
            "PYTHONUNBUFFERED": "1",
            "DART_DEMO_DIR": str(tmp_path / "demo"),
            "DART_STATION_PORT": str(free_port()),
            "DART_CLOUD_PORT": str(free_port()),
            "DART_PRIORITY_PORT": str(free_port()),
            "DART_DEMO_PG_URL": SERVER_URL,
            "DART_DEMO_DATABASE": str(make_url(owner_url).database),
        }
        process = subprocess.Popen(
            [sys.executable, "run.py"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output = Output(process)
        try:
            yield env, output, owner_url
        finally:
            process.send_signal(signal.SIGINT)
            try:
                code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise AssertionError(f"the demo ignored Ctrl+C; it said:\n{output.text[-4000:]}") from None
        assert code == 0, output.text[-4000:]
        output.wait_for(lambda line: line.startswith("Demo stopped"), timeout_s=10)
        assert "Traceback" not in output.text, output.text[-4000:]


def test_the_demo_runs_priority_cloud_and_a_seeded_station_that_syncs(
    demo: tuple[dict[str, str], Output, str],
) -> None:
    env, output, owner_url = demo
    station_url = f"http://127.0.0.1:{env['DART_STATION_PORT']}"
    cloud_url = f"http://127.0.0.1:{env['DART_CLOUD_PORT']}"
    priority_url = f"http://127.0.0.1:{env['DART_PRIORITY_PORT']}{SERVICE_ROOT}"
    output.wait_for(lambda line: "ready to go" in line, timeout_s=180)
    cloud_db = create_engine(owner_url)
    # NiceGUI says it is ready just before uvicorn binds: let the client retry the connection.
    http = httpx.Client(transport=httpx.HTTPTransport(retries=6), timeout=10)
    try:
        # The three parts answer on loopback.
        cloud_health = http.get(f"{cloud_url}/health").json()
        assert (cloud_health["status"], cloud_health["priority_last_error"]) == ("ok", None)
        assert cloud_health["priority_last_refresh"] is not None  # the cloud read fake Priority
        station_health = http.get(f"{station_url}/health").json()
        assert station_health["status"] == "ok"
        customers = http.get(f"{priority_url}/CUSTOMERS", auth=("priority", DEFAULT_PASSWORD)).json()
        assert SITE in {c["CUSTNAME"] for c in customers["value"]}

        # The station is enrolled under the cloud's id, with the demo hospital's sites.
        with cloud_db.connect() as conn:
            [device] = conn.execute(select(devices.c.id, devices.c.sites, devices.c.revoked_at)).all()
        assert station_health["device_id"] == device.id and SITE in device.sites and device.revoked_at is None
        station = open_station(Path(env["DART_DEMO_DIR"]) / "station")
        try:
            assert remote.load_state(station).cloud_url == cloud_url
            # Seeded by the first sync: users with their sites, today's orders, the bundle.
            users, cache = User.__table__, ValidationCacheEntry.__table__
            with read_transaction(station.engine) as conn:
                nurse = conn.execute(
                    select(users).where(users.c.role == Role.HOSPITAL.value, users.c.is_active)
                ).first()
                todays = conn.execute(
                    select(cache.c.id).where(
                        cache.c.cache_type == CacheType.SCHEDULE.value, cache.c.day == station.local_today()
                    )
                ).all()
            assert nurse is not None and todays, "the demo station has no users or no orders for today"
            assert nurse.email in output.text  # the console says who may sign in

            # A change made on the station reaches the cloud by the background sync.
            actor = Actor(nurse.id, nurse.name, Role.HOSPITAL, frozenset(nurse.sites), nurse.position)
            change = start_insertion(
                station,
                actor,
                site=sorted(nurse.sites)[0],
                day=station.local_today(),
                surgeon="Dr. Demo",
                emergency=EmergencyPatient(subject_id="DEMO-TEST-0001", patient_label="Test, Demo"),
            )
            credential = remote.load_state(station).credential
        finally:
            station.close()
        treatment_id = change.record["id"]
        deadline = time.monotonic() + 90  # the station's sync job runs every 30 s
        while True:  # polling the cloud's database: the demo is another process
            with cloud_db.connect() as conn:
                query = select(cloud_treatments.c.id).where(cloud_treatments.c.id == treatment_id)
                found = conn.execute(query)
                if found.first() is not None:
                    break
            assert time.monotonic() < deadline, f"the change never reached the cloud:\n{output.text[-3000:]}"
            time.sleep(0.5)

        # Login codes: the cloud sends one through the demo's sender, which prints it on the console.
        asked = http.post(
            f"{cloud_url}/api/v1/auth/request-code",
            json={"identifier": nurse.email},
            headers={"Authorization": f"Bearer {credential}"},
        )
        assert asked.status_code == 202, asked.text
        # Sent after the reply (cloud/routes/auth.py); printed once it is in the outbox file.
        printed = output.wait_for(lambda line: line.startswith("Login code for"), timeout_s=30)
        outbox = Path(env["DART_DEMO_DIR"]) / "codes.jsonl"
        [sent] = [json.loads(line) for line in outbox.read_text().splitlines()]
        assert sent["destination"] == nurse.email
        assert printed.strip() == f"Login code for {mask(nurse.email)}: {sent['text']}"
    finally:
        http.close()
        cloud_db.dispose()


def test_without_postgresql_the_demo_says_what_it_needs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env |= {
        "DART_DEMO_DIR": str(tmp_path / "demo"),
        "DART_STATION_PORT": str(free_port()),
        "DART_CLOUD_PORT": str(free_port()),
        "DART_PRIORITY_PORT": str(free_port()),
        "DART_DEMO_PG_URL": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}",  # nobody listens
    }
    done = subprocess.run(
        [sys.executable, "run.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 2, done.stdout + done.stderr
    assert "The demo cannot start: PostgreSQL is not reachable" in done.stderr
    assert "docs/operations.md" in done.stderr and "Traceback" not in done.stderr
