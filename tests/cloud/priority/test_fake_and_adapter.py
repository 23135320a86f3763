"""The adapter against fake Priority over real HTTP on loopback: reads, paging, auth, write-back, outages."""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI

from cloud.priority.adapter import Order, PriorityClient, PriorityError, PriorityUnavailable
from cloud.priority.fake import DEFAULT_PASSWORD, SERVICE_ROOT, create_fake_priority
from cloud.priority.fixtures import DAYS, PriorityData, build_fixtures
from cloud.priority.orders import is_patient_reference
from tests.utils.data import TODAY
from tests.utils.servers import free_port, serve

FIRST_DAY = TODAY - timedelta(days=3)
LAST_DAY = FIRST_DAY + timedelta(days=DAYS - 1)
CREDENTIALS = ("priority", DEFAULT_PASSWORD)
PAGE_SIZE = 40  # small, so that reading the orders takes several pages


@dataclass(frozen=True)
class Served:
    data: PriorityData
    root: str  # the service root URL


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """One fake for the tests that only read (and count nothing): starting one per test costs time."""
    data = build_fixtures(TODAY)
    with serve(create_fake_priority(data, page_size=PAGE_SIZE)) as url:
        yield Served(data, url + SERVICE_ROOT)


@pytest.fixture
def reader(served: Served) -> Iterator[PriorityClient]:
    with _client(served.root) as client:
        yield client


@pytest.fixture
def raw(served: Served) -> Iterator[httpx.Client]:
    """Plain HTTP, for what the adapter never sends."""
    with httpx.Client(base_url=served.root + "/", auth=CREDENTIALS, timeout=5) as client:
        yield client


@pytest.fixture
def data() -> PriorityData:
    return build_fixtures(TODAY)


@pytest.fixture
def fake(data: PriorityData) -> FastAPI:
    """A fake of the test's own, for tests that change it or count its requests."""
    return create_fake_priority(data, page_size=PAGE_SIZE)


@pytest.fixture
def service_root(fake: FastAPI) -> Iterator[str]:
    with serve(fake) as url:
        yield url + SERVICE_ROOT


@pytest.fixture
def priority(service_root: str) -> Iterator[PriorityClient]:
    with _client(service_root) as client:
        yield client


def _client(root: str) -> PriorityClient:
    return PriorityClient(root, username=CREDENTIALS[0], password=CREDENTIALS[1], timeout=5, backoff_s=0.01)


def _day(value: str) -> date:
    return date.fromisoformat(value[:10])


# --- reading ---------------------------------------------------------------------------------------


def test_three_hospitals_six_sites_fourteen_days_and_2000_applicators(reader: PriorityClient) -> None:
    sites = reader.sites()
    assert len(sites) == 6
    assert len({site.code.split("-")[0] for site in sites}) == 3
    orders = reader.orders(FIRST_DAY, LAST_DAY)
    treatment_orders = [o for o in orders if not is_patient_reference(o)]
    assert {o.day for o in treatment_orders} == {FIRST_DAY + timedelta(days=n) for n in range(DAYS)}
    serials = [a.serial for o in orders for a in o.applicators]
    assert len(serials) == 2000
    assert len(set(serials)) == 2000
    assert all(not o.applicators for o in orders if is_patient_reference(o))


def test_staff_has_one_row_per_site_and_alpha_tau_staff(reader: PriorityClient) -> None:
    staff = reader.staff()
    alpha_tau = {row.email for row in staff if row.position_code == 99}
    assert len(alpha_tau) == 3
    hospital_sites = {row.site for row in staff if row.position_code != 99}
    assert hospital_sites == {site.code for site in reader.sites()}
    rows = [(row.email, row.site) for row in staff]
    assert len(rows) == len(set(rows))


def test_orders_are_filtered_by_day_range_and_site(reader: PriorityClient, served: Served) -> None:
    last = TODAY + timedelta(days=1)
    orders = reader.orders(TODAY, last, sites=["H1-TLV", "H2-HFA"])
    expected = {
        row["ORDNAME"]
        for row in served.data.orders
        if row["CUSTNAME"] in ("H1-TLV", "H2-HFA") and TODAY <= _day(row["SIBD_TREATDAY"]) <= last
    }
    assert orders
    assert {o.name for o in orders} == expected
    assert reader.orders(TODAY, last, sites=[]) == []


