"""Convergence (issue 4): stations that work offline, on the same treatments, with wrong clocks, end
up holding what the cloud holds, and nothing a clinician saved disappears without a trace.

A hypothesis state machine drives three real stations (two hospitals; A1 and A2 share both sites of
hospital A, B1 is hospital B) through the store's own commands (tests/reliability/convergence_world.py
has the layout; a fourth station syncing one site only cost a third more time): emergency
insertions, scans, status moves, comments, finalising, removals (applicators, single seeds, the
removal form). In between it runs sync rounds against ONE real cloud (PostgreSQL, HTTP on
loopback), cuts and heals each station's network (a TCP proxy that resets connections), and moves
each station's wall clock (seconds, a day, a year, forwards and back).

Every example ends by healing every link and letting every station sync twice. Then:

1. every queue entry is done, and the cloud's ledger holds each operation exactly once (no
   operation missing, none extra, no change logged twice, no record inserted twice);
2. every station of a site holds, field by field, what the cloud holds for that site (patient
   fields decrypted), and nothing of a site it does not sync;
3. every pair of edits of one field made on two stations without knowing of each other, that the
   rules hold for a person (a manual field, a status no move joins, "latest wins" with a clock that
   is not trusted), is an open conflict in the cloud and on the station whose push met it;
4. no edit vanished: every edited value is the final one, or is kept in a conflict row, or was
   replaced by an edit that the field's rule lets win (made knowing it, later by the hybrid clock
   with both clocks trusted, a more advanced status, true over false).

Columns left out of the comparison, all station-local by the protocol (sync.protocol
`is_station_local`): `sync_status`, `local_version`, `cloud_version` (this station's sync
bookkeeping), `usage` (generated from `status`, which is compared), `subject_id_enc`,
`patient_label_enc` (ciphertext under each station's own key: compared decrypted as `subject_id`
and `patient_label`), `subject_hash`, `order_hashes` (keyed hashes under each station's own key).

Settings come from a hypothesis profile (`convergence-ci`: 200 examples, derandomized, so a red
CI run replays; `convergence-dev` off CI: random, `CONVERGENCE_EXAMPLES` to change the count).
"""

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import select

from cloud.schema import change_log, op_ledger
from cloud.schema import conflicts as cloud_conflicts
from store.applicators import change_status, update_details
from store.enums import (
    ApplicatorStatus,
    Indication,
    SeedRemovalReason,
    SignatureMode,
    TreatmentType,
    allowed_moves,
)
from store.errors import StoreError
from store.guards import load_treatment
from store.journal import QUEUE
from store.models import SyncConflict
from store.removal import fill_removal_form, remove_applicator, remove_single_seed
from store.removal_counts import removal_counts
from store.scanning import Confirmation, scan_applicator
from store.treatments import EmergencyPatient, finalise_treatment, start_insertion, start_removal
from sync.engine import Outcome, SyncEngine, SyncSettings
from sync.rules import same
from sync.wire import typed_value
from tests.reliability.convergence_oracle import Edit, Oracle, needs_person
from tests.reliability.convergence_world import (
    CLINICAL_TABLES,
    STATIONS,
    CloudWorld,
    Laptop,
    WorldTime,
    make_laptop,
    running_cloud,
    serials,
    station_template,
)

