"""Push of a finalised treatment: a signature by code counts only if the cloud verified that code.

An Alpha Tau user's finalisation names a signer and is `signature_mode = code` on the station; the
cloud's push applies it only when a signing code of that site and treatment was used (verified,
cloud/auth/signing.py) for that signer at that requester's request. Anything else is a forged or
mistaken signature: `signature_unverified`, and nothing of it is written. A hospital user's own
signature (online, or offline with her PIN) is not a code signature and is not checked.

Stations are real (store commands on SQLite) and their queue goes over real HTTP to the cloud on
real PostgreSQL (tests/cloud/test_push.py's fixtures). The signing_codes rows stand for what
verify_signing_code leaves behind: written by the owner as test set-up, used or not.
"""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, select

from cloud.schema import change_log, op_ledger, signing_codes
from cloud.schema import treatments as cloud_treatments
from store.enums import ApplicatorStatus, SignatureMode
from store.signing import CodeSignature, finalise_with_code
from store.station import Station
from store.treatments import finalise_treatment
from tests.cloud.test_push import Cloud, Device, cloud, count, device, station_ops, statuses
from tests.utils.data import ALPHATAU, NURSE, SITE
from tests.utils.flows import PATHS, insertion, move, scan

__all__ = ["cloud", "device"]  # fixtures, used by name

SIGNER = NURSE.user_id
REQUESTER = ALPHATAU.user_id
UNVERIFIED = "signature_unverified"


# --- set-up -------------------------------------------------------------------------------------
def ready_insertion(station: Station) -> str:
    """An insertion whose one applicator was inserted: ready to finalise."""
    treatment_id = insertion(station)
    applicator = scan(station, treatment_id, "DART-9000-00001")["id"]
    move(station, applicator, PATHS["loaded"][ApplicatorStatus.INSERTED])
    return treatment_id


def code_finalised(station: Station) -> str:
    """Finalised on the station by the Alpha Tau user with the nurse's code signature."""
    treatment_id = ready_insertion(station)
    signature = CodeSignature(
        treatment_id=treatment_id,
        site=SITE,
        signer_id=SIGNER,
        signer_name=NURSE.name,
        signer_position=NURSE.position,
        signed_at=datetime(2026, 11, 26, 9, 0, tzinfo=UTC),
        requested_by=REQUESTER,
        signature_id="sig-1",
    )
    finalise_with_code(station, ALPHATAU, treatment_id=treatment_id, signature=signature)
    return treatment_id


def add_code(
    cloud: Cloud,
    device: Device,
    treatment_id: str,
    *,
    used: bool = True,
    signer: str = SIGNER,
    requester: str = REQUESTER,
) -> None:
    """A signing_codes row as the cloud keeps it once sent (and, when `used`, verified)."""
    now = datetime.now(UTC)
    with cloud.owner.begin() as conn:
        conn.execute(
            insert(signing_codes).values(
                site=SITE,
                id=str(uuid.uuid4()),
                treatment_id=treatment_id,
                signer_id=signer,
                requested_by=requester,
                device_id=device.device_id,
                code_hash="$argon2id$not-a-real-hash",
                channel="email",
                attempts=1 if used else 0,
                expires_at=now + timedelta(hours=1),
                used_at=now if used else None,
            )
        )


