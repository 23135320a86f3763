"""The audit upload end to end: a real station file, the real cloud on PostgreSQL over loopback.

Each round, after the push, the station's audit entries the cloud does not hold go up in order, and
the cloud verifies the chain (docs/sync-protocol.md, "Audit upload"). These tests show that every
entry arrives exactly once, in order, across rounds, after a lost reply and after a restart; that
an emergency access made offline reaches the hospital's auditors at the next sync with who and why;
and that a station whose audit file was altered behind the database's back still syncs its
clinical work, while the cloud refuses the broken chain and raises an incident.
"""

from typing import Any

import httpx
from sqlalchemy import Engine, func, select, text

from cloud.db import SiteScope
from cloud.schema import incidents, station_audit
from cloud.station_audit import INCIDENT_KIND, audit_trail
from store.journal import AUDIT, QUEUE
from store.sign_in import emergency_access
from store.station import open_station
from sync.engine import SyncEngine
from tests.cloud.test_push import Cloud
from tests.sync.conftest import STATION_SITES, Laptop, LaptopFactory
from tests.utils.data import OTHER_HOSPITAL_SITE, SECOND_SITE, SITE

SERIALS = ["DART-9000-00000", "DART-9000-00001"]


class Network(httpx.HTTPTransport):
    """Loopback to the real cloud that can be cut (no route) and can lose the next audit reply."""

    def __init__(self) -> None:
        super().__init__()
        self.up = True
        self.lose_audit_replies = 0
        self.audit_requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("no route to host (shielded room)", request=request)
        response = super().handle_request(request)
        if request.url.path.endswith("/api/v1/audit"):
            self.audit_requests += 1
            if self.lose_audit_replies:
                response.read()  # the cloud did the work; its answer never arrives
                self.lose_audit_replies -= 1
                raise httpx.ReadTimeout("the answer was lost on the way back", request=request)
        return response


def station_chain(laptop: Laptop) -> list[tuple[int, str]]:
    return [(row["device_seq"], row["hash"]) for row in laptop.rows(AUDIT)]


def cloud_chain(cloud: Cloud, laptop: Laptop) -> list[tuple[int, str]]:
    """The device's chain in the cloud, one row per entry (a station-wide entry is filed per site)."""
    rows = cloud.rows(
        select(station_audit.c.device_seq, station_audit.c.hash)
        .where(station_audit.c.device_id == laptop.device.device_id)
        .distinct()
        .order_by(station_audit.c.device_seq)
    )
    return [(r.device_seq, r.hash) for r in rows]


def filed(cloud: Cloud, laptop: Laptop) -> dict[int, list[str]]:
    """device_seq -> the sites the cloud filed it at (each site once: no entry stored twice)."""
    rows = cloud.rows(
        select(station_audit.c.device_seq, func.array_agg(station_audit.c.site))
        .where(station_audit.c.device_id == laptop.device.device_id)
        .group_by(station_audit.c.device_seq)
    )
    return {seq: sorted(sites) for seq, sites in rows}


def acknowledged(laptop: Laptop) -> int:
    with laptop.station.engine.connect() as conn:
        return conn.execute(text("SELECT audit_acked_seq FROM sync_state")).scalar_one() or 0


def some_clinical_work(laptop: Laptop, serials: list[str], treatment_id: str | None = None) -> str:
    """An insertion started (unless given) and applicators scanned into it: audited, queued changes."""
    treatment_id = treatment_id or laptop.insertion()
    for serial in serials:
        laptop.scan(treatment_id, serial)
    return treatment_id


