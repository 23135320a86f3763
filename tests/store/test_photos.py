"""Photos: a real picture on disk under the data directory and its path in the row, or neither."""

import base64
from pathlib import Path

import pytest

from store.errors import InvalidInput, TreatmentLocked
from store.guards import load_applicator
from store.photos import attach_applicator_photo, image_suffix, photo_file
from store.station import Station
from tests.utils.data import NURSE
from tests.utils.flows import finalised_insertion, insertion, scan

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def _files(station: Station) -> list[Path]:
    return sorted(p for p in (station.data_dir / "photos").rglob("*") if p.is_file())


def test_a_photo_is_written_and_its_relative_path_recorded(station: Station) -> None:
    treatment_id = insertion(station)
    applicator = scan(station, treatment_id, "DART-9000-00001")
    change = attach_applicator_photo(
        station, NURSE, treatment_id=treatment_id, applicator_id=applicator["id"], content=PNG
    )
    relative = change.record["photo_path"]
    assert relative.startswith(f"photos/{treatment_id}/{applicator['id']}-") and relative.endswith(".png")
    assert photo_file(station, relative).read_bytes() == PNG
    with station.engine.connect() as conn:
        assert load_applicator(conn, applicator["id"])["photo_path"] == relative
    assert not any(p.suffix == ".part" for p in _files(station))


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "empty"),
        (b"%PDF-1.7 not a picture", "not a photo"),
        (b"\xff\xd8\xff" + b"0" * (16 << 20), "too large"),
    ],
    ids=["empty", "pdf", "huge"],
)
def test_what_is_not_a_photo_is_refused_with_words(content: bytes, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        image_suffix(content)


def test_a_refused_change_leaves_no_file(station: Station) -> None:
    treatment_id = finalised_insertion(station, ["DART-9000-00001"])
    with station.engine.connect() as conn:
        applicator_id = conn.exec_driver_sql("SELECT id FROM applicators").scalar_one()
    with pytest.raises(TreatmentLocked):
        attach_applicator_photo(
            station, NURSE, treatment_id=treatment_id, applicator_id=applicator_id, content=PNG
        )
    assert _files(station) == []


def test_a_path_outside_the_photo_directory_is_refused(station: Station) -> None:
    with pytest.raises(InvalidInput):
        photo_file(station, "../data.key")
