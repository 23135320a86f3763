"""Connections of the cloud service: the service role, and the site context of each transaction."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, create_engine, text


@dataclass(frozen=True)
class SiteScope:
    """Which sites a transaction may see: the caller's, or all of them (alphatau, admin)."""

    sites: frozenset[str] = frozenset()
    all_sites: bool = False

    @classmethod
    def everything(cls) -> "SiteScope":
        return cls(all_sites=True)

    def __post_init__(self) -> None:
        # The site list travels as one comma-separated setting: a comma inside a code would grant
        # a second site.
        bad = [site for site in self.sites if "," in site or not site.strip()]
        if bad:
            raise ValueError(f"invalid site code(s) {bad!r}: site codes cannot contain commas or be empty")

    def allows(self, site: str) -> bool:
        return self.all_sites or site in self.sites


NO_SITES = SiteScope()

_SET_SCOPE = text(
    "SELECT set_config('dart.sites', :sites, true), set_config('dart.all_sites', :all_sites, true)"
)


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    return create_engine(url, pool_size=pool_size, max_overflow=10, pool_pre_ping=True)


@contextmanager
def scoped_transaction(engine: Engine, scope: SiteScope) -> Iterator[Connection]:
    """One transaction that sees only `scope`'s sites; the setting ends with the transaction."""
    with engine.begin() as conn:
        set_scope(conn, scope)
        yield conn


def set_scope(conn: Connection, scope: SiteScope) -> None:
    # `true` = local to the transaction: a pooled connection never carries it into another request.
    conn.execute(
        _SET_SCOPE, {"sites": ",".join(sorted(scope.sites)), "all_sites": "on" if scope.all_sites else "off"}
    )
