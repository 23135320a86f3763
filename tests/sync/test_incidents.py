"""Incidents for INSERTED or FAULTY applicators whose change is stuck (invariant 6, issue 4 item 2).

A stuck entry is one the cloud refused for good (quarantined) or that failed its attempts (needs a
person). When it records an applicator INSERTED into a patient or FAULTY (itself, or by the status
changes held behind it), the station queues an incident that the next round sends; the cloud keeps
exactly one incident per stuck entry, whatever is retried, lost on the wire or restarted, and the
hospital (its sites only) sees it.
"""

from typing import Any

from sqlalchemy import Engine, func, select, text

from cloud.db import SiteScope, scoped_transaction
from cloud.schema import incidents
from store import remote
from store.enums import ApplicatorStatus
from store.incidents import incident_id, stuck_entries
from store.journal import AUDIT, QUEUE
from store.station import open_station
from sync.engine import SyncEngine, SyncSettings
from tests.cloud.test_push import Cloud
from tests.sync.conftest import Laptop, LaptopFactory, walk
from tests.sync.test_engine import LoseFirstPushReply
from tests.utils.data import OTHER_HOSPITAL_SITE, SITE, FakeClock

S = ApplicatorStatus
REFUSED_SERIAL = "DART-9000-00003"


def cloud_incidents(cloud: Cloud) -> list[Any]:
    return cloud.rows(select(incidents))


def incident_entries(laptop: Laptop) -> list[dict[str, Any]]:
    return laptop.rows(QUEUE, QUEUE.c.table_name == "incidents")


def refuse_serial_in_cloud(cloud: Cloud, serial: str) -> None:
    """The cloud's database refuses to store one applicator (a real failure: store_failed, retried)."""
    with cloud.owner.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse_serial() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.serial_number = '{serial}' THEN RAISE EXCEPTION 'disk full'; END IF; "
                "RETURN NEW; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER refuse_serial BEFORE INSERT ON applicators"
                " FOR EACH ROW EXECUTE FUNCTION refuse_serial()"
            )
        )


def visible_to(app_engine: Engine, site: str) -> int:
    with scoped_transaction(app_engine, SiteScope(frozenset({site}))) as conn:
        return conn.execute(select(func.count()).select_from(incidents)).scalar_one()


def test_an_inserted_applicator_that_needs_a_person_reaches_the_hospital_as_one_incident(
    laptops: LaptopFactory, cloud: Cloud, clock: FakeClock, app_engine: Engine, tmp_path: Any
) -> None:
    refuse_serial_in_cloud(cloud, REFUSED_SERIAL)
    lossy = LoseFirstPushReply()
    lossy.lost = 1  # armed below, for the round that sends the incident
    a = laptops("a", settings=SyncSettings(max_attempts=2), transport=lossy)
    treatment_id = a.insertion()
    applicator = a.scan(treatment_id, REFUSED_SERIAL)
    walk(a, applicator["id"], S.INSERTED)  # into the patient: the status changes wait behind the insert

    a.sync()  # store_failed: retried later
    assert incident_entries(a) == []
    clock.advance(minutes=2)
    a.sync()  # second failure: needs a person; the incident is queued with that verdict
    [stuck] = [s for s in stuck_entries(a.station) if s.record_id == applicator["id"]]
    assert (stuck.status, stuck.code, stuck.incident_raised) == ("needs_person", "store_failed", True)
    [queued] = incident_entries(a)
    assert queued["record_id"] == incident_id(stuck.op_id) and queued["payload"]["status"] == "INSERTED"
    assert "incident_raised" in [r["action"] for r in a.rows(AUDIT)]

    lossy.lost = 0  # the answer to the next push is lost on the way back
    a.engine.run_round()  # the incident is sent; its answer is lost: it stays open here
    before = len(cloud_incidents(cloud))
    assert [i for i in cloud_incidents(cloud) if i.details["op_id"] == stuck.op_id]
    assert incident_entries(a)[0]["status"] != "done"
    a.sync()  # sent again: the cloud's ledger answers from the first time
    # A restarted station raises nothing new and sends nothing twice.
    a.station.close()
    station = open_station(a.station.data_dir, clock=clock)
    try:
        again = Laptop(station, SyncEngine(station, settings=SyncSettings(max_attempts=2)), a.device)
        clock.advance(hours=2)
        again.sync()
        again.sync()
        assert [e["status"] for e in incident_entries(again)] == ["done"]
    finally:
        station.close()

    # One incident for the stuck entry. (The cloud itself also reported the INSERTED status changes
    # it refused because their insert had failed: one incident per refused operation, cloud/push.py.)
    found = cloud_incidents(cloud)
    assert len(found) == before  # nothing more after the lost reply, the retries and the restart
    [incident] = [i for i in found if i.details["op_id"] == stuck.op_id]
    assert (incident.site, incident.kind, incident.record_id) == (
        SITE,
        "rejected_applicator",
        applicator["id"],
    )
    details = incident.details
    assert (details["op_id"], details["queue_status"], details["status"]) == (
        stuck.op_id,
        "needs_person",
        "INSERTED",
    )
    assert details["serial"] == REFUSED_SERIAL and details["code"] == "store_failed"
    # The hospital sees it at its site; another hospital does not.
    assert visible_to(app_engine, SITE) == before
    assert visible_to(app_engine, OTHER_HOSPITAL_SITE) == 0


def test_a_quarantined_faulty_applicator_raises_one_incident_and_a_sealed_one_none(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    from tests.sync.test_engine import copy_as_new_entry

    a = laptops("a")
    treatment_id = a.insertion()
    faulty = a.scan(treatment_id, "DART-9000-00000")
    sealed = a.scan(treatment_id, "DART-9000-00001")
    walk(a, faulty["id"], S.FAULTY, deployed=2)
    a.sync()
    copies = {
        record_id: copy_as_new_entry(
            a, a.rows(QUEUE, QUEUE.c.record_id == record_id, QUEUE.c.kind == "insert")[0]
        )
        for record_id in (faulty["id"], sealed["id"])
    }

    a.sync()  # both copies refused for good (record_exists): quarantined
    a.sync()  # the incident goes out
    a.sync()

    statuses = {s.op_id: (s.status, s.incident_raised) for s in stuck_entries(a.station)}
    assert statuses == {
        copies[faulty["id"]]: ("quarantined", True),
        copies[sealed["id"]]: ("quarantined", False),
    }
    [incident] = cloud_incidents(cloud)
    assert incident.record_id == faulty["id"] and incident.details["status"] == "FAULTY"
    assert incident.details["code"] == "record_exists" and incident.details["queue_status"] == "quarantined"
    assert [e["status"] for e in incident_entries(a)] == ["done"]
    assert remote.load_state(a.station).last_error is None
