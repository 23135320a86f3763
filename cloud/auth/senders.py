"""How a login code reaches a person: one small interface, one adapter per gateway.

The demo prints codes on the console; tests read them from a file written by `FileSender`, which
is a real adapter with the same contract as an SMS or e-mail gateway, not a mock. A gateway
adapter (an SMS provider, SMTP) implements `send` and is named in `CloudSettings.code_sender`.
"""

import json
import logging
import threading
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from cloud.auth import Channel, mask

log = logging.getLogger(__name__)


class CodeSender(Protocol):
    def send(self, channel: Channel, destination: str, text: str) -> None:
        """Deliver `text` to `destination` (an e-mail address or a phone number); raise on failure."""
        ...


class ConsoleSender:
    """The demo's sender: the code on stdout, the destination masked (consoles end up in logs)."""

    def send(self, channel: Channel, destination: str, text: str) -> None:
        # The message starts with the code, so the line reads "Verification code for d***@...: 123456 ...".
        print(f"Verification code for {mask(destination)}: {text}", flush=True)


class FileSender:
    """Appends one JSON line per message: an outbox that tests and a demo operator can read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # The app sends from worker threads; one write per line under a lock keeps lines whole.
        self._lock = threading.Lock()

    def send(self, channel: Channel, destination: str, text: str) -> None:
        line = json.dumps(
            {
                "sent_at": datetime.now(UTC).isoformat(),
                "channel": channel,
                "destination": destination,
                "text": text,
            }
        )
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as outbox:
                outbox.write(line + "\n")


@lru_cache(maxsize=8)
def sender_for(setting: str) -> CodeSender:
    """The sender named by `CloudSettings.code_sender`: "console" or "file:<path>".

    Cached so that every request of one app shares one FileSender (and so its lock).
    """
    if setting == "console":
        return ConsoleSender()
    if setting.startswith("file:") and setting.removeprefix("file:").strip():
        return FileSender(Path(setting.removeprefix("file:").strip()))
    raise ValueError(f"CODE_SENDER must be 'console' or 'file:<path>', not {setting!r}")