S = ApplicatorStatus
STATION_CONFLICTS = SyncConflict.__table__
STEPS = 20
settings.register_profile(
    "convergence-ci",
    max_examples=200,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
settings.register_profile(
    "convergence-dev",
    parent=settings.get_profile("convergence-ci"),
    max_examples=int(os.environ.get("CONVERGENCE_EXAMPLES", "200")),
    derandomize=False,
    # CONVERGENCE_SHRINK=0: report the first failing example as found (shrinking one takes minutes).
    phases=[p for p in Phase if p is not Phase.shrink or os.environ.get("CONVERGENCE_SHRINK") != "0"],
)
PROFILE = "convergence-ci" if os.environ.get("CI") == "true" else "convergence-dev"

LAPTOPS = st.sampled_from(sorted(STATIONS))
HOSPITAL_A_LAPTOPS = ("A1", "A2")
SKEWS = {
    "seconds ahead": timedelta(seconds=7),
    "seconds behind": timedelta(seconds=-4),
    "a day ahead": timedelta(days=1),
    "a day behind": timedelta(days=-1),
    "a year ahead": timedelta(days=365),
    "a year behind": timedelta(days=-365),
}
ALL_CONFIRMED = frozenset(Confirmation)
ENGINE_SETTINGS = SyncSettings(timeout_s=10)
STATS: Counter[str] = Counter()  # what the examples exercised, checked after the run


@pytest.fixture(scope="module")
def cloud_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CloudWorld, Path]]:
    work = tmp_path_factory.mktemp("convergence")
    # Station files on tmpfs where there is one: hundreds of stations' fsyncs would be most of
    # the run, and durability is proven elsewhere (tests/reliability/test_crash_scans.py).
    shm = Path("/dev/shm")
    with (
        running_cloud(work) as cloud,
        tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else work) as scratch,
    ):
        yield cloud, Path(scratch)


@pytest.mark.postgres
@pytest.mark.slow
def test_stations_converge_with_the_cloud_under_partitions_skew_and_shared_edits(
    cloud_world: tuple[CloudWorld, Path],
) -> None:
    cloud, work = cloud_world
    template = station_template(work)
    STATS.clear()

    class Machine(ConvergenceMachine):
        def __init__(self) -> None:
            super().__init__(cloud, template, work)

    run_state_machine_as_test(Machine, settings=settings.get_profile(PROFILE))

    # The examples did what this test claims to test (a generator that never shares a treatment
    # or never cuts a link would pass for nothing).
    examples = STATS["examples"]
    print(f"convergence examples: {dict(STATS)}")  # shown with -s (or -rP)
    for what, at_least in {
        "shared record edited on two stations": examples // 10,
        "concurrent edits held for a person": examples // 50,
        "concurrent edits decided by a rule": examples // 20,
        "round offline": examples // 5,
        "skewed a year": examples // 50,
        "skewed a day": examples // 50,
        "finalised": examples // 10,
        "removal started": examples // 10,
    }.items():
        assert STATS[what] >= max(at_least, 1), f"only {STATS[what]} examples had {what!r}: {dict(STATS)}"


