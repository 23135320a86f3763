"""Short clinical flows that many tests start from, written with the real commands."""

from datetime import timedelta
from typing import Any

from store.applicators import change_status
from store.enums import ApplicatorStatus, SignatureMode
from store.scanning import scan_applicator
from store.station import Actor, Station
from store.treatments import finalise_treatment, start_insertion
from tests.utils.data import NURSE, ORDERS, SITE, TODAY

S = ApplicatorStatus

# The shortest path to each status, per workflow.
PATHS: dict[str, dict[ApplicatorStatus, list[ApplicatorStatus]]] = {
    "loaded": {
        S.SEALED: [],
        S.OPENED: [S.OPENED],
        S.LOADED: [S.OPENED, S.LOADED],
        S.INSERTED: [S.OPENED, S.LOADED, S.INSERTED],
        S.FAULTY: [S.OPENED, S.FAULTY],
        S.DISPOSED: [S.OPENED, S.DISPOSED],
        S.DISCHARGED: [S.OPENED, S.LOADED, S.DISCHARGED],
        S.DEPLOYMENT_FAILURE: [S.OPENED, S.LOADED, S.DEPLOYMENT_FAILURE],
    },
    "skin": {S.SEALED: [], S.INSERTED: [S.INSERTED], S.FAULTY: [S.FAULTY]},
}


def insertion(station: Station, order: str = "SO2611001", *, actor: Actor = NURSE) -> str:
    day = TODAY + timedelta(days=ORDERS[order][2])
    change = start_insertion(station, actor, site=SITE, day=day, surgeon="Dr. Gold", order_names=[order])
    return change.record["id"]


def scan(station: Station, treatment_id: str, serial: str, *, actor: Actor = NURSE) -> dict[str, Any]:
    result = scan_applicator(station, actor, treatment_id=treatment_id, raw=serial)
    assert result.saved, result.message
    assert result.applicator is not None
    return result.applicator


def move(
    station: Station,
    applicator_id: str,
    path: list[ApplicatorStatus],
    *,
    deployed: int = 3,
    actor: Actor = NURSE,
) -> None:
    for status in path:
        change_status(
            station,
            actor,
            applicator_id=applicator_id,
            status=status,
            comment="recorded in test" if status.needs_comment else None,
            deployed_seeds=deployed if status is S.FAULTY else None,
            confirm_permanent=status.is_terminal,
        )


def finalised_insertion(station: Station, serials: list[str], order: str = "SO2611001") -> str:
    """An insertion whose applicators were all inserted, signed by the nurse."""
    treatment_id = insertion(station, order)
    for serial in serials:
        applicator = scan(station, treatment_id, serial)
        move(station, applicator["id"], PATHS["loaded"][S.INSERTED])
    finalise_treatment(station, NURSE, treatment_id=treatment_id, mode=SignatureMode.SELF)
    return treatment_id
