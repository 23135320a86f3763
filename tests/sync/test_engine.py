"""The station's sync engine against the real cloud (HTTP on loopback, PostgreSQL) with real stations.

Each test drives laptops through the store's own commands and `SyncEngine.run_round`, then looks
at both sides: the stations' tables and the cloud's. Faults are real ones: a port nobody listens
on, a reply lost on the wire, a trigger that makes SQLite fail in the middle of a page.
"""

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select

from cloud.schema import change_log, op_ledger, priority_applicators
from cloud.schema import conflicts as cloud_conflicts
from store import remote
from store.applicators import create_package, update_details
from store.enums import ApplicatorStatus
from store.errors import InvalidInput
from store.journal import AUDIT, QUEUE, verify_audit_chain
from store.models import Applicator, SyncConflict, Treatment
from store.scanning import Confirmation
from store.validation_cache import current_bundle_version, find_inventory
from sync.engine import SyncEngine, SyncSettings, push_order
from sync.wire import operation
from tests.cloud.test_push import Cloud, edit
from tests.sync.conftest import Laptop, LaptopFactory, walk
from tests.utils.data import NURSE, SECOND_SITE, SITE, FakeClock
from tests.utils.servers import free_port

S = ApplicatorStatus
TREATMENTS = Treatment.__table__
APPLICATORS = Applicator.__table__
CONFLICTS = SyncConflict.__table__
# The station's own bookkeeping and its own keys' output: never compared between two stations.
STATION_ONLY = {
    "sync_status",
    "local_version",
    "subject_id_enc",
    "patient_label_enc",
    "subject_hash",
    "order_hashes",
}


# --- helpers ---------------------------------------------------------------------------------------
def clinical(laptop: Laptop, table: Any) -> list[dict[str, Any]]:
    """Every row of a clinical table as any station must see it: patient fields decrypted."""
    decrypt = laptop.station.cipher.decrypt
    rows = []
    for row in laptop.rows(table):
        if "subject_id_enc" in row:
            row["subject_id"] = decrypt(row["subject_id_enc"])
            row["patient_label"] = decrypt(row["patient_label_enc"])
        rows.append({k: v for k, v in row.items() if k not in STATION_ONLY})
    return rows


def queue(laptop: Laptop) -> list[dict[str, Any]]:
    return laptop.rows(QUEUE)


def audit_actions(laptop: Laptop) -> list[str]:
    return [r["action"] for r in laptop.rows(AUDIT)]


def cloud_count(cloud: Cloud, table: Any, *where: Any) -> int:
    return cloud.rows(select(func.count()).select_from(table).where(*where))[0][0]


def finished_insertion(laptop: Laptop, serials: list[str]) -> str:
    """An insertion with one applicator per final status we can reach, finalised."""
    treatment_id = laptop.insertion()
    finals = [S.INSERTED, S.FAULTY, S.DISPOSED]
    for serial, status in zip(serials, finals, strict=False):
        walk(laptop, laptop.scan(treatment_id, serial)["id"], status)
    laptop.finalise(treatment_id)
    return treatment_id


class LoseFirstPushReply(httpx.HTTPTransport):
    """The network drops the cloud's answer to the first push: the cloud did the work, the station
    never hears of it (a cut cable after the request went out)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.endswith("/sync/push") and not self.lost:
            response.read()
            self.lost += 1
            raise httpx.ReadTimeout("the answer was lost on the way back", request=request)
        return response


class DamageBundles(httpx.HTTPTransport):
    """Bundles arrive altered on the way (one byte of the version): the checksum no longer matches."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not request.url.path.endswith("/sync/bundle"):
            return response
        body = response.read().replace(b'"version":"b-', b'"version":"x-', 1)
        return httpx.Response(
            response.status_code, headers={"content-type": "application/json"}, content=body
        )


