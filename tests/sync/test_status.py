"""The banner's data and the per-record receipts tell the truth: each field checked against real stations
synced with the real cloud (HTTP on loopback, PostgreSQL), in the state that field describes.

Also the time rule (issue 4, item 3; invariant 8): a station whose clock is beyond the skew threshold
says so, and "latest wins" edits it makes are held for a person instead of decided by its clock.
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from cloud.schema import conflicts as cloud_conflicts
from store import remote
from store.applicators import update_details
from store.scanning import Confirmation
from store.station import Station, open_station
from store.validation_cache import install_bundle
from sync.engine import Outcome, SyncEngine
from sync.monitor import Connectivity
from sync.rules import SKEW_THRESHOLD_MS
from sync.status import (
    CACHE_KINDS,
    PRIORITY_LABELS,
    BannerStatus,
    Receipt,
    clock_unreliable,
    read_banner,
    read_receipt,
    read_receipts,
)
from tests.cloud.test_push import Cloud
from tests.sync.conftest import Laptop, LaptopFactory, bundle_for
from tests.sync.test_engine import CONFLICTS, LoseFirstPushReply, copy_as_new_entry, queue
from tests.utils.data import NURSE, FakeClock

pytestmark = pytest.mark.postgres

NO_WAITING = dict.fromkeys(PRIORITY_LABELS.values(), 0)


def banner(laptop: Laptop, connectivity: Connectivity = Connectivity.ONLINE) -> BannerStatus:
    return read_banner(laptop.station, connectivity)


def test_a_station_never_linked_says_so_and_counts_what_it_holds(
    fresh_station: Station, clock: FakeClock
) -> None:
    status = read_banner(fresh_station, Connectivity.ONLINE)  # a stale "online" never beats the store

    assert status.connectivity is Connectivity.NOT_LINKED
    assert "not linked" in (status.connectivity_detail or "")
    assert (status.last_success_at, status.last_attempt_at, status.last_error) == (None, None, None)
    assert (status.waiting_total, status.waiting_by_priority) == (0, NO_WAITING)
    assert (status.clock_offset_ms, status.clock_unreliable) == (None, True)  # never measured: not trusted
    assert status.needs_person == 0 and status.checked_at == clock.now
    assert set(status.cache) == set(CACHE_KINDS)
    assert all((c.bundle_version, c.valid_until, c.fresh, c.entries) == (None, None, False, 0)
               for c in status.cache.values())  # fmt: skip


def test_waiting_changes_are_counted_by_priority_until_a_round_confirms_them(laptops: LaptopFactory) -> None:
    a = laptops("a")
    treatment = a.insertion()
    a.scan(treatment, "DART-9000-00000")
    a.scan(treatment, "DART-9000-00001")

    before = banner(a)

    assert before.waiting_by_priority == {**NO_WAITING, "critical_treatment": 1, "new_applicator": 2}
    assert before.waiting_total == 3 == len(queue(a))
    assert before.last_success_at is None

    report = a.sync()
    after = banner(a)

    assert (after.waiting_total, after.waiting_by_priority) == (0, NO_WAITING)
    assert after.last_success_at == report.started_at == after.last_attempt_at and after.last_error is None
    assert after.clock_offset_ms == report.clock_offset_ms and not after.clock_unreliable


def test_a_failed_round_keeps_the_last_success_and_says_why(laptops: LaptopFactory, clock: FakeClock) -> None:
    a = laptops("a")
    good = a.sync()
    clock.advance(minutes=5)
    remote.link_cloud(
        a.station, cloud_url=a.state.cloud_url or "", credential="wrong", device_id=a.station.device_id
    )

    failed = a.engine.run_round()
    status = banner(a, Connectivity.DEGRADED)

    assert failed.outcome is Outcome.UNAUTHORISED
    assert status.last_success_at == good.started_at and status.last_attempt_at == failed.started_at
    assert status.last_error == failed.error and "credential" in (status.last_error or "")
    assert status.connectivity is Connectivity.DEGRADED


def test_everything_waiting_for_a_person_is_counted_and_its_records_say_so(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    a, b = laptops("a"), laptops("b")
    here, there = a.insertion("SO2611001"), b.insertion("SO2611006")
    mine = a.scan(here, "DART-9000-00000")
    theirs = b.scan(there, "DART-9000-00000", frozenset({Confirmation.WRONG_TREATMENT}))  # two patients
    a.sync()
    [scanned] = [e for e in queue(a) if e["record_id"] == mine["id"]]
    copy_as_new_entry(a, scanned)  # refused by the cloud for good: quarantined
    b.sync()
    a.sync()

    status = banner(a)
    open_rows = a.rows(CONFLICTS, CONFLICTS.c.status == "open")
    quarantined = [e for e in queue(a) if e["status"] == "quarantined"]

    assert len(quarantined) == 1 and open_rows and all(r["is_safety"] for r in open_rows)
    assert status.open_conflicts == len(open_rows) and status.safety_conflicts == len(open_rows)
    assert (status.quarantined, status.entries_needing_person) == (1, 0)
    assert status.needs_person == len(open_rows) + 1
    assert status.waiting_total == 0  # quarantined is not "waiting": it will not go by itself
    assert read_receipt(a.station, "applicators", mine["id"]) is Receipt.NEEDS_PERSON
    assert read_receipt(b.station, "applicators", theirs["id"]) is Receipt.NEEDS_PERSON
    assert read_receipt(a.station, "treatments", here) is Receipt.CONFIRMED
    # The bulk read (a page's badges) says the same, in one read.
    assert read_receipts(a.station, [("applicators", mine["id"]), ("treatments", here)]) == {
        ("applicators", mine["id"]): Receipt.NEEDS_PERSON,
        ("treatments", here): Receipt.CONFIRMED,
    }


def test_a_records_receipt_goes_from_saved_here_to_sent_to_confirmed(laptops: LaptopFactory) -> None:
    transport = LoseFirstPushReply()
    a = laptops("a", transport=transport)
    treatment = a.insertion()

    def bulk(*records: tuple[str, str]) -> dict[tuple[str, str], Receipt]:
        """The bulk read must agree with the one-record read, record by record."""
        found = read_receipts(a.station, [*records, ("treatments", "nope")])
        assert found == {r: read_receipt(a.station, *r) for r in records}  # "nope" is left out
        return found

    assert read_receipt(a.station, "treatments", treatment) is Receipt.SAVED_HERE
    assert bulk(("treatments", treatment)) == {("treatments", treatment): Receipt.SAVED_HERE}
    cut = a.engine.run_round()  # the cloud took it; its answer was lost on the way back
    assert cut.outcome is Outcome.OFFLINE and transport.lost == 1
    assert read_receipt(a.station, "treatments", treatment) is Receipt.SENT
    update_details_later = a.scan(treatment, "DART-9000-00000")
    assert read_receipt(a.station, "applicators", update_details_later["id"]) is Receipt.SAVED_HERE
    assert bulk(("treatments", treatment), ("applicators", update_details_later["id"])) == {
        ("treatments", treatment): Receipt.SENT,
        ("applicators", update_details_later["id"]): Receipt.SAVED_HERE,
    }

    a.sync()

    assert read_receipt(a.station, "treatments", treatment) is Receipt.CONFIRMED
    assert read_receipt(a.station, "applicators", update_details_later["id"]) is Receipt.CONFIRMED
    assert set(bulk(("treatments", treatment), ("applicators", update_details_later["id"])).values()) == {
        Receipt.CONFIRMED
    }
    with pytest.raises(LookupError, match="holds no treatments record nope"):
        read_receipt(a.station, "treatments", "nope")
    with pytest.raises(ValueError, match="not a synced table"):
        read_receipt(a.station, "users", treatment)
    with pytest.raises(ValueError, match="not a synced table"):
        read_receipts(a.station, [("users", treatment)])


def test_validation_data_freshness_per_kind_follows_the_installed_bundle(
    laptops: LaptopFactory, clock: FakeClock
) -> None:
    a = laptops("a")  # the test bundle "b-1", valid for a day
    installed = banner(a).cache

    assert {c.bundle_version for c in installed.values()} == {"b-1"} and all(
        c.fresh for c in installed.values()
    )
    assert installed["schedule"].entries > 0 and installed["inventory"].entries > 0
    assert installed["users"].entries > 0

    assert a.sync().bundle is None  # "b-1" was fetched less than the bundle interval ago
    clock.advance(hours=2)
    version = a.sync().bundle  # due: the cloud's bundle replaces it
    cache = banner(a).cache

    assert version and version.startswith("b-") and version != "b-1"
    assert {c.bundle_version for c in cache.values()} == {version}
    valid_until = cache["users"].valid_until
    assert valid_until is not None and all(c.valid_until == valid_until for c in cache.values())

    clock.now = valid_until + timedelta(seconds=1)  # a day without network
    stale = banner(a).cache

    assert not any(c.fresh for c in stale.values())
    assert {c.bundle_version for c in stale.values()} == {version}  # still the one scans are checked with


# --- the clock (invariant 8) --------------------------------------------------------------------------
def test_the_skew_test_is_the_rules_own() -> None:
    assert SKEW_THRESHOLD_MS == 5 * 60 * 1000
    assert not clock_unreliable(0) and not clock_unreliable(-SKEW_THRESHOLD_MS)
    assert clock_unreliable(SKEW_THRESHOLD_MS + 1) and clock_unreliable(-SKEW_THRESHOLD_MS - 1)
    assert clock_unreliable(None)


def test_a_clock_beyond_the_threshold_is_reported_and_its_latest_wins_edits_go_to_a_person(
    laptops: LaptopFactory, cloud: Cloud, tmp_path: Path
) -> None:
    on_time = laptops("on-time")
    # A laptop whose clock runs 11 minutes ahead, enrolled like the others.
    ahead = FakeClock(now=datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=11))
    station = open_station(tmp_path / "ahead", clock=ahead)
    try:
        install_bundle(station, bundle_for(station.local_today()))
        device = cloud.enrol(station.device_id)
        remote.link_cloud(station, cloud_url=cloud.url, credential=device.token, device_id=station.device_id)
        skewed = Laptop(station, SyncEngine(station), device)

        applicator = on_time.scan(on_time.insertion(), "DART-9000-00000")
        on_time.sync()
        measured = skewed.sync()  # pulls the applicator and measures its clock
        status = read_banner(station, Connectivity.ONLINE)

        assert measured.clock_offset_ms is not None and measured.clock_offset_ms < -10 * 60 * 1000
        assert status.clock_offset_ms == measured.clock_offset_ms and status.clock_unreliable
        assert not banner(on_time).clock_unreliable

        # Both edit the comment; the skewed laptop's clock is "later", yet it must not win by it.
        update_details(on_time.station, NURSE, applicator_id=applicator["id"], comment="on time")
        update_details(station, NURSE, applicator_id=applicator["id"], comment="from the future")
        on_time.sync()
        skewed.sync()

        [held] = cloud.rows(select(cloud_conflicts).where(cloud_conflicts.c.field == "comments"))
        assert (held.rule, held.status, held.is_safety) == ("latest_wins_skewed", "open", False)
        assert cloud.scalar("SELECT data->>'comments' FROM applicators") == "on time"  # not decided by clock
        assert read_banner(station, Connectivity.ONLINE).open_conflicts == 1
        assert read_receipt(station, "applicators", applicator["id"]) is Receipt.NEEDS_PERSON
    finally:
        station.close()
