"""Opaque bearer credentials: random, shown once, stored only as a SHA-256 digest.

They carry 256 bits of entropy, so a fast digest is enough (a slow hash protects guessable
secrets such as PINs and codes, not these); comparison happens in the database by digest.
"""

import hashlib
import secrets


def new_token() -> str:
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
