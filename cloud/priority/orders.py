"""domain.md's order list rules, and the station bundle's lists, as pure functions over adapter results.

How Priority's rows are read here (domain.md leaves the details open; the reasons are given here):

- A row whose REFERENCE starts with `PAT-` is a patient reference, not an order: it names the
  patient (the PAT- id, with the label in DETAILS). It never appears in the list.
- An order's REFERENCE may name another order. The chain is followed to its root: the first order
  whose reference is empty, a patient row, or a name Priority did not return. The patient is the
  one the chain ends at. A loop stops the walk: the order stands on its own, with a warning.
- An order whose root is another order of the same site and day (and the same activity per seed)
  is folded into the root's entry: it brings more applicators to that treatment. One whose root
  lies on another day or site is its own entry (with the root's patient).
- Several pancreas entries of one patient (by PAT- id, never by name: two patients may share a
  name), site and day are combined into one entry: names joined with `+` in name order, seed totals
  summed. Entries whose activities per seed differ are not combined; each carries a warning.

Each entry's `name` is what the station schedules and keeps as the treatment's subject id, and
every applicator of the entry's orders is listed in the inventory under that name, so a scan is
checked against the whole entry. `OrderEntry.orders` keeps the Priority orders behind it for the
write-back.
"""

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

from cloud.priority.adapter import ALPHA_TAU_POSITION, Applicator, Order, Site, StaffRow

PATIENT_PREFIX = "PAT-"
COMBINED_INDICATION = "pancreas"
MAX_REFERENCE_ROUNDS = 5  # how far complete_references looks for roots outside the fetched days


@dataclass(frozen=True)
class Root:
    """Where an order's reference chain ends."""

    name: str  # the root order's name (the order itself when there is no chain, or a loop)
    patient_ref: str | None = None  # the PAT- id the chain ends at
    patient_label: str | None = None  # DETAILS of that patient row
    loop: tuple[str, ...] = ()  # the names walked before meeting one again
    missing: str | None = None  # a referenced name Priority did not return


@dataclass(frozen=True)
class OrderEntry:
    """One line of the order list: one treatment to start."""

    name: str  # "SO2600011", or "SO2600011+SO2600012" for combined orders
    orders: tuple[str, ...]  # every Priority order behind the entry, for the write-back
    site: str
    day: date
    indication: str
    status: str | None
    seeds: int | None  # planned seed total; None when any order's is unknown
    activity_per_seed: float | None
    seed_length: float | None
    patient_label: str | None
    patient_ref: str | None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class OrderList:
    entries: tuple[OrderEntry, ...]
    patient_rows: tuple[str, ...]  # ORDERS rows left out because they are patient references
    entry_of: Mapping[str, str] = field(default_factory=dict)  # Priority order name -> entry name
    notes: tuple[str, ...] = ()  # problems with rows that made no entry

    @property
    def warnings(self) -> list[str]:
        # A warning shared by several entries (orders not combined) is given once.
        return list(dict.fromkeys([*self.notes, *(w for entry in self.entries for w in entry.warnings)]))


@dataclass(frozen=True)
class BundleLists:
    """The station bundle's `schedule`, `inventory` and `users` (version and checksum come later)."""

    schedule: list[dict[str, Any]]
    inventory: list[dict[str, Any]]
    users: list[dict[str, Any]]
    warnings: list[str]


def is_patient_reference(order: Order) -> bool:
    return (order.reference or "").strip().upper().startswith(PATIENT_PREFIX)


def find_root(order: Order, by_name: Mapping[str, Order]) -> Root:
    """Follow REFERENCE from order to order; never loops, however Priority's references run."""
    walked = [order.name]
    current = order
    while True:
        reference = (current.reference or "").strip()
        target = by_name.get(reference)
        if not reference:
            return Root(current.name)
        if reference.upper().startswith(PATIENT_PREFIX):  # asked about a patient row itself
            return Root(current.name, reference, current.patient_label)
        if target is None:
            return Root(current.name, missing=reference)
        if is_patient_reference(target):
            return Root(current.name, target.reference, target.patient_label)
        if target.name in walked:
            return Root(order.name, loop=(*walked, target.name))
        walked.append(target.name)
        current = target


def complete_references(
    orders: Sequence[Order],
    fetch: Callable[[list[str]], list[Order]],
    *,
    rounds: int = MAX_REFERENCE_ROUNDS,
) -> list[Order]:
    """The rows that `orders` reference but do not contain (patients, roots on earlier days).

    `fetch` is `PriorityClient.orders_named`. The walk is bounded and never asks for a name twice,
    so a long or looping chain of missing rows costs a few requests, never an endless series.
    """
    asked = {o.name for o in orders}
    found: list[Order] = []
    frontier = list(orders)
    for _ in range(rounds):
        missing = sorted({ref for o in frontier if (ref := _order_reference(o)) and ref not in asked})
        if not missing:
            break
        asked.update(missing)
        frontier = [row for row in fetch(missing) if row.name in missing]
        found += frontier
    return found