def split_finalise(
    ops: list[dict[str, Any]], treatment_id: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The operations before the finalisation, and the finalisation itself (the last op)."""
    *before, finalise = ops
    assert finalise["table"] == "treatments" and finalise["record_id"] == treatment_id
    assert finalise["changed"]["is_complete"][1] is True
    return before, finalise


def stored_treatment(cloud: Cloud, treatment_id: str) -> tuple[int, dict[str, Any]]:
    [(version, data)] = cloud.rows(
        select(cloud_treatments.c.version, cloud_treatments.c.data).where(
            cloud_treatments.c.id == treatment_id
        )
    )
    return version, data


# --- a verified code signs --------------------------------------------------------------------
def test_a_code_signed_finalise_with_the_verified_code_applies_in_a_few_statements(
    cloud: Cloud, station: Station, device: Device, app_engine: Engine
) -> None:
    treatment_id = code_finalised(station)
    ops = station_ops(station)
    add_code(cloud, device, treatment_id, used=False)  # an earlier code, voided unused: not this one
    add_code(cloud, device, treatment_id)
    statements: list[str] = []

    def count_statement(*args: Any) -> None:
        statements.append(args[2])

    event.listen(app_engine, "before_cursor_execute", count_statement)
    try:
        results = device.push(ops)  # the treatment, its applicator and the finalisation in one batch
    finally:
        event.remove(app_engine, "before_cursor_execute", count_statement)

    assert set(statuses(results)) == {"applied"}, results
    _version, data = stored_treatment(cloud, treatment_id)
    assert data["is_complete"] is True and data["signature_mode"] == SignatureMode.CODE.value
    assert (data["signed_by_user_id"], data["completed_by"]) == (SIGNER, REQUESTER)
    # The signing codes are read with the rest of the batch: no statement more than any batch.
    assert len(statements) <= 8, statements


# --- anything else is refused, and nothing of it is written -----------------------------------
def _no_code(cloud: Cloud, device: Device, treatment_id: str) -> None:
    """No signing code was ever sent for the treatment."""


def _another_treatments_code(cloud: Cloud, device: Device, treatment_id: str) -> None:
    add_code(cloud, device, str(uuid.uuid4()))


def _unused_code(cloud: Cloud, device: Device, treatment_id: str) -> None:
    add_code(cloud, device, treatment_id, used=False)


def _another_signers_code(cloud: Cloud, device: Device, treatment_id: str) -> None:
    add_code(cloud, device, treatment_id, signer="u-other-nurse")


def _another_requesters_code(cloud: Cloud, device: Device, treatment_id: str) -> None:
    add_code(cloud, device, treatment_id, requester="u-other-alphatau")


@pytest.mark.parametrize(
    "codes",
    [_no_code, _another_treatments_code, _unused_code, _another_signers_code, _another_requesters_code],
    ids=["no code", "another treatment's", "unused", "another signer's", "another requester's"],
)
def test_a_code_signed_finalise_without_its_verified_code_is_rejected_and_writes_nothing(
    cloud: Cloud, station: Station, device: Device, codes: Any
) -> None:
    treatment_id = code_finalised(station)
    before, finalise = split_finalise(station_ops(station), treatment_id)
    assert set(statuses(device.push(before))) == {"applied"}
    codes(cloud, device, treatment_id)
    version_before, data_before = stored_treatment(cloud, treatment_id)
    changes_before = count(cloud, change_log)

    [result] = device.push([finalise])

    assert result["status"] == "rejected" and result["code"] == UNVERIFIED, result
    assert result["message"] == (
        f"Treatment {treatment_id} is finalised with a signature by code, but the cloud verified no "
        f"signing code for it signed by {SIGNER} at the request of {REQUESTER}. Nothing was applied; "
        "the finalisation waits in quarantine for a person to check."
    )
    assert stored_treatment(cloud, treatment_id) == (version_before, data_before)
    assert data_before.get("is_complete") is not True
    assert count(cloud, change_log) == changes_before
    assert count(cloud, change_log, change_log.c.op_id == finalise["op_id"]) == 0
    # A final refusal: remembered, so a resend gets the same answer, not a second look.
    assert count(cloud, op_ledger, op_ledger.c.op_id == finalise["op_id"]) == 1
    [again] = device.push([finalise])
    assert again["status"] == "duplicate" and again["original"] == result


def test_a_forged_signature_in_a_batch_is_refused_alone_the_rest_applies(
    cloud: Cloud, station: Station, device: Device
) -> None:
    treatment_id = code_finalised(station)
    ops = station_ops(station)

    results = device.push(ops)

    *rest, refused = results
    assert set(statuses(rest)) == {"applied"} and refused["code"] == UNVERIFIED
    version, data = stored_treatment(cloud, treatment_id)
    assert version == 1 and data.get("is_complete") is not True


def test_a_tampered_requester_is_refused_even_with_a_verified_code(
    cloud: Cloud, station: Station, device: Device
) -> None:
    """A station that rewrote the finalisation to name someone else as requester forges a signature."""
    treatment_id = code_finalised(station)
    before, finalise = split_finalise(station_ops(station), treatment_id)
    device.push(before)
    add_code(cloud, device, treatment_id)
    forged = {
        **finalise,
        "payload": {**finalise["payload"], "completed_by": "u-admin"},
        "changed": {**finalise["changed"], "completed_by": [None, "u-admin"]},
    }

    [result] = device.push([forged])

    assert result["code"] == UNVERIFIED and "at the request of u-admin" in result["message"]
    assert stored_treatment(cloud, treatment_id)[0] == 1


# --- a hospital user's own signature is not a code signature ------------------------------------
@pytest.mark.parametrize("mode", [SignatureMode.SELF, SignatureMode.OFFLINE_PIN])
def test_a_hospital_users_own_signature_needs_no_code(
    cloud: Cloud, station: Station, device: Device, mode: SignatureMode
) -> None:
    treatment_id = ready_insertion(station)
    finalise_treatment(station, NURSE, treatment_id=treatment_id, mode=mode)

    results = device.push(station_ops(station))

    assert set(statuses(results)) == {"applied"}, results
    _version, data = stored_treatment(cloud, treatment_id)
    assert data["is_complete"] is True and data["signature_mode"] == mode.value
