"""Applicator photos: image files under the station's data directory, their path in the row.

The file is written and fsynced before the row points at it, and removed again if the row cannot be
changed, so a row never names a missing file and a refused change leaves no stray picture. Paths are
stored relative to the data directory, so a restored backup in another place still finds them.
"""

import os
import uuid
from pathlib import Path

from store.applicators import update_details
from store.errors import InvalidInput
from store.journal import Change
from store.station import Actor, Station

PHOTO_DIR = "photos"
MAX_PHOTO_BYTES = 15 * 1024 * 1024  # a phone or laptop camera's JPEG is far below this

# What the file really is, from its first bytes: the browser's declared type is only a claim.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
)


def image_suffix(content: bytes) -> str:
    """The file suffix for a JPEG, PNG or WebP image; a specific refusal for anything else."""
    if not content:
        raise InvalidInput("The photo is empty. Take it again.", field="photo")
    if len(content) > MAX_PHOTO_BYTES:
        raise InvalidInput(
            f"The photo is too large ({len(content) // (1024 * 1024)} MB; at most "
            f"{MAX_PHOTO_BYTES // (1024 * 1024)} MB).",
            field="photo",
        )
    for signature, suffix in _SIGNATURES:
        if content.startswith(signature):
            return suffix
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return ".webp"
    raise InvalidInput("This file is not a photo (JPEG, PNG or WebP). Choose a picture.", field="photo")


def store_photo(station: Station, treatment_id: str, record_id: str, content: bytes) -> str:
    """Write the picture durably; returns its path relative to the station's data directory."""
    suffix = image_suffix(content)
    relative = Path(PHOTO_DIR) / treatment_id / f"{record_id}-{uuid.uuid4().hex[:8]}{suffix}"
    target = station.data_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(target.suffix + ".part")
    with temporary.open("wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(target)
    return relative.as_posix()


def attach_applicator_photo(
    station: Station, actor: Actor, *, treatment_id: str, applicator_id: str, content: bytes
) -> Change:
    """Save the picture and record its path on the applicator, or neither."""
    relative = store_photo(station, treatment_id, applicator_id, content)
    try:
        return update_details(station, actor, applicator_id=applicator_id, photo_path=relative)
    except Exception:
        discard_photo(station, relative)
        raise


def discard_photo(station: Station, relative: str) -> None:
    (station.data_dir / relative).unlink(missing_ok=True)


def photo_file(station: Station, relative: str) -> Path:
    """The absolute path of a stored photo (refusing any path that leaves the photo directory)."""
    root = (station.data_dir / PHOTO_DIR).resolve()
    path = (station.data_dir / relative).resolve()
    if not path.is_relative_to(root):
        raise InvalidInput("This is not a photo of this station.", field="photo")
    return path
