"""domain.md's order list rules over what the adapter read from fake Priority, and the station bundle.

The fixture data is read once over real HTTP; the edge cases it does not hold (a follow-up order on
another day, a missing reference, staff rows that disagree) are built as adapter results by hand.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from cloud.priority.adapter import Applicator, Order, PriorityClient, Site, StaffRow, applicator_from_row
from cloud.priority.fake import DEFAULT_PASSWORD, SERVICE_ROOT, create_fake_priority
from cloud.priority.fixtures import DAYS, PriorityData, build_fixtures
from cloud.priority.orders import (
    OrderList,
    Root,
    bundle_lists,
    complete_references,
    find_root,
    order_list,
    users_from_staff,
)
from store.enums import Role
from store.scanning import ScanOutcome, scan_applicator
from store.station import Actor, Station
from store.treatments import start_insertion
from store.validation_cache import bundle_checksum, install_bundle
from tests.utils.data import NOW, TODAY
from tests.utils.servers import serve

FIRST_DAY = TODAY - timedelta(days=3)
LAST_DAY = FIRST_DAY + timedelta(days=DAYS - 1)
STATION_SITES = ("H1-RMG", "H1-TLV")  # a station of the first hospital


@dataclass(frozen=True)
class Read:
    """What the cloud reads from Priority to build a bundle."""

    data: PriorityData
    orders: list[Order]
    context: list[Order]  # rows the chains reach outside the days read (patients registered earlier)
    staff: list[StaffRow]
    sites: list[Site]

    def listed(self) -> OrderList:
        return order_list(self.orders, self.context)


def _client(url: str) -> PriorityClient:
    return PriorityClient(url + SERVICE_ROOT, username="priority", password=DEFAULT_PASSWORD, backoff_s=0.01)


@pytest.fixture(scope="module")
def read() -> Iterator[Read]:
    data = build_fixtures(TODAY)
    with serve(create_fake_priority(data)) as url, _client(url) as priority:
        orders = priority.orders(FIRST_DAY, LAST_DAY)
        context = complete_references(orders, priority.orders_named)
        yield Read(data, orders, context, priority.staff(), priority.sites())


def _order(name: str, *, reference: str | None = None, day: int = 0, **fields: Any) -> Order:
    values: dict[str, Any] = {
        "site": "H1-TLV",
        "day": TODAY + timedelta(days=day),
        "status": "Open",
        "seeds": 40,
        "activity_per_seed": 2.5,
        "patient_label": None,
        "indication": "pancreas",
        "seed_length": 10.0,
    }
    return Order(name=name, reference=reference, **(values | fields))


def _entry_named(listed: OrderList, name: str) -> Any:
    return next(e for e in listed.entries if e.name == name)


# --- patient references --------------------------------------------------------------------------


def test_patient_reference_rows_are_not_orders(read: Read) -> None:
    listed = read.listed()
    patient_rows = set(read.data.cases["patient_rows"])
    in_window = {o.name for o in read.orders} & patient_rows
    assert in_window and set(listed.patient_rows) == in_window
    assert not patient_rows & set(listed.entry_of)
    # Patients registered before the days read were fetched by name, so every chain reaches one.
    assert {o.name for o in read.context} | in_window == patient_rows
    assert not [w for w in listed.warnings if "did not return" in w]


def test_without_the_patient_row_the_patient_is_unknown_and_nothing_is_combined() -> None:
    pancreas = [_order(f"SO{n}", reference="SO0", patient_label="Levi, Amir") for n in (1, 2)]
    listed = order_list(pancreas)  # the patient row SO0 was not read
    assert [(e.name, e.patient_ref) for e in listed.entries] == [("SO1", None), ("SO2", None)]
    assert listed.warnings == [f"Order SO{n} references SO0, which Priority did not return." for n in (1, 2)]
    with_patient = order_list(pancreas, context=[_order("SO0", reference="PAT-00001", day=-9)])
    assert [e.name for e in with_patient.entries] == ["SO1+SO2"]


# --- reference chains ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["chain2", "chain3"])
def test_a_reference_chain_is_followed_to_its_root(read: Read, case: str) -> None:
    root, *followers = read.data.cases[case]
    by_name = {o.name: o for o in [*read.context, *read.orders]}
    assert all(find_root(by_name[name], by_name).name == root for name in followers)
    listed = read.listed()
    entry = _entry_named(listed, root)
    assert entry.orders == (root, *followers)
    assert not {e.name for e in listed.entries} & set(followers)
    assert entry.seeds == sum(by_name[name].seeds or 0 for name in entry.orders)
    assert entry.patient_ref and entry.patient_ref.startswith("PAT-")


def test_a_reference_loop_ends_at_the_order_itself_with_a_warning(read: Read) -> None:
    first, second = read.data.cases["loop"]
    by_name = {o.name: o for o in read.orders}
    assert find_root(by_name[first], by_name) == Root(first, loop=(first, second, first))
    listed = read.listed()
    for name in (first, second):
        entry = _entry_named(listed, name)
        assert entry.orders == (name,) and entry.patient_ref is None
        assert "reference loop" in entry.warnings[0]


def test_self_references_and_tails_into_loops_end_too() -> None:
    alone = _order("SO1", reference="SO1")
    tail, a, b = (
        _order("SO2", reference="SO3"),
        _order("SO3", reference="SO4"),
        _order("SO4", reference="SO3"),
    )
    by_name = {o.name: o for o in (alone, tail, a, b)}
    assert find_root(alone, by_name).loop == ("SO1", "SO1")
    assert find_root(tail, by_name) == Root("SO2", loop=("SO2", "SO3", "SO4", "SO3"))
    listed = order_list(by_name.values())
    assert sorted(e.name for e in listed.entries) == ["SO1", "SO2", "SO3", "SO4"]


def test_a_follow_up_on_another_day_is_its_own_entry_with_the_root_s_patient() -> None:
    patient = _order("SO9", reference="PAT-00042", patient_label="Cohen, Miriam", day=-30)
    insertion = _order("SO10", reference="SO9", day=-14)
    removal = _order("SO11", reference="SO10", day=0)
    listed = order_list([removal], context=[patient, insertion])
    (entry,) = listed.entries
    assert (entry.name, entry.orders) == ("SO11", ("SO11",))
    assert (entry.patient_ref, entry.patient_label) == ("PAT-00042", "Cohen, Miriam")


def test_a_reference_priority_did_not_return_leaves_the_order_as_its_own_root() -> None:
    order = _order("SO5", reference="SO-GONE")
    listed = order_list([order])
    assert [e.name for e in listed.entries] == ["SO5"]
    assert listed.warnings == ["Order SO5 references SO-GONE, which Priority did not return."]


def test_looking_for_missing_rows_is_bounded(read: Read) -> None:
    data = build_fixtures(TODAY)
    data.orders.append({**data.orders[1], "ORDNAME": "SO-DANGLING", "REFERENCE": "SO-GONE"})
    fake = create_fake_priority(data)
    with serve(fake) as url, _client(url) as priority:
        orders = priority.orders_named(["SO-DANGLING"])
        assert complete_references(orders, priority.orders_named) == []
    asked = [line for line in fake.state.requests if "SO-GONE" in line]
    assert len(asked) == 1  # asked once, not again in every round


# --- pancreas combination ------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["pancreas_pair", "pancreas_triple"])
def test_pancreas_orders_of_one_patient_site_and_day_are_combined(read: Read, case: str) -> None:
    names = read.data.cases[case]
    listed = read.listed()
    entry = _entry_named(listed, "+".join(names))
    by_name = {o.name: o for o in read.orders}
    assert entry.orders == names
    assert entry.seeds == sum(by_name[n].seeds or 0 for n in names)
    assert entry.activity_per_seed == by_name[names[0]].activity_per_seed
    assert not {e.name for e in listed.entries} & set(names)
    assert all(listed.entry_of[n] == entry.name for n in names)


def test_pancreas_orders_with_different_activities_are_not_combined(read: Read) -> None:
    names = read.data.cases["pancreas_mismatch"]
    listed = read.listed()
    entries = [_entry_named(listed, name) for name in names]
    assert [e.activity_per_seed for e in entries] == [2.0, 2.5]
    assert all("not combined" in e.warnings[-1] for e in entries)
    assert "+".join(names) not in {e.name for e in listed.entries}


def test_orders_are_combined_by_patient_reference_never_by_name() -> None:
    same_name = [_order(f"SO{n}", patient_label="Levi, Amir") for n in (1, 2)]
    assert [e.name for e in order_list(same_name).entries] == ["SO1", "SO2"]
    patient = _order("SO0", reference="PAT-00007", day=-10)
    prostate = [_order(f"SO{n}", reference="SO0", indication="prostate") for n in (3, 4)]
    pancreas = [_order(f"SO{n}", reference="SO0", day=1) for n in (6, 5)]
    names = [e.name for e in order_list([*prostate, *pancreas], context=[patient]).entries]
    assert names == ["SO3", "SO4", "SO5+SO6"]  # only pancreas is combined; names in order


def test_a_serial_on_two_order_lines_is_left_out_of_the_inventory() -> None:
    def line(serial: str) -> Applicator:
        return applicator_from_row({"KLINE": 1, "SERNUMTEXT": serial, "INTDATA2": 10})

    first = _order("SO1", applicators=(line("DART-0001-00001"), line("DART-0002-00002")))
    second = _order("SO2", site="H2-HFA", applicators=(line("dart-0001-00001"),))
    lists = bundle_lists([first, second], [], [], station_sites=["H1-TLV"])
    assert [item["serial"] for item in lists.inventory] == ["DART-0002-00002"]
    assert lists.warnings == ["Applicator DART-0001-00001 is listed 2 times (SO1, SO2); it is left out."]


# --- users ---------------------------------------------------------------------------------------


def test_users_alpha_tau_get_every_site_and_hospital_staff_their_rows(read: Read) -> None:
    users, warnings = users_from_staff(read.staff, [s.code for s in read.sites])
    assert warnings == []
    alpha_tau = [u for u in users if u["role"] == "alphatau"]
    assert len(alpha_tau) == 3
    assert all(u["sites"] == sorted(s.code for s in read.sites) for u in alpha_tau)
    for user in (u for u in users if u["role"] == "hospital"):
        rows = [r for r in read.staff if r.email == user["email"]]
        assert user["sites"] == sorted(r.site for r in rows)
        assert user["id"] == user["email"] and user["name"] and user["position"]


def test_staff_rows_that_disagree_give_the_lesser_access() -> None:
    rows = [
        StaffRow("Noa@Example.org", None, "Noa", 99, "Alpha Tau clinical specialist", "H1-TLV"),
        StaffRow("noa@example.org", "+972-50-1", "Noa", 2, "Nurse", "H2-HFA"),
        StaffRow(None, None, "No Mail", 2, "Nurse", "H2-HFA"),
    ]
    users, warnings = users_from_staff(rows, ["H1-TLV", "H2-HFA", "H3-BSV"])
    assert users == [
        {
            "id": "noa@example.org",
            "name": "Noa",
            "email": "noa@example.org",
            "phone": "+972-50-1",
            "position": "Alpha Tau clinical specialist",
            "role": "hospital",
            "sites": ["H1-TLV", "H2-HFA"],
        }
    ]
    assert len(warnings) == 2


# --- the station bundle --------------------------------------------------------------------------


def _bundle(read: Read) -> dict[str, Any]:
    lists = bundle_lists(
        read.orders, read.staff, read.sites, context=read.context, station_sites=STATION_SITES
    )
    bundle = {
        "version": "priority-1",
        "valid_until": (NOW + timedelta(days=7)).isoformat(),
        "users": lists.users,
        "schedule": lists.schedule,
        "inventory": lists.inventory,
    }
    bundle["checksum"] = bundle_checksum(bundle)
    return bundle


def _actor(bundle: dict[str, Any], site: str) -> Actor:
    user = next(u for u in bundle["users"] if u["role"] == "hospital" and site in u["sites"])
    return Actor(user["id"], user["name"], Role(user["role"]), frozenset(user["sites"]), user["position"])


def _usable(bundle: dict[str, Any], order_name: str, serials: set[str] | None = None) -> dict[str, Any]:
    """An applicator of the entry that a scan should accept: unused, counted, far from expiry."""
    far = (TODAY + timedelta(days=40)).isoformat()
    return next(
        item
        for item in bundle["inventory"]
        if item["order_name"] == order_name
        and (serials is None or item["serial"] in serials)
        and item["seeds"]
        and not item["usage"]
        and item["expiry"] > far
    )


def test_bundle_lists_keep_to_the_station_s_sites(read: Read) -> None:
    bundle = _bundle(read)
    assert {e["site"] for e in bundle["schedule"]} == set(STATION_SITES)
    assert {i["site"] for i in bundle["inventory"]} == set(STATION_SITES)
    assert all(u["role"] == "alphatau" or set(u["sites"]) & set(STATION_SITES) for u in bundle["users"])
    unknown = set(read.data.cases["seeds_unknown"])
    assert all(i["seeds"] is None for i in bundle["inventory"] if i["serial"] in unknown)
    everything = bundle_lists(read.orders, read.staff, read.sites, context=read.context)
    assert len(everything.inventory) == 2000


def test_the_bundle_installs_into_a_station_and_its_applicators_scan(
    fresh_station: Station, read: Read
) -> None:
    bundle = _bundle(read)
    assert install_bundle(fresh_station, bundle) == "priority-1"
    with fresh_station.engine.connect() as conn:
        roles = dict(conn.exec_driver_sql("SELECT role, COUNT(*) FROM users GROUP BY role").all())
    assert roles == {"alphatau": 3, "hospital": sum(u["role"] == "hospital" for u in bundle["users"])}
    pair = read.data.cases["pancreas_pair"]
    nurse = _actor(bundle, "H1-TLV")
    treatment = start_insertion(
        fresh_station, nurse, site="H1-TLV", day=TODAY, surgeon="Dr. Gold", order_names=["+".join(pair)]
    ).record
    assert treatment["planned_seeds"] == _entry_named(read.listed(), "+".join(pair)).seeds

    # An applicator of the second combined order belongs to this treatment, as Priority describes it.
    second = next(o for o in read.orders if o.name == pair[1])
    item = _usable(bundle, "+".join(pair), {a.serial for a in second.applicators})
    line = next(a for a in second.applicators if a.serial == item["serial"])
    result = scan_applicator(fresh_station, nurse, treatment_id=treatment["id"], raw=item["serial"])
    assert result.outcome is ScanOutcome.VALID and result.saved, result.message
    saved = result.applicator or {}
    assert (saved["seed_quantity"], saved["catalogue_number"], saved["applicator_type"], saved["lot"]) == (
        line.seeds,
        line.catalogue_number,
        line.applicator_type,
        line.lot,
    )
    assert (saved["seed_length"], saved["expiry_date"]) == (second.seed_length, line.expiry)

    # Another patient's applicator, same site and day: the nurse is told whose it is, nothing is saved.
    other = _usable(bundle, read.data.cases["chain2"][0])
    wrong = scan_applicator(fresh_station, nurse, treatment_id=treatment["id"], raw=other["serial"])
    assert wrong.outcome is ScanOutcome.WRONG_TREATMENT and not wrong.saved

    # Used according to Priority: stopped.
    used = next(i for i in bundle["inventory"] if i["site"] == "H1-TLV" and i["usage"] == "Full use")
    stopped = scan_applicator(fresh_station, nurse, treatment_id=treatment["id"], raw=used["serial"])
    assert stopped.outcome is ScanOutcome.USED_ELSEWHERE


def test_a_follow_up_order_s_applicators_scan_into_the_root_s_treatment(
    fresh_station: Station, read: Read
) -> None:
    bundle = _bundle(read)
    install_bundle(fresh_station, bundle)
    root, child = read.data.cases["chain2"]
    nurse = _actor(bundle, "H1-TLV")
    treatment = start_insertion(
        fresh_station, nurse, site="H1-TLV", day=TODAY, surgeon="Dr. Gold", order_names=[root]
    ).record
    child_serials = {a.serial for o in read.orders if o.name == child for a in o.applicators}
    item = _usable(bundle, root, child_serials)
    result = scan_applicator(fresh_station, nurse, treatment_id=treatment["id"], raw=item["serial"])
    assert result.outcome is ScanOutcome.VALID and result.saved, result.message


def test_the_order_list_does_not_depend_on_the_order_of_priority_s_rows(read: Read) -> None:
    assert order_list(list(reversed(read.orders)), read.context) == read.listed()
