"""A fake Priority of the test's own over loopback, a client for it, and the cloud's cipher."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from cloud.cipher import load_cipher
from cloud.priority.adapter import PriorityClient
from cloud.priority.fake import DEFAULT_PASSWORD, SERVICE_ROOT, create_fake_priority
from cloud.priority.fixtures import build_fixtures
from store.crypto import PatientCipher
from tests.utils.data import TODAY
from tests.utils.servers import serve


@pytest.fixture
def fake_priority() -> FastAPI:
    return create_fake_priority(build_fixtures(TODAY))


@pytest.fixture
def priority_client(fake_priority: FastAPI) -> Iterator[PriorityClient]:
    with (
        serve(fake_priority) as url,
        PriorityClient(
            url + SERVICE_ROOT, username="priority", password=DEFAULT_PASSWORD, timeout=5, backoff_s=0.01
        ) as client,
    ):
        yield client


@pytest.fixture
def cloud_cipher(tmp_path: Path) -> PatientCipher:
    return load_cipher(tmp_path / "cloud.key")
