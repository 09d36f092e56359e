"""Crash points for the kill tests, imported by their runner scripts in forked children:
count the calls of chosen functions and SIGKILL the process at one of them."""

from __future__ import annotations

import os
import signal


class KillAtCall:
    """Counts calls of the functions :meth:`hook` wraps; at call number ``kill_at``
    (0: never) the process SIGKILLs itself, as a power cut would stop it."""

    def __init__(self, kill_at: int):
        self.kill_at = kill_at
        self.calls = 0

    def hook(self, owner: object, *names: str) -> None:
        """Wrap ``owner.name`` for each of ``names``."""
        for name in names:
            real = getattr(owner, name)

            def wrapped(*args: object, _real=real, **kwargs: object) -> object:
                self.calls += 1
                if self.calls == self.kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return _real(*args, **kwargs)

            setattr(owner, name, wrapped)


#: the environment of a runner script: this module's folder on its path
RUNNER_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH"))
    if p)}
