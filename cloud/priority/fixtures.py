"""Fake Priority's data: three hospitals, their staff, two weeks of orders and 2,000 applicators.

Generated from a seeded `random.Random` so that the demo and the tests see the same rows on every
run (relative to `today`). The awkward cases of domain.md's order list rules are placed on purpose
and named in `PriorityData.cases`: reference chains, a reference loop, patient-reference rows and
pancreas orders of one patient to be combined (one pair whose activities disagree).

How the rows relate (our reading of Priority's data, see `cloud/priority/orders.py`):
- a patient is one ORDERS row whose REFERENCE is the patient id `PAT-nnnnn` (DETAILS holds the
  label); it is not an order and has no applicators;
- a treatment order's REFERENCE is its patient's row, or another order (a follow-up order that
  brings more applicators to the same treatment), or empty when Priority does not know the patient.
"""

import random
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from cloud.priority.adapter import (
    ALPHA_TAU_POSITION,
    DEPLOYED_FIELD,
    EXPIRY_FIELD,
    LOT_FIELD,
    USAGES,
)
from cloud.priority.orders import PATIENT_PREFIX

DAYS = 14
FIRST_DAY = -3  # the orders run from three days ago to ten days ahead
APPLICATOR_TOTAL = 2000

HOSPITALS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("H1", "Central Medical Center", (("TLV", "Tel Aviv"), ("RMG", "Ramat Gan"))),
    ("H2", "Northern Hospital", (("HFA", "Haifa"), ("NAZ", "Nazareth"))),
    ("H3", "Southern University Hospital", (("BSV", "Beersheba"), ("ASH", "Ashdod"))),
)

# indication -> (catalogue number, type, seeds per applicator) choices
PRODUCTS: dict[str, tuple[tuple[str, str, int], ...]] = {
    "pancreas": (("DART-PAN-10", "Pancreas applicator", 10), ("DART-PAN-20", "Pancreas applicator", 20)),
    "prostate": (("DART-PRO-10", "Prostate applicator", 10),),
    "skin": (("DART-SKN-05", "Skin applicator", 5),),
}
PRODUCTS["unknown"] = tuple(p for products in PRODUCTS.values() for p in products)
SEED_LENGTH = {"pancreas": 10.0, "prostate": 10.0, "skin": 6.0, "unknown": 10.0}
INDICATION_WEIGHTS = {"pancreas": 4, "prostate": 3, "skin": 2, "unknown": 1}
ACTIVITIES = (1.5, 2.0, 2.5, 3.0)  # µCi per seed

POSITIONS = {1: "Surgeon", 2: "Nurse", 3: "Physicist", ALPHA_TAU_POSITION: "Alpha Tau clinical specialist"}
FIRST_NAMES = (
    "Dana", "Amir", "Ruth", "Tal", "Eli", "Ada", "Noa", "Yossi", "Miriam", "Omer", "Shira", "Avi",
    "Lior", "Maya", "Ido", "Yael", "Gil", "Tamar", "Ron", "Hila", "Nir", "Michal", "Uri", "Efrat",
)  # fmt: skip
LAST_NAMES = (
    "Cohen", "Levi", "Peretz", "Mizrahi", "Biton", "Friedman", "Katz", "Shapiro", "Gold", "Azoulay",
    "Ben-David", "Dahan", "Avraham", "Segal", "Ohana", "Weiss", "Hadad", "Klein", "Amar", "Barak",
)  # fmt: skip


@dataclass
class PriorityData:
    """What fake Priority serves; the fake changes it in place on PATCH."""

    customers: list[dict[str, Any]]
    phonebook: list[dict[str, Any]]
    orders: list[dict[str, Any]]  # ORDERS rows without their subform
    applicators: dict[str, list[dict[str, Any]]]  # ORDNAME -> SIBD_APPUSELISTTEXT_SUBFORM rows
    cases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # named awkward cases -> ORDNAMEs

    def site_codes(self) -> list[str]:
        return [c["CUSTNAME"] for c in self.customers]


def build_fixtures(today: date, seed: int = 7) -> PriorityData:
    """The same data for the same `today` and `seed`, every time."""
    builder = _Builder(random.Random(seed), today)
    builder.add_sites()
    builder.add_staff()
    builder.add_awkward_cases()
    builder.add_everyday_orders()
    builder.add_applicators()
    return builder.data


