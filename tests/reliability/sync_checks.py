"""What "nothing lost, nothing duplicated, nothing stuck" means after a faulty sync, checked on both sides.

A station's side is read straight from its SQLite file (its queue, its records, its cursor, the
file's integrity); the cloud's from PostgreSQL as the owner (the ledger, the change log, the
records). `assert_converged` then holds them against each other.
"""

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

RecordKey = tuple[str, str]  # (table, record id)
CLINICAL = ("treatments", "applicators")


@dataclass(frozen=True)
class StationView:
    device_id: str
    integrity: list[str]
    queue: dict[str, dict[str, Any]]  # op_id -> status, table_name, record_id, device_seq, answer
    records: dict[RecordKey, dict[str, Any]]  # cloud_version, sync_status, state (status / is_complete)
    cursor: int

    @property
    def answers(self) -> Counter[str | None]:
        """How the cloud last answered the entries: `duplicate` means an answer was lost once."""
        return Counter(e["answer"] for e in self.queue.values())

    @property
    def stuck(self) -> list[tuple[str, str]]:
        return [(op_id, e["status"]) for op_id, e in self.queue.items() if e["status"] != "done"]


@dataclass(frozen=True)
class CloudView:
    ledger: Counter[str]  # op_id -> rows, for one device
    change_log: Counter[str]  # op_id -> rows
    records: dict[RecordKey, dict[str, Any]]  # version, state, device_id
    max_seq: int


def station_view(db_path: Path) -> StationView:
    conn = sqlite3.connect(db_path)
    try:
        integrity = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        device_id = conn.execute("SELECT device_id FROM device_state").fetchone()[0]
        queue = {
            op_id: {
                "status": status,
                "table_name": table,
                "record_id": record_id,
                "device_seq": seq,
                "answer": json.loads(result)["status"] if result else None,  # as the cloud gave it
            }
            for op_id, status, table, record_id, seq, result in conn.execute(
                "SELECT op_id, status, table_name, record_id, device_seq, result FROM sync_queue"
            )
        }
        records: dict[RecordKey, dict[str, Any]] = {}
        for table, state in (("treatments", "is_complete"), ("applicators", "status")):
            for record_id, version, sync_status, value in conn.execute(
                f"SELECT id, cloud_version, sync_status, {state} FROM {table}"
            ):
                value = bool(value) if state == "is_complete" else value
                records[(table, record_id)] = {"version": version, "sync_status": sync_status, "state": value}
        cursor = conn.execute("SELECT coalesce(pull_cursor, 0) FROM sync_state").fetchone()[0]
    finally:
        conn.close()
    return StationView(device_id, integrity, queue, records, cursor)


def cloud_view(owner: Engine, device_id: str) -> CloudView:
    with owner.connect() as conn:
        ledger = Counter(
            r[0]
            for r in conn.execute(text("SELECT op_id FROM op_ledger WHERE device_id = :d"), {"d": device_id})
        )
        change_log = Counter(r[0] for r in conn.execute(text("SELECT op_id FROM change_log")))
        records: dict[RecordKey, dict[str, Any]] = {}
        for table, state in (("treatments", "is_complete"), ("applicators", "status")):
            for record_id, version, value, writer in conn.execute(
                text(f"SELECT id, version, data -> '{state}', device_id FROM {table}")
            ):
                records[(table, record_id)] = {"version": version, "state": value, "device_id": writer}
        max_seq = conn.execute(text("SELECT coalesce(max(seq), 0) FROM change_log")).scalar_one()
    return CloudView(ledger, change_log, records, max_seq)


def assert_converged(station: StationView, cloud: CloudView, *, confirmed: list[str], context: str) -> None:
    """Every change the station confirmed took effect in the cloud exactly once, and the station
    holds every record the cloud holds, as the cloud holds it; nothing waits in the queue."""
    assert station.integrity == ["ok"], f"{context}: integrity_check {station.integrity}"
    lost_here = [op for op in confirmed if op not in station.queue]
    assert not lost_here, f"{context}: confirmed changes missing from the station's queue: {lost_here[:5]}"
    assert not station.stuck, (
        f"{context}: {len(station.stuck)} entries left in the queue: {station.stuck[:5]}"
    )

    sent = set(station.queue)
    lost = sorted(sent - set(cloud.ledger))
    assert not lost, f"{context}: {len(lost)} operations never reached the cloud's ledger: {lost[:5]}"
    foreign = sorted(set(cloud.ledger) - sent)
    assert not foreign, f"{context}: the ledger holds operations the station never made: {foreign[:5]}"
    twice = {op: n for op in sent if (n := cloud.change_log[op]) != 1}
    assert not twice, f"{context}: operations not in the change log exactly once (op: rows): {twice}"

    # Each record's version counts the operations applied to it: a repeat would have bumped it.
    ops_per_record = Counter((e["table_name"], e["record_id"]) for e in station.queue.values())
    wrong_versions = {
        key: (cloud.records.get(key, {}).get("version"), n)
        for key, n in ops_per_record.items()
        if key[0] in CLINICAL and cloud.records.get(key, {}).get("version") != n
    }
    assert not wrong_versions, (
        f"{context}: cloud version != operations made (key: (cloud, ops)): {wrong_versions}"
    )

    # The station holds every record of the cloud, at the cloud's version and state.
    missing = sorted(set(cloud.records) - set(station.records))
    assert not missing, f"{context}: {len(missing)} cloud records not on the station: {missing[:5]}"
    behind = {
        key: (station.records[key], theirs)
        for key, theirs in cloud.records.items()
        if (station.records[key]["version"], station.records[key]["state"])
        != (theirs["version"], theirs["state"])
    }
    assert not behind, f"{context}: records that differ from the cloud's: {list(behind.items())[:3]}"
    unsynced = {k: r["sync_status"] for k, r in station.records.items() if r["sync_status"] != "synced"}
    assert not unsynced, f"{context}: rows without their receipt: {list(unsynced.items())[:5]}"
    assert station.cursor == cloud.max_seq, (
        f"{context}: cursor {station.cursor} != last change {cloud.max_seq}"
    )
