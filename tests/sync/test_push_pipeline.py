"""The pipelined push (sync/engine.py; docs/performance.md, "sync_catchup") against the real cloud.

While the cloud works on one batch, the station writes the answers of the batch before and marks the
next batch sent, in one transaction. What must still hold, each checked here on the station's file
as each push leaves and after the round:

- a batch is durably marked sent before it leaves: enrolment refuses to move a device while anything
  sent is unanswered (sync/enrol.py), and a receipt says "sent" only then;
- an entry marked sent that never leaves - held back behind an entry the cloud refused in the batch
  before, or left behind by a round that ended offline - is marked back as it was;
- a batch costs one write transaction, not two (a durable commit each: an fsync on the laptop's disk).
"""

import gc
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import Connection, event

from store import remote
from store.applicators import update_details
from store.enums import ApplicatorStatus
from store.journal import QUEUE
from store.station import DB_FILE, Station
from sync.engine import SyncSettings
from tests.cloud.test_push import Cloud
from tests.sync.conftest import Laptop, LaptopFactory, walk
from tests.sync.test_engine import copy_as_new_entry
from tests.utils.data import NURSE

ONE_PER_PUSH = SyncSettings(batch_size=1)  # every entry its own batch: many batches from a few entries


class WatchedPushes(httpx.HTTPTransport):
    """The real network; as each push leaves, the station's queue is read from its file (another
    connection: only what is committed). `cut`: the push with that number never leaves."""

    def __init__(self, db_file: Path, *, cut: int | None = None) -> None:
        super().__init__()
        self.db_file = db_file
        self.cut = cut
        self.pushes: list[dict[str, tuple[str, bool]]] = []  # per push: op_id -> (status, marked sent)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/sync/push"):
            op_ids = [op["op_id"] for op in orjson.loads(request.content)["ops"]]
            with closing(sqlite3.connect(self.db_file)) as conn:
                marks = ", ".join("?" * len(op_ids))
                rows = conn.execute(
                    f"SELECT op_id, status, sent_at IS NOT NULL FROM sync_queue WHERE op_id IN ({marks})",
                    op_ids,
                ).fetchall()
            self.pushes.append({op_id: (status, bool(sent)) for op_id, status, sent in rows})
            if len(self.pushes) == self.cut:
                raise httpx.ConnectError("the cable was pulled before this push left", request=request)
        return super().handle_request(request)

    @property
    def sent(self) -> list[str]:
        return [op_id for push in self.pushes for op_id in push]


def watched(
    laptops: LaptopFactory, tmp_path: Path, *, cut: int | None = None
) -> tuple[Laptop, WatchedPushes]:
    # The factory opens each laptop's station in tmp_path / "laptop-<name>" (tests/sync/conftest.py).
    watch = WatchedPushes(tmp_path / "laptop-a" / DB_FILE, cut=cut)
    return laptops("a", settings=ONE_PER_PUSH, transport=watch), watch


def entries(laptop: Laptop) -> dict[str, dict[str, Any]]:
    return {e["op_id"]: e for e in laptop.rows(QUEUE)}


@contextmanager
def counted_writes(station: Station) -> Iterator[list[int]]:
    """Write transactions (BEGIN IMMEDIATE, store/engine.py) begun on the station while inside."""
    count = [0]

    def on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("sqlite_begin") == "IMMEDIATE":
            count[0] += 1

    event.listen(station.engine, "begin", on_begin)
    try:
        yield count
    finally:
        event.remove(station.engine, "begin", on_begin)


def test_every_batch_is_marked_sent_durably_before_it_leaves_and_costs_one_write(
    laptops: LaptopFactory, tmp_path: Path
) -> None:
    a, watch = watched(laptops, tmp_path)
    treatment_id = a.insertion()
    for index in range(3):
        walk(a, a.scan(treatment_id, f"DART-9000-0000{index}")["id"], ApplicatorStatus.INSERTED)
    a.finalise(treatment_id)
    queued = len(entries(a))

    with counted_writes(a.station) as writes:
        report = a.sync()

    assert report.results == {"done": queued} and len(watch.pushes) == queued >= 10
    # Each push found all of its entries committed as in flight and sent, before it left.
    assert all(push and set(push.values()) == {("in_flight", True)} for push in watch.pushes)
    assert sorted(watch.sent) == sorted(entries(a)) and {e["status"] for e in entries(a).values()} == {"done"}
    # Marking a batch sent and writing its answers took two writes each; the pipeline takes one,
    # plus the round's own few (the clock offset, the first mark, the audit upload, the round).
    assert writes[0] < 2 * len(watch.pushes) - 4, (writes[0], len(watch.pushes))