def test_fake_filters_dates_and_strings_and_selects_fields(raw: httpx.Client, served: Served) -> None:
    day = TODAY + timedelta(days=2)
    query = f"SIBD_TREATDAY ge {day}T00:00:00Z and SIBD_TREATDAY le {day}T00:00:00Z and CUSTNAME eq 'H3-ASH'"
    response = raw.get("ORDERS", params={"$filter": query, "$select": "ORDNAME,SIBD_TREATDAY"})
    assert response.status_code == 200
    rows = response.json()["value"]
    expected = [
        r["ORDNAME"]
        for r in served.data.orders
        if r["CUSTNAME"] == "H3-ASH" and _day(r["SIBD_TREATDAY"]) == day
    ]
    assert [r["ORDNAME"] for r in rows] == expected
    assert all(set(r) == {"ORDNAME", "SIBD_TREATDAY"} for r in rows)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"$filter": "NOPE eq 1"}, "NOPE is not a field of ORDERS"),
        ({"$filter": "SIBD_TREATDAY eq 'tomorrow'"}, "cannot be compared"),
        ({"$filter": "CUSTNAME eq"}, "Bad $filter"),
        ({"$select": "ORDNAME,NOPE"}, "NOPE is not a field"),
        ({"$orderby": "ORDNAME"}, "does not support $orderby"),
        ({"$top": "-1"}, "$top must be"),
    ],
)
def test_fake_refuses_what_it_cannot_answer(raw: httpx.Client, params: dict[str, str], words: str) -> None:
    response = raw.get("ORDERS", params=params)
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]


def test_pages_follow_next_links_until_every_row_is_read(
    service_root: str, fake: FastAPI, data: PriorityData
) -> None:
    # An injected httpx.Client (the cloud's own, with its TLS settings) is used as it is.
    http = httpx.Client(base_url=service_root + "/", auth=CREDENTIALS, timeout=5)
    with PriorityClient(client=http) as priority:
        orders = priority.orders(FIRST_DAY - timedelta(days=60), LAST_DAY)
    assert {o.name for o in orders} == {r["ORDNAME"] for r in data.orders}
    pages = [line for line in fake.state.requests if line.startswith("GET") and "/ORDERS?" in line]
    assert len(pages) == -(-len(data.orders) // PAGE_SIZE)
    assert all("$skip=" in line for line in pages[1:])


def test_top_and_skip_page_on_the_server(raw: httpx.Client, served: Served) -> None:
    body = raw.get("ORDERS", params={"$top": "5", "$skip": "10", "$select": "ORDNAME"}).json()
    assert [r["ORDNAME"] for r in body["value"]] == [r["ORDNAME"] for r in served.data.orders[10:15]]
    assert "@odata.nextLink" not in body
    first = raw.get("ORDERS", params={"$top": "50", "$select": "ORDNAME"}).json()
    assert len(first["value"]) == PAGE_SIZE
    rest = raw.get(first["@odata.nextLink"]).json()
    assert [r["ORDNAME"] for r in first["value"] + rest["value"]] == [
        r["ORDNAME"] for r in served.data.orders[:50]
    ]
    assert "@odata.nextLink" not in rest


def test_expand_brings_each_orders_applicator_list(reader: PriorityClient, served: Served) -> None:
    root, child = served.data.cases["chain2"]
    orders = {o.name: o for o in reader.orders_named([root, child])}
    for name in (root, child):
        assert [a.serial for a in orders[name].applicators] == [
            r["SERNUMTEXT"] for r in served.data.applicators[name]
        ]
    line = served.data.applicators[root][0]
    applicator = orders[root].applicators[0]
    assert (applicator.kline, applicator.catalogue_number, applicator.applicator_type) == (
        line["KLINE"],
        line["PARTNAMETEXT"],
        line["PARTDESTEXT"],
    )
    assert applicator.seeds == line["INTDATA2"] and applicator.expiry and applicator.lot


def test_an_unknown_or_zero_seed_count_stays_unknown(reader: PriorityClient, served: Served) -> None:
    unknown = set(served.data.cases["seeds_unknown"])
    applicators = [a for o in reader.orders(FIRST_DAY, LAST_DAY) for a in o.applicators]
    assert {a.serial for a in applicators if a.seeds is None} == unknown
    assert {a.serial for a in applicators if a.seeds == 0} == set()


# --- auth ----------------------------------------------------------------------------------------


def test_without_credentials_priority_answers_401(service_root: str, fake: FastAPI) -> None:
    response = httpx.get(service_root + "/CUSTOMERS")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    wrong = PriorityClient(service_root, username="priority", password="wrong", backoff_s=0.01)
    with wrong, pytest.raises(PriorityError) as refused:
        wrong.sites()
    assert refused.value.status == 401
    assert "incorrect" in refused.value.message
    assert len(fake.state.requests) == 2  # a refusal is not retried


# --- write-back ----------------------------------------------------------------------------------


def test_write_back_changes_what_a_later_read_returns(priority: PriorityClient, data: PriorityData) -> None:
    order = data.cases["chain2"][0]
    faulty, unused = data.applicators[order][:2]
    inserted_at = datetime(2026, 11, 26, 10, 15, tzinfo=UTC)
    priority.write_back_applicator(
        order, faulty["KLINE"], usage="Faulty", deployed_seeds=3, comments="Bent", insertion_date=inserted_at
    )
    priority.write_back_applicator(
        order, unused["KLINE"], usage="No Use", deployed_seeds=0, comments=None, insertion_date=TODAY
    )
    priority.write_back_order_status(order, "Performed")

    (after,) = priority.orders_named([order])
    lines = {a.kline: a for a in after.applicators}
    assert after.status == "Performed"
    written = lines[faulty["KLINE"]]
    assert (written.usage, written.deployed_seeds, written.comments) == ("Faulty", 3, "Bent")
    assert written.insertion_date == inserted_at
    # The capacity is untouched: an applicator written back as "No Use" may be scanned again later.
    assert lines[unused["KLINE"]].usage == "No Use"
    assert lines[unused["KLINE"]].seeds == unused["INTDATA2"] > 0


def test_a_refused_write_back_raises_with_priority_s_message(reader: PriorityClient) -> None:
    with pytest.raises(PriorityError) as refused:
        reader.write_back_applicator(
            "SO2600002", 999, usage="Full use", deployed_seeds=10, comments=None, insertion_date=None
        )
    assert refused.value.status == 404
    assert "no applicator line KLINE=999" in refused.value.message
    with pytest.raises(PriorityError, match="There is no order"):
        reader.write_back_order_status("SO-NOWHERE", "Removed")
    with pytest.raises(ValueError, match="Usage must be one of"):
        reader.write_back_applicator(
            "SO2600002", 1, usage="Used", deployed_seeds=10, comments=None, insertion_date=None
        )


# --- outages -------------------------------------------------------------------------------------


def test_priority_down_is_unavailable_after_bounded_retries(fake: FastAPI, priority: PriorityClient) -> None:
    fake.state.down = True
    with pytest.raises(PriorityUnavailable, match="503"):
        priority.orders(TODAY, TODAY)
    assert len(fake.state.requests) == 3  # one try, two retries

    fake.state.requests.clear()
    with pytest.raises(PriorityUnavailable):
        priority.write_back_order_status("SO2600002", "Performed")
    assert len(fake.state.requests) == 1  # the write-back queue retries, not the adapter

    fake.state.down = False
    assert priority.orders(TODAY, TODAY)


def test_a_passing_failure_is_retried(fake: FastAPI, priority: PriorityClient) -> None:
    fake.state.fail_next = 2
    assert len(priority.sites()) == 6
    assert len(fake.state.requests) == 3


def test_nothing_listening_is_unavailable() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}{SERVICE_ROOT}"
    with PriorityClient(nowhere, username="priority", password="x", retries=1, backoff_s=0.01) as priority:
        with pytest.raises(PriorityUnavailable, match="could not be reached"):
            priority.staff()
        with pytest.raises(PriorityUnavailable):
            priority.write_back_order_status("SO2600002", "Performed")


