"""The cloud in a process of its own, for test_cloud_killed.py to SIGKILL.

Run from the project root:

    python -m tests.reliability.cloud_child <database_url> <key_file>

It serves the real app (cloud.app.create_app, no background jobs) with uvicorn on a free port of
127.0.0.1 and prints `LISTENING <port>` once the socket accepts requests, so the parent waits on
that line instead of probing.
"""

import socket
import sys
from pathlib import Path

import uvicorn

from cloud.app import create_app
from cloud.config import CloudSettings


class _Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        port = self.servers[0].sockets[0].getsockname()[1]
        sys.stdout.write(f"LISTENING {port}\n")
        sys.stdout.flush()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 64
    database_url, key_file = argv
    app = create_app(CloudSettings(database_url=database_url, data_key_file=Path(key_file)))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    _Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
