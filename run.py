"""Entry point: `python run.py station | cloud` or, with no argument, the demo (ui/demo.py).

`python run.py station --cloud URL --enrol CODE` enrols the station with the cloud first (once, with
the code an administrator issued) and then starts it.
"""

import argparse
import os
import sys
from pathlib import Path

DEFAULT_DATA_DIR = Path(os.environ.get("DART_DATA_DIR", "data/station"))
DEFAULT_PORT = int(os.environ.get("DART_STATION_PORT", "8080"))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "station":
        if (args.cloud is None) != (args.enrol is None):
            print("--cloud URL and --enrol CODE go together: they enrol the station.", file=sys.stderr)
            return 2
        if args.enrol is not None and not enrol(args.data_dir, args.cloud, args.enrol):
            return 2
        return run_station(data_dir=args.data_dir, port=args.port, kiosk=args.kiosk)
    if args.command == "cloud":
        return run_cloud(host=args.host, port=args.port)
    from ui.demo import run_demo

    return run_demo()


def enrol(data_dir: Path, cloud_url: str, code: str) -> bool:
    """Enrol the station in `data_dir` with the cloud; says what happened, True when it is enrolled."""
    from store.station import open_station
    from sync.enrol import EnrolmentError, enrol_station

    station = open_station(data_dir)
    try:
        enrolled = enrol_station(station, cloud_url, code)
    except EnrolmentError as exc:
        print(f"Enrolment failed: {exc}", file=sys.stderr)
        return False
    finally:
        station.close()
    sites = ", ".join(enrolled.sites)
    print(f"Enrolled as device {enrolled.device_id} ({enrolled.name}) for {sites}.", flush=True)
    return True


def run_station(*, data_dir: Path, port: int, kiosk: bool = False) -> int:
    from nicegui import ui

    from ui.station_app import register_station

    register_station(data_dir)
    if kiosk:
        from ui.kiosk import CHROMIUM, open_kiosk_when_ready

        # Chromium starts once /health answers, so the OR laptop never shows a connection error.
        open_kiosk_when_ready(port, data_dir=data_dir, browser=os.environ.get("DART_KIOSK_BROWSER", CHROMIUM))
    # The station serves one local kiosk browser: never listen beyond loopback.
    ui.run(host="127.0.0.1", port=port, title="DaRT station", reload=False, show=False)
    return 0


def run_cloud(*, host: str, port: int) -> int:
    import uvicorn

    from cloud.app import create_app
    from cloud.config import CloudSettings
    from cloud.migrate import upgrade

    settings = CloudSettings.from_env()
    if settings.owner_database_url:
        upgrade(settings.owner_database_url)
    run_jobs = os.environ.get("DART_RUN_JOBS", "1") == "1"
    uvicorn.run(create_app(settings, run_jobs=run_jobs), host=host, port=port, log_level="info")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Alpha DaRT treatment tracker; with no command, the demo (Priority, cloud, station).",
    )
    commands = parser.add_subparsers(dest="command")
    station = commands.add_parser("station", help="the OR station (local browser app, SQLite, offline-first)")
    station.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where station.db lives")
    station.add_argument("--port", type=int, default=DEFAULT_PORT)
    station.add_argument("--cloud", metavar="URL", help="the cloud to enrol with (with --enrol)")
    station.add_argument("--enrol", metavar="CODE", help="the one-time code an administrator issued")
    station.add_argument("--kiosk", action="store_true", help="then open Chromium in kiosk mode on it")
    cloud = commands.add_parser("cloud", help="the cloud service (FastAPI on PostgreSQL; DATABASE_URL)")
    cloud.add_argument("--host", default=os.environ.get("DART_CLOUD_HOST", "127.0.0.1"))
    cloud.add_argument("--port", type=int, default=int(os.environ.get("DART_CLOUD_PORT", "8090")))
    return parser


if __name__ in {"__main__", "__mp_main__"}:
    sys.exit(main())
