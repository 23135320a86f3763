"""store/signing.py: the staff an Alpha Tau user chooses from, and finalising with the cloud's
verified signature through `finalise_treatment`'s own signature path (mode `code`)."""

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from store import lookups
from store.enums import ApplicatorStatus, SignatureMode
from store.errors import InvalidInput, NotPermitted
from store.signing import CodeSignature, StaffMember, finalise_with_code, site_staff
from store.station import Station
from tests.utils.data import ADMIN, ALPHATAU, NURSE, OUTSIDER, SITE
from tests.utils.flows import PATHS, insertion, move, scan


def ready_insertion(station: Station) -> str:
    treatment_id = insertion(station)
    applicator = scan(station, treatment_id, "DART-9000-00001")["id"]
    move(station, applicator, PATHS["loaded"][ApplicatorStatus.INSERTED])
    return treatment_id


def verified(treatment_id: str, *, requested_by: str = ALPHATAU.user_id) -> CodeSignature:
    return CodeSignature(
        treatment_id=treatment_id,
        site=SITE,
        signer_id=NURSE.user_id,
        signer_name=NURSE.name,
        signer_position=NURSE.position,
        signed_at=datetime(2026, 11, 26, 9, 0, tzinfo=UTC),
        requested_by=requested_by,
        signature_id="sig-1",
    )


def test_the_staff_are_the_sites_hospital_users_only(station: Station) -> None:
    assert site_staff(station, ALPHATAU, SITE) == [StaffMember(NURSE.user_id, NURSE.name, NURSE.position)]
    with pytest.raises(NotPermitted):
        site_staff(station, OUTSIDER, SITE)


def test_the_verified_signature_locks_the_treatment_with_the_signer_and_the_requester(
    station: Station,
) -> None:
    treatment_id = ready_insertion(station)
    finalise_with_code(station, ALPHATAU, treatment_id=treatment_id, signature=verified(treatment_id))
    saved = lookups.treatment(station, ALPHATAU, treatment_id)
    assert saved["is_complete"] and saved["signature_mode"] == SignatureMode.CODE.value
    assert (saved["signed_by_user_id"], saved["signer_name"], saved["signer_position"]) == (
        NURSE.user_id,
        NURSE.name,
        NURSE.position,
    )
    assert saved["completed_by"] == ALPHATAU.user_id and saved["signature_status"] == "confirmed"


def test_a_signature_for_another_treatment_site_or_requester_is_refused(station: Station) -> None:
    treatment_id = ready_insertion(station)
    signature = verified(treatment_id)
    for wrong in (
        replace(signature, treatment_id="another"),
        replace(signature, site="TLV-2"),
        replace(signature, requested_by=ADMIN.user_id),
    ):
        with pytest.raises(InvalidInput, match="not for this treatment and user"):
            finalise_with_code(station, ALPHATAU, treatment_id=treatment_id, signature=wrong)
    with pytest.raises(NotPermitted, match="signs for themselves"):
        finalise_with_code(station, NURSE, treatment_id=treatment_id, signature=signature)
    assert not lookups.treatment(station, ALPHATAU, treatment_id)["is_complete"]