def test_a_slow_priority_times_out_as_unavailable(fake: FastAPI, service_root: str) -> None:
    fake.state.delay_s = 0.3
    with (
        PriorityClient(
            service_root, username="priority", password=DEFAULT_PASSWORD, timeout=0.05, retries=0
        ) as priority,
        pytest.raises(PriorityUnavailable, match="Timeout"),
    ):
        priority.sites()


# --- fixtures ------------------------------------------------------------------------------------


def test_fixtures_are_the_same_for_the_same_day_and_seed() -> None:
    assert build_fixtures(TODAY) == build_fixtures(TODAY)
    assert build_fixtures(TODAY, seed=8) != build_fixtures(TODAY)
    moved = build_fixtures(TODAY + timedelta(days=1))
    assert _day(moved.orders[1]["SIBD_TREATDAY"]) == _day(
        build_fixtures(TODAY).orders[1]["SIBD_TREATDAY"]
    ) + (timedelta(days=1))


def test_orders_parse_into_typed_results(reader: PriorityClient, served: Served) -> None:
    (order,) = reader.orders_named([served.data.cases["pancreas_pair"][0]])
    assert isinstance(order, Order)
    assert order.indication == "pancreas"
    assert order.activity_per_seed == 2.5
    assert order.day == TODAY
    assert order.reference and order.patient_label
