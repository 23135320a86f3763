"""Push: every operation takes effect once, merges field by field, and never blocks the queue.

Stations here are real (store commands on SQLite); their sync_queue rows are turned into wire
operations the way the sync engine will (patient fields decrypted for TLS, the site added). A
second laptop's edits of the same record are built by hand from the first one's operations.
"""

import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import Engine, event, func, insert, select, text

from cloud.app import create_app
from cloud.cipher import load_cipher
from cloud.config import CloudSettings
from cloud.db import SiteScope, set_scope
from cloud.schema import applicators as cloud_applicators
from cloud.schema import (
    change_log,
    conflicts,
    devices,
    incidents,
    op_ledger,
    priority_applicators,
    sites,
    writeback_queue,
)
from cloud.schema import treatments as cloud_treatments
from cloud.tokens import digest, new_token
from store.applicators import update_details
from store.crypto import PatientCipher
from store.enums import ApplicatorStatus
from store.journal import QUEUE
from store.models import Treatment
from store.scanning import Confirmation, scan_applicator
from store.station import Station, open_station
from store.validation_cache import install_bundle
from sync import wire
from sync.protocol import MAX_OPS_PER_PUSH, PROTOCOL_VERSION, PushRequest
from tests.cloud.conftest import CloudDatabase
from tests.cloud.requests_done import RequestsDone
from tests.utils.data import NOW, NURSE, OTHER_HOSPITAL_SITE, SECOND_SITE, SITE, FakeClock, make_bundle
from tests.utils.flows import PATHS, finalised_insertion, insertion, move, scan
from tests.utils.servers import serve

S = ApplicatorStatus
WAITING_FOR_A_LOCK = (
    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'dart_app' AND wait_event_type = 'Lock' "
    "AND datname = current_database()"
)
STATION_SITES = (SITE, SECOND_SITE)
PUSH = "/api/v1/sync/push"


# --- the cloud, its devices and the station's queue on the wire ----------------------------------
@dataclass
class Cloud:
    url: str
    owner: Engine  # test set-up and inspection only
    cipher: PatientCipher
    done: RequestsDone | None = None  # when the server has finished a request (set by the fixture)

    def enrol(self, device_id: str | None = None, device_sites: tuple[str, ...] = STATION_SITES) -> "Device":
        """A device with its own credential (a station's own id, so its queue entries match)."""
        token = new_token()
        device_id = device_id or f"st-{uuid.uuid4().hex[:12]}"
        with self.owner.begin() as conn:
            conn.execute(
                insert(devices).values(
                    id=device_id,
                    name="OR laptop",
                    sites=list(device_sites),
                    credential_hash=digest(token),
                    enrolled_by="test",
                )
            )
        return Device(self, device_id, token)

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.owner.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, query: Any) -> list[Any]:
        with self.owner.connect() as conn:
            return list(conn.execute(query))


