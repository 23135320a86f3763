"""Pull: pages by server sequence number never skip or repeat a change (invariant 4), even while
other devices commit changes in the middle of the paging, and show only the device's sites."""

import threading
import uuid
from contextlib import ExitStack
from typing import Any

import httpx
from sqlalchemy import Connection, Engine, insert, select, text

from cloud.db import SiteScope, scoped_transaction
from cloud.push import CHANGE_LOG_LOCK, OFFSETS_KEY, append_changes
from cloud.schema import applicators, change_log, treatments
from store.station import Station
from store.treatments import delete_treatment
from sync.protocol import PullReply
from tests.cloud import test_push as shared
from tests.cloud.test_push import Cloud, Device, _until_postgres_shows, station_ops, statuses
from tests.cloud.utils import add_session, add_user
from tests.utils.data import ADMIN, OTHER_HOSPITAL_SITE, SITE
from tests.utils.flows import PATHS, S, insertion, move, scan

WAITING_FOR_AN_ADVISORY_LOCK = (
    "SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND NOT l.granted AND a.datname = current_database()"
)

cloud = shared.cloud  # the fixtures of the push tests: the app over HTTP, the station's device
device = shared.device


def test_pages_never_skip_or_repeat_a_change(cloud: Cloud, station: Station, device: Device) -> None:
    treatment_id = insertion(station)
    for i in range(6):
        applicator = scan(station, treatment_id, f"DART-9000-{i:05d}")
        move(station, applicator["id"], PATHS["loaded"][S.OPENED])
    assert set(statuses(device.push(station_ops(station)))) == {"applied"}

    pages = _drain(device, cursor=0, limit=4)

    seqs = [c["seq"] for page in pages for c in page["changes"]]
    assert seqs == _all_seqs(cloud) and len(seqs) == 13
    assert [p["has_more"] for p in pages] == [True, True, True, False]
    empty = device.pull(cursor=seqs[-1])
    assert empty == {"protocol": 1, "changes": [], "next_cursor": seqs[-1], "has_more": False}
    # An applicator inserted then opened appears once per change, both times as it is now.
    applicator_changes = [c for page in pages for c in page["changes"] if c["table"] == "applicators"]
    assert {(c["version"], c["record"]["status"]) for c in applicator_changes} == {(2, "OPENED")}


def test_paging_while_other_devices_commit_never_loses_a_change(cloud: Cloud, device: Device) -> None:
    writers = [cloud.enrol() for _ in range(3)]
    errors: list[BaseException] = []

    def write(writer: Device) -> None:
        try:
            for batch in range(12):
                ops = [_new_treatment(writer, batch * 5 + i + 1) for i in range(5)]
                assert statuses(writer.push(ops)) == ["applied"] * 5
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in writers]
    for thread in threads:
        thread.start()
    seen: list[int] = []
    cursor = 0
    while any(t.is_alive() for t in threads):
        page = device.pull(cursor=cursor, limit=3)  # small pages: many of them race the writers
        seen += [c["seq"] for c in page["changes"]]
        cursor = page["next_cursor"]
    for thread in threads:
        thread.join()
    for page in _drain(device, cursor=cursor, limit=3):
        seen += [c["seq"] for c in page["changes"]]

    assert not errors, errors
    assert seen == _all_seqs(cloud)  # every change exactly once, in order
    assert len(seen) == 3 * 12 * 5


def test_a_change_that_commits_late_with_a_smaller_seq_is_not_stepped_over(
    cloud: Cloud, device: Device, app_engine: Engine
) -> None:
    """Fails without the change_log lock: the reader would see seq 2, move past 1, and lose it."""
    scope = SiteScope(frozenset({SITE}))
    second_done = threading.Event()

    def second_writer() -> None:
        with scoped_transaction(app_engine, scope) as conn:
            _record_with_change(conn)
        second_done.set()

    with ExitStack() as first:
        conn = first.enter_context(scoped_transaction(app_engine, scope))
        _record_with_change(conn)  # seq 1 taken, not committed yet
        writer = threading.Thread(target=second_writer)
        writer.start()
        assert not second_done.wait(0.5)  # waits for the first to commit: it cannot take seq 2 yet
        early = device.pull()
    writer.join(10)
    late = _drain(device, cursor=early["next_cursor"], limit=10)

    seen = [c["seq"] for page in (early, *late) for c in page["changes"]]
    assert seen == _all_seqs(cloud) and len(seen) == 2


def test_a_writer_waiting_for_the_change_log_lock_has_taken_no_sequence_number(
    cloud: Cloud, app_engine: Engine
) -> None:
    """Fails if append_changes took its number before the lock (`EXISTS (SELECT lock())` did: the
    lock was optimised away): the waiting writer's number would be below one committed meanwhile."""
    scope = SiteScope(frozenset({SITE}))
    waiting: list[str] = []

    def writer() -> None:
        with scoped_transaction(app_engine, scope) as conn:
            waiting.append(_record_with_change(conn))

    with scoped_transaction(app_engine, scope) as holder:
        holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHANGE_LOG_LOCK})
        thread = threading.Thread(target=writer)
        thread.start()
        _until_postgres_shows(cloud, WAITING_FOR_AN_ADVISORY_LOCK)  # the writer waits for the lock
        first = _record_with_change(holder)  # the holder appends and commits while it waits
    thread.join(10)

    seq_of = {r.record_id: r.seq for r in cloud.rows(select(change_log.c.record_id, change_log.c.seq))}
    assert seq_of[first] < seq_of[waiting[0]]


