"""The station's pages so far: a status page and a health route (the clinical pages come later)."""

from pathlib import Path

from fastapi.responses import JSONResponse
from nicegui import app, run, ui
from sqlalchemy import func, select

from store.engine import read_transaction
from store.enums import QueueStatus
from store.models import SyncQueueEntry, Treatment
from store.station import Station, open_station

_state: dict[str, Station] = {}


def register_station(data_dir: Path) -> None:
    """Open (and migrate) the station's database at start-up, close it at shutdown."""

    def start() -> None:
        _state["station"] = open_station(data_dir)

    def stop() -> None:
        if "station" in _state:
            _state.pop("station").close()

    app.on_startup(start)
    app.on_shutdown(stop)


@app.get("/health")
async def health() -> JSONResponse:
    station = _state.get("station")
    if station is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    counts = await run.io_bound(_counts, station)
    return JSONResponse({"status": "ok", "device_id": station.device_id, **counts})


@ui.page("/")
async def status_page() -> None:
    station = _state.get("station")
    ui.label("DaRT station").classes("text-2xl")
    if station is None:
        ui.label("The station is starting…")
        return
    counts = await run.io_bound(_counts, station)
    ui.label(f"Device {station.device_id}")
    ui.label(f"{counts['treatments']} treatments saved on this station")
    ui.label(f"{counts['waiting']} changes waiting to be sent to the cloud")


def _counts(station: Station) -> dict[str, int]:
    queue = SyncQueueEntry.__table__
    treatments = Treatment.__table__
    with read_transaction(station.engine) as conn:
        waiting = conn.execute(
            select(func.count()).where(queue.c.status != QueueStatus.DONE.value)
        ).scalar_one()
        total = conn.execute(select(func.count()).where(treatments.c.deleted_at.is_(None))).scalar_one()
    return {"treatments": int(total), "waiting": int(waiting)}
