"""Time on the station: UTC for storage, a hybrid logical clock for ordering changes.

Device clocks are not trusted for ordering (invariant 8). A hybrid logical clock keeps the wall
time when it moves forward and a counter when it does not, so a laptop whose clock jumps back still
stamps its later edits as later. Stamps are fixed-width strings that sort in time order.
"""

from dataclasses import dataclass
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class HLC:
    wall_ms: int
    counter: int

    def tick(self, now_ms: int) -> "HLC":
        """The stamp for a new local event."""
        if now_ms > self.wall_ms:
            return HLC(now_ms, 0)
        return HLC(self.wall_ms, self.counter + 1)

    def receive(self, remote: "HLC", now_ms: int) -> "HLC":
        """The stamp after seeing a remote event, so later local events sort after it."""
        wall = max(self.wall_ms, remote.wall_ms, now_ms)
        if wall == self.wall_ms == remote.wall_ms:
            counter = max(self.counter, remote.counter) + 1
        elif wall == self.wall_ms:
            counter = self.counter + 1
        elif wall == remote.wall_ms:
            counter = remote.counter + 1
        else:
            counter = 0
        return HLC(wall, counter)

    def stamp(self, device_id: str) -> str:
        return f"{self.wall_ms:015d}-{self.counter:06d}-{device_id}"

    @classmethod
    def parse(cls, stamp: str) -> "HLC":
        wall, counter, _device = stamp.split("-", 2)
        return cls(int(wall), int(counter))


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
