"""Statements on the scan path, run on the driver connection with SQLAlchemy's own type codecs.

Measured (docs/performance.md): with SQLAlchemy Core executing each statement, about nine tenths of
a scan's time went to statement execution overhead rather than to SQLite. The journal and the scan
checks therefore run their few fixed statements through the open transaction's sqlite3 connection,
with SQL text generated from the table definitions and values converted by the very bind and result
processors SQLAlchemy would have used, so a row written here reads back identically through Core.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import sqlite

_DIALECT = sqlite.dialect()

Processor = Callable[[Any], Any] | None


class TableCodec:
    """Insert and decode rows of one table the way SQLAlchemy's SQLite dialect does."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.columns = tuple(c.name for c in table.columns)
        self._bind: dict[str, Processor] = {}
        self._result: dict[str, Processor] = {}
        self._by_names: dict[tuple[tuple[str, ...], int], list[Processor]] = {}
        for column in table.columns:
            impl = column.type.dialect_impl(_DIALECT)
            self._bind[column.name] = impl.bind_processor(_DIALECT)
            self._result[column.name] = impl.result_processor(_DIALECT, None)

    def bind(self, name: str, value: Any) -> Any:
        processor = self._bind[name]
        return value if processor is None or value is None else processor(value)

    def decode(self, names: tuple[str, ...], row: Sequence[Any]) -> dict[str, Any]:
        processors = self._processors(names, self._result)
        return {
            name: value if processor is None or value is None else processor(value)
            for name, processor, value in zip(names, processors, row, strict=True)
        }

    def insert(self, conn: Connection, values: Mapping[str, Any]) -> None:
        names = tuple(values)
        processors = self._processors(names, self._bind)
        params = [
            value if processor is None or value is None else processor(value)
            for processor, value in zip(processors, values.values(), strict=True)
        ]
        _driver(conn).execute(_insert_sql(self.table.name, names), params)

    def _processors(self, names: tuple[str, ...], table: dict[str, Processor]) -> list[Processor]:
        key = (names, id(table))
        found = self._by_names.get(key)
        if found is None:
            found = self._by_names[key] = [table[name] for name in names]
        return found

    def update(self, conn: Connection, record_id: Any, values: Mapping[str, Any]) -> None:
        names = tuple(values)
        sql = _update_sql(self.table.name, names)
        _driver(conn).execute(sql, [*(self.bind(n, values[n]) for n in names), record_id])

    def select(
        self, conn: Connection, where: str, params: Sequence[Any], columns: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Rows matching a WHERE clause written with `?` placeholders (parameters already plain)."""
        names = self.columns if columns is None else tuple(columns)
        sql = _select_sql(self.table.name, names, where)
        return [self.decode(names, row) for row in _driver(conn).execute(sql, params)]


@cache
def codec(table: Table) -> TableCodec:
    return TableCodec(table)


@cache
def _insert_sql(table: str, names: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"


@cache
def _select_sql(table: str, names: tuple[str, ...], where: str) -> str:
    return f"SELECT {', '.join(names)} FROM {table} WHERE {where}"


@cache
def _update_sql(table: str, names: tuple[str, ...]) -> str:
    return f"UPDATE {table} SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?"


def execute(conn: Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Plain SQL with plain parameters inside the open transaction."""
    return _driver(conn).execute(sql, params).fetchall()


def _driver(conn: Connection) -> Any:
    # The same sqlite3 connection, inside the transaction SQLAlchemy began on it.
    return conn.connection.driver_connection
