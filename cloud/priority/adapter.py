"""The cloud's client of Priority's OData REST API: typed reads and the write-back after sync.

Reads are idempotent, so a failed one is retried a few times with backoff before
`PriorityUnavailable` is raised. Write-backs are tried once: the caller (the write-back queue)
owns retrying, so a PATCH is never repeated behind its back, and clinical work never waits on it.

`PriorityUnavailable` means "try again later" (no connection, a timeout, 5xx, 429);
`PriorityError` means Priority refused the request (4xx) and carries Priority's own message.
"""

import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx

SUBFORM = "SIBD_APPUSELISTTEXT_SUBFORM"  # an order's applicator list
# Priority has no standard fields for these on the subform; the names are ours (a deployment maps them).
EXPIRY_FIELD = "SIBD_EXPIRYDATE"
LOT_FIELD = "SIBD_LOTNUMBER"
# Deployed seeds get their own field: INTDATA2 is the applicator's capacity, which a later bundle
# must still know (an applicator written back as "No Use" may be scanned into another treatment).
DEPLOYED_FIELD = "INSERTEDSEEDSQTY"
ORDER_STATUSES = ("Open", "Performed", "Waiting for removal", "Removed")
USAGES = ("Full use", "Faulty", "No Use")
ALPHA_TAU_POSITION = 99  # POSITIONCODE of Alpha Tau staff: every site

INDICATIONS = frozenset({"pancreas", "prostate", "skin", "unknown"})
ORDER_FIELDS = (
    "ORDNAME", "CUSTNAME", "REFERENCE", "SIBD_TREATDAY", "ORDSTATUSDES", "SBD_SEEDQTY",
    "SBD_PREFACTIV", "DETAILS", "SIBD_INDICATION", "SIBD_SEEDLEN",
)  # fmt: skip
STAFF_FIELDS = ("EMAIL", "PHONE", "NAME", "POSITIONCODE", "POSITIONDES", "CUSTNAME")
NAMES_PER_QUERY = 20  # keeps a look-up by name well inside URL length limits

T = TypeVar("T")


class PriorityFailure(Exception):
    """Anything that kept a Priority request from succeeding."""


class PriorityUnavailable(PriorityFailure):
    """Priority could not be reached or did not answer in time: try again later."""


class PriorityError(PriorityFailure):
    """Priority refused the request; `message` is Priority's own words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Priority refused the request ({status}): {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Site:
    code: str  # CUSTNAME
    name: str  # CUSTDES


@dataclass(frozen=True)
class StaffRow:
    """One PHONEBOOK row: a person at one site."""

    email: str | None
    phone: str | None
    name: str
    position_code: int | None
    position: str | None
    site: str | None


@dataclass(frozen=True)
class Applicator:
    """One row of an order's applicator list (SIBD_APPUSELISTTEXT_SUBFORM)."""

    kline: int
    serial: str
    catalogue_number: str | None
    applicator_type: str | None
    seeds: int | None  # None: Priority does not know the count (never guessed)
    usage: str | None
    insertion_date: datetime | None
    comments: str | None
    expiry: date | None
    lot: str | None
    deployed_seeds: int | None


@dataclass(frozen=True)
class Order:
    """One ORDERS row; patient-reference rows too (cloud/priority/orders.py tells them apart)."""

    name: str
    site: str
    reference: str | None
    day: date | None
    status: str | None
    seeds: int | None
    activity_per_seed: float | None
    patient_label: str | None
    indication: str
    seed_length: float | None
    applicators: tuple[Applicator, ...] = ()


