"""The connectivity monitor: online, offline, degraded or not linked, from real probes and real rounds.

The cloud is the real one over HTTP (PostgreSQL); "offline" is a closed port or a server that never
answers; "degraded" is a slow answer (the threshold set below the real answer time), a gateway in
front of the cloud answering 502 (the load balancer is an outside system), or a real cloud whose
database is unreachable.
"""

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from cloud.app import create_app
from cloud.config import CloudSettings
from store import remote
from store.station import Station
from sync.engine import Outcome
from sync.monitor import Connectivity, ConnectivityMonitor
from tests.sync.conftest import Laptop, LaptopFactory
from tests.utils.servers import free_port, serve

pytestmark = pytest.mark.postgres


def relink(laptop: Laptop, url: str, credential: str | None = None) -> None:
    remote.link_cloud(
        laptop.station,
        cloud_url=url,
        credential=credential or laptop.device.token,
        device_id=laptop.station.device_id,
    )


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers (a cloud hanging behind a firewall)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def gateway() -> Iterator[str]:
    """A load balancer whose cloud behind it is down: 502 to everything."""
    app = FastAPI()

    @app.get("/{path:path}")
    def bad_gateway(path: str) -> PlainTextResponse:
        return PlainTextResponse("upstream unavailable", status_code=502)

    with serve(app) as url:
        yield url


@pytest.fixture
def cloud_without_database(tmp_path: Path) -> Iterator[str]:
    """The real cloud app, its database unreachable (a closed port)."""
    url = f"postgresql+psycopg://dart_app@127.0.0.1:{free_port()}/nowhere"
    settings = CloudSettings(database_url=url, data_key_file=tmp_path / "cloud.key")
    with serve(create_app(settings)) as base:
        yield base


def test_a_healthy_cloud_is_online_and_no_link_is_not_linked(
    laptops: LaptopFactory, fresh_station: Station
) -> None:
    monitor = ConnectivityMonitor(laptops("a").station)
    assert monitor.connectivity() is Connectivity.UNKNOWN  # nothing observed yet: not pretended

    probe = monitor.check()

    assert probe.connectivity is Connectivity.ONLINE and probe.latency_ms is not None
    assert monitor.connectivity() is Connectivity.ONLINE and monitor.last_probe == probe
    alone = ConnectivityMonitor(fresh_station)
    assert alone.check().connectivity is Connectivity.NOT_LINKED
    assert alone.connectivity() is Connectivity.NOT_LINKED


def test_no_answer_is_offline_within_the_probe_timeout(laptops: LaptopFactory, silent_server: str) -> None:
    a = laptops("a")
    monitor = ConnectivityMonitor(a.station, timeout_s=0.5)
    relink(a, f"http://127.0.0.1:{free_port()}")  # nobody listens: refused at once

    refused = monitor.check()

    assert refused.connectivity is Connectivity.OFFLINE and refused.latency_ms is None
    assert "no answer" in refused.detail

    relink(a, silent_server)
    started = time.monotonic()
    hanging = monitor.check()

    assert hanging.connectivity is Connectivity.OFFLINE and "Timeout" in hanging.detail
    assert time.monotonic() - started < 0.5 * 4 + 1  # the connect/read timeouts, not a hung probe


def test_a_slow_answer_a_gateway_error_or_an_unwell_database_is_degraded(
    laptops: LaptopFactory, gateway: str, cloud_without_database: str
) -> None:
    a = laptops("a")

    slow = ConnectivityMonitor(a.station, slow_ms=0).check()  # any real answer is slower than 0 ms
    assert slow.connectivity is Connectivity.DEGRADED and "slowly" in slow.detail

    relink(a, gateway)
    failing = ConnectivityMonitor(a.station).check()
    assert failing.connectivity is Connectivity.DEGRADED and "502" in failing.detail

    relink(a, cloud_without_database)
    unwell = ConnectivityMonitor(a.station).check()
    assert unwell.connectivity is Connectivity.DEGRADED and "unwell" in unwell.detail


def test_a_round_that_fails_while_the_cloud_answers_keeps_it_degraded_until_a_round_succeeds(
    laptops: LaptopFactory,
) -> None:
    a = laptops("a")
    url = a.state.cloud_url or ""
    monitor = ConnectivityMonitor(a.station)
    relink(a, url, credential="revoked")

    refused = a.engine.run_round()
    monitor.note_round(refused)
    monitor.check()  # the cloud answers its health check

    assert refused.outcome is Outcome.UNAUTHORISED
    assert monitor.connectivity() is Connectivity.DEGRADED
    assert "unauthorised" in (monitor.held_reason or "") and monitor.last_success_at is None
    assert monitor.detail() == monitor.held_reason  # the banner says why

    relink(a, url)
    good = a.engine.run_round()
    monitor.note_round(good)

    assert monitor.connectivity() is Connectivity.ONLINE and monitor.held_reason is None
    assert monitor.last_success_at == good.finished_at


def test_the_newest_observation_speaks(laptops: LaptopFactory) -> None:
    a = laptops("a")
    url = a.state.cloud_url or ""
    monitor = ConnectivityMonitor(a.station, timeout_s=0.5)
    monitor.check()
    assert monitor.connectivity() is Connectivity.ONLINE

    relink(a, f"http://127.0.0.1:{free_port()}")
    offline = a.engine.run_round()
    monitor.note_round(offline)
    assert offline.outcome is Outcome.OFFLINE and monitor.connectivity() is Connectivity.OFFLINE
    assert monitor.detail() == "the last sync round found no cloud"

    relink(a, url)
    monitor.check()
    assert monitor.connectivity() is Connectivity.ONLINE  # back: the probe is newer than the round


def test_a_credential_of_another_device_is_not_linked_whatever_the_probe_says(laptops: LaptopFactory) -> None:
    a = laptops("a")
    monitor = ConnectivityMonitor(a.station)
    remote.link_cloud(
        a.station, cloud_url=a.state.cloud_url or "", credential=a.device.token, device_id="st-someone-else"
    )

    report = a.engine.run_round()
    monitor.note_round(report)
    monitor.check()

    assert report.outcome is Outcome.NOT_LINKED and "enrol this station again" in (report.error or "")
    assert monitor.connectivity() is Connectivity.NOT_LINKED