@dataclass
class Device:
    cloud: Cloud
    device_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def push_response(self, ops: list[dict[str, Any]], **envelope: Any) -> httpx.Response:
        body = {"protocol": PROTOCOL_VERSION, "ops": ops, **envelope}
        return httpx.post(f"{self.cloud.url}/api/v1/sync/push", json=body, headers=self.headers, timeout=30)

    def push(self, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        response = self.push_response(ops)
        assert response.status_code == 200, response.text
        return response.json()["results"]

    def pull(self, cursor: int = 0, limit: int = 500) -> dict[str, Any]:
        response = httpx.get(
            f"{self.cloud.url}/api/v1/sync/pull",
            params={"cursor": cursor, "limit": limit},
            headers=self.headers,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def bundle(self) -> dict[str, Any]:
        response = httpx.get(f"{self.cloud.url}/api/v1/sync/bundle", headers=self.headers, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def cloud(
    cloud_db: CloudDatabase, app_engine: Engine, owner_engine: Engine, tmp_path: Path
) -> Iterator[Cloud]:
    """The app over real HTTP, with its own data key (never the working directory's)."""
    with owner_engine.begin() as conn:
        codes = (SITE, SECOND_SITE, OTHER_HOSPITAL_SITE, "B-JLM")
        conn.execute(insert(sites), [{"code": c, "name": c, "hospital": c[0]} for c in codes])
    settings = CloudSettings(database_url=cloud_db.app_url, data_key_file=tmp_path / "cloud-data.key")
    app = RequestsDone(create_app(settings, engine=app_engine))
    with serve(app) as url:
        yield Cloud(url, owner_engine, load_cipher(settings.data_key_file), app)


@pytest.fixture
def second_station(tmp_path: Path, clock: FakeClock) -> Iterator[Station]:
    """Another laptop at the same sites, with the same validation data."""
    other = open_station(tmp_path / "second-station", clock=clock)
    install_bundle(other, make_bundle())
    yield other
    other.close()


def station_ops(station: Station, *, after_seq: int = 0, offset_ms: int | None = 0) -> list[dict[str, Any]]:
    """The station's sync_queue as wire operations (what the sync engine sends).

    Patient fields are decrypted for the wire and the station's ciphertext is left in, so the tests
    see the cloud drop it. `offset_ms` stands for the offset the sync engine measured.
    """
    with station.engine.connect() as conn:
        entries = conn.execute(
            select(QUEUE).where(QUEUE.c.device_seq > after_seq).order_by(QUEUE.c.device_seq)
        ).mappings()
        treatment_sites = dict(
            conn.execute(select(Treatment.__table__.c.id, Treatment.__table__.c.site)).all()
        )
        return [_wire(station, dict(e), treatment_sites, offset_ms) for e in entries]


def _wire(
    station: Station, entry: dict[str, Any], sites_of: dict[str, str], offset_ms: int | None
) -> dict[str, Any]:
    # What the sync engine sends (sync.wire), with the station's own fields put back so that the
    # tests see the cloud drop them, and an offset standing for the one the engine measured.
    site = wire.site_of(entry, sites_of)
    assert site is not None, entry
    op = wire.operation(station.cipher, entry, site)
    return {
        **op,
        "payload": {**entry["payload"], **op["payload"]},
        "changed": {**entry["changed_fields"], **op["changed"]},
        "clock_offset_ms": offset_ms if entry["clock_offset_ms"] is None else entry["clock_offset_ms"],
    }


def edit(
    base: dict[str, Any],
    device: Device,
    changes: dict[str, Any],
    *,
    wall_ms: int,
    offset_ms: int | None = 0,
    seq: int = 1,
) -> dict[str, Any]:
    """Another laptop's update of the record `base` (an earlier op) describes, made at `wall_ms`."""
    payload = {**base["payload"], **changes}
    return {
        **base,
        "op_id": str(uuid.uuid4()),
        "device_id": device.device_id,
        "device_seq": seq,
        "kind": "update",
        "payload": payload,
        "changed": {k: [base["payload"].get(k), v] for k, v in changes.items()},
        "hlc": f"{wall_ms:015d}-{0:06d}-{device.device_id}",
        "clock_offset_ms": offset_ms,
        "depends_on": [],
    }


def statuses(results: list[dict[str, Any]]) -> list[str]:
    return [r["status"] for r in results]


def count(cloud: Cloud, table: Any, *where: Any) -> int:
    return cloud.rows(select(func.count()).select_from(table).where(*where))[0][0]


@pytest.fixture
def device(cloud: Cloud, station: Station) -> Device:
    return cloud.enrol(station.device_id)


# --- exactly once (invariant 3) ------------------------------------------------------------------
def test_the_same_batch_sent_twice_has_one_effect_and_the_same_answer(
    cloud: Cloud, station: Station, device: Device
) -> None:
    treatment_id = insertion(station)
    scan(station, treatment_id, "DART-9000-00000")
    ops = station_ops(station)
    PushRequest.model_validate({"ops": ops})  # what the station sends passes the strict model

    first = device.push(ops)
    again = device.push(ops)

    assert statuses(first) == ["applied", "applied"]
    assert statuses(again) == ["duplicate", "duplicate"]
    assert [r["original"] for r in again] == first
    assert count(cloud, change_log) == 2
    assert cloud.scalar("SELECT version FROM treatments WHERE id = :id", id=treatment_id) == 1


def test_a_resend_after_the_reply_was_lost_is_answered_from_the_ledger(
    cloud: Cloud, station: Station, device: Device
) -> None:
    insertion(station)
    ops = station_ops(station)
    assert cloud.done is not None
    with cloud.done.one_more(PUSH):  # the server finishes the request, though nobody reads the answer
        _send_and_hang_up(device, ops)
    assert cloud.scalar("SELECT result FROM op_ledger WHERE op_id = :op", op=ops[0]["op_id"])

    resent = device.push(ops)
    once_more = device.push(ops)

    assert statuses(resent) == ["duplicate"] and resent[0]["original"]["status"] == "applied"
    assert once_more == resent
    assert count(cloud, change_log) == 1 and count(cloud, cloud_treatments) == 1


def test_the_same_batch_delivered_twice_at_once_applies_once(
    cloud: Cloud, station: Station, device: Device
) -> None:
    treatment_id = insertion(station)
    scan(station, treatment_id, "DART-9000-00000")
    ops = station_ops(station)

    first, second = _together((device, ops), (device, ops))

    assert sorted([statuses(first), statuses(second)]) == [["applied"] * 2, ["duplicate"] * 2]
    assert count(cloud, change_log) == 2 and count(cloud, cloud_applicators) == 1


def test_a_retry_of_a_final_rejection_gets_the_same_rejection(
    cloud: Cloud, station: Station, device: Device
) -> None:
    insertion(station)
    [op] = station_ops(station)
    device.push([op])
    copy = {**op, "op_id": str(uuid.uuid4())}  # the same record inserted again under a new op id

    first = device.push([copy])
    second = device.push([copy])

    assert first[0]["code"] == "record_exists"
    assert second[0]["status"] == "duplicate" and second[0]["original"] == first[0]


# --- patient fields on the wire and at rest -------------------------------------------------------
def test_patient_fields_arrive_in_clear_and_rest_encrypted_with_the_clouds_key(
    cloud: Cloud, station: Station, device: Device
) -> None:
    treatment_id = insertion(station)
    device.push(station_ops(station))

    [data] = cloud.rows(select(cloud_treatments.c.data).where(cloud_treatments.c.id == treatment_id))
    stored = json.dumps(data[0])
    assert "Cohen" not in stored and "SO2611001" not in stored
    assert "order_hashes" not in data[0]
    assert cloud.cipher.decrypt(data[0]["subject_id_enc"]) == "SO2611001"
    assert data[0]["subject_hash"] == cloud.cipher.lookup_hash("SO2611001")
    [change] = device.pull()["changes"]
    assert change["record"]["subject_id"] == "SO2611001"
    assert change["record"]["patient_label"] == "Cohen, Miriam"
    assert not [k for k in change["record"] if k.endswith(("_enc", "_hash"))]


# --- concurrent edits of one record (invariant 5) ------------------------------------------------
def _opened_applicator(station: Station, device: Device) -> tuple[str, dict[str, Any]]:
    """An applicator OPENED on the station and synced; returns its id and its latest op."""
    treatment_id = insertion(station)
    applicator = scan(station, treatment_id, "DART-9000-00000")
    move(station, applicator["id"], PATHS["loaded"][S.OPENED])
    ops = station_ops(station)
    assert set(statuses(device.push(ops))) == {"applied"}
    return applicator["id"], ops[-1]


def _together(*pushes: tuple[Device, list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Push from several devices at once: threads released by one barrier."""
    barrier = threading.Barrier(len(pushes))
    answers: list[Any] = [None] * len(pushes)

    def run(index: int, device: Device, ops: list[dict[str, Any]]) -> None:
        barrier.wait()
        answers[index] = device.push(ops)

    threads = [threading.Thread(target=run, args=(i, d, o)) for i, (d, o) in enumerate(pushes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


def test_two_devices_changing_one_status_at_once_give_one_applied_and_one_held(
    cloud: Cloud, station: Station, device: Device
) -> None:
    applicator_id, opened = _opened_applicator(station, device)
    laptop_b = cloud.enrol()
    faulty = edit(opened, device, {"status": "FAULTY", "deployed_seeds": 3}, wall_ms=2_000, seq=90)
    disposed = edit(opened, laptop_b, {"status": "DISPOSED"}, wall_ms=2_001)

    [first], [second] = _together((device, [faulty]), (laptop_b, [disposed]))

    assert sorted([first["status"], second["status"]]) == ["applied", "conflict"]
    winner, loser = (first, second) if first["status"] == "applied" else (second, first)
    held = {c["field"]: c for c in loser["conflicts"] if c["status"] == "open"}
    assert held["status"]["is_safety"] and held["status"]["rule"] == "advanced_status"
    [data] = cloud.rows(select(cloud_applicators.c.data).where(cloud_applicators.c.id == applicator_id))
    expected = "FAULTY" if winner is first else "DISPOSED"
    assert data[0]["status"] == expected and held["status"]["server_value"] == expected
    if expected == "DISPOSED":
        # The held FAULTY's seed count never lands without its status (it follows the status).
        assert data[0]["deployed_seeds"] == 0 and "deployed_seeds" in held
    assert count(cloud, conflicts, conflicts.c.status == "open", conflicts.c.is_safety) >= 1


def test_two_devices_editing_different_fields_at_once_both_apply(
    cloud: Cloud, station: Station, device: Device
) -> None:
    applicator_id, opened = _opened_applicator(station, device)
    seq = max(op["device_seq"] for op in station_ops(station))
    update_details(station, NURSE, applicator_id=applicator_id, comment="outer seal torn")
    commented = station_ops(station, after_seq=seq)
    laptop_b = cloud.enrol()
    loaded = edit(opened, laptop_b, {"status": "LOADED"}, wall_ms=1)

    [first], [second] = _together((device, commented), (laptop_b, [loaded]))

    assert first["status"] == second["status"] == "applied"
    [row] = cloud.rows(
        select(cloud_applicators.c.data, cloud_applicators.c.version).where(
            cloud_applicators.c.id == applicator_id
        )
    )
    assert row.data["status"] == "LOADED" and row.data["comments"] == "outer seal torn"
    assert row.version == 4  # inserted, OPENED, then one version per device


def test_latest_comment_wins_by_hybrid_clock_whatever_the_arrival_order(
    cloud: Cloud, station: Station, device: Device
) -> None:
    applicator_id, opened = _opened_applicator(station, device)
    laptop_b, laptop_c = cloud.enrol(), cloud.enrol()
    later = edit(opened, laptop_b, {"comments": "written second"}, wall_ms=9_000_000_000_000)
    earlier = edit(opened, laptop_c, {"comments": "written first"}, wall_ms=8_000_000_000_000)

    assert statuses(laptop_b.push([later])) == ["applied"]
    [result] = laptop_c.push([earlier])  # arrives last, but was written first

    assert result["status"] == "applied"
    [decided] = result["conflicts"]
    assert decided["status"] == "auto_resolved" and decided["rule"] == "latest_wins"
    assert decided["value"] == "written second"
    assert cloud.scalar("SELECT data->>'comments' FROM applicators WHERE id = :id", id=applicator_id) == (
        "written second"
    )


def test_a_skewed_clock_turns_latest_wins_into_review(cloud: Cloud, station: Station, device: Device) -> None:
    applicator_id, opened = _opened_applicator(station, device)
    laptop_b, laptop_c = cloud.enrol(), cloud.enrol()
    laptop_b.push([edit(opened, laptop_b, {"comments": "from b"}, wall_ms=9_000_000_000_000)])
    skewed = edit(opened, laptop_c, {"comments": "from c"}, wall_ms=9_500_000_000_000, offset_ms=11 * 60_000)

    [result] = laptop_c.push([skewed])

    assert result["status"] == "conflict"
    [held] = result["conflicts"]
    assert held["rule"] == "latest_wins_skewed" and held["server_value"] == "from b" and not held["is_safety"]
    assert (
        cloud.scalar("SELECT data->>'comments' FROM applicators WHERE id = :id", id=applicator_id) == "from b"
    )


# --- one serial, two treatments (invariant 9) and Priority's re-check ----------------------------
def test_one_serial_scanned_into_two_patients_on_two_laptops_is_a_safety_conflict(
    cloud: Cloud, station: Station, second_station: Station, device: Device
) -> None:
    first_treatment = insertion(station, "SO2611001")
    mine = scan(station, first_treatment, "DART-9000-00000")
    other_treatment = insertion(second_station, "SO2611006")
    theirs = scan_applicator(
        second_station,
        NURSE,
        treatment_id=other_treatment,
        raw="DART-9000-00000",
        confirmed=frozenset({Confirmation.WRONG_TREATMENT}),
    )
    assert theirs.saved and theirs.applicator is not None
    laptop_b = cloud.enrol(second_station.device_id)

    assert statuses(device.push(station_ops(station))) == ["applied", "applied"]
    results = laptop_b.push(station_ops(second_station))

    assert statuses(results) == ["applied", "conflict"]
    by_record = {c.get("record_id") or theirs.applicator["id"]: c for c in results[1]["conflicts"]}
    assert set(by_record) == {mine["id"], theirs.applicator["id"]}
    assert all(c["is_safety"] and c["rule"] == "serial_in_two_treatments" for c in by_record.values())
    assert by_record[theirs.applicator["id"]]["server_value"]["treatment_id"] == first_treatment
    assert "no inventory has been loaded" in results[1]["message"]  # Priority never refreshed here
    held = cloud.rows(
        select(conflicts.c.record_id).where(conflicts.c.is_safety, conflicts.c.status == "open")
    )
    assert {r.record_id for r in held} == {mine["id"], theirs.applicator["id"]}
    assert count(cloud, cloud_applicators) == 2  # both rows are kept for the person who reviews them


def test_the_cloud_rechecks_offline_scans_against_priority(
    cloud: Cloud, station: Station, device: Device
) -> None:
    with cloud.owner.begin() as conn:
        conn.execute(
            insert(priority_applicators),
            [
                {
                    "site": SITE,
                    "serial": "DART-9000-00000",
                    "data": {"usage": None},
                    "refreshed_at": NOW,
                },
                {
                    "site": SITE,
                    "serial": "DART-9000-00001",
                    "data": {"usage": "Full use"},
                    "refreshed_at": NOW,
                },
            ],
        )
    treatment_id = insertion(station)
    for serial in ("DART-9000-00000", "DART-9000-00001", "DART-9000-00002"):
        scan(station, treatment_id, serial)  # the station's older bundle found nothing wrong

    results = device.push(station_ops(station))

    assert statuses(results) == ["applied", "applied", "conflict", "conflict"]
    assert [r["conflicts"][0]["rule"] for r in results[2:]] == ["used_in_priority", "not_in_inventory"]
    assert all(r["conflicts"][0]["is_safety"] for r in results[2:])
    kinds = sorted(r.kind for r in cloud.rows(select(incidents.c.kind)))
    assert kinds == ["not_in_inventory", "used_in_priority"]


def test_a_finished_treatment_queues_its_write_back_to_priority(
    cloud: Cloud, station: Station, device: Device
) -> None:
    line = {"usage": None, "priority_order": "SO2611001", "kline": 3}
    with cloud.owner.begin() as conn:
        conn.execute(
            insert(priority_applicators).values(
                site=SITE, serial="DART-9000-00000", data=line, refreshed_at=NOW
            )
        )
    finalised_insertion(station, ["DART-9000-00000"])

    assert set(statuses(device.push(station_ops(station)))) == {"applied"}

    queued = {
        r.kind: r.payload for r in cloud.rows(select(writeback_queue.c.kind, writeback_queue.c.payload))
    }
    assert queued["applicator"] == {
        "order": "SO2611001",
        "kline": 3,
        "usage": "Full use",
        "deployed_seeds": 10,
        "comments": None,
        "insertion_date": NOW.isoformat(),
    }
    assert queued["order_status"] == {"order": "SO2611001", "status": "Performed"}


# --- dependencies and rejections (invariant 6) ---------------------------------------------------
def test_an_operation_before_its_dependency_is_retried_not_remembered(
    cloud: Cloud, station: Station, device: Device
) -> None:
    treatment_id = insertion(station)
    scan(station, treatment_id, "DART-9000-00000")
    start, scanned = station_ops(station)
    assert scanned["depends_on"] == [start["op_id"]]

    [early] = device.push([scanned])
    later = device.push([start, scanned])

    assert early["status"] == "rejected" and early["code"] == "dependency_missing"
    assert statuses(later) == ["applied", "applied"]  # not answered "duplicate" of the refusal
    assert count(cloud, op_ledger) == 2


def test_a_rejected_operation_does_not_block_the_rest_of_the_batch(
    cloud: Cloud, station: Station, device: Device
) -> None:
    applicator_id, opened = _opened_applicator(station, device)
    ghost = {
        **edit(opened, device, {"status": "INSERTED"}, wall_ms=5, seq=99),
        "record_id": str(uuid.uuid4()),
    }
    ghost["payload"] = {**ghost["payload"], "id": ghost["record_id"]}
    malformed = {**edit(opened, device, {"comments": "x"}, wall_ms=6, seq=100), "table": "patients"}
    garbled = {**ghost, "op_id": "not-a-uuid", "record_id": "x" * 80}  # an INSERTED one: an incident too
    fine = edit(opened, device, {"comments": "still applied"}, wall_ms=7, seq=101)

    results = device.push([ghost, malformed, garbled, fine])

    assert statuses(results) == ["rejected", "rejected", "rejected", "applied"]
    assert [r.get("code") for r in results[:3]] == [
        "unknown_record",
        "invalid_operation",
        "invalid_operation",
    ]
    assert "table" in results[1]["message"]
    assert cloud.scalar("SELECT data->>'comments' FROM applicators WHERE id = :id", id=applicator_id) == (
        "still applied"
    )
    found = cloud.rows(select(incidents.c.kind, incidents.c.details))
    assert sorted((i.kind, i.details["code"]) for i in found) == [
        ("rejected_applicator", "invalid_operation"),
        ("rejected_applicator", "unknown_record"),
    ]
    device.push([ghost])  # the station retries its quarantined op: no second incident
    assert count(cloud, incidents) == 2


def test_batches_that_lock_records_in_opposite_orders_both_complete(
    cloud: Cloud, station: Station, device: Device
) -> None:
    treatment_id = insertion(station)
    for serial in ("DART-9000-00000", "DART-9000-00001"):
        scan(station, treatment_id, serial)
    _start, first_scan, second_scan = station_ops(station)
    device.push(station_ops(station))
    laptop_b, laptop_c = cloud.enrol(), cloud.enrol()
    b_ops = [
        edit(op, laptop_b, {"comments": f"b{i}"}, wall_ms=10 + i, seq=i + 1)
        for i, op in enumerate([first_scan, second_scan])
    ]
    c_ops = [
        edit(op, laptop_c, {"comments": f"c{i}"}, wall_ms=20 + i, seq=i + 1)
        for i, op in enumerate([second_scan, first_scan])
    ]

    for _ in range(3):  # a deadlock between the two is resolved by running the loser again
        answers = _together((laptop_b, b_ops), (laptop_c, c_ops))
        assert all(set(statuses(a)) <= {"applied", "duplicate"} for a in answers)
    assert cloud.scalar("SELECT count(*) FROM applicators WHERE data->>'comments' LIKE 'c%'") == 2


def test_a_batch_picked_as_a_deadlock_victim_is_run_again(
    cloud: Cloud, station: Station, device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    """Fails without the retry in push_batch: the device would get a 500 for a transient lock cycle."""
    treatment_id = insertion(station)
    for serial in ("DART-9000-00000", "DART-9000-00001"):
        scan(station, treatment_id, serial)
    ops = station_ops(station)
    device.push(ops)
    # The push locks its records in key order: it takes `first`, then waits for `last`, which
    # another transaction holds; that one then asks for `first` and closes the circle.
    first, last = sorted(ops[1:3], key=lambda op: op["record_id"])
    batch = [
        edit(op, device, {"comments": f"edit {i}"}, wall_ms=10 + i, seq=90 + i)
        for i, op in enumerate([first, last])
    ]
    answer: dict[str, Any] = {}
    lock = text("SELECT 1 FROM applicators WHERE id = :id FOR UPDATE")
    with caplog.at_level(logging.WARNING, logger="cloud.push"), cloud.owner.connect() as other, other.begin():
        set_scope(other, SiteScope.everything())
        other.execute(lock, {"id": last["record_id"]})
        pusher = threading.Thread(target=lambda: answer.update(results=device.push(batch)))
        pusher.start()
        _until_postgres_shows(cloud, WAITING_FOR_A_LOCK)  # the push holds `first`, waits for `last`
        other.execute(lock, {"id": first["record_id"]})  # closes the circle; the push waited first and loses
    pusher.join(30)

    assert statuses(answer["results"]) == ["applied", "applied"]
    assert count(cloud, cloud_applicators, cloud_applicators.c.data["comments"].astext.like("edit %")) == 2
    assert "retried after 40P01" in caplog.text  # there was a deadlock, and the push ran again


def test_a_patient_sent_only_as_the_stations_ciphertext_is_refused(
    cloud: Cloud, station: Station, device: Device
) -> None:
    insertion(station)
    [op] = station_ops(station)
    hidden = {
        **op,
        "payload": {k: v for k, v in op["payload"].items() if k not in ("subject_id", "patient_label")},
    }

    [result] = device.push([hidden])

    assert result["code"] == "invalid_operation" and "subject_id" in result["message"]
    assert count(cloud, cloud_treatments) == 0


def test_a_site_outside_the_device_is_refused_alike_whether_or_not_it_exists(
    cloud: Cloud, station: Station, device: Device
) -> None:
    insertion(station)
    [op] = station_ops(station)
    foreign = {**op, "site": "B-JLM", "payload": {**op["payload"], "site": "B-JLM"}}
    unknown = {
        **op,
        "op_id": str(uuid.uuid4()),
        "site": "NO-SUCH",
        "payload": {**op["payload"], "site": "NO-SUCH"},
    }

    results = device.push([foreign, unknown])

    assert [r["code"] for r in results] == ["site_not_allowed", "site_not_allowed"]
    assert results[0]["message"].replace("B-JLM", "?") == results[1]["message"].replace("NO-SUCH", "?")
    assert count(cloud, cloud_treatments) == 0 and count(cloud, op_ledger) == 0


def test_the_credential_decides_the_device_not_the_body(
    cloud: Cloud, station: Station, device: Device
) -> None:
    insertion(station)
    [op] = station_ops(station)
    impostor = cloud.enrol()

    [result] = impostor.push([op])

    assert result["code"] == "device_mismatch"
    assert count(cloud, cloud_treatments) == 0


def test_the_envelope_is_checked_whole(cloud: Cloud, device: Device) -> None:
    newer = device.push_response([], protocol=PROTOCOL_VERSION + 1)
    too_many = device.push_response([{}] * (MAX_OPS_PER_PUSH + 1))
    anonymous = httpx.post(f"{cloud.url}/api/v1/sync/push", json={"protocol": 1, "ops": []}, timeout=10)

    assert newer.status_code == 422 and f"protocol {PROTOCOL_VERSION + 1} is not spoken" in newer.text
    assert too_many.status_code == 422 and "ops" in too_many.json()["detail"]
    assert anonymous.status_code == 401


# --- set-based batches ---------------------------------------------------------------------------
def test_one_operation_at_a_time_answers_and_stores_what_the_set_based_batch_does(
    cloud: Cloud, station: Station, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch is applied set-based; when its writes do not land, one op at a time in savepoints.
    Both must give the same answers and rows. Laptop A pushes a hard batch at one site; laptop B
    pushes the same at another site with one op the database refuses (NaN), which sends the whole
    batch down the one-by-one path: everything else must come out alike."""
    for site in (SITE, SECOND_SITE):
        _inventory(cloud, site)
    laptop_a, laptop_b = cloud.enrol(station.device_id, (SITE,)), cloud.enrol(device_sites=(SECOND_SITE,))
    first, second = _hard_batches(station, laptop_a)
    poison = {**second[0], "op_id": str(uuid.uuid4()), "record_id": (nan_id := str(uuid.uuid4()))}
    poison["payload"] = {**second[0]["payload"], "id": nan_id, "planned_seeds": float("nan")}

    with caplog.at_level(logging.INFO, logger="cloud.push"):
        laptop_a.push(first)
        answers_a = laptop_a.push(second)
        assert "one operation at a time" not in caplog.text  # A: the set-based path
        laptop_b.push(_elsewhere(first, laptop_b, laptop_a))
        answers_b = _push_raw(laptop_b, _elsewhere([*second, poison], laptop_b, laptop_a))
        assert "one operation at a time" in caplog.text  # B: the one-by-one path

    *answers_b, refused = answers_b
    assert refused["code"] == "store_failed"
    assert sorted(set(statuses(answers_a))) == ["applied", "conflict", "duplicate", "rejected"]
    assert {r.get("code") for r in answers_a} >= {
        "record_exists",
        "unknown_record",
        "unknown_treatment",
        "dependency_missing",
        "invalid_operation",
    }
    rules = {c["rule"] for r in answers_a for c in r.get("conflicts") or []}
    assert rules >= {
        "serial_in_two_treatments",
        "serial_scanned_twice",
        "used_in_priority",
        "not_in_inventory",
        "advanced_status",
        "latest_wins",
    }
    assert _same(answers_b, laptop_b) == _same(answers_a, laptop_a)
    assert _stored(cloud, SECOND_SITE, laptop_b) == _stored(cloud, SITE, laptop_a)


def test_a_batch_costs_a_few_statements_not_a_few_per_operation(
    cloud: Cloud, station: Station, device: Device, app_engine: Engine
) -> None:
    serials = [f"DART-9000-{i:05d}" for i in range(8)]
    finalised_insertion(station, serials)
    ops = station_ops(station)
    statements: list[str] = []

    def count_statement(*args: Any) -> None:
        statements.append(args[2])

    event.listen(app_engine, "before_cursor_execute", count_statement)
    try:
        results = device.push(ops)
    finally:
        event.remove(app_engine, "before_cursor_execute", count_statement)

    assert len(ops) == 34 and set(statuses(results)) == {"applied"}
    # The credential, the site scope, the locks, the reads, the writes, the change log.
    assert len(statements) <= 8, statements


# --- helpers -----------------------------------------------------------------------------------
def _send_and_hang_up(device: Device, ops: list[dict[str, Any]]) -> None:
    """Send a push over a raw socket and close it without reading: the reply is lost on the way."""
    url = urlsplit(device.cloud.url)
    body = json.dumps({"protocol": PROTOCOL_VERSION, "ops": ops}).encode()
    head = (
        f"POST /api/v1/sync/push HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {device.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)


def _until_postgres_shows(cloud: Cloud, probe: str, timeout_s: float = 10) -> None:
    """A readiness probe of the PostgreSQL server (another process): no client event says that a
    backend has started to wait for a lock, so ask the server, until a deadline."""
    deadline = time.monotonic() + timeout_s
    while not cloud.scalar(probe):
        assert time.monotonic() < deadline, f"PostgreSQL never showed: {probe}"
        time.sleep(0.02)


def test_a_ledger_result_is_written_once(owner_engine: Engine) -> None:
    from sqlalchemy import text

    from cloud.db import SiteScope, set_scope

    with owner_engine.begin() as conn:
        set_scope(conn, SiteScope.everything())
        conn.execute(text("INSERT INTO op_ledger (device_id, op_id, site) VALUES ('d', 'o', 'A-TLV')"))
        conn.execute(text("""UPDATE op_ledger SET result = '{"status": "applied"}' WHERE op_id = 'o'"""))
    with pytest.raises(Exception, match="written once"), owner_engine.begin() as conn:
        set_scope(conn, SiteScope.everything())
        conn.execute(text("""UPDATE op_ledger SET result = '{"status": "rejected"}' WHERE op_id = 'o'"""))


def test_a_boolean_is_not_a_protocol_version() -> None:
    from pydantic import ValidationError

    from sync.protocol import PushEnvelope

    with pytest.raises(ValidationError):
        PushEnvelope.model_validate({"protocol": True, "ops": []})


def _push_raw(device: Device, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Push with the standard library's JSON (httpx refuses NaN, which a station's JSON may hold)."""
    body = json.dumps({"protocol": PROTOCOL_VERSION, "ops": ops})
    headers = {**device.headers, "Content-Type": "application/json"}
    response = httpx.post(f"{device.cloud.url}{PUSH}", content=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def _inventory(cloud: Cloud, site: str) -> None:
    """Priority's inventory: a serial with its order line, one Priority records as used, others."""
    rows = [
        {"serial": "DART-9000-00000", "data": {"usage": None, "priority_order": "SO2611001", "kline": 1}},
        {"serial": "DART-9000-00001", "data": {"usage": "Full use"}},
        {"serial": "DART-3000-00000", "data": {"usage": None}},
    ]
    with cloud.owner.begin() as conn:
        conn.execute(insert(priority_applicators), [{**r, "site": site, "refreshed_at": NOW} for r in rows])


def _hard_batches(station: Station, device: Device) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A first batch (a treatment, an opened applicator) and a second one with every kind of answer."""
    earlier_treatment = insertion(station, "SO2611006")
    earlier = scan(station, earlier_treatment, "DART-3000-00000")
    move(station, earlier["id"], PATHS["loaded"][S.OPENED])
    first = station_ops(station)
    started, opened = first[0], first[-1]
    finalised_insertion(station, ["DART-9000-00000", "DART-9000-00001", "DART-9000-00002"])
    finished = station_ops(station, after_seq=opened["device_seq"])
    scanned = next(op for op in finished if op["table"] == "applicators" and op["kind"] == "insert")

    def again(op: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return {**op, "op_id": str(uuid.uuid4()), **fields}

    def another_scan(serial: str, **payload: Any) -> dict[str, Any]:
        record_id = str(uuid.uuid4())
        changed = {"serial_number": serial, "id": record_id, **payload}
        return again(scanned, record_id=record_id, payload={**scanned["payload"], **changed})

    twice = another_scan("DART-9000-00002")  # the same serial twice in one treatment
    disposed = edit(opened, device, {"status": "DISPOSED"}, wall_ms=5_000_000_000_000, seq=200)
    faulty = edit(
        opened, device, {"status": "FAULTY", "deployed_seeds": 3}, wall_ms=5_000_000_000_001, seq=201
    )
    later = edit(opened, device, {"comments": "written later"}, wall_ms=9_000_000_000_000, seq=202)
    sooner = edit(opened, device, {"comments": "written sooner"}, wall_ms=8_000_000_000_000, seq=203)
    ghost = edit(opened, device, {"comments": "no such record"}, wall_ms=1, seq=204)
    ghost = {**ghost, "record_id": str(uuid.uuid4())}
    ghost["payload"] = {**ghost["payload"], "id": ghost["record_id"]}
    removed = {
        **twice,
        "payload": {**twice["payload"], "deleted_at": NOW.isoformat(), "deleted_by": NURSE.user_id},
    }
    second = [
        *finished,
        another_scan("DART-3000-00000"),  # in use in the earlier treatment
        twice,
        another_scan(
            "DART-9000-00005", treatment_id=str(uuid.uuid4()), status="INSERTED"
        ),  # no such treatment
        disposed,
        faulty,  # both moved the status on from OPENED: held
        later,
        sooner,  # loses to the later comment by its clock
        again(started),  # the earlier treatment inserted again
        ghost,
        again(later, depends_on=[disposed["op_id"], sooner["op_id"]]),
        {**again(sooner, depends_on=[(late := str(uuid.uuid4()))])},  # depends on an op sent later
        {**again(sooner), "op_id": late},
        disposed,  # the same op twice in one batch
        again(removed, kind="delete", changed={}),
        again(removed, kind="delete", changed={}),  # already deleted
        {**later, "op_id": str(uuid.uuid4()), "table": "patients"},  # malformed
    ]
    return first, second


def _elsewhere(ops: list[dict[str, Any]], device: Device, first: Device) -> list[dict[str, Any]]:
    """The same operations from another laptop at the second site (its name in every clock)."""
    text = json.dumps(ops).replace(f'"{SITE}"', f'"{SECOND_SITE}"')
    return json.loads(text.replace(first.device_id, device.device_id))


def _same(found: Any, device: Device) -> Any:
    """`found` with what differs by site and laptop made alike (conflict ids: by order of appearance)."""
    text = json.dumps(found, sort_keys=True).replace(SECOND_SITE, SITE).replace(device.device_id, "<laptop>")
    for n, conflict_id in enumerate(dict.fromkeys(re.findall(r'"conflict_id": "([^"]+)"', text))):
        text = text.replace(conflict_id, f"<conflict {n}>")
    return json.loads(text)


def _stored(cloud: Cloud, site: str, device: Device) -> Any:
    """Everything the pushes stored at `site`, in a comparable form."""
    hidden = "'{subject_id_enc,patient_label_enc}'::text[]"  # sealed anew by each push
    queries = {
        "records": f"SELECT 'treatments' AS t, id, version, data - {hidden} AS data, field_hlc, deleted, "
        "last_op_id, NULL AS s FROM treatments WHERE site = :site UNION ALL "
        "SELECT 'applicators', id, version, data, field_hlc, deleted, last_op_id, "
        "treatment_id || ' ' || serial_number FROM applicators WHERE site = :site ORDER BY 1, 2",
        "ledger": "SELECT op_id, result FROM op_ledger WHERE site = :site ORDER BY op_id",
        "changes": "SELECT table_name, record_id, version, op_id FROM change_log WHERE site = :site "
        "ORDER BY seq",
        "conflicts": "SELECT table_name, record_id, field, is_safety, rule, local_value, server_value, "
        "base_value, status, op_id, resolution, resolved_at IS NULL FROM conflicts WHERE site = :site "
        "ORDER BY op_id, record_id, field, rule",
        "incidents": "SELECT kind, record_id, details FROM incidents WHERE site = :site "
        "ORDER BY 1, 2, 3::text",
        "write_backs": "SELECT kind, payload FROM writeback_queue WHERE site = :site ORDER BY 1, 2::text",
    }
    with cloud.owner.begin() as conn:
        set_scope(conn, SiteScope.everything())
        stored = {
            name: [list(r) for r in conn.execute(text(sql), {"site": site})] for name, sql in queries.items()
        }
    return _same(stored, device)
