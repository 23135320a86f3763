"""Network faults: 300 changes made while the network between station and cloud drops, delays, resets
and truncates requests and answers; once it heals, nothing is lost, nothing is applied twice, and
the queue is empty within 30 seconds (invariants 3 and 4, and "never stalls").

The faults come from a TCP proxy on loopback (fault_proxy.py) between a real station and the real
cloud (uvicorn in a thread, PostgreSQL), chosen per request from a seeded generator
(NET_FAULT_SEED overrides the seed, which is in every failure message). Sync rounds run all along,
as the station's job would; each ends however the network lets it.
"""

import os
import random
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from store.station import DB_FILE
from sync.engine import SyncEngine
from tests.cloud.conftest import app_engine, cloud_db, owner_engine  # noqa: F401  (fixtures by name)
from tests.cloud.test_push import Cloud, cloud  # noqa: F401  (fixture by name)
from tests.reliability.fault_proxy import FAULTS, FaultProxy
from tests.reliability.linking import linked_station, settings
from tests.reliability.sync_checks import assert_converged, cloud_view, station_view
from tests.reliability.workload import Plan, next_change

SEED = int(os.environ.get("NET_FAULT_SEED", "20261128"))
CHANGES = 300
HEAL_DEADLINE_S = 30.0
PLAN = Plan(first_order=0, scans=4)


def test_300_changes_through_a_faulty_network_arrive_once_and_the_queue_empties_after_healing(
    tmp_path: Path,
    cloud: Cloud,  # noqa: F811
) -> None:
    context = f"seed={SEED}"
    rng = random.Random(SEED)
    port = urlsplit(cloud.url).port
    assert port is not None
    with FaultProxy(port, seed=SEED, fault_rate=0.4) as proxy:
        station, device = linked_station(tmp_path / "station", cloud, PLAN, url=proxy.url)
        # Small batches and pages: more requests per round, so more of them meet a fault.
        engine = SyncEngine(station, settings=settings(batch_size=10, page_size=20, timeout_s=5))
        try:
            made: list[str] = []
            outcomes: Counter[str] = Counter()
            while len(made) < CHANGES:
                for _ in range(min(rng.randint(5, 15), CHANGES - len(made))):
                    made.append(next_change(station, PLAN))
                outcomes[engine.run_round().outcome.value] += 1
            faulty = dict(proxy.counts)

            proxy.heal()
            healed = time.monotonic()
            rounds_after = 0
            while _open_entries(station.data_dir / DB_FILE):
                assert time.monotonic() - healed < HEAL_DEADLINE_S, (
                    f"{context}: the queue still holds {_open_entries(station.data_dir / DB_FILE)[:5]}... "
                    f"entries {HEAL_DEADLINE_S} s after the network healed ({rounds_after} rounds)"
                )
                report = engine.run_round()
                rounds_after += 1
                assert report.outcome == "ok", f"{context}: healed, yet {report.outcome}: {report.error}"
            emptied_s = time.monotonic() - healed
            final = engine.run_round()  # pulls back the last pushes, so the cursor reaches the end
            assert final.outcome == "ok", f"{context}: {final.error}"
        finally:
            station.close()

    # Every fault really happened, and rounds really failed because of them.
    assert all(faulty.get(name, 0) > 0 for name in FAULTS), f"{context}: faults done {faulty}"
    assert outcomes["offline"] > 0 and outcomes["ok"] > 0, f"{context}: round outcomes {outcomes}"
    assert emptied_s < HEAL_DEADLINE_S
    view = station_view(tmp_path / "station" / DB_FILE)
    assert len(view.queue) == CHANGES, f"{context}: {len(view.queue)} queue entries for {CHANGES} changes"
    assert_converged(view, cloud_view(cloud.owner, device.device_id), confirmed=made, context=context)


def _open_entries(db_path: Path) -> list[tuple[str, str]]:
    """Queue entries not done yet (op id, status)."""
    return station_view(db_path).stuck
