"""All-or-nothing file changes: snapshot before the first write, restore on any failure.

`git apply` is atomic per invocation, but an apply run is several steps (patches, pyproject
edit, overlay, state file). A Ctrl-C or a failing step between them must leave the tree
exactly as it was, so every file is snapshotted before anything touches it.

With a journal directory the snapshots also go to disk before each change (write-ahead), so a
run killed with SIGKILL, which no handler sees, can still be rolled back by the next run
(`recover`). The journal is removed when the transaction commits or rolls back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path
from types import TracebackType

_ENTRIES = "entries.jsonl"


class Transaction:
    """Tracks files and created directories; `rollback()` restores bytes and modes exactly."""

    def __init__(self, journal: Path | None = None) -> None:
        self._saved: dict[Path, tuple[bytes | None, int | None]] = {}
        self._created_dirs: list[Path] = []
        self._removed_dirs: list[Path] = []
        self.done = False
        self.journal = Path(journal) if journal is not None else None
        if self.journal is not None:
            if self.journal.exists():
                raise RuntimeError(f"{self.journal}: a journal already exists; recover it first")
            self.journal.mkdir(parents=True)

    def _log(self, entry: dict[str, object], data: bytes | None = None) -> None:
        """Write-ahead: the entry (and the bytes it restores) reach the journal before the change."""
        if self.journal is None:
            return
        if data is not None:
            name = f"{len(self._saved):06d}.bin"
            (self.journal / name).write_bytes(data)
            entry["data"] = name
        with (self.journal / _ENTRIES).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    def _drop_journal(self) -> None:
        if self.journal is not None:
            shutil.rmtree(self.journal, ignore_errors=True)

    @classmethod
    def recover(cls, journal: Path) -> int:
        """Roll back what a killed run's journal records; returns how many paths it restored.

        A last entry cut short by the kill is ignored: its change had not started yet.
        """
        journal = Path(journal)
        tx = cls()
        lines = (journal / _ENTRIES).read_text(encoding="utf-8").splitlines() if (journal / _ENTRIES).is_file() else []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            path = Path(entry["path"])
            if entry["op"] == "file":
                data = (journal / entry["data"]).read_bytes() if entry.get("data") else None
                tx._saved.setdefault(path, (data, entry.get("mode")))
            elif entry["op"] == "mkdir" and path not in tx._removed_dirs:  # made again after removing: it stays
                tx._created_dirs.append(path)
            elif entry["op"] == "rmdir":
                tx._removed_dirs.append(path)
        tx.rollback()
        shutil.rmtree(journal, ignore_errors=True)
        return len(tx._saved)

    def track(self, path: Path) -> None:
        """Remember a file's current content (or absence) before something changes it."""
        path = Path(path)
        if path in self._saved:
            return
        if path.is_file():
            data, mode = path.read_bytes(), path.stat().st_mode & 0o7777
            self._log({"op": "file", "path": str(path), "mode": mode}, data)
            self._saved[path] = (data, mode)
        else:
            self._log({"op": "file", "path": str(path), "mode": None})
            self._saved[path] = (None, None)

    def ensure_dir(self, directory: Path) -> None:
        """mkdir -p, remembering which directories did not exist so rollback can remove them.

        A directory this transaction removed and now creates again existed before: rollback keeps it.
        """
        missing: list[Path] = []
        d = Path(directory)
        while not d.exists():
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            self._log({"op": "mkdir", "path": str(d)})
            d.mkdir()
            if d not in self._removed_dirs:
                self._created_dirs.append(d)

    def write_bytes(self, path: Path, data: bytes, mode: int | None = None) -> None:
        """Write a file inside the transaction."""
        path = Path(path)
        self.track(path)
        self.ensure_dir(path.parent)
        path.write_bytes(data)
        if mode is not None:
            os.chmod(path, mode)

    def remove(self, path: Path) -> None:
        """Delete a file inside the transaction."""
        path = Path(path)
        self.track(path)
        path.unlink(missing_ok=True)

    def remove_empty_dirs(self, start: Path, stop: Path) -> None:
        """Remove now-empty directories from `start` up to (not including) `stop`."""
        d = Path(start)
        while d != stop and stop in d.parents and d.is_dir() and not any(d.iterdir()):
            self._removed_dir(d)
            d = d.parent

    def _removed_dir(self, d: Path) -> None:
        self._log({"op": "rmdir", "path": str(d)})
        d.rmdir()
        self._removed_dirs.append(d)

    def rollback(self) -> None:
        """Put every tracked path back; Ctrl-C is ignored meanwhile so it cannot half-restore."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for d in reversed(self._removed_dirs):  # outermost first; it may exist again already
                d.mkdir(parents=True, exist_ok=True)
            for path, (data, mode) in self._saved.items():
                if data is None:
                    path.unlink(missing_ok=True)
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)  # `git apply` may have removed emptied dirs
                    if path.exists():
                        os.chmod(path, mode | 0o200 if mode is not None else 0o644)
                    path.write_bytes(data)
                    if mode is not None:
                        os.chmod(path, mode)
            for d in reversed(self._created_dirs):
                try:
                    d.rmdir()
                except OSError:
                    pass
            self._drop_journal()
        finally:
            self.done = True
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def commit(self) -> None:
        """Keep the changes."""
        self._drop_journal()
        self.done = True

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and not self.done:
            self.rollback()
        elif not self.done:
            self.commit()
