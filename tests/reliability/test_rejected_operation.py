"""Acceptance (issue 4): a rejected operation is quarantined, shown, and never blocks the queue (invariant 6).

The cloud refuses an insert of a record it already has (`record_exists`, cloud/push.py): what a
station restored from a backup does when it sends a change again under a new operation id. That
operation is quarantined, listed as needing a person, and never sent again by itself; operations
that do not depend on it apply in the same round and in later rounds; an operation that depends on
it waits, unsent, for as long as it stays quarantined.
"""

from typing import Any

from sqlalchemy import select

from cloud.schema import applicators as cloud_applicators
from cloud.schema import op_ledger
from store.applicators import update_details
from store.incidents import stuck_entries
from store.journal import QUEUE
from tests.cloud import conftest as cloud_fixtures
from tests.cloud.test_push import Cloud
from tests.sync import conftest as sync_fixtures
from tests.sync.conftest import Laptop, LaptopFactory
from tests.sync.test_engine import copy_as_new_entry
from tests.utils.data import NURSE

# The sync tests' fixtures, by name: laptops linked to the real cloud over loopback.
cloud_db, app_engine, owner_engine = (
    cloud_fixtures.cloud_db,
    cloud_fixtures.app_engine,
    cloud_fixtures.owner_engine,
)
cloud, clock, laptops = sync_fixtures.cloud, sync_fixtures.clock, sync_fixtures.laptops


def entry(laptop: Laptop, op_id: str) -> dict[str, Any]:
    [found] = laptop.rows(QUEUE, QUEUE.c.op_id == op_id)
    return found


def on_cloud(cloud: Cloud, record_id: str) -> Any:
    rows = cloud.rows(select(cloud_applicators.c.data).where(cloud_applicators.c.id == record_id))
    return rows[0].data if rows else None


def test_a_rejected_operation_is_quarantined_shown_and_the_rest_of_the_queue_goes_on(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    a = laptops("a")
    treatment_id = a.insertion()
    first = a.scan(treatment_id, "DART-9000-00000")
    a.sync()
    [scanned] = a.rows(QUEUE, QUEUE.c.record_id == first["id"])
    copy = copy_as_new_entry(a, scanned)
    # After the copy: a comment on the same applicator depends on it; a new scan does not.
    update_details(a.station, NURSE, applicator_id=first["id"], comment="outer seal torn")
    [dependent] = [e for e in a.rows(QUEUE) if e["changed_fields"].get("comments")]
    assert dependent["depends_on"] == [copy]
    independent = a.scan(treatment_id, "DART-9000-00001")

    a.sync()

    # The refused copy: quarantined with the cloud's code and words, listed for a person.
    refused = entry(a, copy)
    assert refused["status"] == "quarantined" and refused["result"]["code"] == "record_exists"
    [stuck] = stuck_entries(a.station)
    assert (stuck.op_id, stuck.status, stuck.code) == (copy, "quarantined", "record_exists")
    assert "already exists" in (stuck.message or "")
    assert not stuck.incident_raised  # a SEALED applicator: nothing to report to the hospital
    # Same round: the independent scan applied; the dependent comment did not reach the cloud.
    assert on_cloud(cloud, independent["id"]) is not None
    assert on_cloud(cloud, first["id"]).get("comments") is None
    assert entry(a, dependent["op_id"])["status"] == "pending"

    # Later rounds: new independent work applies; the copy is never sent again, the comment waits.
    ledger = len(cloud.rows(select(op_ledger.c.op_id)))
    later = a.scan(treatment_id, "DART-9000-00002")
    again = a.sync()
    assert on_cloud(cloud, later["id"]) is not None
    assert again.sent == 1 and again.waiting == 1
    assert len(cloud.rows(select(op_ledger.c.op_id))) == ledger + 1  # only the new scan
    assert entry(a, copy)["status"] == "quarantined" and entry(a, copy)["attempts"] == refused["attempts"]
    assert entry(a, dependent["op_id"])["status"] == "pending"
    assert on_cloud(cloud, first["id"]).get("comments") is None
    assert [s.op_id for s in stuck_entries(a.station)] == [copy]  # still shown, still alone
