"""Fake Priority: the slice of Priority's OData REST API that the adapter uses, over real HTTP.

It serves `PriorityData` under `/odata/Priority/tabula.ini/demo/` with HTTP Basic auth:

- `GET CUSTOMERS`, `GET PHONEBOOK`, `GET ORDERS`, `GET ORDERS('<ORDNAME>')`,
  `GET ORDERS('<ORDNAME>')/SIBD_APPUSELISTTEXT_SUBFORM`
- query options `$filter` (`eq ne gt ge lt le`, `and`, `or`, parentheses; strings in single quotes,
  numbers, `null`, dates such as `2026-11-23T00:00:00Z`), `$select`,
  `$expand=SIBD_APPUSELISTTEXT_SUBFORM` (optionally `(...($select=A,B))`), `$top`, `$skip`;
  answers are `{"value": [...]}` with `@odata.nextLink` when a page is cut at `page_size`
- `PATCH ORDERS('<ORDNAME>')` (ORDSTATUSDES) and
  `PATCH ORDERS('<ORDNAME>')/SIBD_APPUSELISTTEXT_SUBFORM(KLINE=<n>)` (the write-back fields),
  which change the data in memory
- errors as OData error bodies `{"error": {"code": ..., "message": ...}}`

Tests steer it through `app.state`: `down = True` answers 503 to everything, `fail_next = n` fails
the next n requests with 503, `delay_s` holds every answer back (a slow Priority), and `requests`
lists what was asked ("GET /odata/...?...").
"""

import asyncio
import base64
import binascii
import re
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from cloud.priority.adapter import DEPLOYED_FIELD, ORDER_STATUSES, SUBFORM, USAGES
from cloud.priority.fixtures import PriorityData

SERVICE_ROOT = "/odata/Priority/tabula.ini/demo"
DEFAULT_PASSWORD = "fake-priority-password"  # the demo's own fake, never a real credential
QUERY_OPTIONS = frozenset({"$filter", "$select", "$expand", "$top", "$skip"})

ORDER_PATCHABLE: dict[str, Callable[[Any], bool]] = {"ORDSTATUSDES": lambda v: v in ORDER_STATUSES}
APPLICATOR_PATCHABLE: dict[str, Callable[[Any], bool]] = {
    "USINGTYPE": lambda v: v is None or v in USAGES,
    DEPLOYED_FIELD: lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "INSERTIONCOMMENTS": lambda v: v is None or isinstance(v, str),
    "INSERTIONDATE": lambda v: v is None or _is_datetime(v),
}


class ODataProblem(Exception):
    """An error answer: Priority's status and message."""

    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or str(status)


