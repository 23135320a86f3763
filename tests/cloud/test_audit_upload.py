"""The cloud's side of the audit upload: a station's chain verified on arrival (cloud/station_audit.py).

Entries are made the way the station makes them (store.journal.audit_hash over the same fields) and
sent over real HTTP to the real cloud on PostgreSQL as an enrolled device. A batch that breaks the
chain (a gap, a reorder, an altered field, a wrong previous hash, another device's entries) is
refused with a 409 that says where and why, stores nothing, and raises one incident per broken
position at the device's sites; an entry for another hospital's site is refused (422). A batch sent
again after a lost reply is answered the same and stored once. The stored chain is readable by the
hospital's auditors only (row-level security) and can be re-verified from the table alone.
"""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.exc import DBAPIError

from cloud.db import SiteScope, scoped_transaction
from cloud.schema import incidents, station_audit
from cloud.station_audit import INCIDENT_KIND, audit_trail
from store.journal import audit_hash, verify_audit_chain
from sync.audit_protocol import GENESIS_HASH, HASHED_FIELDS, AuditEntry
from sync.protocol import PROTOCOL_VERSION
from tests.cloud.test_push import Cloud, Device
from tests.cloud.test_push import cloud as cloud  # the fixture, by name
from tests.utils.data import OTHER_HOSPITAL_SITE, SECOND_SITE, SITE

pytestmark = pytest.mark.postgres

DEVICE_SITES = (SITE, SECOND_SITE)
START = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
Entry = dict[str, Any]


# --- the chain, as a station writes it ----------------------------------------------------------
def chain(device_id: str, count: int, *, after: Entry | None = None, site: str | None = SITE) -> list[Entry]:
    """`count` entries continuing `after` (or from the genesis), hashed as store.journal hashes them."""
    entries: list[Entry] = []
    seq, prev = (after["device_seq"], after["hash"]) if after else (0, GENESIS_HASH)
    for _ in range(count):
        seq += 1
        entry = {
            "event_id": f"00000000-0000-4000-8000-{seq:012d}",
            "device_id": device_id,
            "device_seq": seq,
            "user_id": "u-nurse",
            "action": "applicator_scanned",
            "table_name": "applicators",
            "record_id": f"ap-{seq}",
            "op_id": f"10000000-0000-4000-8000-{seq:012d}",
            "old_values": None if seq % 2 else {"status": "SEALED"},
            "new_values": {"status": "OPENED", "deployed_seeds": 0, "activity": 2.5, "at": START.isoformat()},
            "reason": None,
            "created_at": START + timedelta(seconds=seq, microseconds=seq),
            "prev_hash": prev,
        }
        entry["hash"] = audit_hash(entry)
        entry["site"] = site
        entries.append(entry)
        prev = entry["hash"]
    return entries


def rehashed(entry: Entry, **changes: Any) -> Entry:
    """The entry with fields changed and its own hash made again (a forger who knows the function)."""
    changed = {**entry, **changes}
    changed["hash"] = audit_hash({k: changed[k] for k in HASHED_FIELDS})
    return changed


def wire(entries: list[Entry]) -> list[Entry]:
    return [{**e, "created_at": e["created_at"].isoformat()} for e in entries]


def upload(device: Device, entries: list[Entry], *, acknowledged: int | None = None) -> httpx.Response:
    acked = entries[0]["device_seq"] - 1 if acknowledged is None else acknowledged
    body = {"protocol": PROTOCOL_VERSION, "acknowledged_seq": acked, "entries": wire(entries)}
    return httpx.post(f"{device.cloud.url}/api/v1/audit", json=body, headers=device.headers, timeout=30)