# --- exactly once, in order --------------------------------------------------------------------------
def test_entries_reach_the_cloud_in_order_exactly_once_across_rounds(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    a = laptops("a")
    treatment_id = some_clinical_work(a, SERIALS[:1])

    first = a.sync()
    assert first.audit is not None and first.audit.error is None
    assert cloud_chain(cloud, a) == station_chain(a)  # every entry, the same hashes, in order
    assert first.audit.acknowledged_seq == acknowledged(a) == len(station_chain(a))

    quiet = a.sync()  # nothing new: nothing sent
    assert quiet.audit is not None and (quiet.audit.sent, quiet.audit.error) == (0, None)

    before = len(station_chain(a))
    some_clinical_work(a, SERIALS[1:], treatment_id)
    later = a.sync()
    assert later.audit is not None and later.audit.sent == len(station_chain(a)) - before
    assert cloud_chain(cloud, a) == station_chain(a)
    sites = filed(cloud, a)
    # A clinical entry at its treatment's site; an entry of the station as a whole at each of its sites.
    by_seq = {row["device_seq"]: row for row in a.rows(AUDIT)}
    assert {sites[seq][0] for seq, row in by_seq.items() if row["table_name"] == "applicators"} == {SITE}
    assert all(len(sites[seq]) == 1 for seq, row in by_seq.items() if row["table_name"] == "treatments")
    assert {tuple(sites[seq]) for seq, row in by_seq.items() if row["table_name"] is None} == {
        tuple(sorted(STATION_SITES))
    }


def test_a_lost_reply_sends_the_batch_again_and_the_cloud_keeps_it_once(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    network = Network()
    a = laptops("a", transport=network)
    some_clinical_work(a, SERIALS[:1])
    network.lose_audit_replies = 1

    lost = a.sync()  # the clinical round completes; only the audit answer was lost
    assert lost.audit is not None and "did not answer" in (lost.audit.error or "")
    assert acknowledged(a) == 0  # the position moves only with an answer
    assert cloud_chain(cloud, a) == station_chain(a)  # the cloud did store them

    again = a.sync()
    assert again.audit is not None and again.audit.error is None
    assert again.audit.sent == len(station_chain(a))  # all sent again ...
    assert cloud_chain(cloud, a) == station_chain(a)  # ... and kept once
    assert all(len(sites) == len(set(sites)) for sites in filed(cloud, a).values())
    assert acknowledged(a) == len(station_chain(a))
    assert cloud.rows(select(incidents)) == []


def test_after_a_restart_the_station_goes_on_from_the_acknowledged_entry(
    laptops: LaptopFactory, cloud: Cloud, clock: Any, tmp_path: Any
) -> None:
    a = laptops("a")
    treatment_id = some_clinical_work(a, SERIALS[:1])
    a.sync()
    held = acknowledged(a)
    a.station.close()

    station = open_station(tmp_path / "laptop-a", clock=clock)  # the laptop was switched off and on
    try:
        restarted = Laptop(station, SyncEngine(station), a.device)
        assert acknowledged(restarted) == held
        some_clinical_work(restarted, SERIALS[1:], treatment_id)
        report = restarted.sync()
        assert report.audit is not None and report.audit.error is None
        assert report.audit.sent == len(station_chain(restarted)) - held  # only the new ones
        assert cloud_chain(cloud, restarted) == station_chain(restarted)
    finally:
        station.close()


# --- emergency access made offline -----------------------------------------------------------------
def test_an_emergency_access_made_offline_reaches_the_hospitals_auditors_at_the_next_sync(
    laptops: LaptopFactory, cloud: Cloud, app_engine: Engine
) -> None:
    network = Network()
    a = laptops("a", transport=network)
    a.sync()
    network.up = False  # the operating room: no network

    emergency_access(
        a.station, name="Dr. Noa Barak", reason="Locked out mid-procedure", sites=frozenset({SITE})
    )
    offline = a.engine.run_round()
    assert offline.outcome == "offline"
    assert not any(row.action == "emergency_access" for row in cloud.rows(select(station_audit)))

    network.up = True
    report = a.sync()
    assert report.audit is not None and report.audit.error is None

    def seen_by(*sites: str) -> list[dict[str, Any]]:
        scope = SiteScope(frozenset(sites))
        return audit_trail(app_engine, scope, device_id=a.device.device_id, action="emergency_access")

    [event] = seen_by(SITE)
    assert event["new_values"]["name"] == "Dr. Noa Barak"
    assert event["reason"] == "Locked out mid-procedure"
    assert event["user_id"].startswith("emergency-")
    assert [e["event_id"] for e in seen_by(SECOND_SITE)] == [event["event_id"]]  # every site of the laptop
    assert seen_by(OTHER_HOSPITAL_SITE) == []  # never another hospital


# --- an altered station file -------------------------------------------------------------------------
def test_a_tampered_entry_is_refused_the_clinical_changes_still_sync_and_an_incident_is_raised(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    a = laptops("a")
    treatment_id = some_clinical_work(a, SERIALS[:1])
    a.sync()
    held = acknowledged(a)
    some_clinical_work(a, SERIALS[1:], treatment_id)
    [tampered] = [r for r in a.rows(AUDIT) if r["device_seq"] > held and r["table_name"] == "applicators"]

    # An attacker with the file: the append-only trigger dropped, one entry rewritten in place.
    with a.station.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER audit_logs_no_update")
        conn.exec_driver_sql(
            "UPDATE audit_logs SET user_id = 'u-somebody-else' WHERE device_seq = ?",
            (tampered["device_seq"],),
        )

    report = a.sync()
    assert report.outcome == "ok" and report.results == {"done": 1}  # the new scan
    assert report.audit is not None and report.audit.acknowledged_seq == held
    assert "(409)" in (report.audit.error or "") and "does not match its hash" in (report.audit.error or "")
    assert {e["status"] for e in a.rows(QUEUE)} == {"done"}
    assert cloud_chain(cloud, a) == station_chain(a)[:held]  # nothing of the refused batch
    arrived = cloud.rows(text("SELECT data->>'serial_number' FROM applicators"))
    assert sorted(serial for (serial,) in arrived) == SERIALS  # the clinical change arrived

    a.sync()  # refused again next round: still one incident per site
    found = cloud.rows(select(incidents.c.site, incidents.c.details).where(incidents.c.kind == INCIDENT_KIND))
    assert sorted(r.site for r in found) == sorted(STATION_SITES)
    assert {r.details["device_seq"] for r in found} == {tampered["device_seq"]}
    assert acknowledged(a) == held
