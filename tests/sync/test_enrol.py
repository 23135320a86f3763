"""Enrolment: a station trades an administrator's code for its own credential and the cloud's device id.

Against the real cloud over HTTP (PostgreSQL), with codes issued through the admin route, and real
station databases. Also `python run.py station --cloud URL --enrol CODE` as a process.
"""

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from cloud.schema import devices
from cloud.schema import treatments as cloud_treatments
from store import remote
from store.engine import read_transaction
from store.journal import AUDIT, QUEUE
from store.station import Station, open_station
from store.treatments import start_insertion
from store.validation_cache import install_bundle
from sync.engine import Outcome, SyncEngine
from sync.enrol import EnrolmentError, EnrolmentRefused, enrol_station
from tests.cloud.test_push import Cloud
from tests.cloud.utils import add_device, add_session, add_user
from tests.sync.conftest import STATION_SITES, Laptop, bundle_for
from tests.sync.test_engine import copy_as_new_entry
from tests.test_run_station import _env_outside_pytest, _wait_for_line
from tests.utils.data import NURSE, SITE, FakeClock
from tests.utils.servers import free_port

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
CodeIssuer = Callable[..., str]


@pytest.fixture
def issue_code(cloud: Cloud) -> Iterator[CodeIssuer]:
    """An administrator signed in on the IT desk's device issues codes through the cloud's route."""
    admin = add_user(cloud.owner, role="admin", user_sites=(), email="it@alphatau.example")
    desk, _ = add_device(cloud.owner, STATION_SITES, name="IT desk")
    token = add_session(cloud.owner, admin, desk)
    with httpx.Client(base_url=cloud.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:

        def issue(sites: tuple[str, ...] = STATION_SITES, name: str = "OR-3 laptop") -> str:
            body = {"device_name": name, "sites": list(sites)}
            reply = c.post("/api/v1/devices/enrolment-codes", json=body)
            assert reply.status_code == 201, reply.text
            return str(reply.json()["code"])

        yield issue


@pytest.fixture
def new_station(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[[str], Station]]:
    made: list[Station] = []

    def make(name: str) -> Station:
        station = open_station(tmp_path / name, clock=clock)
        install_bundle(station, bundle_for(station.local_today()))
        made.append(station)
        return station

    yield make
    for station in made:
        station.close()


def _insertion(station: Station) -> str:
    change = start_insertion(
        station, NURSE, site=SITE, day=station.local_today(), surgeon="Dr. Gold", order_names=["SO2611001"]
    )
    return str(change.record["id"])


def _queue(station: Station) -> list[dict]:
    with read_transaction(station.engine) as conn:
        return [dict(r) for r in conn.execute(select(QUEUE)).mappings()]


def test_an_enrolled_station_takes_the_clouds_id_and_its_changes_reach_the_cloud(
    cloud: Cloud, issue_code: CodeIssuer, new_station: Callable[[str], Station], tmp_path: Path
) -> None:
    station = new_station("laptop")
    before = station.device_id
    treatment = _insertion(station)  # made before enrolment: never sent anywhere

    enrolled = enrol_station(station, cloud.url + "/", issue_code())

    assert enrolled.previous_device_id == before and enrolled.device_id != before
    assert (enrolled.name, enrolled.sites, enrolled.reattributed) == ("OR-3 laptop", list(STATION_SITES), 1)
    assert station.device_id == enrolled.device_id
    [device] = cloud.rows(select(devices).where(devices.c.id == enrolled.device_id))
    assert device.revoked_at is None and device.sites == list(STATION_SITES)
    state = remote.load_state(station)
    assert (state.cloud_url, state.cloud_device_id, state.linked) == (cloud.url, enrolled.device_id, True)
    assert [e["device_id"] for e in _queue(station)] == [enrolled.device_id]  # re-attributed, unsent
    # The credential is sealed with the data key: it is nowhere in the database files in clear.
    files = [p.read_bytes() for p in (tmp_path / "laptop").glob("station.db*")]
    assert state.credential and files and not any(state.credential.encode() in f for f in files)
    with read_transaction(station.engine) as conn:
        audit = conn.execute(select(AUDIT.c.action, AUDIT.c.new_values).order_by(AUDIT.c.id.desc())).first()
    assert audit is not None and audit.action == "station_enrolled"
    assert audit.new_values["device_id"] == enrolled.device_id and "credential" not in str(audit.new_values)

    report = SyncEngine(station).run_round()
    assert report.outcome is Outcome.OK, report.error
    assert [r.id for r in cloud.rows(select(cloud_treatments.c.id))] == [treatment]
    assert {e["status"] for e in _queue(station)} == {"done"}

    # The id is the station's for good: opened again from disk, it is the cloud's.
    reopened = open_station(tmp_path / "laptop")
    try:
        assert reopened.device_id == enrolled.device_id
    finally:
        reopened.close()


def test_a_used_wrong_or_malformed_code_is_refused_in_the_clouds_words_and_changes_nothing(
    cloud: Cloud, issue_code: CodeIssuer, new_station: Callable[[str], Station]
) -> None:
    code = issue_code()
    enrol_station(new_station("first"), cloud.url, code)
    second = new_station("second")
    before = second.device_id

    with pytest.raises(EnrolmentRefused, match="wrong, already used or expired"):
        enrol_station(second, cloud.url, code)
    with pytest.raises(EnrolmentRefused, match="16 letters and digits"):
        enrol_station(second, cloud.url, "not-a-code")
    with pytest.raises(EnrolmentRefused, match="Type the enrolment code"):
        enrol_station(second, cloud.url, "   ")

    assert second.device_id == before and not remote.load_state(second).linked
    with second.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT device_id FROM device_state").scalar() == before


def test_an_unreachable_cloud_or_a_bad_address_is_said_plainly_and_leaves_the_code_usable(
    cloud: Cloud, issue_code: CodeIssuer, new_station: Callable[[str], Station]
) -> None:
    station = new_station("laptop")
    code = issue_code()
    with pytest.raises(EnrolmentError, match="cannot be reached"):
        enrol_station(station, f"http://127.0.0.1:{free_port()}", code, timeout_s=2)
    with pytest.raises(EnrolmentError, match="is not a cloud address"):
        enrol_station(station, "cloud.example", code)
    assert not remote.load_state(station).linked

    assert enrol_station(station, cloud.url, code).device_id == station.device_id  # the code still works


def test_changes_sent_but_not_confirmed_block_a_new_enrolment_before_the_code_is_used(
    cloud: Cloud, issue_code: CodeIssuer, new_station: Callable[[str], Station]
) -> None:
    station = new_station("laptop")
    enrol_station(station, cloud.url, issue_code())
    _insertion(station)
    [entry] = _queue(station)
    remote.mark_sent(station, [entry["op_id"]], at=station.now())  # on the wire when the link died
    linked_as = station.device_id

    code = issue_code()
    with pytest.raises(EnrolmentError, match="1 change\\(s\\) were sent to the cloud as device"):
        enrol_station(station, cloud.url, code)
    assert station.device_id == linked_as and [e["device_id"] for e in _queue(station)] == [linked_as]

    # The code was not used up: another station enrols with it.
    assert enrol_station(new_station("spare"), cloud.url, code).sites == list(STATION_SITES)


def test_a_revoked_station_enrolled_again_syncs_as_its_new_device(
    cloud: Cloud, issue_code: CodeIssuer, new_station: Callable[[str], Station]
) -> None:
    station = new_station("laptop")
    first = enrol_station(station, cloud.url, issue_code())
    treatment = _insertion(station)
    assert SyncEngine(station).run_round().outcome is Outcome.OK
    [confirmed] = _queue(station)
    refused = copy_as_new_entry(Laptop(station, SyncEngine(station), None), confirmed)  # type: ignore[arg-type]
    assert SyncEngine(station).run_round().outcome is Outcome.OK  # the cloud refuses it for good
    assert {e["op_id"]: e["status"] for e in _queue(station)}[refused] == "quarantined"
    with cloud.owner.begin() as conn:
        conn.execute(update(devices).where(devices.c.id == first.device_id).values(revoked_at=station.now()))
    _insertion_day_after = start_insertion(
        station, NURSE, site=SITE, day=station.local_today(), surgeon="Dr. Gold", order_names=["SO2611004"]
    )
    assert SyncEngine(station).run_round().outcome is Outcome.UNAUTHORISED

    second = enrol_station(station, cloud.url, issue_code())
    report = SyncEngine(station).run_round()

    assert report.outcome is Outcome.OK, report.error
    # The unsent insertion and the refused copy (never applied) now carry the new id.
    assert second.device_id != first.device_id and second.reattributed == 2
    ids = {r.id for r in cloud.rows(select(cloud_treatments.c.id))}
    assert ids == {treatment, _insertion_day_after.record["id"]}
    statuses = {e["op_id"]: (e["status"], e["device_id"]) for e in _queue(station)}
    assert statuses.pop(refused) == ("quarantined", second.device_id)  # shown, not sent again
    assert set(statuses.values()) == {("done", first.device_id), ("done", second.device_id)}


def test_run_py_station_enrols_before_it_starts(cloud: Cloud, issue_code: CodeIssuer, tmp_path: Path) -> None:
    data_dir = tmp_path / "station"
    station_command = [sys.executable, "run.py", "station", "--data-dir", str(data_dir)]
    refused = subprocess.run(
        [*station_command, "--cloud", cloud.url, "--enrol", "0000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env_outside_pytest(),
    )
    assert refused.returncode == 2 and "16 letters and digits" in refused.stderr, refused.stderr
    alone = subprocess.run(
        [*station_command, "--enrol", "ABCD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env_outside_pytest(),
    )
    assert alone.returncode == 2 and "--cloud" in alone.stderr

    port = free_port()
    process = subprocess.Popen(
        [
            *station_command,
            *("--port", str(port), "--cloud", cloud.url, "--enrol", issue_code()),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env_outside_pytest(),
    )
    try:
        said = _wait_for_line(process, "ready to go", timeout=90)
        enrolled = [line for line in said if "Enrolled" in line]
        assert enrolled, "".join(said)
        with httpx.Client(transport=httpx.HTTPTransport(retries=6), timeout=10) as client:
            health = client.get(f"http://127.0.0.1:{port}/health").json()
        [device] = cloud.rows(select(devices.c.id, devices.c.name).where(devices.c.name == "OR-3 laptop"))
        assert health["device_id"] == device.id and device.id in enrolled[0]
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