# --- one station to the cloud, a second one from it ------------------------------------------------
def test_a_finalised_insertion_reaches_the_cloud_and_a_second_laptop_pulls_the_same_records(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    a, b = laptops("a"), laptops("b")
    treatment_id = finished_insertion(a, ["DART-9000-00000", "DART-9000-00001", "DART-9000-00002"])

    pushed = a.sync()
    pulled = b.sync()

    assert pushed.results == {"done": len(queue(a))} and pushed.waiting == 0
    assert {e["status"] for e in queue(a)} == {"done"}
    assert {r["sync_status"] for r in a.rows(TREATMENTS) + a.rows(APPLICATORS)} == {"synced"}
    assert cloud_count(cloud, change_log) == len(queue(a))
    # The second laptop holds the same records, sealed with its own key, and queued nothing.
    assert pulled.pulled == len(queue(a)) and pulled.written == 4
    assert clinical(b, TREATMENTS) == clinical(a, TREATMENTS)
    assert clinical(b, APPLICATORS) == clinical(a, APPLICATORS)
    assert queue(b) == []
    [treatment] = b.rows(TREATMENTS)
    assert treatment["id"] == treatment_id and treatment["is_complete"]
    assert treatment["subject_hash"] == b.station.cipher.lookup_hash("SO2611001")
    assert treatment["order_hashes"] == [b.station.cipher.lookup_hash("SO2611001")]
    assert "SO2611001" not in str(b.rows(AUDIT))  # pulled patient fields are audited sealed
    assert audit_actions(b).count("pulled_change") == 4
    for laptop in (a, b):
        assert verify_audit_chain(laptop.rows(AUDIT)) is None  # sync writes extend the chain intact
    assert b.state.pull_cursor == cloud.scalar("SELECT max(seq) FROM change_log")
    # Each round measured the clock against the cloud's: later changes carry the offset.
    with b.station.engine.connect() as conn:
        offset = conn.exec_driver_sql("SELECT clock_offset_ms FROM device_state").scalar()
    assert offset == pulled.clock_offset_ms and abs(offset) < 60_000


def test_running_rounds_again_changes_nothing_and_duplicates_nothing(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    a, b = laptops("a"), laptops("b")
    finished_insertion(a, ["DART-9000-00000", "DART-9000-00001"])
    a.sync()
    b.sync()
    before = [_everything(laptop) for laptop in (a, b)]
    in_cloud = (cloud_count(cloud, change_log), cloud_count(cloud, op_ledger))

    again = [a.sync(), b.sync(), a.sync()]

    assert [(r.sent, r.written, r.conflicts) for r in again] == [(0, 0, 0)] * 3
    assert [_everything(laptop) for laptop in (a, b)] == before
    assert (cloud_count(cloud, change_log), cloud_count(cloud, op_ledger)) == in_cloud


def _everything(laptop: Laptop) -> dict[str, Any]:
    return {
        "treatments": laptop.rows(TREATMENTS),
        "applicators": laptop.rows(APPLICATORS),
        "queue": queue(laptop),
        "conflicts": laptop.rows(CONFLICTS),
        "audit": len(laptop.rows(AUDIT)),
    }


def test_a_lost_reply_is_sent_again_and_answered_from_the_ledger_once(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    transport = LoseFirstPushReply()
    a = laptops("a", transport=transport)
    finished_insertion(a, ["DART-9000-00000"])

    cut = a.engine.run_round()

    assert cut.outcome == "offline" and transport.lost == 1
    assert {e["status"] for e in queue(a)} == {"pending"}  # nothing counted as an attempt
    assert {e["attempts"] for e in queue(a)} == {0}
    assert a.state.last_error is not None and a.state.last_sync_at is None
    applied_in_cloud = cloud_count(cloud, change_log)
    assert applied_in_cloud == len(queue(a))  # the cloud did the work

    resent = a.sync()

    assert resent.results == {"done": len(queue(a))}
    assert [e["result"]["status"] for e in queue(a)] == ["duplicate"] * len(queue(a))
    assert [e["server_version"] for e in queue(a)] == [e["result"]["original"]["version"] for e in queue(a)]
    assert cloud_count(cloud, change_log) == applied_in_cloud
    assert {r["sync_status"] for r in a.rows(APPLICATORS)} == {"synced"}
    assert a.state.last_error is None and a.state.last_sync_at is not None


def test_with_no_network_a_round_ends_offline_and_keeps_everything(laptops: LaptopFactory) -> None:
    a = laptops("a")
    a.insertion()
    nobody = f"http://127.0.0.1:{free_port()}"  # a closed port: the connection is refused at once
    remote.link_cloud(a.station, cloud_url=nobody, credential=a.device.token, device_id=a.station.device_id)

    report = a.engine.run_round()

    assert report.outcome == "offline" and "cannot be reached" in (report.error or "")
    assert [(e["status"], e["attempts"]) for e in queue(a)] == [("pending", 0)]
    assert a.rows(TREATMENTS)[0]["sync_status"] == "pending"
    assert a.state.last_error == report.error and a.state.last_attempt_at == report.started_at


def test_a_refused_credential_or_no_link_ends_the_round_with_its_reason(
    laptops: LaptopFactory, fresh_station: Any
) -> None:
    a = laptops("a")
    remote.link_cloud(
        a.station, cloud_url=a.state.cloud_url or "", credential="revoked", device_id=a.station.device_id
    )

    refused = a.engine.run_round()
    alone = SyncEngine(fresh_station).run_round()

    assert refused.outcome == "unauthorised" and "credential" in (refused.error or "")
    assert alone.outcome == "not_linked"
    assert remote.load_state(fresh_station).last_error == alone.error
    assert "revoked" not in str(a.rows(AUDIT))  # the credential is a secret: sealed, never audited


# --- what the cloud refuses never blocks the queue (invariant 6) ------------------------------------
def copy_as_new_entry(laptop: Laptop, entry: dict[str, Any]) -> str:
    """The same change queued again under a new operation id (as a restored backup might)."""
    op_id = str(uuid.uuid4())
    with laptop.station.writer.begin() as conn:
        seq = conn.exec_driver_sql("SELECT last_device_seq + 1 FROM device_state").scalar()
        conn.exec_driver_sql("UPDATE device_state SET last_device_seq = ?", (seq,))
        fresh = {"status": "pending", "attempts": 0, "result": None, "server_version": None, "sent_at": None}
        conn.execute(
            insert(QUEUE).values(
                {**entry, **fresh, "op_id": op_id, "device_seq": seq, "acknowledged_at": None}
            )
        )
    return op_id


def test_a_refused_entry_is_quarantined_shown_and_holds_back_only_what_depends_on_it(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    a = laptops("a")
    treatment_id = a.insertion()
    first = a.scan(treatment_id, "DART-9000-00000")
    a.sync()
    [scanned] = [e for e in queue(a) if e["record_id"] == first["id"]]
    copy = copy_as_new_entry(a, scanned)  # inserts an applicator the cloud has: refused for good
    update_details(a.station, NURSE, applicator_id=first["id"], comment="outer seal torn")  # after the copy
    second = a.scan(treatment_id, "DART-9000-00001")  # nothing to do with the copy

    report = a.sync()

    entries = {e["op_id"]: e for e in queue(a)}
    comment = next(e for e in entries.values() if e["changed_fields"].get("comments"))
    assert entries[copy]["status"] == "quarantined" and entries[copy]["last_error"].startswith(
        "record_exists"
    )
    assert entries[copy]["result"]["code"] == "record_exists"
    assert comment["depends_on"] == [copy] and (comment["status"], comment["attempts"]) == ("pending", 0)
    # Sent in one batch after the copy, the comment was refused with it: it waits, uncounted.
    assert report.results == {"done": 1, "quarantined": 1, "pending": 1}
    assert comment["last_error"].startswith("dependency_rejected") and comment["next_attempt_at"] is None
    assert cloud.scalar("SELECT count(*) FROM applicators WHERE id = :id", id=second["id"]) == 1
    assert cloud.scalar("SELECT data->>'comments' FROM applicators WHERE id = :id", id=first["id"]) is None
    assert "sync_op_quarantined" in audit_actions(a)
    assert a.rows(APPLICATORS, APPLICATORS.c.id == first["id"])[0]["sync_status"] == "pending"
    # It stays where a person sees it, and is not sent again.
    ledger = cloud_count(cloud, op_ledger)
    again = a.sync()
    assert (again.sent, again.waiting) == (0, 1) and cloud_count(cloud, op_ledger) == ledger
    assert remote_open_statuses(a) == {"quarantined": 1, "pending": 1}


def remote_open_statuses(laptop: Laptop) -> dict[str, int]:
    found: dict[str, int] = {}
    for entry in remote.open_entries(laptop.station):
        found[entry["status"]] = found.get(entry["status"], 0) + 1
    return found


def test_a_retryable_refusal_backs_off_and_after_its_attempts_needs_a_person(
    laptops: LaptopFactory, clock: FakeClock
) -> None:
    # The device is enrolled for the other site only: the cloud answers site_not_allowed (retryable).
    a = laptops("a", sites=(SECOND_SITE,), settings=SyncSettings(max_attempts=2))
    treatment_id = a.insertion()
    a.scan(treatment_id, "DART-9000-00000")

    first = a.sync()

    assert first.results == {"pending": 2}
    for entry in queue(a):
        assert (entry["status"], entry["attempts"]) == ("pending", 1)
        assert entry["last_error"].startswith("site_not_allowed")
        delay = entry["next_attempt_at"] - clock.now
        assert timedelta(seconds=15) <= delay <= timedelta(seconds=30)  # 30 s base, jittered down to half
    soon = a.sync()
    assert (soon.sent, soon.waiting) == (0, 2)  # not due yet

    clock.advance(seconds=31)
    last = a.sync()

    assert last.results == {"needs_person": 2}
    assert [(e["status"], e["attempts"]) for e in queue(a)] == [("needs_person", 2)] * 2
    assert audit_actions(a).count("sync_op_needs_person") == 2
    assert a.sync().sent == 0  # a person decides now; nothing is sent again by itself


def test_backoff_doubles_with_jitter_up_to_its_ceiling(fresh_station: Any) -> None:
    settings = SyncSettings(backoff_base=timedelta(seconds=10), backoff_ceiling=timedelta(minutes=5))
    engine = SyncEngine(fresh_station, settings=settings, rng=random.Random(7))
    for attempts in range(1, 12):
        full = min(10 * 2 ** (attempts - 1), 300)
        assert full / 2 <= engine.backoff(attempts).total_seconds() <= full
    spread = {engine.backoff(3).total_seconds() for _ in range(20)}
    assert len(spread) > 1  # two laptops back online at once do not retry in step


def _entry(
    op_id: str, priority: int, seq: int, *, after: tuple[str, ...] = (), status: str = "pending"
) -> dict[str, Any]:
    created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seq)
    return {
        "op_id": op_id,
        "priority": priority,
        "device_seq": seq,
        "created_at": created,
        "depends_on": list(after),
        "status": status,
        "next_attempt_at": None,
    }


def test_push_order_is_by_priority_and_age_never_before_a_dependency() -> None:
    entries = [
        _entry("scan-1", 4, 2, after=("start",)),
        _entry("start", 1, 1),
        _entry("comment", 5, 3, after=("scan-1",)),
        _entry("finalise", 2, 5, after=("scan-1", "scan-2")),
        _entry("scan-2", 4, 4, after=("start",), status="in_flight"),  # its answer was never heard
        _entry("other-start", 1, 6),
    ]

    order, waiting = push_order(entries, datetime(2026, 1, 2, tzinfo=UTC))

    assert [e["op_id"] for e in order] == ["start", "other-start", "scan-1", "scan-2", "finalise", "comment"]
    assert waiting == 0


def test_push_order_holds_back_only_what_depends_on_a_stuck_entry() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    later = _entry("backing-off", 4, 3) | {"next_attempt_at": now + timedelta(minutes=1)}
    entries = [
        _entry("refused", 4, 1, status="quarantined"),
        _entry("behind-refused", 5, 2, after=("refused",)),
        later,
        _entry("behind-backing-off", 5, 4, after=("backing-off",)),
        _entry("behind-both", 2, 5, after=("behind-refused", "independent")),
        _entry("independent", 5, 6),
        _entry("helper-done", 5, 7, after=("long-done",)),  # a dependency no longer open is done
    ]

    order, waiting = push_order(entries, now)

    assert [e["op_id"] for e in order] == ["independent", "helper-done"]
    assert waiting == 4


# --- two laptops, one record (invariants 5 and 9) ----------------------------------------------------
def test_one_serial_scanned_offline_into_two_patients_is_a_safety_conflict_on_both_laptops(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    a, b = laptops("a"), laptops("b")
    here = a.insertion("SO2611001")
    there = b.insertion("SO2611006")
    mine = a.scan(here, "DART-9000-00000")
    theirs = b.scan(there, "DART-9000-00000", frozenset({Confirmation.WRONG_TREATMENT}))
    walk(a, mine["id"], S.INSERTED)
    walk(b, theirs["id"], S.INSERTED)

    a.sync()
    b.sync()  # pulls a's scan (found here), then pushes its own (found by the cloud)
    a.sync()  # pulls b's scan

    pair = {mine["id"], theirs["id"]}
    for laptop in (a, b):
        held = laptop.rows(CONFLICTS, CONFLICTS.c.status == "open")
        assert {(c["record_id"], c["field"], c["rule"], c["is_safety"]) for c in held} == {
            (mine["id"], "serial_number", "serial_in_two_treatments", True),
            (theirs["id"], "serial_number", "serial_in_two_treatments", True),
        }  # one row per applicator: what the laptop found and what the cloud said are one conflict
        assert {r["sync_status"] for r in laptop.rows(APPLICATORS)} == {"conflict"}
        assert {r["id"] for r in laptop.rows(APPLICATORS)} == pair
    assert all(c["cloud_conflict_id"] for c in b.rows(CONFLICTS))  # the cloud's answer named them
    assert cloud_count(cloud, cloud_conflicts, cloud_conflicts.c.is_safety) == 2
    with pytest.raises(InvalidInput, match="safety conflict"):
        a.finalise(here)
    with pytest.raises(InvalidInput, match="safety conflict"):
        b.finalise(there)


@pytest.mark.parametrize("later_syncs_first", [True, False], ids=["later-first", "earlier-first"])
def test_one_comment_edited_on_two_laptops_goes_to_the_latest_and_both_converge(
    laptops: LaptopFactory, clock: FakeClock, later_syncs_first: bool
) -> None:
    a, b = laptops("a"), laptops("b")
    applicator = a.scan(a.insertion(), "DART-9000-00000")
    a.sync()
    b.sync()  # both hold the applicator and have measured their clocks
    update_details(a.station, NURSE, applicator_id=applicator["id"], comment="written first")
    clock.advance(seconds=2)
    update_details(b.station, NURSE, applicator_id=applicator["id"], comment="written second")

    first, second = (b, a) if later_syncs_first else (a, b)
    first.sync()
    met = second.sync()  # the other's edit meets its own: the rules decide
    first.sync()

    for laptop in (a, b):
        [row] = laptop.rows(APPLICATORS)
        assert row["comments"] == "written second" and row["sync_status"] == "synced"
    assert clinical(a, APPLICATORS) == clinical(b, APPLICATORS)
    [decided] = second.rows(CONFLICTS)
    assert (decided["status"], decided["rule"], decided["field"]) == (
        "auto_resolved",
        "latest_wins",
        "comments",
    )
    assert decided["resolved_value"] == "written second" and decided["cloud_conflict_id"]
    assert first.rows(CONFLICTS) == [] and met.conflicts >= 1
    assert {e["status"] for e in queue(a) + queue(b)} == {"done"}
    edits = [e for e in queue(a) + queue(b) if "comments" in e["changed_fields"]]
    assert len(edits) == 2 and all(e["clock_offset_ms"] is not None for e in edits)  # measured first


# --- the pull cursor (invariant 4) ------------------------------------------------------------------
def test_the_cursor_moves_only_with_a_committed_page_and_a_rerun_applies_the_rest_once(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    a = laptops("a")
    b = laptops("b", settings=SyncSettings(page_size=2))
    treatment_id = a.insertion()
    serials = [f"DART-9000-{i:05d}" for i in range(5)]
    applicators = [a.scan(treatment_id, serial)["id"] for serial in serials]
    a.sync()
    seqs = [r[0] for r in cloud.rows(select(change_log.c.seq).order_by(change_log.c.seq))]
    # SQLite itself fails while the third page (changes 5 and 6) is written.
    with b.station.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER fail_once BEFORE INSERT ON applicators"
            " WHEN NEW.serial_number = 'DART-9000-00004'"
            " BEGIN SELECT RAISE(ABORT, 'injected: the disk is full'); END"
        )

    failed = b.engine.run_round()

    assert failed.outcome == "failed" and "injected" in (failed.error or "")
    assert b.state.pull_cursor == seqs[3]  # two pages committed, the third not
    assert {r["id"] for r in b.rows(APPLICATORS)} == set(applicators[:3])
    assert b.state.last_error == failed.error
    with b.station.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER fail_once")

    rerun = b.sync()

    assert b.state.pull_cursor == seqs[-1] and rerun.pulled == len(seqs) - 4
    assert {r["id"] for r in b.rows(APPLICATORS)} == set(applicators)
    pulled = [r["record_id"] for r in b.rows(AUDIT) if r["action"] == "pulled_change"]
    assert sorted(pulled) == sorted([treatment_id, *applicators])  # each record written once


def test_a_record_the_stations_constraints_refuse_is_held_and_the_pull_goes_on(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    a, b = laptops("a"), laptops("b")
    treatment_id = a.insertion()
    applicator = a.scan(treatment_id, "DART-9000-00000")
    a.sync()
    [scanned] = wire_ops(a, applicator["id"])
    # A third laptop's change that the cloud accepts but no station may store: FAULTY, no comment.
    laptop_c = cloud.enrol()
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    faulty = edit(scanned, laptop_c, {"status": "FAULTY", "deployed_seeds": 0}, wall_ms=now_ms)
    assert laptop_c.push([faulty])[0]["status"] == "applied"
    later = a.scan(treatment_id, "DART-9000-00001")
    a.sync()

    report = b.sync()

    assert report.refused == 2  # the applicator's two changes, each carrying the record as it is now
    assert b.state.pull_cursor == cloud.scalar("SELECT max(seq) FROM change_log")
    [held] = b.rows(CONFLICTS)
    assert (held["record_id"], held["rule"], held["status"], held["is_safety"]) == (
        applicator["id"],
        "refused_by_station",
        "open",
        True,
    )
    assert {r["id"] for r in b.rows(APPLICATORS)} == {later["id"]}  # the rest of the pull went on
    assert "pulled_change_refused" in audit_actions(b)
    # The laptop that scanned it keeps its own last good version, held for review too.
    [kept] = a.rows(APPLICATORS, APPLICATORS.c.id == applicator["id"])
    assert kept["status"] == "SEALED" and kept["sync_status"] == "conflict"
    assert [c["rule"] for c in a.rows(CONFLICTS)] == ["refused_by_station"]


def wire_ops(laptop: Laptop, record_id: str) -> list[dict[str, Any]]:
    """The record's queue entries as the engine puts them on the wire."""
    return [operation(laptop.station.cipher, e, SITE) for e in queue(laptop) if e["record_id"] == record_id]


# --- the validation bundle ---------------------------------------------------------------------------
def test_a_bundle_older_than_the_interval_is_fetched_and_a_damaged_one_keeps_the_last(
    laptops: LaptopFactory, cloud: Cloud, clock: FakeClock
) -> None:
    item = {"serial": "DART-1234-00001", "site": SITE, "catalogue_number": "DART-PAN-10", "seeds": 10}
    with cloud.owner.begin() as conn:
        conn.execute(
            insert(priority_applicators).values(
                site=SITE, serial=item["serial"], order_name=None, data=item, refreshed_at=clock.now
            )
        )
    a, b = laptops("a"), laptops("b", transport=DamageBundles())

    assert a.sync().bundle is None  # installed an instant ago: not due
    clock.advance(hours=2)
    fetched, damaged = a.sync(), b.sync()

    assert fetched.bundle is not None and fetched.bundle.startswith("b-")
    with a.station.engine.connect() as conn:
        assert current_bundle_version(conn) == fetched.bundle
        assert find_inventory(conn, item["serial"]) is not None
    assert a.state.last_bundle_at == clock.now
    assert damaged.bundle is not None and "checksum" in damaged.bundle
    with b.station.engine.connect() as conn:
        assert current_bundle_version(conn) == "b-1"  # the previous bundle stays installed
        assert find_inventory(conn, "DART-9000-00000") is not None
    assert b.state.last_bundle_at is None


def test_rows_pointing_at_a_record_of_a_later_page_are_committed_with_that_page(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    a = laptops("a")
    b = laptops("b", settings=SyncSettings(page_size=3))
    treatment_id = a.insertion()
    members = [a.scan(treatment_id, f"DART-9000-{i:05d}")["id"] for i in range(4)]
    for applicator_id in members:
        walk(a, applicator_id, S.OPENED)
    [package, *_] = create_package(a.station, NURSE, treatment_id=treatment_id, applicator_ids=members)
    a.sync()
    # The scans come first in the change log, each carrying its applicator as it is now: in the
    # package that only a later page brings.
    assert cloud.scalar("SELECT count(*) FROM change_log") > 3

    report = b.sync()

    assert report.pulled == cloud.scalar("SELECT count(*) FROM change_log")
    assert {r["package_id"] for r in b.rows(APPLICATORS)} == {package.record["id"]}
    assert clinical(b, APPLICATORS) == clinical(a, APPLICATORS)
    assert b.state.pull_cursor == cloud.scalar("SELECT max(seq) FROM change_log")
