"""PostgreSQL source: a table or query read in keyset pages over asyncpg (see :mod:`syncengine.readers.sql`).

The DSN (``postgresql://user:password@host:5432/db``) comes from the environment variable named by
``dsn_env``, looked up on first use in the mapping the caller passes. It is never stored on the reader,
and never appears in an error: a message names the variable, and whatever a driver error says is
scrubbed of the DSN and its password.

Every page runs as its own statement in autocommit, so no transaction is held open between pages.
The page's bounds are sent as text and cast to the cursor and key columns' own types
(``CAST($1::text AS pg_catalog.timestamptz)``), so a position stored as JSON (an ISO string, a decimal
string, a UUID string, a number) compares exactly as the column does. JSON and JSONB columns are
decoded to their JSON values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import asyncpg  # type: ignore[import-untyped]
import orjson

from syncengine.errors import SourceError
from syncengine.model import JSON
from syncengine.readers.sql import KeysetReader, Position, SqlSpec, quote_name, rows_as_dicts

__all__ = [
    "CONNECT_TIMEOUT",
    "PostgresReader",
]

CONNECT_TIMEOUT = 30.0  # seconds

# What a failing connection or statement can raise: asyncpg's three roots (the server's errors, misuse or a
# closed connection, a protocol out of step, e.g. after the server ended the session), and socket errors.
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


class PostgresReader(KeysetReader):
    """Reads ``spec`` from the PostgreSQL database whose DSN is in ``environ[dsn_env]``, after ``since``."""

    def __init__(
        self,
        dsn_env: str,
        spec: SqlSpec,
        *,
        environ: Mapping[str, str],
        since: Position | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        super().__init__(spec, since=since, source=f"postgres ${dsn_env}")
        self.dsn_env = dsn_env
        self.connect_timeout = connect_timeout
        self._environ = environ
        self._connection: Any = None  # asyncpg.Connection (asyncpg ships no type hints)
        self._types: dict[str, str] = {}  # column -> its type, schema-qualified and quoted, for casts

    async def _open(self) -> Sequence[str]:
        dsn = self._environ.get(self.dsn_env, "").strip()
        if not dsn:
            raise SourceError(
                self.source, f"environment variable {self.dsn_env} is not set: it must hold the PostgreSQL DSN"
            )
        try:
            self._connection = await asyncpg.connect(dsn, timeout=self.connect_timeout)
            for name in ("json", "jsonb"):
                await self._connection.set_type_codec(
                    name, schema="pg_catalog", encoder=_dumps, decoder=orjson.loads, format="text"
                )
        except (*_DRIVER_ERRORS, ValueError) as exc:
            # from None: the driver's own message, in a chained traceback, might quote the DSN.
            reason = _scrub(f"{type(exc).__name__}: {exc}", dsn)
            raise SourceError(self.source, f"cannot connect: {reason}") from None
        try:
            statement = await self._connection.prepare(f"SELECT * FROM ({self.spec.relation}) AS q LIMIT 0")
        except asyncpg.UndefinedTableError as exc:
            if self.spec.table is not None:
                raise SourceError(self.source, f"table {self.spec.table!r} does not exist") from exc
            raise SourceError(self.source, f"the query cannot run: {exc}") from exc
        except _DRIVER_ERRORS as exc:
            raise self._error(exc) from exc
        columns: list[str] = []
        for attribute in statement.get_attributes():
            kind = attribute.type
            self._types[attribute.name] = (
                f"{quote_name(kind.schema)}.{quote_name(kind.name)}" if kind.schema else quote_name(kind.name)
            )
            columns.append(attribute.name)
        return columns

    async def _fetch(self, sql: str, params: list[JSON]) -> list[dict[str, JSON]]:
        try:
            records = await self._connection.fetch(sql, *[_as_text(value) for value in params])
        except _DRIVER_ERRORS as exc:
            raise self._error(exc) from exc
        if not records:
            return []
        return rows_as_dicts(list(records[0].keys()), records)

    def _placeholder(self, index: int, column: str) -> str:
        return f"CAST(${index}::text AS {self._types[column]})"

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            await connection.close(timeout=5)
        except _DRIVER_ERRORS:
            connection.terminate()  # the connection is broken already: drop the socket, nothing to report
        except BaseException:
            connection.terminate()  # cancelled: drop the socket, then let the cancellation through
            raise

    def _error(self, exc: BaseException) -> SourceError:
        if self.spec.query is not None and isinstance(exc, asyncpg.PostgresError):
            return SourceError(self.source, f"the query cannot run: {exc}")
        return SourceError(self.source, f"cannot read {self.spec.subject}: {type(exc).__name__}: {exc}")


def _as_text(value: JSON) -> str:
    """A position's JSON value as text, for ``CAST($n::text AS <column type>)``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # the shortest text that reads back as the same float
    return orjson.dumps(value).decode()


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def _scrub(text: str, dsn: str) -> str:
    """``text`` without the DSN or its password, in any spelling a driver might echo."""
    secrets = {dsn}
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    if password:
        secrets |= {password, unquote(password), quote(password, safe="")}
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text
