"""The validation bundle: installed whole or not at all, patient fields encrypted, look-ups offline."""

import pytest
from sqlalchemy import func, select

from store.engine import read_transaction
from store.models import User, ValidationCacheEntry
from store.station import Station
from store.validation_cache import (
    BundleRejected,
    current_bundle_version,
    find_inventory,
    install_bundle,
    orders_for_day,
    suggest_serials,
)
from tests.utils.data import NURSE, SITE, TODAY, make_bundle


def test_damaged_bundle_keeps_the_previous_one(station: Station) -> None:
    bad = make_bundle(version="b-2")
    bad["inventory"] = bad["inventory"][:3]  # changed after the checksum was computed
    with pytest.raises(BundleRejected, match="previous data is kept"):
        install_bundle(station, bad)
    with read_transaction(station.engine) as conn:
        assert current_bundle_version(conn) == "b-1"
        assert find_inventory(conn, "DART-9000-00001") is not None


def test_orders_of_a_day_hold_no_patient_in_clear(station: Station) -> None:
    with read_transaction(station.engine) as conn:
        orders = orders_for_day(conn, SITE, TODAY)
        payloads = " ".join(
            str(p) for p in conn.execute(select(ValidationCacheEntry.__table__.c.payload)).scalars()
        )
    assert {station.cipher.decrypt(o.patient_label_enc) for o in orders} == {
        "Cohen, Miriam", "Mizrahi, Tal", "Biton, Eli", "Friedman, Ada"
    }  # fmt: skip
    assert "Cohen" not in payloads and "SO2611001" not in payloads


def test_typed_serials_get_up_to_five_suggestions(station: Station) -> None:
    with read_transaction(station.engine) as conn:
        assert suggest_serials(conn, "9000-0000", site=SITE) == [f"DART-9000-0000{i}" for i in range(5)]
        assert suggest_serials(conn, "8000", site=SITE, limit=3) == [f"DART-8000-0000{i}" for i in range(3)]
        assert suggest_serials(conn, "OTHERSITE", site=SITE) == []  # another site's stock is not offered
        assert suggest_serials(conn, "%", site=SITE) == []


def test_users_missing_from_a_new_bundle_lose_access(station: Station) -> None:
    bundle = make_bundle(version="b-2")
    bundle["users"] = [u for u in bundle["users"] if u["id"] != NURSE.user_id]
    from store.validation_cache import bundle_checksum

    bundle["checksum"] = bundle_checksum(bundle)
    install_bundle(station, bundle)
    users = User.__table__
    with read_transaction(station.engine) as conn:
        active = conn.execute(select(users.c.is_active).where(users.c.id == NURSE.user_id)).scalar_one()
        count = conn.execute(select(func.count()).select_from(users)).scalar_one()
    assert active is False and count == 3