def odata_datetime(day: date, at: time = time(0, 0)) -> str:
    """Priority's REST API writes dates as DateTimeOffset values."""
    return datetime.combine(day, at).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Builder:
    def __init__(self, rng: random.Random, today: date) -> None:
        self.rng = rng
        self.today = today
        self.data = PriorityData(customers=[], phonebook=[], orders=[], applicators={})
        self.by_name: dict[str, dict[str, Any]] = {}
        self.order_seq = 0
        self.patient_seq = 0
        self.serials: set[str] = set()
        self.children: set[str] = set()  # follow-up orders: they bring applicators, not planned seeds

    # --- sites and staff -------------------------------------------------------------------------

    def add_sites(self) -> None:
        for code, hospital, sites in HOSPITALS:
            for site, city in sites:
                self.data.customers.append({"CUSTNAME": f"{code}-{site}", "CUSTDES": f"{hospital}, {city}"})

    def add_staff(self) -> None:
        for code, _hospital, sites in HOSPITALS:
            site_codes = [f"{code}-{site}" for site, _city in sites]
            for index, position in enumerate((1, 2, 2, 3)):
                # The first person works at both sites so that every site has staff.
                person_sites = (
                    site_codes if index == 0 else self.rng.sample(site_codes, self.rng.randint(1, 2))
                )
                self._add_person(position, sorted(person_sites), f"{code.lower()}.example.org")
        all_sites = self.data.site_codes()
        for _ in range(3):
            self._add_person(
                ALPHA_TAU_POSITION, sorted(self.rng.sample(all_sites, 2)), "alphatau.example.com"
            )

    def _add_person(self, position: int, sites: list[str], domain: str) -> None:
        first, last = self.rng.choice(FIRST_NAMES), self.rng.choice(LAST_NAMES)
        email = f"{first}.{last}.{len(self.data.phonebook)}@{domain}".lower()
        phone = f"+972-5{self.rng.randint(0, 9)}-{self.rng.randint(1000000, 9999999)}"
        for site in sites:  # Priority keeps one PHONEBOOK row per person per site
            self.data.phonebook.append(
                {
                    "EMAIL": email,
                    "PHONE": phone,
                    "NAME": f"{first} {last}",
                    "POSITIONCODE": position,
                    "POSITIONDES": POSITIONS[position],
                    "CUSTNAME": site,
                }
            )

    # --- orders ----------------------------------------------------------------------------------

    def add_awkward_cases(self) -> None:
        today = 0
        cases = self.data.cases
        root = self._order("H1-TLV", today, "prostate", self._patient("H1-TLV", today))
        cases["chain2"] = (root, self._order("H1-TLV", today, "prostate", root, child=True))
        root = self._order("H2-HFA", today + 1, "skin", self._patient("H2-HFA", today + 1))
        middle = self._order("H2-HFA", today + 1, "skin", root, child=True)
        cases["chain3"] = (root, middle, self._order("H2-HFA", today + 1, "skin", middle, child=True))
        first = self._order("H1-RMG", today, "prostate", None)
        second = self._order("H1-RMG", today, "prostate", first)
        self._row(first)["REFERENCE"] = second  # first -> second -> first
        cases["loop"] = (first, second)
        cases["pancreas_pair"] = self._pancreas_patient("H1-TLV", today, (2.5, 2.5))
        cases["pancreas_triple"] = self._pancreas_patient("H3-BSV", today + 1, (2.0, 2.0, 2.0))
        cases["pancreas_mismatch"] = self._pancreas_patient("H2-NAZ", today, (2.0, 2.5))

    def _pancreas_patient(self, site: str, offset: int, activities: tuple[float, ...]) -> tuple[str, ...]:
        patient = self._patient(site, offset)
        return tuple(self._order(site, offset, "pancreas", patient, activity=a) for a in activities)

    def add_everyday_orders(self) -> None:
        indications, weights = zip(*INDICATION_WEIGHTS.items(), strict=True)
        for offset in range(FIRST_DAY, FIRST_DAY + DAYS):
            for site in self.data.site_codes():
                for _ in range(self.rng.randint(1, 2)):
                    indication = self.rng.choices(indications, weights)[0]
                    # One order in twenty has no patient reference: Priority does not always know it.
                    patient = None if self.rng.random() < 0.05 else self._patient(site, offset)
                    self._order(site, offset, indication, patient)
        self.data.cases["patient_rows"] = tuple(
            o["ORDNAME"] for o in self.data.orders if str(o["REFERENCE"]).startswith(PATIENT_PREFIX)
        )

    def _patient(self, site: str, offset: int) -> str:
        """The patient's reference row, registered on or up to three weeks before the first order."""
        self.patient_seq += 1
        label = f"{self.rng.choice(LAST_NAMES)}, {self.rng.choice(FIRST_NAMES)}"
        registered = offset - self.rng.randint(0, 20)
        return self._new_row(site, registered, f"{PATIENT_PREFIX}{self.patient_seq:05d}", label)

    def _order(
        self,
        site: str,
        offset: int,
        indication: str,
        reference: str | None,
        *,
        activity: float | None = None,
        child: bool = False,
    ) -> str:
        label = self._row(reference)["DETAILS"] if reference else None
        if child and reference:  # a follow-up order belongs to the same treatment: same activity
            activity = self._row(reference)["SBD_PREFACTIV"]
        name = self._new_row(site, offset, reference, label)
        self._row(name).update(
            {
                "ORDSTATUSDES": self._status(offset),
                "SBD_PREFACTIV": activity if activity is not None else self.rng.choice(ACTIVITIES),
                "SIBD_INDICATION": indication,
                "SIBD_SEEDLEN": SEED_LENGTH[indication],
            }
        )
        self.data.applicators[name] = []
        if child:
            self.children.add(name)
        return name

    def _new_row(self, site: str, offset: int, reference: str | None, label: str | None) -> str:
        self.order_seq += 1
        name = f"SO{self.today:%y}{self.order_seq:05d}"
        self.by_name[name] = {
            "ORDNAME": name,
            "CUSTNAME": site,
            "REFERENCE": reference,
            "SIBD_TREATDAY": odata_datetime(self.today + timedelta(days=offset)),
            "ORDSTATUSDES": "Open",
            "SBD_SEEDQTY": 0,
            "SBD_PREFACTIV": None,
            "DETAILS": label,
            "SIBD_INDICATION": None,
            "SIBD_SEEDLEN": None,
        }
        self.data.orders.append(self.by_name[name])
        return name

    def _row(self, name: str) -> dict[str, Any]:
        return self.by_name[name]

    def _status(self, offset: int) -> str:
        if offset >= 0:
            return "Open"
        return self.rng.choices(("Waiting for removal", "Performed"), (4, 1))[0]

    # --- applicators -----------------------------------------------------------------------------

    def add_applicators(self) -> None:
        orders = [o for o in self.data.orders if o["ORDNAME"] in self.data.applicators]
        counts = self._applicator_counts(orders)
        for order, count in zip(orders, counts, strict=True):
            rows = [self._applicator(order, kline) for kline in range(1, count + 1)]
            self.data.applicators[order["ORDNAME"]] = rows
            if order["ORDNAME"] not in self.children:
                # The plan leaves one or two applicators spare, as a real delivery does.
                order["SBD_SEEDQTY"] = sum(r["INTDATA2"] or 0 for r in rows[: max(1, count - 2)])
        self._spoil_some(orders)

    def _applicator_counts(self, orders: list[dict[str, Any]]) -> list[int]:
        """At least two per order, the rest spread at random so that the total is exact."""
        counts = [2] * len(orders)
        weights = [1 if o["ORDNAME"] in self.children else 3 for o in orders]
        for index in self.rng.choices(range(len(orders)), weights, k=APPLICATOR_TOTAL - sum(counts)):
            counts[index] += 1
        return counts

    def _applicator(self, order: dict[str, Any], kline: int) -> dict[str, Any]:
        catalogue, kind, seeds = self.rng.choice(PRODUCTS[order["SIBD_INDICATION"]])
        day = date.fromisoformat(order["SIBD_TREATDAY"][:10])
        row: dict[str, Any] = {
            "KLINE": kline,
            "SERNUMTEXT": self._serial(),
            "PARTNAMETEXT": catalogue,
            "PARTDESTEXT": kind,
            "INTDATA2": seeds,
            "USINGTYPE": None,
            "INSERTIONDATE": None,
            "INSERTIONCOMMENTS": None,
            DEPLOYED_FIELD: None,
            EXPIRY_FIELD: odata_datetime(self.today + timedelta(days=self.rng.randint(45, 400))),
            LOT_FIELD: f"L{self.rng.randint(100, 999)}{self.rng.choice('ABCDEFGH')}",
        }
        if order["ORDSTATUSDES"] != "Open":
            self._record_use(row, day)
        return row

    def _serial(self) -> str:
        while True:
            serial = f"DART-{self.rng.randint(1000, 9999)}-{self.rng.randint(0, 99999):05d}"
            if serial not in self.serials:
                self.serials.add(serial)
                return serial

    def _record_use(self, row: dict[str, Any], day: date) -> None:
        usage = self.rng.choices(USAGES, (16, 1, 3))[0]
        capacity = row["INTDATA2"]
        deployed = {"Full use": capacity, "Faulty": self.rng.randint(0, capacity), "No Use": 0}[usage]
        row.update(
            {
                "USINGTYPE": usage,
                DEPLOYED_FIELD: deployed,
                "INSERTIONDATE": odata_datetime(day, time(self.rng.randint(8, 15), 30)),
                "INSERTIONCOMMENTS": "Needle bent on insertion" if usage == "Faulty" else None,
            }
        )

    def _spoil_some(self, orders: list[dict[str, Any]]) -> None:
        """Unknown seed counts, expired and soon-expiring applicators, on orders still to come."""
        future = [o["ORDNAME"] for o in orders if o["SIBD_TREATDAY"] > odata_datetime(self.today)]
        unused = [row for name in future for row in self.data.applicators[name]]
        picked = self.rng.sample(unused, 20)
        for row in picked[:4]:
            row["INTDATA2"] = None
        for row in picked[4:6]:
            row["INTDATA2"] = 0  # Priority shows an empty number as 0: the count is still unknown
        for row in picked[6:13]:
            row[EXPIRY_FIELD] = odata_datetime(self.today - timedelta(days=self.rng.randint(1, 60)))
        for row in picked[13:]:
            row[EXPIRY_FIELD] = odata_datetime(self.today + timedelta(days=self.rng.randint(1, 25)))
        self.data.cases["seeds_unknown"] = tuple(r["SERNUMTEXT"] for r in picked[:6])