def _order_reference(order: Order) -> str | None:
    """The order name an order references (a patient row's reference is a PAT- id, not a name)."""
    return None if is_patient_reference(order) else (order.reference or "").strip() or None


def order_list(orders: Iterable[Order], context: Iterable[Order] = ()) -> OrderList:
    """The list of treatments to start from `orders` (the days wanted); `context` holds rows that
    the chains may reach outside those days (see `complete_references`)."""
    orders = list(orders)
    by_name = {o.name: o for o in [*context, *orders]}
    patient_rows = tuple(sorted(o.name for o in orders if is_patient_reference(o)))
    real = [o for o in orders if not is_patient_reference(o)]
    undated = tuple(f"Order {o.name} has no treatment day; it is left out." for o in real if o.day is None)
    groups, notes = _fold_references([o for o in real if o.day is not None], by_name)
    entries = [_entry(members, by_name, notes) for members in groups]
    entries = sorted(_combine_pancreas(entries), key=lambda e: (e.day, e.site, e.name))
    entry_of = {name: entry.name for entry in entries for name in entry.orders}
    return OrderList(tuple(entries), patient_rows, entry_of, undated)


def bundle_lists(
    orders: Sequence[Order],
    staff: Sequence[StaffRow],
    sites: Sequence[Site],
    *,
    context: Iterable[Order] = (),
    station_sites: Collection[str] | None = None,
) -> BundleLists:
    """The station bundle's lists, for the station's sites (all sites when `station_sites` is None)."""
    listed = order_list(orders, context)
    wanted: Callable[[str | None], bool] = (
        (lambda _site: True) if station_sites is None else (lambda site: site in station_sites)
    )
    inventory, inventory_warnings = inventory_items(orders, listed, wanted)
    users, user_warnings = users_from_staff(staff, [s.code for s in sites])
    if station_sites is not None:
        users = [u for u in users if u["role"] == "alphatau" or set(u["sites"]) & set(station_sites)]
    return BundleLists(
        schedule=[schedule_entry(e) for e in listed.entries if wanted(e.site)],
        inventory=inventory,
        users=users,
        warnings=[*listed.warnings, *inventory_warnings, *user_warnings],
    )


def schedule_entry(entry: OrderEntry) -> dict[str, Any]:
    return {
        "order_name": entry.name,
        "patient_label": entry.patient_label,
        "site": entry.site,
        "day": entry.day.isoformat(),
        "indication": entry.indication,
        "seeds": entry.seeds,
        "activity_per_seed": entry.activity_per_seed,
        "seed_length": entry.seed_length,
    }


