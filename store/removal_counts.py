"""Seeds deployed at insertion versus seeds removed: derived on demand, never stored.

Decision (domain.md): removed seeds count what the removed applicators deployed, not their
capacity, plus the single seeds taken out one at a time.
"""

from dataclasses import dataclass

from sqlalchemy import Connection, RowMapping, func, select

from store.models import Applicator, RemovedSeed, Treatment

APPLICATORS = Applicator.__table__
SEEDS = RemovedSeed.__table__
TREATMENTS = Treatment.__table__


@dataclass(frozen=True)
class RemovalCounts:
    deployed: int  # seeds the insertion (and its continuations) deployed
    removed_with_applicators: int
    single_seeds: int

    @property
    def removed(self) -> int:
        return self.removed_with_applicators + self.single_seeds

    @property
    def gap(self) -> int:
        """Deployed minus removed: what the clarification must explain."""
        return self.deployed - self.removed


def insertion_family(conn: Connection, insertion_id: str) -> list[str]:
    """The insertion and its continuations: one patient's seeds at one site."""
    children = conn.execute(
        select(TREATMENTS.c.id).where(
            TREATMENTS.c.parent_treatment_id == insertion_id, TREATMENTS.c.deleted_at.is_(None)
        )
    ).scalars()
    return [insertion_id, *children]


def removal_counts(conn: Connection, removal: RowMapping) -> RemovalCounts:
    family = insertion_family(conn, removal["insertion_treatment_id"])
    live = APPLICATORS.c.deleted_at.is_(None)
    deployed = conn.execute(
        select(func.coalesce(func.sum(APPLICATORS.c.deployed_seeds), 0)).where(
            APPLICATORS.c.treatment_id.in_(family), live
        )
    ).scalar_one()
    removed = conn.execute(
        select(func.coalesce(func.sum(APPLICATORS.c.deployed_seeds), 0)).where(
            APPLICATORS.c.removal_treatment_id == removal["id"], APPLICATORS.c.is_removed, live
        )
    ).scalar_one()
    singles = conn.execute(
        select(func.count()).where(SEEDS.c.treatment_id == removal["id"], SEEDS.c.deleted_at.is_(None))
    ).scalar_one()
    return RemovalCounts(
        deployed=int(deployed), removed_with_applicators=int(removed), single_seeds=int(singles)
    )