def accepted(device: Device, entries: list[Entry], **kwargs: Any) -> dict[str, Any]:
    response = upload(device, entries, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def held(cloud: Cloud, device: Device) -> list[tuple[int, str, str]]:
    rows = cloud.rows(
        select(station_audit.c.device_seq, station_audit.c.site, station_audit.c.hash)
        .where(station_audit.c.device_id == device.device_id)
        .order_by(station_audit.c.device_seq, station_audit.c.site)
    )
    return [tuple(r) for r in rows]


def chain_incidents(cloud: Cloud) -> list[Any]:
    return cloud.rows(
        select(incidents.c.site, incidents.c.id, incidents.c.details)
        .where(incidents.c.kind == INCIDENT_KIND)
        .order_by(incidents.c.site)
    )


@pytest.fixture
def device(cloud: Cloud) -> Device:
    return cloud.enrol(None, DEVICE_SITES)


# --- accepted: in order, exactly once ------------------------------------------------------------
def test_the_wire_entry_carries_exactly_the_fields_the_station_hashes() -> None:
    assert set(AuditEntry.model_fields) == {*HASHED_FIELDS, "hash", "site"}


def test_a_chain_is_stored_in_order_and_a_batch_sent_again_gets_the_same_answer(
    cloud: Cloud,
    device: Device,
) -> None:
    entries = chain(device.device_id, 5)
    first = accepted(device, entries[:3])
    assert first == {"protocol": 1, "acknowledged_seq": 3, "acknowledged_hash": entries[2]["hash"]}

    assert accepted(device, entries[:3]) == first  # the reply was lost: sent again, answered again
    assert accepted(device, entries[1:3], acknowledged=0) == first  # any part of what is held, too
    later = accepted(device, entries[1:])  # overlapping what is held, then new
    assert later["acknowledged_seq"] == 5

    assert held(cloud, device) == [(e["device_seq"], SITE, e["hash"]) for e in entries]
    assert chain_incidents(cloud) == []


def test_the_stored_chain_verifies_from_the_table_alone(cloud: Cloud, device: Device) -> None:
    entries = chain(device.device_id, 4)
    accepted(device, entries)
    rows = cloud.rows(select(station_audit).order_by(station_audit.c.device_seq))
    stored = [
        {n: r._mapping[n] for n in HASHED_FIELDS if n != "device_id"}
        | {"device_id": r.recorded_device_id, "hash": r.hash}
        for r in rows
    ]
    assert verify_audit_chain(stored) is None  # an auditor can re-check it years later
    assert [r["hash"] for r in stored] == [e["hash"] for e in entries]


def test_two_deliveries_of_one_batch_at_once_store_it_once_and_get_one_answer(
    cloud: Cloud,
    device: Device,
) -> None:
    """A retry racing the original (a proxy that re-sent it): the device's chain takes one at a time."""
    entries = chain(device.device_id, 40)
    start = threading.Barrier(4)

    def deliver(_: int) -> httpx.Response:
        start.wait()
        return upload(device, entries)

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(deliver, range(4)))

    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert {r.json()["acknowledged_seq"] for r in responses} == {40}
    assert held(cloud, device) == [(e["device_seq"], SITE, e["hash"]) for e in entries]


def test_an_entry_of_the_station_as_a_whole_is_filed_at_every_site_of_the_device(
    cloud: Cloud,
    device: Device,
) -> None:
    [emergency] = chain(device.device_id, 1, site=None)
    accepted(device, [emergency])
    assert held(cloud, device) == [(1, SITE, emergency["hash"]), (1, SECOND_SITE, emergency["hash"])]


def test_a_station_that_believes_the_cloud_holds_more_is_told_where_it_stands(
    cloud: Cloud,
    device: Device,
) -> None:
    entries = chain(device.device_id, 6)
    accepted(device, entries[:2])
    # Linked to this cloud after another one: its position says 4; the cloud holds 2.
    reply = accepted(device, entries[4:], acknowledged=4)
    assert (reply["acknowledged_seq"], reply["acknowledged_hash"]) == (2, entries[1]["hash"])
    assert [seq for seq, _, _ in held(cloud, device)] == [1, 2]
    assert accepted(device, entries[2:])["acknowledged_seq"] == 6
    assert chain_incidents(cloud) == []