class PriorityClient:
    """Priority's REST API at `base_url` (the service root, e.g. `.../odata/Priority/tabula.ini/demo`)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
        retries: int = 2,
        backoff_s: float = 0.5,
    ) -> None:
        if client is None:
            if base_url is None:
                raise ValueError("PriorityClient needs a base_url or an httpx.Client.")
            auth = (username, password) if username is not None and password is not None else None
            client = httpx.Client(base_url=base_url.rstrip("/") + "/", auth=auth, timeout=timeout)
        self._http = client
        self._retries = retries
        self._backoff_s = backoff_s

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- reads -----------------------------------------------------------------------------------

    def sites(self) -> list[Site]:
        return self._read("CUSTOMERS", {"$select": "CUSTNAME,CUSTDES"}, site_from_row)

    def staff(self) -> list[StaffRow]:
        return self._read("PHONEBOOK", {"$select": ",".join(STAFF_FIELDS)}, staff_from_row)

    def orders(self, from_day: date, to_day: date, *, sites: Iterable[str] | None = None) -> list[Order]:
        """Orders whose treatment day is from `from_day` to `to_day` (inclusive), with their applicators."""
        # Priority writes a date as midnight with the server's UTC offset, so an exact bound in UTC
        # can miss the first or last day: ask one day wider and keep the days wanted here.
        clauses = [
            f"SIBD_TREATDAY ge {_odata_day(from_day - timedelta(days=1))}",
            f"SIBD_TREATDAY le {_odata_day(to_day + timedelta(days=1))}",
        ]
        site_list = sorted(set(sites)) if sites is not None else None
        if site_list is not None:
            if not site_list:
                return []
            clauses.append(_any_of("CUSTNAME", site_list))
        orders = self._orders(" and ".join(clauses))
        return [o for o in orders if o.day is not None and from_day <= o.day <= to_day]

    def orders_named(self, names: Iterable[str]) -> list[Order]:
        """The orders (or patient-reference rows) with these ORDNAMEs, whatever their day."""
        wanted = sorted(set(names))
        found: list[Order] = []
        for start in range(0, len(wanted), NAMES_PER_QUERY):
            found += self._orders(_any_of("ORDNAME", wanted[start : start + NAMES_PER_QUERY]))
        return found

    def _orders(self, filter_text: str) -> list[Order]:
        params = {"$filter": filter_text, "$select": ",".join(ORDER_FIELDS), "$expand": SUBFORM}
        return self._read("ORDERS", params, order_from_row)

    def _read(self, path: str, params: dict[str, str], parse: Callable[[dict[str, Any]], T]) -> list[T]:
        rows = self._collection(path, params)
        try:
            return [parse(row) for row in rows]
        except (KeyError, TypeError, ValueError) as exc:
            raise PriorityError(200, f"Priority sent a {path} row that cannot be read: {exc!r}") from exc

    # --- write-back ------------------------------------------------------------------------------

    def write_back_applicator(
        self,
        order: str,
        kline: int,
        *,
        usage: str,
        deployed_seeds: int,
        comments: str | None,
        insertion_date: date | datetime | None,
    ) -> None:
        """Record one terminal applicator's use on its order line. Tried once; raises on failure.

        Sending the same values again changes nothing, so the queue may retry after a lost answer."""
        if usage not in USAGES:
            raise ValueError(f"Usage must be one of {', '.join(USAGES)}, not {usage!r}.")
        if deployed_seeds < 0:
            raise ValueError("Deployed seeds cannot be negative.")
        body = {
            "USINGTYPE": usage,
            DEPLOYED_FIELD: deployed_seeds,
            "INSERTIONCOMMENTS": comments,
            "INSERTIONDATE": _odata_moment(insertion_date),
        }
        # What we do not know is left as Priority has it, rather than cleared.
        body = {key: value for key, value in body.items() if value is not None}
        self._send("PATCH", f"ORDERS({_key(order)})/{SUBFORM}(KLINE={int(kline)})", json=body)

    def write_back_order_status(self, order: str, status: str) -> None:
        """Set the order's status (Performed, Removed) on completion. Tried once; raises on failure."""
        if status not in ORDER_STATUSES:
            raise ValueError(f"Order status must be one of {', '.join(ORDER_STATUSES)}, not {status!r}.")
        self._send("PATCH", f"ORDERS({_key(order)})", json={"ORDSTATUSDES": status})

    # --- transport -------------------------------------------------------------------------------

    def _collection(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """Every row of a collection, following `@odata.nextLink` from page to page."""
        return [row for page in self._pages(path, params) for row in page]

    def _pages(self, path: str, params: dict[str, str]) -> Iterator[list[dict[str, Any]]]:
        seen: set[str] = set()
        body = self._get(path, params)
        while True:
            rows = body.get("value")
            if not isinstance(rows, list):
                raise PriorityError(200, f"The answer to {path} has no list of values.")
            yield rows
            link = body.get("@odata.nextLink")
            if not link:
                return
            if link in seen:  # a server that sends the same page forever must not hang the cloud
                raise PriorityError(200, f"Priority repeated the next page link {link}.")
            seen.add(link)
            body = self._get(self._same_origin(link), None)

    def _same_origin(self, link: str) -> str:
        """The credentials go with every request, so a next link may not lead to another server."""
        url = httpx.URL(link)
        base = self._http.base_url
        if url.is_absolute_url and (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise PriorityError(200, f"Priority's next page link leads to another server: {link}")
        return link

    def _get(self, path: str, params: dict[str, str] | None) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                return self._send("GET", path, params=params)
            except PriorityUnavailable:
                if attempt >= self._retries:
                    raise
                time.sleep(self._pause(attempt))
                attempt += 1

    def _pause(self, attempt: int) -> float:
        # Exponential with jitter, so that many cloud workers do not retry in step.
        return self._backoff_s * 2**attempt * random.uniform(0.5, 1.0)

    def _send(
        self, method: str, path: str, *, params: dict[str, str] | None = None, json: Any = None
    ) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, params=params, json=json)
        except httpx.TransportError as exc:  # refused, reset, DNS, and every timeout
            raise PriorityUnavailable(f"Priority could not be reached: {exc!r}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise PriorityUnavailable(f"Priority answered {response.status_code}: {_message(response)}")
        if response.status_code >= 400:
            raise PriorityError(response.status_code, _message(response))
        if not response.content:
            return {}
        try:
            body = response.json()
        except ValueError as exc:
            raise PriorityError(response.status_code, "Priority's answer is not JSON.") from exc
        return body if isinstance(body, dict) else {"value": body}


# --- parsing Priority's rows ---------------------------------------------------------------------


def order_from_row(row: dict[str, Any]) -> Order:
    indication = str(row.get("SIBD_INDICATION") or "unknown").strip().lower()
    return Order(
        name=str(row["ORDNAME"]),
        site=str(row.get("CUSTNAME") or ""),
        reference=_text(row.get("REFERENCE")),
        day=_day(row.get("SIBD_TREATDAY")),
        status=_text(row.get("ORDSTATUSDES")),
        seeds=_int(row.get("SBD_SEEDQTY")),
        activity_per_seed=_float(row.get("SBD_PREFACTIV")),
        patient_label=_text(row.get("DETAILS")),
        indication=indication if indication in INDICATIONS else "unknown",
        seed_length=_float(row.get("SIBD_SEEDLEN")),
        applicators=tuple(applicator_from_row(a) for a in row.get(SUBFORM) or ()),
    )


def site_from_row(row: dict[str, Any]) -> Site:
    return Site(code=str(row["CUSTNAME"]), name=str(row.get("CUSTDES") or row["CUSTNAME"]))


def applicator_from_row(row: dict[str, Any]) -> Applicator:
    seeds = _int(row.get("INTDATA2"))
    return Applicator(
        kline=int(row["KLINE"]),
        serial=str(row.get("SERNUMTEXT") or "").strip(),
        catalogue_number=_text(row.get("PARTNAMETEXT")),
        applicator_type=_text(row.get("PARTDESTEXT")),
        # Priority shows an empty number as 0; an applicator holds at least one seed, so 0 means
        # "unknown", and the station must stop the scan rather than record an empty applicator.
        seeds=seeds if seeds is not None and seeds > 0 else None,
        usage=_text(row.get("USINGTYPE")),
        insertion_date=_moment(row.get("INSERTIONDATE")),
        comments=_text(row.get("INSERTIONCOMMENTS")),
        expiry=_day(row.get(EXPIRY_FIELD)),
        lot=_text(row.get(LOT_FIELD)),
        deployed_seeds=_int(row.get(DEPLOYED_FIELD)),
    )


def staff_from_row(row: dict[str, Any]) -> StaffRow:
    return StaffRow(
        email=_text(row.get("EMAIL")),
        phone=_text(row.get("PHONE")),
        name=str(row.get("NAME") or "").strip(),
        position_code=_int(row.get("POSITIONCODE")),
        position=_text(row.get("POSITIONDES")),
        site=_text(row.get("CUSTNAME")),
    )


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _int(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def _float(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def _moment(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value)) if value else None


def _day(value: Any) -> date | None:
    # The calendar date as Priority wrote it, not converted to UTC: midnight at +02:00 is that day.
    moment = _moment(value)
    return moment.date() if moment else None


def _odata_day(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def _odata_moment(value: date | datetime | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        return _odata_day(value)
    if value.tzinfo is None:
        raise ValueError("The insertion time needs a time zone.")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(name: str) -> str:
    """An OData string key: quotes doubled, and nothing that could end the path segment."""
    return "'" + quote(name.replace("'", "''"), safe="'") + "'"


def _any_of(field: str, values: list[str]) -> str:
    quoted = " or ".join(f"{field} eq '{v.replace(chr(39), chr(39) * 2)}'" for v in values)
    return f"({quoted})"


def _message(response: httpx.Response) -> str:
    """Priority's own error message when the body carries one, else the start of the body."""
    try:
        error = response.json().get("error", {})
        message = error.get("message") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        message = None
    return str(message or response.text[:200] or response.reason_phrase)
