"""The cloud service: a FastAPI app over PostgreSQL. Stateless: add workers behind a load balancer."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Engine, select, text

from cloud.config import CloudSettings
from cloud.db import make_engine
from cloud.jobs import start_jobs
from cloud.routes import audit_upload, auth, devices, signing, sync
from cloud.schema import priority_refresh

API_PREFIX = "/api/v1"


class Problem(BaseModel):
    """Every 4xx: `detail` says what is wrong in words; validation errors also list each problem."""

    detail: str | list[dict[str, Any]]
    errors: list[dict[str, Any]] | None = None


PROBLEMS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "the body is not valid JSON"},
    401: {"model": Problem, "description": "missing, expired or revoked credential"},
    403: {"model": Problem, "description": "not allowed for this caller"},
    404: {"model": Problem, "description": "no such resource"},
    409: {"model": Problem, "description": "conflicts with the current state"},
    422: {"model": Problem, "description": "invalid input, with one line per problem"},
    429: {"model": Problem, "description": "too many requests"},
}


class TimeReply(BaseModel):
    server_time: datetime  # UTC: stations measure their clock offset against it


class HealthReply(BaseModel):
    status: str
    database: str
    priority_last_refresh: datetime | None
    priority_age_s: float | None
    priority_last_error: str | None


def create_app(settings: CloudSettings, *, engine: Engine | None = None, run_jobs: bool = False) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = engine or make_engine(settings.database_url)
        app.state.settings = settings
        scheduler = start_jobs(app.state.engine, settings) if run_jobs else None
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.shutdown(wait=False)
            if engine is None:
                app.state.engine.dispose()

    app = FastAPI(title="DaRT cloud", version="1", lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, _invalid_input)
    app.include_router(auth.router, prefix=f"{API_PREFIX}/auth", tags=["auth"], responses=PROBLEMS)
    app.include_router(devices.router, prefix=f"{API_PREFIX}/devices", tags=["devices"], responses=PROBLEMS)
    app.include_router(sync.router, prefix=f"{API_PREFIX}/sync", tags=["sync"], responses=PROBLEMS)
    app.include_router(audit_upload.router, prefix=f"{API_PREFIX}/audit", tags=["audit"], responses=PROBLEMS)
    app.include_router(
        signing.router, prefix=f"{API_PREFIX}/signing-codes", tags=["signing"], responses=PROBLEMS
    )

    @app.get("/health", response_model=HealthReply)
    def health(request: Request) -> HealthReply:
        """The database, and how old the last Priority refresh is."""
        return _health(request.app.state.engine)

    @app.get(f"{API_PREFIX}/time", response_model=TimeReply)
    def server_time() -> TimeReply:
        """The server's clock, in UTC."""
        return TimeReply(server_time=datetime.now(UTC))

    return app


def _health(engine: Engine) -> HealthReply:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            refresh = conn.execute(select(priority_refresh)).first()
    except Exception as exc:
        return HealthReply(
            status="degraded",
            database=f"unreachable: {type(exc).__name__}",
            priority_last_refresh=None,
            priority_age_s=None,
            priority_last_error=None,
        )
    last = refresh.last_success_at if refresh else None
    return HealthReply(
        status="ok",
        database="ok",
        priority_last_refresh=last,
        priority_age_s=(datetime.now(UTC) - last).total_seconds() if last else None,
        priority_last_error=refresh.last_error if refresh else None,
    )


async def _invalid_input(_request: Request, exc: Exception) -> JSONResponse:
    # One readable line per problem, with where it is, instead of pydantic's raw structure alone.
    assert isinstance(exc, RequestValidationError)
    problems = [
        f"{'.'.join(str(p) for p in error.get('loc', ()) if p != 'body') or 'request'}: {error.get('msg')}"
        for error in exc.errors()
    ]
    return JSONResponse(
        status_code=422, content={"detail": "; ".join(problems), "errors": jsonable(exc.errors())}
    )


def jsonable(errors: object) -> object:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(errors, custom_encoder={Exception: str})