# --- refused: the chain is broken ----------------------------------------------------------------
def broken_batches(device_id: str) -> dict[str, tuple[list[Entry], list[Entry], int, str]]:
    """name -> (accepted first, then the batch that breaks the chain, its first bad entry, words)."""
    entries = chain(device_id, 6)
    other = chain("st-someone-else", 6)
    return {
        "gap inside the batch": (entries[:2], [entries[2], entries[4], entries[5]], 5, "entry 4 is missing"),
        "gap before the batch": (entries[:2], entries[3:], 4, "entry 3 is missing"),
        "reordered": (entries[:2], [entries[3], entries[2]], 3, "out of order"),
        "altered field": (
            entries[:2],
            [entries[2], {**entries[3], "reason": "nothing happened"}, entries[4]],
            4,
            "does not match its hash",
        ),
        "altered time": (
            entries[:2],
            [{**entries[2], "created_at": entries[2]["created_at"] + timedelta(hours=1)}],
            3,
            "does not match its hash",
        ),
        "wrong previous hash": (
            entries[:2],
            [rehashed(entries[2], prev_hash=entries[0]["hash"])],
            3,
            "does not continue the chain",
        ),
        "removed and re-chained": (  # entry 3 dropped, 4 re-numbered and re-hashed: its link gives it away
            entries[:2],
            [rehashed(entries[3], device_seq=3)],
            3,
            "does not continue the chain",
        ),
        "held entry rewritten": (
            entries[:3],
            [rehashed(entries[1], action="nothing_to_see"), entries[2], entries[3]],
            2,
            "differs from the entry the cloud received before",
        ),
        "another device's chain": (
            entries[:2],
            [rehashed(other[2], prev_hash=entries[1]["hash"])],
            3,
            "another device's chain",
        ),
    }


CASES = list(broken_batches("st-x"))


@pytest.mark.parametrize("case", CASES)
def test_a_broken_chain_is_refused_whole_stored_nowhere_and_raises_one_incident(
    cloud: Cloud,
    device: Device,
    case: str,
) -> None:
    first, bad, bad_seq, words = broken_batches(device.device_id)[case]
    accepted(device, first)
    before = held(cloud, device)

    refusals = [upload(device, bad, acknowledged=len(first)) for _ in range(2)]  # the station retries

    for response in refusals:
        assert response.status_code == 409, response.text
        body = response.json()
        assert (body["code"], body["device_seq"], body["acknowledged_seq"]) == (
            "audit_chain_broken",
            bad_seq,
            len(first),
        )
        assert words in body["detail"] and "Nothing of this batch was stored" in body["detail"]
    assert held(cloud, device) == before  # not even the good entries before the break
    found = chain_incidents(cloud)
    assert [row.site for row in found] == sorted(DEVICE_SITES)  # once per site, however often sent
    assert {row.id for row in found} == {found[0].id}
    assert found[0].details["device_seq"] == bad_seq and words in found[0].details["problem"]


def test_entries_for_another_hospitals_site_are_refused_and_stored_nowhere(
    cloud: Cloud,
    device: Device,
) -> None:
    entries = chain(device.device_id, 3)
    entries[1]["site"] = OTHER_HOSPITAL_SITE  # not hashed: the hash still holds
    response = upload(device, entries)
    assert response.status_code == 422, response.text
    assert f"site(s) {OTHER_HOSPITAL_SITE}, which this device does not serve" in response.json()["detail"]
    assert held(cloud, device) == []


def test_one_devices_chain_never_continues_anothers(cloud: Cloud, device: Device) -> None:
    second = cloud.enrol(None, DEVICE_SITES)
    accepted(device, chain(device.device_id, 3))
    # The second laptop's own chain starts at the genesis: the first device's entries do not count.
    assert accepted(second, chain(second.device_id, 2))["acknowledged_seq"] == 2
    forged = upload(second, chain(device.device_id, 3)[2:])  # the first device's entry 3
    assert forged.status_code == 409 and "another device's chain" in forged.json()["detail"]
    assert [seq for seq, _, _ in held(cloud, second)] == [1, 2]