def inventory_items(
    orders: Iterable[Order], listed: OrderList, wanted: Callable[[str | None], bool]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every applicator of the listed orders, under its entry's name.

    A serial on two lines (of any site) is left out, so that a scan of it stops: the cache could
    not say which patient it belongs to."""
    items: dict[str, list[dict[str, Any]]] = defaultdict(list)
    warnings: list[str] = []
    for order in orders:
        entry = listed.entry_of.get(order.name)
        if entry is None:
            if order.applicators:
                warnings.append(f"{order.name} is not an order of the list; its applicators are left out.")
            continue
        for applicator in order.applicators:
            if not applicator.serial:
                warnings.append(f"Order {order.name} line {applicator.kline} has no serial number.")
                continue
            items[applicator.serial.upper()].append(_inventory_item(order, entry, applicator))
    for serial, rows in items.items():
        if len(rows) > 1:
            where = ", ".join(sorted({r["order_name"] for r in rows}))
            warnings.append(f"Applicator {serial} is listed {len(rows)} times ({where}); it is left out.")
    return [rows[0] for rows in items.values() if len(rows) == 1 and wanted(rows[0]["site"])], warnings


def _inventory_item(order: Order, entry: str, applicator: Applicator) -> dict[str, Any]:
    return {
        "serial": applicator.serial.upper(),
        "order_name": entry,
        "site": order.site,
        "catalogue_number": applicator.catalogue_number,
        "applicator_type": applicator.applicator_type,
        "seeds": applicator.seeds,
        "seed_length": order.seed_length,
        "expiry": applicator.expiry.isoformat() if applicator.expiry else None,
        "lot": applicator.lot,
        "usage": applicator.usage,
    }


def users_from_staff(
    staff: Iterable[StaffRow], all_sites: Sequence[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """One user per e-mail address: `alphatau` with every site when all of the person's rows say
    POSITIONCODE 99, else `hospital` with the sites of their rows (the lesser access when Priority
    disagrees with itself)."""
    people: dict[str, list[StaffRow]] = defaultdict(list)
    warnings: list[str] = []
    for row in staff:
        if not row.email:
            warnings.append(f"{row.name or 'A PHONEBOOK row'} has no e-mail address and cannot sign in.")
            continue
        people[row.email.lower()].append(row)
    users = [_user(email, rows, all_sites, warnings) for email, rows in people.items()]
    return sorted(users, key=lambda u: u["id"]), warnings


def _user(email: str, rows: list[StaffRow], all_sites: Sequence[str], warnings: list[str]) -> dict[str, Any]:
    codes = {r.position_code for r in rows}
    alpha_tau = codes == {ALPHA_TAU_POSITION}
    if ALPHA_TAU_POSITION in codes and not alpha_tau:
        warnings.append(f"{email} is Alpha Tau staff on some PHONEBOOK rows only; given their sites only.")
    return {
        "id": email,
        "name": next((r.name for r in rows if r.name), email),
        "email": email,
        "phone": next((r.phone for r in rows if r.phone), None),
        "position": next((r.position for r in rows if r.position), None),
        "role": "alphatau" if alpha_tau else "hospital",
        "sites": sorted(all_sites) if alpha_tau else sorted({r.site for r in rows if r.site}),
    }


# --- folding chains and combining pancreas orders ------------------------------------------------


def _fold_references(
    orders: list[Order], by_name: Mapping[str, Order]
) -> tuple[list[list[Order]], dict[str, list[str]]]:
    """Groups of orders, each led by its root; and the warnings per order."""
    in_list = {o.name for o in orders}
    groups: dict[str, list[Order]] = {}
    notes: dict[str, list[str]] = defaultdict(list)
    for order in orders:
        root = find_root(order, by_name)
        head = root.name if _folds_into(order, root, by_name, in_list, notes) else order.name
        groups.setdefault(head, []).append(order)
    return [_root_first(head, members) for head, members in groups.items()], notes


def _root_first(head: str, members: list[Order]) -> list[Order]:
    """The root first, then by name: the same entry whatever order Priority returned the rows in."""
    return sorted(members, key=lambda o: (o.name != head, o.name))


def _folds_into(
    order: Order, root: Root, by_name: Mapping[str, Order], in_list: set[str], notes: dict[str, list[str]]
) -> bool:
    if root.loop:
        notes[order.name].append(
            f"Order {order.name} is in a reference loop ({' -> '.join(root.loop)}); it is listed on its own."
        )
        return False
    if root.missing:
        notes[order.name].append(
            f"Order {root.name} references {root.missing}, which Priority did not return."
        )
    if root.name == order.name or root.name not in in_list:
        return False
    target = by_name[root.name]
    if (target.site, target.day) != (order.site, order.day):
        return False
    if not _same_activity([target, order]):
        notes[order.name].append(
            f"Order {order.name} references {root.name} but their activities per seed differ; listed apart."
        )
        return False
    return True


def _entry(members: list[Order], by_name: Mapping[str, Order], notes: Mapping[str, list[str]]) -> OrderEntry:
    head = members[0]
    root = find_root(head, by_name)
    return OrderEntry(
        name=head.name,
        orders=tuple(o.name for o in members),
        site=head.site,
        day=head.day or date.min,
        indication=head.indication,
        status=head.status,
        seeds=_total(o.seeds for o in members),
        activity_per_seed=_activity(members),
        seed_length=head.seed_length,
        patient_label=head.patient_label or root.patient_label,
        patient_ref=None if root.loop else root.patient_ref,
        warnings=tuple(dict.fromkeys(w for o in members for w in notes.get(o.name, ()))),
    )


def _combine_pancreas(entries: list[OrderEntry]) -> list[OrderEntry]:
    groups: dict[tuple[str, str, date], list[OrderEntry]] = defaultdict(list)
    result: list[OrderEntry] = []
    for entry in entries:
        if entry.indication == COMBINED_INDICATION and entry.patient_ref:
            groups[(entry.patient_ref, entry.site, entry.day)].append(entry)
        else:
            result.append(entry)
    for group in groups.values():
        result += _combine(sorted(group, key=lambda e: e.name))
    return result


def _combine(group: list[OrderEntry]) -> list[OrderEntry]:
    if len(group) == 1:
        return group
    activities = sorted({e.activity_per_seed for e in group if e.activity_per_seed is not None})
    if len(activities) > 1:
        names = ", ".join(e.name for e in group)
        warning = (
            f"Pancreas orders {names} of one patient are not combined: their activities per seed differ "
            f"({', '.join(f'{a:g}' for a in activities)} µCi)."
        )
        return [replace(e, warnings=(*e.warnings, warning)) for e in group]
    first = group[0]
    return [
        replace(
            first,
            name="+".join(e.name for e in group),
            orders=tuple(name for e in group for name in e.orders),
            seeds=_total(e.seeds for e in group),
            activity_per_seed=activities[0] if activities else None,
            patient_label=next((e.patient_label for e in group if e.patient_label), None),
            warnings=tuple(w for e in group for w in e.warnings),
        )
    ]


def _same_activity(orders: Iterable[Order]) -> bool:
    # Unknown activities do not disagree, as in the station's own combination (store/treatments.py).
    return len({o.activity_per_seed for o in orders if o.activity_per_seed is not None}) <= 1


def _activity(orders: Iterable[Order]) -> float | None:
    return next((o.activity_per_seed for o in orders if o.activity_per_seed is not None), None)


def _total(values: Iterable[int | None]) -> int | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(v or 0 for v in values)
