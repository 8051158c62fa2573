"""Child processes with bounded lifetimes: every GPU stage runs in its own process group.

A stage that hangs is killed with its whole group (SGLang's scheduler/detokenizer children included)
when its timeout expires; an exit of verify.py for any reason kills whatever is still running.
Output goes to a log file; lines starting with ``[verify]`` are echoed as progress.
"""

from __future__ import annotations

import atexit
import collections
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

_LIVE: list[Proc] = []


def _descendants(pid: int) -> list[int]:
    """All descendant pids (psutil when present): children that left the process group die too."""
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - psutil missing or the process is gone
        return []


class Proc:
    """A subprocess in a new session, its output teed to a log file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path, cwd: str | None = None,
                 echo: Callable[[str], None] | None = None, echo_prefix: str = "[verify]") -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        self.tail: collections.deque[str] = collections.deque(maxlen=80)
        self.started = time.time()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed in _pump
        self.p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True, text=True, bufsize=1,
                                  errors="replace")
        self._echo, self._prefix = echo, echo_prefix
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        _LIVE.append(self)

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self._log.write(line)
            self._log.flush()
            self.tail.append(line.rstrip("\n"))
            if self._echo and line.startswith(self._prefix):
                self._echo(line.rstrip("\n"))
        self._log.close()

    @property
    def pid(self) -> int:
        return self.p.pid

    def poll(self) -> int | None:
        return self.p.poll()

    def wait(self, timeout: float) -> int | None:
        """Exit code, or None after killing the group on timeout."""
        try:
            rc = self.p.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self._reader.join(timeout=5)
        self.kill()  # stragglers (e.g. an orphaned scheduler) go with the group
        return rc

    def kill(self, grace_s: float = 10.0) -> None:
        """SIGTERM the group (and any descendants elsewhere), then SIGKILL what is left."""
        pids = _descendants(self.p.pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            if sig == signal.SIGTERM:
                try:
                    self.p.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    continue
                if not any(_alive(p) for p in pids) and not _group_alive(self.p.pid):
                    break
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self in _LIVE:
            _LIVE.remove(self)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_all() -> None:
    """Kill every stage still running (atexit and signal handler)."""
    for proc in list(_LIVE):
        proc.kill(grace_s=3.0)


def install_cleanup() -> None:
    """Make Ctrl-C / SIGTERM / normal exit leave no GPU process behind."""
    atexit.register(kill_all)

    def handler(signum, frame):  # noqa: ARG001
        kill_all()
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread (tests)
            pass