def test_an_entry_made_before_the_station_took_this_devices_id_is_accepted(
    cloud: Cloud,
    device: Device,
) -> None:
    """Enrolment gives a station the cloud's device id; the entries it wrote before carry its old id."""
    before = chain("st-before-enrolment", 2)
    after = chain(device.device_id, 2, after=before[-1])
    assert accepted(device, before + after)["acknowledged_seq"] == 4
    late = chain("st-before-enrolment", 1, after=after[-1])
    assert upload(device, late).status_code == 409  # once its own id appeared, the chain keeps it


def test_the_envelope_is_checked_first(cloud: Cloud, device: Device) -> None:
    entries = chain(device.device_id, 1)
    body = {"protocol": 2, "acknowledged_seq": 0, "entries": wire(entries)}
    wrong = httpx.post(f"{cloud.url}/api/v1/audit", json=body, headers=device.headers, timeout=30)
    assert wrong.status_code == 422 and "protocol 2 is not spoken by this cloud" in wrong.json()["detail"]
    extra = {**wire(entries)[0], "severity": "high"}
    body = {"protocol": 1, "acknowledged_seq": 0, "entries": [extra]}
    unknown = httpx.post(f"{cloud.url}/api/v1/audit", json=body, headers=device.headers, timeout=30)
    assert unknown.status_code == 422 and "severity" in unknown.json()["detail"]
    nul = httpx.post(
        f"{cloud.url}/api/v1/audit",
        json={"protocol": 1, "acknowledged_seq": 0, "entries": [{**wire(entries)[0], "reason": "a\x00b"}]},
        headers=device.headers,
        timeout=30,
    )
    assert nul.status_code == 422 and "NUL" in nul.json()["detail"]
    anonymous = httpx.post(f"{cloud.url}/api/v1/audit", json=body, timeout=30)
    assert anonymous.status_code == 401
    assert held(cloud, device) == []


# --- who may read it, and nobody may change it ---------------------------------------------------
def test_the_hospitals_auditors_see_their_sites_entries_and_no_one_elses(
    cloud: Cloud,
    device: Device,
    app_engine: Engine,
) -> None:
    emergency = chain(device.device_id, 1, site=None)
    emergency[0] = rehashed(emergency[0], action="emergency_access", reason="power cut, patient on table")
    scans = chain(device.device_id, 2, after=emergency[0], site=SECOND_SITE)
    accepted(device, emergency + scans)

    def trail(sites: frozenset[str] | None, **kwargs: Any) -> list[tuple[int, str, list[str]]]:
        scope = SiteScope.everything() if sites is None else SiteScope(sites)
        return [(r["device_seq"], r["action"], r["sites"]) for r in audit_trail(app_engine, scope, **kwargs)]

    assert trail(frozenset({SITE})) == [(1, "emergency_access", [SITE])]
    assert trail(frozenset({SECOND_SITE}), action="emergency_access") == [
        (1, "emergency_access", [SECOND_SITE])
    ]
    assert trail(frozenset({SECOND_SITE})) == [
        (1, "emergency_access", [SECOND_SITE]),
        (2, "applicator_scanned", [SECOND_SITE]),
        (3, "applicator_scanned", [SECOND_SITE]),
    ]
    assert trail(frozenset({OTHER_HOSPITAL_SITE})) == []
    assert trail(None, device_id=device.device_id)[0] == (1, "emergency_access", sorted(DEVICE_SITES))
    [row] = audit_trail(app_engine, SiteScope(frozenset({SITE})), action="emergency_access")
    assert row["reason"] == "power cut, patient on table" and row["recorded_device_id"] == device.device_id


def test_nobody_changes_or_removes_a_stored_entry_not_even_the_owner(
    cloud: Cloud,
    device: Device,
    app_engine: Engine,
) -> None:
    accepted(device, chain(device.device_id, 2))
    statements = [
        update(station_audit).values(action="nothing"),
        delete(station_audit),
        text("TRUNCATE station_audit"),
    ]
    for engine, refusal in ((app_engine, "permission denied"), (cloud.owner, "append-only")):
        for statement in statements:
            with (
                pytest.raises(DBAPIError, match=refusal),
                scoped_transaction(engine, SiteScope.everything()) as conn,
            ):
                conn.execute(statement)
    assert len(held(cloud, device)) == 2