def test_a_page_is_what_stations_parse(cloud: Cloud, station: Station, device: Device) -> None:
    treatment_id = insertion(station)
    applicator = scan(station, treatment_id, "DART-9000-00000")
    move(station, applicator["id"], PATHS["loaded"][S.OPENED])
    device.push(station_ops(station))

    page = device.pull()
    reply = PullReply.model_validate(page)  # the schema the OpenAPI document states

    treatment, scanned, opened = reply.changes
    assert (
        treatment.record["subject_id"] == "SO2611001" and treatment.record["patient_label"] == "Cohen, Miriam"
    )
    assert not [k for k in treatment.record if k.endswith(("_enc", "_hash"))]
    [stored] = cloud.rows(select(applicators.c.data).where(applicators.c.id == applicator["id"]))
    assert scanned.record == opened.record == stored.data  # as stored: nothing to open in an applicator
    for change in reply.changes:
        assert OFFSETS_KEY not in change.field_hlc and change.field_hlc["id"].endswith(station.device_id)
    assert opened.field_hlc["status"] > opened.field_hlc["id"]  # the status changed after the insert
    assert (page["next_cursor"], page["has_more"]) == (opened.seq, False)


def test_a_device_pulls_only_its_own_sites(cloud: Cloud, station: Station, device: Device) -> None:
    insertion(station)
    device.push(station_ops(station))
    elsewhere = cloud.enrol(device_sites=(OTHER_HOSPITAL_SITE,))
    specialist = add_user(cloud.owner, role="alphatau", user_sites=())
    on_the_laptop = add_session(cloud.owner, specialist, elsewhere.device_id)

    as_user = httpx.get(
        f"{cloud.url}/api/v1/sync/pull", headers={"Authorization": f"Bearer {on_the_laptop}"}, timeout=10
    )

    assert len(device.pull()["changes"]) == 1
    assert elsewhere.pull()["changes"] == []
    # An Alpha Tau user sees every site, but a laptop enrolled elsewhere never receives this one's patients.
    assert as_user.status_code == 200 and as_user.json()["changes"] == []


def test_a_deleted_record_is_pulled_with_its_flag(cloud: Cloud, station: Station, device: Device) -> None:
    treatment_id = insertion(station)
    delete_treatment(station, ADMIN, treatment_id=treatment_id, reason="started for the wrong day")
    device.push(station_ops(station))

    changes = device.pull()["changes"]

    assert [c["deleted"] for c in changes] == [True, True]
    assert changes[0]["record"]["deleted_reason"] == "started for the wrong day"
    assert changes[0]["version"] == 2


def test_limits_are_checked(cloud: Cloud, device: Device) -> None:
    url = f"{cloud.url}/api/v1/sync/pull"
    for params in ({"limit": 0}, {"limit": 5001}, {"cursor": -1}):
        response = httpx.get(url, params=params, headers=device.headers, timeout=10)
        assert response.status_code == 422, params


# --- helpers -----------------------------------------------------------------------------------
def _drain(device: Device, *, cursor: int, limit: int) -> list[dict[str, Any]]:
    """Pull pages until the cloud says there is no more."""
    pages = []
    while True:
        page = device.pull(cursor=cursor, limit=limit)
        pages.append(page)
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return pages


def _all_seqs(cloud: Cloud) -> list[int]:
    return [r.seq for r in cloud.rows(select(change_log.c.seq).order_by(change_log.c.seq))]


def _record_with_change(conn: Connection) -> str:
    record_id = str(uuid.uuid4())
    conn.execute(
        insert(treatments).values(
            site=SITE, id=record_id, version=1, data={"id": record_id}, device_id="test", last_op_id=record_id
        )
    )
    change = {"site": SITE, "table_name": "treatments", "record_id": record_id, "version": 1}
    append_changes(conn, [change])
    return record_id


def _new_treatment(device: Device, seq: int) -> dict[str, Any]:
    """An emergency insertion started on a hand-built laptop."""
    record_id = str(uuid.uuid4())
    return {
        "op_id": str(uuid.uuid4()),
        "device_id": device.device_id,
        "device_seq": seq,
        "site": SITE,
        "table": "treatments",
        "record_id": record_id,
        "kind": "insert",
        "payload": {"id": record_id, "site": SITE, "type": "insertion", "subject_id": f"EMERG-{seq}"},
        "changed": {},
        "hlc": f"{1_800_000_000_000 + seq:015d}-000000-{device.device_id}",
        "clock_offset_ms": 0,
        "priority": 1,
        "depends_on": [],
    }
