"""Identity: login codes (codes.py), their senders (senders.py), device enrolment (enrolment.py).

This module holds what they share: reading the identifier a person typed (an e-mail address or a
phone number) and masking it for anything that is kept or shown (the audit trail, the console).
"""

import re
from dataclasses import dataclass
from typing import Literal

Channel = Literal["email", "sms"]

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# E.164 allows 15 digits; fewer than 7 is no phone number anyone is reached on.
_PHONE = re.compile(r"^\+?[0-9]{7,15}$")
# What people and Priority put between digits: spaces, dashes, dots, brackets.
_PHONE_PUNCTUATION = re.compile(r"[\s\-.()]")


@dataclass(frozen=True)
class Identifier:
    """An e-mail address (lower-cased) or a phone number (digits, with its leading '+')."""

    kind: Channel
    value: str

    @classmethod
    def parse(cls, raw: str) -> "Identifier":
        """Raises ValueError with a sentence for the person who typed it."""
        text = raw.strip()
        # The brief's rule: an '@' makes it an e-mail address, anything else a phone number.
        if "@" in text:
            if not _EMAIL.match(text):
                raise ValueError("this is not an e-mail address (name@hospital.example)")
            return cls("email", text.lower())
        phone = _PHONE_PUNCTUATION.sub("", text)
        if not _PHONE.match(phone):
            raise ValueError("enter an e-mail address or a phone number of 7 to 15 digits (+972501234567)")
        return cls("sms", phone)

    @property
    def masked(self) -> str:
        return mask(self.value)


def mask(destination: str) -> str:
    """`d***@hospital.example`, `+972******67`: enough for a person to recognise, not to reach."""
    if "@" in destination:
        local, _, domain = destination.partition("@")
        return f"{local[:1]}***@{domain}"
    plus = "+" if destination.startswith("+") else ""
    digits = destination.removeprefix("+")
    # The country code says where, the last two digits which of one's numbers; at least half hidden.
    head = min(3, max(0, len(digits) // 2 - 2))
    tail = 2 if len(digits) >= 6 else 0
    return f"{plus}{digits[:head]}{'*' * (len(digits) - head - tail)}{digits[len(digits) - tail :]}"