class ConvergenceMachine(RuleBasedStateMachine):
    def __init__(self, cloud: CloudWorld, template: Path, work: Path) -> None:
        super().__init__()
        cloud.reset()
        self.cloud = cloud
        self.world = WorldTime(_real_now())
        self.dir = Path(work) / f"example-{STATS['examples']}"
        STATS["examples"] += 1
        self.laptops: dict[str, Laptop] = {}
        self.engines: dict[str, SyncEngine] = {}
        self.oracle = Oracle()
        self.counter = 0
        self.labels: dict[str, int] = {}  # record id -> the order in which it was made
        self.finals: dict[tuple[str, str], dict[str, Any]] = {}  # the cloud's records at the end
        self.did: set[str] = set()
        for name in sorted(STATIONS):
            laptop = make_laptop(name, cloud, template, self.dir, self.world)
            self.laptops[name] = laptop
            # One transport per station for the whole example: a new client's TLS context per
            # round cost more than the round itself.
            self.engines[name] = SyncEngine(
                laptop.station, settings=ENGINE_SETTINGS, transport=httpx.HTTPTransport()
            )
        # A known start: A1 has an insertion at the shared site with two applicators, B1 one; every
        # station has synced once (an enrolled station measured its clock against the cloud's).
        self._seed_treatment("A1", "CA-HFA", 2)
        self._seed_treatment("A1", "CA-TLV", 1, finished=True)  # ready for a removal
        self._seed_treatment("B1", "CB-JLM", 1)
        for name in sorted(self.laptops):
            self._sync(name, expect_online=True)

    # --- clinical work ---------------------------------------------------------------------------
    @rule(name=LAPTOPS, site=st.integers(0, 1), indication=st.sampled_from(list(Indication)))
    def start_insertion(self, name: str, site: int, indication: Indication) -> None:
        laptop = self.laptops[name]
        self._command(
            name,
            start_insertion,
            site=laptop.sites[site % len(laptop.sites)],
            day=laptop.station.local_today(),
            surgeon="Dr. Gold",
            emergency=self._patient(indication),
        )

    @rule(name=LAPTOPS, data=st.data())
    def scan(self, name: str, data: st.DataObject) -> None:
        treatment = self._draw(data, self._open_treatments(name, TreatmentType.INSERTION))
        if treatment is not None:
            serial = data.draw(st.sampled_from(serials(treatment[1])), label="serial")
            # A stopped scan (the serial is live elsewhere on this station) writes nothing.
            self._command(
                name, scan_applicator, treatment_id=treatment[0], raw=serial, confirmed=ALL_CONFIRMED
            )

    @rule(name=LAPTOPS, data=st.data())
    def move(self, name: str, data: st.DataObject) -> None:
        rows = self._laptop(name).query(
            "SELECT a.id, a.status, t.indication, a.seed_quantity FROM applicators a"
            " JOIN treatments t ON t.id = a.treatment_id WHERE NOT t.is_complete AND t.deleted_at IS NULL"
            " ORDER BY a.id"
        )
        picked = self._draw(data, [r for r in rows if not S(r[1]).is_terminal])
        if picked is None:
            return
        applicator_id, status, indication, seeds = picked
        target = data.draw(
            st.sampled_from(sorted(allowed_moves(Indication(indication), S(status)))), label="status"
        )
        self._command(
            name,
            change_status,
            applicator_id=applicator_id,
            status=target,
            comment=self._text(name, "why") if target.needs_comment else None,
            deployed_seeds=data.draw(st.integers(0, seeds), label="deployed") if target is S.FAULTY else None,
            confirm_permanent=True,
        )

    @rule(name=LAPTOPS, data=st.data())
    def comment(self, name: str, data: st.DataObject) -> None:
        rows = self._laptop(name).query(
            "SELECT a.id FROM applicators a JOIN treatments t ON t.id = a.treatment_id"
            " WHERE NOT t.is_complete AND t.deleted_at IS NULL ORDER BY a.id"
        )
        picked = self._draw(data, rows)
        if picked is not None:
            self._command(name, update_details, applicator_id=picked[0], comment=self._text(name, "note"))

    @rule(name=LAPTOPS, data=st.data())
    def finish_procedure(self, name: str, data: st.DataObject) -> None:
        """Every applicator of an open insertion to a final status, then sign: the end of a
        procedure, the way a nurse records it (many status changes in a row)."""
        picked = self._draw(data, self._open_treatments(name, TreatmentType.INSERTION))
        if picked is None:
            return
        rows = self._laptop(name).query(
            "SELECT a.id, a.status, t.indication, a.seed_quantity FROM applicators a"
            " JOIN treatments t ON t.id = a.treatment_id WHERE t.id = ? AND a.deleted_at IS NULL",
            picked[0],
        )
        for applicator_id, status, indication, seeds in sorted(rows, key=lambda r: self.labels[r[0]]):
            current = S(status)
            while not current.is_terminal:
                moves = sorted(allowed_moves(Indication(indication), current))
                target = data.draw(st.sampled_from(moves), label="status")
                if (
                    self._command(
                        name,
                        change_status,
                        applicator_id=applicator_id,
                        status=target,
                        comment=self._text(name, "why") if target.needs_comment else None,
                        deployed_seeds=seeds // 2 if target is S.FAULTY else None,
                        confirm_permanent=True,
                    )
                    is None
                ):
                    break
                current = target
        self.finalise(name, data, treatment=picked)

    @rule(name=LAPTOPS, data=st.data())
    def finalise(self, name: str, data: st.DataObject, treatment: tuple[str, str] | None = None) -> None:
        picked = treatment or self._draw(data, self._open_treatments(name))
        if picked is not None and self._command(
            name, finalise_treatment, treatment_id=picked[0], mode=SignatureMode.SELF
        ):
            self.did.add("finalised")

    @rule(name=LAPTOPS, data=st.data())
    def start_removal(self, name: str, data: st.DataObject) -> None:
        rows = self._laptop(name).query(
            "SELECT i.id, i.site FROM treatments i WHERE i.type = 'insertion' AND i.is_complete"
            " AND i.deleted_at IS NULL AND NOT EXISTS (SELECT 1 FROM treatments r"
            " WHERE r.insertion_treatment_id = i.id AND r.deleted_at IS NULL) ORDER BY i.id"
        )
        picked = self._draw(data, rows)
        if picked is not None and self._command(
            name, start_removal, insertion_id=picked[0], confirm_outside_window=True
        ):
            self.did.add("removal started")

    @rule(name=LAPTOPS, data=st.data(), seeds=st.sampled_from([10, 20]), single=st.booleans())
    def remove(self, name: str, data: st.DataObject, seeds: int, single: bool) -> None:
        picked = self._draw(data, self._open_treatments(name, TreatmentType.REMOVAL))
        if picked is None:
            return
        if single:
            self._command(
                name,
                remove_single_seed,
                removal_id=picked[0],
                reason=SeedRemovalReason.OTHER,
                reason_text=self._text(name, "seed"),
            )
        else:
            self._command(name, remove_applicator, removal_id=picked[0], capacity=seeds)

    @rule(name=LAPTOPS, data=st.data(), category=st.sampled_from(["lost", "retrieved", "in_tissue", "other"]))
    def fill_removal_form(self, name: str, data: st.DataObject, category: str) -> None:
        picked = self._draw(data, self._open_treatments(name, TreatmentType.REMOVAL))
        if picked is None:
            return
        laptop = self._laptop(name)
        with laptop.station.engine.connect() as conn:
            gap = removal_counts(conn, load_treatment(conn, picked[0])).gap
        if gap < 0:
            category = "other"  # more removed than deployed: only "other" may explain it
        self._command(
            name,
            fill_removal_form,
            removal_id=picked[0],
            removal_date=laptop.station.local_today(),
            all_same_day=True,
            other_text=self._text(name, "gap") if category == "other" else None,
            **{category: abs(gap)},
        )

    # --- the network and the clocks --------------------------------------------------------------
    @rule(name=LAPTOPS)
    def sync(self, name: str) -> None:
        self._sync(name, expect_online=not self._laptop(name).proxy.cut)

    @rule(first=st.sampled_from(HOSPITAL_A_LAPTOPS), second=st.sampled_from(HOSPITAL_A_LAPTOPS))
    def sync_two(self, first: str, second: str) -> None:
        """One station's work reaches another of its hospital (the usual way records get shared)."""
        for name in (first, second):
            self._sync(name, expect_online=not self._laptop(name).proxy.cut)

    @rule(name=LAPTOPS)
    def toggle_network(self, name: str) -> None:
        """The station's link goes down (its background job keeps trying: a round ends offline) or
        comes back."""
        proxy = self._laptop(name).proxy
        proxy.cut = not proxy.cut
        if proxy.cut:
            self._sync(name, expect_online=False)

    @rule(name=LAPTOPS, skew=st.sampled_from([*sorted(SKEWS), "corrected"]))
    def move_clock(self, name: str, skew: str) -> None:
        clock = self._laptop(name).clock
        if skew == "corrected":
            clock.skew = timedelta(0)
            return
        clock.skew += SKEWS[skew]
        self.did.add(f"skewed {skew.removesuffix(' ahead').removesuffix(' behind')}")

    # Rules are chosen uniformly: edits and syncs get a second rule each, so that edits of shared
    # records meet more often than records are made.
    @rule(name=LAPTOPS, data=st.data())
    def comment_more(self, name: str, data: st.DataObject) -> None:
        self.comment(name, data)

    @rule(name=LAPTOPS, data=st.data())
    def move_more(self, name: str, data: st.DataObject) -> None:
        self.move(name, data)

    @rule(first=st.sampled_from(HOSPITAL_A_LAPTOPS), second=st.sampled_from(HOSPITAL_A_LAPTOPS))
    def sync_two_more(self, first: str, second: str) -> None:
        self.sync_two(first, second)

    @invariant()
    def time_passes(self) -> None:
        self.world.step()

    # --- the end of an example -------------------------------------------------------------------
    def teardown(self) -> None:
        try:
            if self.laptops:
                self._settle()
                self._check()
        finally:
            for laptop in self.laptops.values():
                laptop.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            for what in self.did:
                STATS[what] += 1

    def _settle(self) -> None:
        for laptop in self.laptops.values():
            laptop.proxy.cut = False
        for _ in range(2):
            for name in sorted(self.laptops):
                self._sync(name, expect_online=True)

    def _check(self) -> None:
        self._check_queues_and_ledger()
        finals = self.finals = self._check_identical()
        open_cloud = self._check_conflicts_held()
        self._check_nothing_vanished(finals, open_cloud)

    def _check_queues_and_ledger(self) -> None:
        entries = {
            (laptop.station.device_id, e["op_id"]): e
            for laptop in self.laptops.values()
            for e in _queue(laptop)
        }
        stuck = [
            (op_id, e["status"], e["last_error"])
            for (_d, op_id), e in entries.items()
            if e["status"] != "done"
        ]
        assert not stuck, f"entries not done after the network healed and two rounds: {stuck}"
        ledger = self.cloud.all(select(op_ledger.c.device_id, op_ledger.c.op_id, op_ledger.c.result))
        assert {(r.device_id, r.op_id) for r in ledger} == set(entries), "the ledger is not the queues"
        assert all(r.result is not None for r in ledger), "a ledger row without its result"
        logged = [r.op_id for r in self.cloud.all(select(change_log.c.op_id))]
        twice = [op for op, n in Counter(logged).items() if n > 1]
        assert not twice, f"operations logged as a change more than once: {twice}"
        for table in CLINICAL_TABLES:
            inserted = {rid for (t, rid) in self.oracle.inserted if t == table}
            in_cloud = {rid for rows in self.cloud.records(table).values() for rid in rows}
            assert in_cloud == inserted, f"{table}: the cloud's records are not the stations' inserts"

    def _check_identical(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every station holds its sites' records as the cloud does, field by field.

        The one exception is written down by the design: a record from the cloud that a station's
        own constraints refuse (one serial scanned into one treatment on two laptops: the station
        keeps one live row per serial and treatment) is held there for a person as an open
        `refused_by_station` conflict. Such a record must be under an open conflict in the cloud too.
        """
        finals: dict[tuple[str, str], dict[str, Any]] = {}
        open_in_cloud = {
            (r.table_name, r.record_id)
            for r in self.cloud.all(select(cloud_conflicts).where(cloud_conflicts.c.status == "open"))
        }
        for table in CLINICAL_TABLES:
            in_cloud = self.cloud.records(table)
            for rows in in_cloud.values():
                finals |= {(table, rid): row for rid, row in rows.items()}
            for laptop in self.laptops.values():
                held = laptop.records(table)
                strange = set(held) - set(laptop.sites)
                assert not strange, f"{laptop.name} holds {table} of {strange}, sites it does not sync"
                refused = {
                    r[0]
                    for r in laptop.query(
                        "SELECT record_id FROM sync_conflicts WHERE table_name = ?"
                        " AND rule = 'refused_by_station' AND status = 'open'",
                        table,
                    )
                }
                unexplained = refused - {rid for t, rid in open_in_cloud if t == table}
                assert not unexplained, (
                    f"{laptop.name} refused {table} {unexplained}: no open conflict in the cloud"
                )
                if refused:
                    self.did.add("record refused by a station, held for a person")
                for site in laptop.sites:
                    mine = {k: v for k, v in held.get(site, {}).items() if k not in refused}
                    theirs = {k: v for k, v in in_cloud[site].items() if k not in refused}
                    _assert_same_records(f"{laptop.name} vs cloud, {table} at {site}", mine, theirs)
        return finals

    def _check_conflicts_held(self) -> set[tuple[str, str, str]]:
        """Pairs the rules hold for a person: open in the cloud and on the station that met them."""
        rows = self.cloud.all(select(cloud_conflicts).where(cloud_conflicts.c.status == "open"))
        open_cloud = {(r.table_name, r.record_id, r.field) for r in rows}
        held_on = {
            (laptop.station.device_id, c[0])
            for laptop in self.laptops.values()
            for c in laptop.query("SELECT cloud_conflict_id FROM sync_conflicts WHERE status = 'open'")
        }
        for row in rows:
            assert (row.device_id, row.id) in held_on, (
                f"cloud conflict {row.id} on {row.table_name}.{row.field} is not open on the station "
                "that met it"
            )
        shared = False
        for first, second in self.oracle.concurrent_pairs():
            shared = True
            if not (first.op_id in self.oracle.in_cloud and second.op_id in self.oracle.in_cloud):
                continue
            indication = self._indication(first)
            if needs_person(first, second, indication):
                self.did.add("concurrent edits held for a person")
                assert first.key in open_cloud, (
                    f"{first.field} of {first.table} {first.record_id} was changed on {first.laptop} "
                    f"({first.value!r}) and {second.laptop} ({second.value!r}) without either knowing; "
                    "the rules hold that for a person, but no open conflict is in the cloud"
                )
            elif not same(first.value, second.value):
                self.did.add("concurrent edits decided by a rule")
        if shared or any(
            len({e.laptop for e in self.oracle.edits if e.key == k.key}) > 1 for k in self.oracle.edits
        ):
            self.did.add("shared record edited on two stations")
        return open_cloud

    def _check_nothing_vanished(
        self, finals: dict[tuple[str, str], dict[str, Any]], open_cloud: set[tuple[str, str, str]]
    ) -> None:
        kept = self._conflict_values()
        for edit in self.oracle.edits:
            final = finals[(edit.table, edit.record_id)]
            if same(final.get(edit.field), edit.value) or _kept(kept, edit):
                continue
            if self.oracle.superseded(edit, final, self._indication(edit)) is not None:
                continue
            pytest.fail(
                f"{edit.laptop}'s edit of {edit.table}.{edit.field} on {edit.record_id} to {edit.value!r} "
                f"(hlc {edit.hlc}, offset {edit.offset_ms}) vanished: the record holds "
                f"{final.get(edit.field)!r}, no conflict keeps it and no edit replaced it by the rules"
            )

    # --- helpers ---------------------------------------------------------------------------------
    def _laptop(self, name: str) -> Laptop:
        return self.laptops[name]

    def _command(self, name: str, command: Any, **kwargs: Any) -> Any:
        laptop = self._laptop(name)
        try:
            result = command(laptop.station, laptop.actor, **kwargs)
        except StoreError:
            result = None  # refused: nothing written (the store's own tests prove that)
        self._read_queue(laptop)
        return result

    def _read_queue(self, laptop: Laptop) -> None:
        new = _queue(laptop, after_seq=laptop.ops_seen)
        if new:
            laptop.ops_seen = max(e["device_seq"] for e in new)
            for entry in new:
                self.labels.setdefault(entry["record_id"], len(self.labels))
            self.oracle.committed(laptop.name, new, laptop.station.cipher)

    def _sync(self, name: str, *, expect_online: bool) -> None:
        laptop = self._laptop(name)
        known = set(self.oracle.in_cloud)
        report = self.engines[name].run_round()
        if not expect_online:
            assert report.outcome == Outcome.OFFLINE, (report.outcome, report.error)
            self.did.add("round offline")
            return
        assert report.outcome == Outcome.OK, (name, report.outcome, report.error)
        done = [r[0] for r in laptop.query("SELECT op_id FROM sync_queue WHERE status = 'done'")]
        self.oracle.synced(name, known, done)

    def _seed_treatment(self, name: str, site: str, scans: int, *, finished: bool = False) -> None:
        change = self._command(
            name,
            start_insertion,
            site=site,
            day=self._laptop(name).station.local_today(),
            surgeon="Dr. Gold",
            emergency=self._patient(Indication.PANCREAS),
        )
        for serial in serials(site)[:scans]:
            scanned = self._command(
                name, scan_applicator, treatment_id=change.record["id"], raw=serial, confirmed=ALL_CONFIRMED
            )
            for status in (S.OPENED, S.LOADED, S.INSERTED) if finished else ():
                self._command(
                    name,
                    change_status,
                    applicator_id=scanned.applicator["id"],
                    status=status,
                    confirm_permanent=True,
                )
        if finished:
            self._command(name, finalise_treatment, treatment_id=change.record["id"], mode=SignatureMode.SELF)

    def _patient(self, indication: Indication) -> EmergencyPatient:
        self.counter += 1
        return EmergencyPatient(
            subject_id=f"EMERG-{self.counter:04d}",
            patient_label=f"Patient {self.counter}",
            indication=indication,
            planned_seeds=40,
            activity_per_seed=2.5,
        )

    def _text(self, name: str, what: str) -> str:
        self.counter += 1
        return f"{what} {self.counter} on {name}"

    def _open_treatments(self, name: str, kind: TreatmentType | None = None) -> list[tuple[str, str]]:
        rows = self._laptop(name).query(
            "SELECT id, site, type FROM treatments WHERE NOT is_complete AND deleted_at IS NULL ORDER BY id"
        )
        return [(r[0], r[1]) for r in rows if kind is None or r[2] == kind.value]

    def _draw(self, data: st.DataObject, rows: list[Any]) -> Any:
        """One of the rows (each starting with a record id), in the order the records were made: ids
        are random, and a replay must pick the same record for the same draw."""
        if not rows:
            return None
        ordered = sorted(rows, key=lambda row: self.labels[row[0]])
        return data.draw(st.sampled_from(ordered), label="record")

    def _indication(self, edit: Edit) -> str:
        """The procedure kind of the edited record's treatment (which state machine applies)."""
        record = self.finals.get((edit.table, edit.record_id), {})
        treatment = (
            record
            if edit.table == "treatments"
            else self.finals.get(("treatments", record.get("treatment_id")), {})
        )
        return str(treatment.get("indication") or "unknown")

    def _conflict_values(self) -> dict[tuple[str, str, str], list[Any]]:
        """Every value a conflict row keeps (cloud and stations), by (table, record, field)."""
        kept: dict[tuple[str, str, str], list[Any]] = {}
        for r in self.cloud.all(select(cloud_conflicts)):
            kept.setdefault((r.table_name, r.record_id, r.field), []).extend([r.local_value, r.server_value])
        for laptop in self.laptops.values():
            with laptop.station.engine.connect() as conn:
                for r in conn.execute(select(STATION_CONFLICTS)):
                    kept.setdefault((r.table_name, r.record_id, r.field), []).extend(
                        [r.local_value, r.server_value]
                    )
        return kept


# --- module helpers ------------------------------------------------------------------------------
def _real_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(microsecond=0)


def _all_sites() -> list[str]:
    return sorted({s for sites, _actor in STATIONS.values() for s in sites})


def _queue(laptop: Laptop, *, after_seq: int = 0) -> list[dict[str, Any]]:
    query = select(QUEUE).where(QUEUE.c.device_seq > after_seq).order_by(QUEUE.c.device_seq)
    with laptop.station.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def _assert_same_records(
    what: str, mine: dict[str, dict[str, Any]], cloud: dict[str, dict[str, Any]]
) -> None:
    assert set(mine) == set(cloud), f"{what}: records {sorted(set(mine) ^ set(cloud))} are on one side only"
    differences = [
        (rid, name, mine[rid].get(name), cloud[rid].get(name))
        for rid in sorted(mine)
        for name in sorted(set(mine[rid]) | set(cloud[rid]))
        if not same(mine[rid].get(name), cloud[rid].get(name))
    ]
    assert not differences, f"{what}: fields differ (record, field, station, cloud): {differences}"


def _kept(kept: dict[tuple[str, str, str], list[Any]], edit: Edit) -> bool:
    from sync.wire import TABLES

    table = TABLES[edit.table]
    values = kept.get(edit.key, [])
    return any(
        same(typed_value(table, edit.field, v) if edit.field in table.c else v, edit.value) for v in values
    )
