"""Every allowed and every forbidden status move of each indication (domain.md, "Allowed moves")."""

import itertools

import pytest
from sqlalchemy import select

from store.applicators import change_status
from store.enums import TERMINAL_STATUSES, ApplicatorStatus, Indication, allowed_moves
from store.errors import ConfirmationRequired, TransitionNotAllowed
from store.guards import APPLICATORS
from store.station import Station
from tests.utils.data import NURSE
from tests.utils.flows import PATHS, insertion, move, scan

S = ApplicatorStatus
LOADED_FLOW = {
    (S.SEALED, S.OPENED),
    (S.OPENED, S.LOADED), (S.OPENED, S.FAULTY), (S.OPENED, S.DISPOSED),
    (S.LOADED, S.INSERTED), (S.LOADED, S.DISCHARGED), (S.LOADED, S.DEPLOYMENT_FAILURE),
}  # fmt: skip
SKIN_FLOW = {(S.SEALED, S.INSERTED), (S.SEALED, S.FAULTY)}
EXPECTED = {
    Indication.PANCREAS: LOADED_FLOW,
    Indication.PROSTATE: LOADED_FLOW,
    Indication.SKIN: SKIN_FLOW,
    Indication.UNKNOWN: LOADED_FLOW | SKIN_FLOW,  # Decision: the union of both maps
}
ALL_PAIRS = list(itertools.product(S, S))
# Order and serial prefix of each indication in the test bundle (tests/utils/data.py).
ORDERS = {
    Indication.PANCREAS: ("SO2611001", "DART-9000"),
    Indication.PROSTATE: ("SO2611002", "DART-7000"),
    Indication.SKIN: ("SO2611004", "DART-5000"),
    Indication.UNKNOWN: ("SO2611005", "DART-4000"),
}


@pytest.mark.parametrize("indication", list(Indication))
@pytest.mark.parametrize(("source", "target"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_move_table_matches_domain(indication: Indication, source: S, target: S) -> None:
    assert (target in allowed_moves(indication, source)) == ((source, target) in EXPECTED[indication])


@pytest.mark.parametrize("indication", list(Indication))
def test_nothing_leaves_a_terminal_status(indication: Indication) -> None:
    for status in TERMINAL_STATUSES:
        assert allowed_moves(indication, status) == frozenset()


def _reachable(indication: Indication) -> dict[S, list[S]]:
    paths = dict(PATHS["skin"]) if indication is Indication.SKIN else dict(PATHS["loaded"])
    if indication is Indication.UNKNOWN:
        paths |= {S.INSERTED: PATHS["skin"][S.INSERTED]}
    return paths


@pytest.mark.parametrize("indication", list(Indication))
def test_every_move_through_the_command(station: Station, indication: Indication) -> None:
    """From every status an applicator can reach, each target is accepted exactly when allowed."""
    order, prefix = ORDERS[indication]
    treatment_id = insertion(station, order)
    serials = iter(f"{prefix}-{i:05d}" for i in range(100))
    _extend_inventory(station, order, prefix)
    for source, path in _reachable(indication).items():
        for target in S:
            applicator = scan(station, treatment_id, next(serials))
            move(station, applicator["id"], path)
            allowed = (source, target) in EXPECTED[indication]
            attempt = dict(
                applicator_id=applicator["id"],
                status=target,
                comment="why",
                deployed_seeds=1 if target is S.FAULTY else None,
                confirm_permanent=True,
            )
            if allowed:
                change_status(station, NURSE, **attempt)
                assert _status(station, applicator["id"]) == target
            else:
                with pytest.raises(TransitionNotAllowed):
                    change_status(station, NURSE, **attempt)
                assert _status(station, applicator["id"]) == source


def test_terminal_status_asks_for_confirmation(station: Station) -> None:
    treatment_id = insertion(station)
    applicator = scan(station, treatment_id, "DART-9000-00000")
    move(station, applicator["id"], [S.OPENED, S.LOADED])
    with pytest.raises(ConfirmationRequired, match="permanent"):
        change_status(station, NURSE, applicator_id=applicator["id"], status=S.INSERTED)
    assert _status(station, applicator["id"]) == S.LOADED
    change_status(station, NURSE, applicator_id=applicator["id"], status=S.INSERTED, confirm_permanent=True)
    assert _status(station, applicator["id"]) == S.INSERTED


def _status(station: Station, applicator_id: str) -> S:
    with station.engine.connect() as conn:
        return S(
            conn.execute(select(APPLICATORS.c.status).where(APPLICATORS.c.id == applicator_id)).scalar_one()
        )


def _extend_inventory(station: Station, order: str, prefix: str) -> None:
    from store.validation_cache import install_bundle
    from tests.utils.data import default_inventory, inventory_item, make_bundle

    extra = [inventory_item(f"{prefix}-{i:05d}", order) for i in range(100)]
    known = {item["serial"] for item in extra}
    inventory = [item for item in default_inventory() if item["serial"] not in known] + extra
    install_bundle(station, make_bundle(inventory=inventory, version="b-2"))
