"""One sglang-sage run per target tree at a time: an advisory lock file holding the owner's pid.

Two `apply` runs on one tree interleave their writes, and the loser used to refuse with a misleading
"patches do not apply cleanly". The lock is an `flock` on a file next to the tree's state: the kernel
drops it when its process dies, however it dies, so a run killed with SIGKILL cannot block the tree
forever. The pid written into the file is only for messages: a second run waits briefly, then refuses
naming that pid; a run that finds the file unlocked but holding another pid knows that run ended
without cleaning up (killed) and says so before taking over.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from sglang_sage.errors import REFUSED, SageError

WAIT_S = 10.0  # how long a second run waits for the first before refusing
_POLL_S = 0.1


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class TreeLock:
    """`with TreeLock(path):` holds the tree's lock; `stale_pid` names a killed previous owner."""

    def __init__(self, path: Path, *, wait_s: float | None = None, waiting: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.wait_s = WAIT_S if wait_s is None else wait_s
        self.waiting = waiting
        self.stale_pid: int | None = None
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, waiting up to `wait_s`; refuses (exit 4) naming the holder's pid."""
        deadline = time.monotonic() + self.wait_s
        announced = False
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise SageError(
                    f"{self.path}: cannot create the lock file ({exc.strerror}); the tree's state directory "
                    "must be writable",
                    code=REFUSED,
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise SageError(
                        f"another sglang-sage run (pid {holder or 'unknown'}) holds {self.path}",
                        code=REFUSED,
                        details=[f"waited {self.wait_s:g} s; try again when it has finished (nothing was changed)"],
                    ) from None
                if self.waiting is not None and not announced:
                    self.waiting(f"waiting for sglang-sage run pid {holder or 'unknown'} ({self.path})")
                    announced = True
                time.sleep(_POLL_S)
                continue
            # A run that releases unlinks the file while still holding it: make sure ours is the live one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _read_pid(fd)
            if previous is not None and previous != os.getpid():
                self.stale_pid = previous
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return

    def stale_message(self) -> str | None:
        """A warning when the lock was left behind by a run that is gone."""
        if self.stale_pid is None:
            return None
        gone = "is gone" if not _pid_alive(self.stale_pid) else "no longer holds it"
        return (
            f"took over {self.path} from sglang-sage run pid {self.stale_pid}, which {gone} (killed?); "
            "the tree was checked before continuing"
        )

    def release(self) -> None:
        """Remove the lock file (while still holding it) and drop the lock."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> TreeLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
