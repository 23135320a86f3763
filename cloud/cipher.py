"""Patient identifiers in the cloud: encrypted by the application before they reach PostgreSQL.

The same AES-256-GCM scheme as the station (store.crypto.PatientCipher), with the cloud's own data
key in `settings.data_key_file` (0600). A database dump or a replica therefore holds no subject id
or patient label in clear. Inside a clinical record's `data` the cloud keeps `subject_id_enc`,
`patient_label_enc` and `subject_hash` (a keyed hash, for look-ups such as the Priority
write-back); stations only ever see the clear `subject_id` and `patient_label` (over TLS).
"""

import threading
from pathlib import Path
from typing import Any

from fastapi import Request

from store.crypto import PatientCipher
from sync.protocol import PATIENT_FIELDS

_CIPHERS: dict[Path, PatientCipher] = {}
_LOCK = threading.Lock()

SUBJECT_HASH = "subject_hash"
SEALED = tuple(f"{name}_enc" for name in PATIENT_FIELDS)  # each patient field's ciphertext in `data`
# The keys of a stored record that a station never sees (open_record takes them out).
SEALED_FIELDS = frozenset({SUBJECT_HASH, *SEALED})


def load_cipher(key_file: Path) -> PatientCipher:
    """The cipher of one key file, read once per process (created 0600 on first use)."""
    path = key_file.resolve()
    with _LOCK:
        cipher = _CIPHERS.get(path)
        if cipher is None:
            try:
                cipher = PatientCipher.load_or_create(path)
            except FileExistsError:
                # Another worker created the file between our check and our create: read theirs.
                cipher = PatientCipher.load_or_create(path)
            _CIPHERS[path] = cipher
    return cipher


def cipher_of(request: Request) -> PatientCipher:
    """FastAPI dependency: the running app's cipher (settings.data_key_file)."""
    return load_cipher(request.app.state.settings.data_key_file)


def seal_record(record: dict[str, Any], cipher: PatientCipher) -> dict[str, Any]:
    """The record as stored: each clear patient field replaced by its ciphertext (`<field>_enc`)."""
    sealed = {k: v for k, v in record.items() if k not in PATIENT_FIELDS}
    for name in PATIENT_FIELDS:
        if name in record:
            sealed[f"{name}_enc"] = cipher.encrypt(_text(record[name]))
    if record.get("subject_id") is not None:
        sealed[SUBJECT_HASH] = cipher.lookup_hash(str(record["subject_id"]))
    return sealed


def open_record(stored: dict[str, Any], cipher: PatientCipher) -> dict[str, Any]:
    """The record as the wire carries it: patient fields in clear, the cloud's hash left out."""
    opened = {k: v for k, v in stored.items() if k not in SEALED_FIELDS}
    for name, sealed in zip(PATIENT_FIELDS, SEALED, strict=True):
        if sealed in stored:
            opened[name] = cipher.decrypt(stored[sealed])
    return opened


def seal_value(field_name: str, value: Any, cipher: PatientCipher) -> Any:
    """One value bound for a table outside `data` (a conflict row): sealed if it names a patient."""
    return cipher.encrypt(_text(value)) if field_name in PATIENT_FIELDS else value


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
