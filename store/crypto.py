"""Patient identifiers at rest: AES-256-GCM with a data key kept apart from the database file.

A stolen laptop's database file alone reveals no patient: subject ids and patient labels are
ciphertext, and look-ups use a keyed hash (HMAC-SHA256) so equality can be tested without
decrypting. The key file is created with 0600 permissions and refused if others can read it.
"""

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = "v1"
_NONCE_BYTES = 12


class KeyFileError(RuntimeError):
    """The data key is missing, malformed or exposed; the station must not start."""


class PatientCipher:
    def __init__(self, enc_key: bytes, hash_key: bytes) -> None:
        if len(enc_key) != 32 or len(hash_key) != 32:
            raise KeyFileError("the data key must hold two 32-byte keys")
        self._aead = AESGCM(enc_key)
        self._hash_key = hash_key

    @classmethod
    def generate(cls) -> "PatientCipher":
        return cls(secrets.token_bytes(32), secrets.token_bytes(32))

    @classmethod
    def load_or_create(cls, path: Path) -> "PatientCipher":
        """Read the key file, or create it (0600) on a fresh station."""
        if not path.exists():
            cipher_keys = {"version": 1, "enc": secrets.token_bytes(32), "hash": secrets.token_bytes(32)}
            _write_key_file(path, cipher_keys["enc"], cipher_keys["hash"])
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"the data key file {path} can be read by other accounts (mode {mode:o}); "
                "set it to 0600 (chmod 600) before starting the station"
            )
        try:
            data = json.loads(path.read_text())
            return cls(base64.b64decode(data["enc"]), base64.b64decode(data["hash"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"the data key file {path} is damaged: {exc}") from exc

    def encrypt(self, plaintext: str | None) -> str | None:
        if plaintext is None:
            return None
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), _VERSION.encode())
        return f"{_VERSION}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str | None) -> str | None:
        if token is None:
            return None
        version, _, body = token.partition(":")
        if version != _VERSION:
            raise ValueError(f"unknown ciphertext version {version!r}")
        raw = base64.urlsafe_b64decode(body)
        return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _VERSION.encode()).decode()

    def lookup_hash(self, value: str) -> str:
        """A keyed hash of a normalised identifier: equal inputs give equal hashes, nothing else leaks."""
        normalised = value.strip().upper()
        return hmac.new(self._hash_key, normalised.encode(), hashlib.sha256).hexdigest()


def _write_key_file(path: Path, enc_key: bytes, hash_key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(
        {"version": 1, "enc": base64.b64encode(enc_key).decode(), "hash": base64.b64encode(hash_key).decode()}
    )
    # O_EXCL: never overwrite a key that exists (that would make every record unreadable).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
