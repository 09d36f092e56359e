"""A QMP client: one JSON command at a time over QEMU's monitor socket.

Events that arrive between replies are kept in :attr:`Qmp.events`; jobs and
exports are waited for by polling their ``query-*`` commands.
"""

from __future__ import annotations

import errno
import json
import socket
from typing import Any

from blockforensics.errors import UsageError

#: the longest line read as one QMP message (query-named-block-nodes of many nodes)
MAX_MESSAGE_BYTES = 64 << 20
#: bytes of a greeting looked at before it is read as QMP's (``{"QMP": …``)
GREETING_START = 40


class QmpError(UsageError):
    """QEMU refused a command (its class and description in the message)."""


class Qmp:
    """A connected, capability-negotiated QMP monitor."""

    def __init__(self, path: str, timeout: float = 60.0):
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._serial = 0  # the id of the last command sent
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise UsageError(f"{path}: cannot connect to QMP ({exc.strerror or exc})") from exc
        self._file = self._sock.makefile("rb")
        try:
            # another server's greeting is refused at once, not when its line ends
            head = self._sock.recv(GREETING_START, socket.MSG_PEEK)
            if not head.startswith(b"{"):
                raise UsageError(f"{path}: not a QMP monitor (it sent {head!r})")
            greeting = self._message()
        except TimeoutError as exc:
            self.close()
            raise UsageError(f"{path}: no QMP greeting within {timeout} s "
                             "(a QMP socket serves one client at a time)") from exc
        except (UsageError, OSError):
            self.close()
            raise
        if "QMP" not in greeting:
            self.close()
            raise UsageError(f"{path}: not a QMP monitor")
        self.execute("qmp_capabilities")

    def _message(self) -> dict[str, Any]:
        line = self._file.readline(MAX_MESSAGE_BYTES)
        if not line:
            raise ConnectionResetError(errno.ECONNRESET, "QMP connection closed", self.path)
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            raise UsageError(f"{self.path}: not a QMP monitor (it sent {line[:40]!r})")
        return message

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run ``command``; its ``return`` value, or QmpError.  Each command carries an
        id and only the reply with that id is taken: a command interrupted before its
        reply was read (a signal) leaves a reply that no later command mistakes for
        its own."""
        self._serial += 1
        request: dict[str, Any] = {"execute": command, "id": self._serial}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            reply = self._message()
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != self._serial:
                continue
            if "error" in reply:
                error = reply["error"]
                raise QmpError(f"QMP {command}: {error.get('class')}: {error.get('desc')}")
            return reply.get("return")

    def transaction(self, *actions: dict[str, Any]) -> None:
        """Run ``actions`` (``{"type": ..., "data": {...}}``) atomically."""
        self.execute("transaction", actions=list(actions))

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def action(kind: str, **data: Any) -> dict[str, Any]:
    """One transaction action."""
    return {"type": kind, "data": data}