def test_an_entry_held_back_behind_a_refusal_in_the_batch_before_is_marked_back_unsent(
    laptops: LaptopFactory, tmp_path: Path, cloud: Cloud
) -> None:
    a, watch = watched(laptops, tmp_path)
    treatment_id = a.insertion()
    first = a.scan(treatment_id, "DART-9000-00000")
    a.sync()
    [scanned] = [e for e in entries(a).values() if e["record_id"] == first["id"]]
    copy = copy_as_new_entry(a, scanned)  # an insert the cloud already has: refused for good
    update_details(a.station, NURSE, applicator_id=first["id"], comment="outer seal torn")
    [comment] = [e for e in entries(a).values() if e["changed_fields"].get("comments")]
    assert comment["depends_on"] == [copy]
    pushed_before = len(watch.pushes)

    # The copy goes alone; the comment, the next batch, is marked sent while the copy is at the cloud.
    report = a.sync()

    assert [list(push) for push in watch.pushes[pushed_before:]] == [[copy]]
    assert report.results == {"quarantined": 1} and (report.sent, report.waiting) == (1, 1)
    after = entries(a)[comment["op_id"]]
    # Marked back as it was: never sent, so no receipt says "sent" and enrolment is not held up.
    assert (after["status"], after["sent_at"], after["attempts"], after["last_error"]) == (
        "pending",
        None,
        0,
        None,
    )
    assert cloud.scalar("SELECT count(*) FROM op_ledger WHERE op_id = :id", id=comment["op_id"]) == 0


def test_a_round_cut_off_mid_push_marks_back_the_batch_that_never_left(
    laptops: LaptopFactory, tmp_path: Path, cloud: Cloud
) -> None:
    a, watch = watched(laptops, tmp_path, cut=2)
    treatment_id = a.insertion()
    for index in range(3):
        a.scan(treatment_id, f"DART-9000-0000{index}")
    order = [e["op_id"] for e in sorted(entries(a).values(), key=lambda e: e["device_seq"])]

    cut = a.engine.run_round()

    assert cut.outcome == "offline" and len(watch.pushes) == 2
    first, lost, following = watch.sent[0], watch.sent[1], order[2]
    state = entries(a)
    assert state[first]["status"] == "done"
    # The push whose answer never came may have reached the cloud: it still counts as sent.
    assert (state[lost]["status"], state[lost]["sent_at"] is not None, state[lost]["attempts"]) == (
        "pending",
        True,
        0,
    )
    # The batch marked while that one was on its way never left: back as it was.
    assert following not in watch.sent
    assert (state[following]["status"], state[following]["sent_at"]) == ("pending", None)

    watch.cut = None
    a.sync()

    assert {e["status"] for e in entries(a).values()} == {"done"}
    for op_id in order:
        assert cloud.scalar("SELECT count(*) FROM op_ledger WHERE op_id = :id", id=op_id) == 1


def test_the_rounds_schedule_is_left_out_of_the_garbage_collectors_passes(laptops: LaptopFactory) -> None:
    # A station back after days offline schedules thousands of entries for the whole round: were they
    # tracked, every full collection in the sync worker would walk them with the GIL held (loop stall).
    a = laptops("a")
    treatment_id = a.insertion()
    a.scan(treatment_id, "DART-9000-00000")

    schedule = remote.open_schedule(a.station)
    gc.collect()  # a full pass, as one in the sync worker would be: it untracks what holds only atoms

    assert len(schedule) == 2 and schedule[1]["depends_on"] == (schedule[0]["op_id"],)
    assert not any(gc.is_tracked(entry) for entry in schedule)
