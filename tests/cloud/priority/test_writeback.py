"""Write-back to Priority: queued in the cloud's transaction, sent later, retried when Priority is down."""

from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, select

from cloud.db import SiteScope, scoped_transaction
from cloud.priority.adapter import PriorityClient
from cloud.priority.refresh import refresh
from cloud.priority.writeback import enqueue_applicator, enqueue_order_status, send_due
from cloud.schema import priority_applicators, writeback_queue
from store.crypto import PatientCipher
from tests.utils.data import TODAY

pytestmark = pytest.mark.postgres


def _a_line(engine: Engine) -> dict:
    with scoped_transaction(engine, SiteScope.everything()) as conn:
        return next(
            {"site": row.site, **row.data}
            for row in conn.execute(select(priority_applicators))
            if row.data.get("kline") is not None and row.data.get("seeds")
        )


def _subform_row(fake_priority: FastAPI, order: str, kline: int) -> dict:
    return next(r for r in fake_priority.state.data.applicators[order] if int(r["KLINE"]) == kline)


def test_terminal_applicator_is_written_back(
    app_engine: Engine, priority_client: PriorityClient, fake_priority: FastAPI, cloud_cipher: PatientCipher
) -> None:
    assert refresh(app_engine, priority_client, cloud_cipher, today=TODAY).ok
    line = _a_line(app_engine)
    record = {
        "serial_number": line["serial"],
        "status": "FAULTY",
        "deployed_seeds": 3,
        "comments": "bent tip",
        "status_changed_at": datetime(2026, 11, 26, 10, 0, tzinfo=UTC).isoformat(),
    }
    with scoped_transaction(app_engine, SiteScope(frozenset({line["site"]}))) as conn:
        assert enqueue_applicator(conn, line["site"], record)
        assert not enqueue_applicator(conn, line["site"], {**record, "status": "OPENED"})  # not final yet
    assert send_due(app_engine, priority_client).sent == 1
    row = _subform_row(fake_priority, line["priority_order"], line["kline"])
    assert row["USINGTYPE"] == "Faulty" and row["INSERTIONCOMMENTS"] == "bent tip"
    assert send_due(app_engine, priority_client).sent == 0  # done once


def test_completed_treatment_sets_each_order_status(
    app_engine: Engine, priority_client: PriorityClient, fake_priority: FastAPI, cloud_cipher: PatientCipher
) -> None:
    names = [o["ORDNAME"] for o in fake_priority.state.data.orders if not o["ORDNAME"].startswith("PAT")][:2]
    record = {
        "type": "insertion",
        "is_complete": True,
        "subject_id_enc": cloud_cipher.encrypt("+".join(names)),
    }
    with scoped_transaction(app_engine, SiteScope(frozenset({"H1-TLV"}))) as conn:
        assert enqueue_order_status(conn, "H1-TLV", record, cloud_cipher) == 2
    assert send_due(app_engine, priority_client).sent == 2
    statuses = {o["ORDNAME"]: o["ORDSTATUSDES"] for o in fake_priority.state.data.orders}
    assert all(statuses[name] == "Performed" for name in names)


def test_priority_down_is_retried_later_and_never_lost(
    app_engine: Engine, priority_client: PriorityClient, fake_priority: FastAPI, cloud_cipher: PatientCipher
) -> None:
    name = fake_priority.state.data.orders[0]["ORDNAME"]
    record = {"type": "removal", "is_complete": True, "subject_id_enc": cloud_cipher.encrypt(name)}
    with scoped_transaction(app_engine, SiteScope(frozenset({"H1-TLV"}))) as conn:
        enqueue_order_status(conn, "H1-TLV", record, cloud_cipher)
    fake_priority.state.down = True
    assert send_due(app_engine, priority_client).failed == 1
    with scoped_transaction(app_engine, SiteScope.everything()) as conn:
        row = conn.execute(select(writeback_queue)).one()
    assert row.attempts == 1 and row.last_error and row.done_at is None
    fake_priority.state.down = False
    assert send_due(app_engine, priority_client).sent == 0  # not due yet: it backs off
    assert send_due(app_engine, priority_client, now=datetime.now(UTC) + timedelta(minutes=2)).sent == 1
    assert (
        next(o for o in fake_priority.state.data.orders if o["ORDNAME"] == name)["ORDSTATUSDES"] == "Removed"
    )
