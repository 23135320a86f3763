"""Entry point: `python run.py station | cloud` or, with no argument, the demo.

The demo (issue 4) says it is not built yet and exits.
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
        return run_station(data_dir=args.data_dir, port=args.port)
    if args.command == "cloud":
        return run_cloud(host=args.host, port=args.port)
    print(
        "The demo (fake Priority, cloud and station together) is not built yet. "
        "Run the station with: python run.py station",
        file=sys.stderr,
    )
    return 2


def run_station(*, data_dir: Path, port: int) -> int:
    from nicegui import ui

    from ui.station_app import register_station

    register_station(data_dir)
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
    parser = argparse.ArgumentParser(prog="run.py", description="Alpha DaRT treatment tracker")
    commands = parser.add_subparsers(dest="command")
    station = commands.add_parser("station", help="the OR station (local browser app, SQLite, offline-first)")
    station.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where station.db lives")
    station.add_argument("--port", type=int, default=DEFAULT_PORT)
    cloud = commands.add_parser("cloud", help="the cloud service (FastAPI on PostgreSQL; DATABASE_URL)")
    cloud.add_argument("--host", default=os.environ.get("DART_CLOUD_HOST", "127.0.0.1"))
    cloud.add_argument("--port", type=int, default=int(os.environ.get("DART_CLOUD_PORT", "8090")))
    return parser


if __name__ in {"__main__", "__mp_main__"}:
    sys.exit(main())
