"""The cloud's copy of Priority: refreshed whole, patient labels encrypted, kept when Priority is down."""

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, func, select

from cloud.db import SiteScope, scoped_transaction
from cloud.priority.adapter import PriorityClient
from cloud.priority.fixtures import build_fixtures
from cloud.priority.refresh import refresh
from cloud.schema import priority_applicators, priority_orders, priority_refresh, sites, users
from store.crypto import PatientCipher
from tests.utils.data import TODAY

pytestmark = pytest.mark.postgres


def _count(engine: Engine, table) -> int:
    with scoped_transaction(engine, SiteScope.everything()) as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_refresh_copies_priority_with_patients_encrypted(
    app_engine: Engine, priority_client: PriorityClient, cloud_cipher: PatientCipher
) -> None:
    report = refresh(app_engine, priority_client, cloud_cipher, today=TODAY)
    assert report.ok and report.orders > 0 and report.users > 0
    assert _count(app_engine, priority_applicators) == report.applicators > 1500
    assert _count(app_engine, priority_orders) == report.orders
    with scoped_transaction(app_engine, SiteScope.everything()) as conn:
        assert conn.execute(select(func.count()).select_from(sites)).scalar_one() == 6
        stored = " ".join(str(d) for d in conn.execute(select(priority_orders.c.data)).scalars())
        roles = dict(conn.execute(select(users.c.role, func.count()).group_by(users.c.role)).all())
    labels = [o["DETAILS"] for o in build_fixtures(TODAY).orders if o.get("DETAILS")]
    assert labels and not any(label in stored for label in labels)
    assert roles["alphatau"] == 3 and roles["hospital"] > 0


def test_priority_down_keeps_the_last_copy_and_says_so(
    app_engine: Engine,
    priority_client: PriorityClient,
    fake_priority: FastAPI,
    cloud_cipher: PatientCipher,
    cloud_url: str,
) -> None:
    assert refresh(app_engine, priority_client, cloud_cipher, today=TODAY).ok
    before = _count(app_engine, priority_applicators)
    fake_priority.state.down = True
    report = refresh(app_engine, priority_client, cloud_cipher, today=TODAY)
    assert not report.ok and report.error
    assert _count(app_engine, priority_applicators) == before
    with app_engine.connect() as conn:
        state = conn.execute(select(priority_refresh)).one()
    assert state.last_error and state.last_success_at < state.last_attempt_at
    health = httpx.get(f"{cloud_url}/health").json()
    assert health["priority_last_error"] and health["priority_age_s"] >= 0


def test_staff_dropped_by_priority_lose_access(
    app_engine: Engine, priority_client: PriorityClient, fake_priority: FastAPI, cloud_cipher: PatientCipher
) -> None:
    refresh(app_engine, priority_client, cloud_cipher, today=TODAY)
    phonebook = fake_priority.state.data.phonebook
    leaver = next(row["EMAIL"] for row in phonebook if row["POSITIONCODE"] != 99).lower()
    phonebook[:] = [row for row in phonebook if row["EMAIL"].lower() != leaver]
    assert refresh(app_engine, priority_client, cloud_cipher, today=TODAY).ok
    with app_engine.connect() as conn:
        active = conn.execute(select(users.c.is_active).where(users.c.id == leaver)).scalar_one()
    assert active is False