def create_fake_priority(
    data: PriorityData,
    *,
    username: str = "priority",
    password: str = DEFAULT_PASSWORD,
    page_size: int = 100,
) -> FastAPI:
    """A fresh fake Priority over `data` (changed in place by PATCH requests)."""
    app = FastAPI(title="Fake Priority", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.data = data
    app.state.down = False
    app.state.fail_next = 0
    app.state.delay_s = 0.0
    app.state.requests = []
    app.state.page_size = page_size
    app.state.credentials = (username, password)
    app.middleware("http")(_gatekeeper)
    app.add_exception_handler(ODataProblem, _problem_response)  # type: ignore[arg-type]
    _add_routes(app)
    return app


async def _gatekeeper(request: Request, call_next: Callable[[Request], Any]) -> Response:
    """Outages first (a proxy answers 503 before Priority checks anyone), then Basic auth."""
    state = request.app.state
    state.requests.append(f"{request.method} {request.url.path}?{unquote_plus(request.url.query)}")
    if state.delay_s:
        await asyncio.sleep(state.delay_s)  # a slow Priority, for the client's timeout
    if state.down or state.fail_next > 0:
        state.fail_next = max(0, state.fail_next - 1)
        return _error(503, "Priority is not available.", "ServiceUnavailable")
    if not _authorised(request.headers.get("authorization"), state.credentials):
        response = _error(401, "The user name or password is incorrect.", "Unauthorized")
        response.headers["WWW-Authenticate"] = 'Basic realm="Priority"'
        return response
    return await call_next(request)


def _authorised(header: str | None, credentials: tuple[str, str]) -> bool:
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # Both compared, in constant time, so a wrong user name costs as long as a wrong password.
    user_ok = secrets.compare_digest(username.encode(), credentials[0].encode())
    password_ok = secrets.compare_digest(password.encode(), credentials[1].encode())
    return user_ok and password_ok


def _add_routes(app: FastAPI) -> None:
    root = SERVICE_ROOT

    @app.get(root + "/ORDERS('{name}')")
    async def one_order(name: str, request: Request) -> dict[str, Any]:
        """One order, with its applicators when asked to expand them."""
        order = _order(request.app.state.data, name)
        query = _Query.parse(request, "ORDERS", [order])
        return query.shape(order, request.app.state.data)

    @app.get(root + "/ORDERS('{name}')/" + SUBFORM)
    async def applicators(name: str, request: Request) -> dict[str, Any]:
        """The order's applicator list."""
        _order(request.app.state.data, name)
        return _answer(request, SUBFORM, request.app.state.data.applicators.get(name, []))

    # Last: the generic segment would otherwise swallow "ORDERS('...')".
    @app.get(root + "/{entity}")
    async def collection(entity: str, request: Request) -> dict[str, Any]:
        """CUSTOMERS, PHONEBOOK or ORDERS."""
        return _answer(request, entity, _entity_rows(request.app.state.data, entity))

    @app.patch(root + "/ORDERS('{name}')")
    async def patch_order(name: str, request: Request) -> dict[str, Any]:
        """Write back the order status."""
        order = _order(request.app.state.data, name)
        _apply_patch(order, await _json_body(request), ORDER_PATCHABLE, "ORDERS")
        return dict(order)

    @app.patch(root + "/ORDERS('{name}')/" + SUBFORM + "(KLINE={kline})")
    async def patch_applicator(name: str, kline: int, request: Request) -> dict[str, Any]:
        """Write back one applicator's use."""
        _order(request.app.state.data, name)
        row = next((r for r in request.app.state.data.applicators.get(name, []) if r["KLINE"] == kline), None)
        if row is None:
            raise ODataProblem(404, f"Order {name} has no applicator line KLINE={kline}.", "NotFound")
        _apply_patch(row, await _json_body(request), APPLICATOR_PATCHABLE, SUBFORM)
        return dict(row)


def _entity_rows(data: PriorityData, entity: str) -> list[dict[str, Any]]:
    rows = {"CUSTOMERS": data.customers, "PHONEBOOK": data.phonebook, "ORDERS": data.orders}.get(entity)
    if rows is None:
        raise ODataProblem(404, f"Resource not found for the segment '{entity}'.", "NotFound")
    return rows


def _order(data: PriorityData, name: str) -> dict[str, Any]:
    order = next((o for o in data.orders if o["ORDNAME"] == name), None)
    if order is None:
        raise ODataProblem(404, f"There is no order {name}.", "NotFound")
    return order


def _answer(request: Request, entity: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    query = _Query.parse(request, entity, rows)
    matching = [row for row in rows if query.matches(row)]
    page, next_skip = query.page(matching, request.app.state.page_size)
    body: dict[str, Any] = {"value": [query.shape(row, request.app.state.data) for row in page]}
    if next_skip is not None:
        body["@odata.nextLink"] = str(request.url.include_query_params(**query.next_params(next_skip)))
    return body


def _apply_patch(
    row: dict[str, Any], body: dict[str, Any], allowed: dict[str, Callable[[Any], bool]], entity: str
) -> None:
    """All fields checked before any is written: a refused PATCH changes nothing."""
    for key, value in body.items():
        if key not in allowed:
            raise ODataProblem(400, f"The field {key} of {entity} cannot be changed.", "BadRequest")
        if not allowed[key](value):
            raise ODataProblem(400, f"The value {value!r} is not valid for {entity}.{key}.", "BadRequest")
    row.update(body)


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise ODataProblem(400, "The request body is not valid JSON.", "BadRequest") from exc
    if not isinstance(body, dict):
        raise ODataProblem(400, "The request body must be a JSON object.", "BadRequest")
    return body


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _problem_response(_request: Request, problem: ODataProblem) -> JSONResponse:
    return _error(problem.status, problem.message, problem.code)


def _is_datetime(value: Any) -> bool:
    try:
        return isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


# --- query options -------------------------------------------------------------------------------


class _Query:
    """The query options of one request, checked against the entity's fields."""

    def __init__(self, entity: str, fields: set[str]) -> None:
        self.entity = entity
        self.fields = fields
        self.predicate: Callable[[dict[str, Any]], bool] = lambda _row: True
        self.select: list[str] | None = None
        self.expand: list[str] | None = None  # None: not expanded; else the subform's $select (or [])
        self.top: int | None = None
        self.skip = 0

    @classmethod
    def parse(cls, request: Request, entity: str, rows: list[dict[str, Any]]) -> "_Query":
        params = request.query_params
        unknown = sorted(k for k in params if k.startswith("$") and k not in QUERY_OPTIONS)
        if unknown:
            raise ODataProblem(400, f"The fake Priority does not support {', '.join(unknown)}.", "BadRequest")
        query = cls(entity, set(rows[0]) if rows else set())
        if "$filter" in params:
            query.predicate = _FilterParser(params["$filter"], query.check_field).parse()
        if "$select" in params:
            query.select = [query.check_field(f) for f in _names(params["$select"])]
        if "$expand" in params:
            query.expand = _parse_expand(params["$expand"], entity)
        query.top = _count(params, "$top")
        query.skip = _count(params, "$skip") or 0
        return query

    def check_field(self, name: str) -> str:
        if self.fields and name not in self.fields:
            raise ODataProblem(400, f"{name} is not a field of {self.entity}.", "BadRequest")
        return name

    def matches(self, row: dict[str, Any]) -> bool:
        return self.predicate(row)

    def page(self, rows: list[dict[str, Any]], page_size: int) -> tuple[list[dict[str, Any]], int | None]:
        """The rows of this answer and, when the server cut the page, where the next one starts."""
        wanted = rows[self.skip :]
        if self.top is not None:
            wanted = wanted[: self.top]
        if len(wanted) <= page_size:
            return wanted, None
        return wanted[:page_size], self.skip + page_size

    def next_params(self, next_skip: int) -> dict[str, str]:
        params = {"$skip": str(next_skip)}
        if self.top is not None:
            params["$top"] = str(self.top - (next_skip - self.skip))
        return params

    def shape(self, row: dict[str, Any], data: PriorityData) -> dict[str, Any]:
        shaped = {k: row[k] for k in self.select} if self.select is not None else dict(row)
        if self.expand is not None:
            sub = data.applicators.get(row["ORDNAME"], [])
            fields = self.expand
            shaped[SUBFORM] = [{k: r[k] for k in fields} if fields else dict(r) for r in sub]
        return shaped


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _count(params: Any, option: str) -> int | None:
    if option not in params:
        return None
    value = params[option]
    if not value.isdigit():
        raise ODataProblem(400, f"{option} must be a non-negative whole number, not {value!r}.", "BadRequest")
    return int(value)


_EXPAND = re.compile(rf"^{SUBFORM}(?:\(\$select=(?P<select>[A-Za-z0-9_,\s]+)\))?$")


def _parse_expand(text: str, entity: str) -> list[str]:
    match = _EXPAND.match(text.strip())
    if entity != "ORDERS" or match is None:
        raise ODataProblem(400, f"{entity} cannot expand {text!r}.", "BadRequest")
    return _names(match["select"] or "")


# --- $filter -------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}))
      | (?P<number>-?\d+(?:\.\d+)?(?![\w-]))
      | (?P<paren>[()])
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and b is not None and a > b,
    "ge": lambda a, b: a is not None and b is not None and a >= b,
    "lt": lambda a, b: a is not None and b is not None and a < b,
    "le": lambda a, b: a is not None and b is not None and a <= b,
}
_Row = dict[str, Any]


class _FilterParser:
    """Recursive descent over `or` (loosest), `and`, parentheses and `field op literal`."""

    def __init__(self, text: str, check_field: Callable[[str], str]) -> None:
        self.tokens = _tokens(text)
        self.position = 0
        self.check_field = check_field

    def parse(self) -> Callable[[_Row], bool]:
        predicate = self._or()
        if self.position != len(self.tokens):
            raise self._problem("unexpected text")
        return predicate

    def _or(self) -> Callable[[_Row], bool]:
        parts = [self._and()]
        while self._take_word("or"):
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else lambda row: any(p(row) for p in parts)

    def _and(self) -> Callable[[_Row], bool]:
        parts = [self._atom()]
        while self._take_word("and"):
            parts.append(self._atom())
        return parts[0] if len(parts) == 1 else lambda row: all(p(row) for p in parts)

    def _atom(self) -> Callable[[_Row], bool]:
        if self._peek() == ("paren", "("):
            self.position += 1
            inner = self._or()
            if self._next() != ("paren", ")"):
                raise self._problem("a closing parenthesis is missing")
            return inner
        kind, name = self._next()
        if kind != "word":
            raise self._problem("a field name is expected")
        field = self.check_field(name)
        kind, operator = self._next()
        if kind != "word" or operator.lower() not in _COMPARE:
            raise self._problem(f"an operator (eq, ne, gt, ge, lt, le) is expected after {name}")
        compare = _COMPARE[operator.lower()]
        literal = self._literal()
        return lambda row: compare(_comparable(row.get(field), literal, field), literal)

    def _literal(self) -> Any:
        kind, text = self._next()
        if kind == "string":
            return text[1:-1].replace("''", "'")
        if kind == "datetime":
            return datetime.fromisoformat(text)
        if kind == "number":
            return float(text) if "." in text else int(text)
        if kind == "word" and text in ("null", "true", "false"):
            return {"null": None, "true": True, "false": False}[text]
        raise self._problem(f"a value is expected, not {text!r}")

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _next(self) -> tuple[str, str]:
        token = self._peek()
        if token is None:
            raise self._problem("the filter ends too early")
        self.position += 1
        return token

    def _take_word(self, word: str) -> bool:
        token = self._peek()
        if token is not None and token[0] == "word" and token[1].lower() == word:
            self.position += 1
            return True
        return False

    def _problem(self, what: str) -> ODataProblem:
        return ODataProblem(400, f"Bad $filter: {what} (at token {self.position + 1}).", "BadRequest")


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ODataProblem(400, f"Bad $filter: cannot read {text[position:]!r}.", "BadRequest")
        kind = match.lastgroup or ""
        tokens.append((kind, match[kind]))
        position = match.end()
    return tokens


def _comparable(value: Any, literal: Any, field: str) -> Any:
    """The row's value in the literal's type; a type mismatch is the client's error, as in Priority."""
    if value is None or literal is None:
        return value
    row_is_date = isinstance(value, str) and _is_datetime(value)
    if isinstance(literal, datetime) != row_is_date or isinstance(literal, str) != (
        isinstance(value, str) and not row_is_date
    ):
        raise ODataProblem(400, f"{field} cannot be compared with {literal!r}.", "BadRequest")
    return datetime.fromisoformat(value) if row_is_date else value
