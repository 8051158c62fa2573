"""Transaction: rollback restores bytes, modes, absent files and the directory tree exactly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from sglang_sage.transaction import Transaction


def snapshot(root: Path) -> dict[str, tuple[str, bytes | None]]:
    """Every path under root with its kind, content and mode (what a rollback must restore)."""
    out: dict[str, tuple[str, bytes | None]] = {}
    for p in sorted(root.rglob("*")):
        mode = stat.S_IMODE(p.stat().st_mode)
        out[p.relative_to(root).as_posix()] = (
            f"{'d' if p.is_dir() else 'f'}{mode:o}",
            None if p.is_dir() else p.read_bytes(),
        )
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "t"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "a.py").write_bytes(b"a = 1\n")
    (root / "pkg" / "sub" / "b.py").write_bytes(b"b = 2\n")
    (root / "pkg" / "sub" / "b.py").chmod(0o600)
    (root / "keep").mkdir()
    return root


def test_rollback_restores_everything(tree: Path) -> None:
    before = snapshot(tree)
    tx = Transaction()
    tx.write_bytes(tree / "pkg" / "a.py", b"changed\n", 0o755)
    tx.write_bytes(tree / "new" / "deep" / "er" / "c.py", b"new\n")  # three new directory levels
    tx.ensure_dir(tree / "other" / "x" / "y")
    tx.remove(tree / "pkg" / "sub" / "b.py")
    tx.remove_empty_dirs(tree / "pkg" / "sub", tree)
    assert not (tree / "pkg" / "sub").exists()
    tx.remove(tree / "keep" / "never-existed")  # removing an absent file is harmless
    tx.rollback()
    assert tx.done
    assert snapshot(tree) == before  # nested created dirs are gone, removed dirs are back


def test_created_directories_are_removed_innermost_first(tmp_path: Path) -> None:
    tx = Transaction()
    tx.ensure_dir(tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a" / "b" / "c").is_dir()
    tx.rollback()
    assert list(tmp_path.iterdir()) == []


def test_rollback_keeps_directories_that_hold_foreign_files(tmp_path: Path) -> None:
    tx = Transaction()
    tx.write_bytes(tmp_path / "a" / "f", b"x")
    (tmp_path / "a" / "foreign").write_text("not ours")  # someone else wrote here meanwhile
    tx.rollback()
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["foreign"]


def test_track_keeps_the_first_snapshot(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"one")
    tx = Transaction()
    tx.track(f)
    f.write_bytes(b"two")
    tx.track(f)  # a second track must not overwrite the pre-transaction bytes
    tx.write_bytes(f, b"three")
    tx.rollback()
    assert f.read_bytes() == b"one"


def test_rollback_restores_a_file_removed_with_its_directory(tree: Path) -> None:
    before = snapshot(tree)
    with pytest.raises(RuntimeError), Transaction() as tx:
        tx.remove(tree / "pkg" / "sub" / "b.py")
        tx.remove_empty_dirs(tree / "pkg" / "sub", tree)
        raise RuntimeError("boom")
    assert snapshot(tree) == before
    assert stat.S_IMODE((tree / "pkg" / "sub" / "b.py").stat().st_mode) == 0o600


def test_rollback_writes_over_a_read_only_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"orig")
    f.chmod(0o644)
    tx = Transaction()
    tx.track(f)
    f.write_bytes(b"changed")
    f.chmod(0o444)  # a later step left it read-only
    tx.rollback()
    assert f.read_bytes() == b"orig" and stat.S_IMODE(f.stat().st_mode) == 0o644


def test_write_bytes_mode_and_default(tmp_path: Path) -> None:
    tx = Transaction()
    tx.write_bytes(tmp_path / "x", b"1", 0o640)
    tx.write_bytes(tmp_path / "y", b"2")
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o640
    assert (tmp_path / "y").read_bytes() == b"2"
    tx.commit()
    assert tx.done and (tmp_path / "x").exists()


def test_remove_empty_dirs_stops_at_stop_and_at_non_empty(tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "other").write_text("x")
    tx = Transaction()
    tx.remove_empty_dirs(tmp_path / "a" / "b" / "c", tmp_path)
    assert not (tmp_path / "a" / "b").exists() and (tmp_path / "a").is_dir()  # a holds a file
    (tmp_path / "s" / "t").mkdir(parents=True)
    tx.remove_empty_dirs(tmp_path / "s" / "t", tmp_path / "s")
    assert (tmp_path / "s").is_dir() and not (tmp_path / "s" / "t").exists()  # stop itself is kept
    tx.remove_empty_dirs(tmp_path / "elsewhere", tmp_path / "s")  # not below stop: nothing happens
    tx.rollback()
    assert (tmp_path / "a" / "b" / "c").is_dir() and (tmp_path / "s" / "t").is_dir()


def test_context_manager_commits_or_rolls_back(tmp_path: Path) -> None:
    with Transaction() as tx:
        tx.write_bytes(tmp_path / "kept", b"k")
    assert tx.done and (tmp_path / "kept").read_bytes() == b"k"
    with pytest.raises(KeyboardInterrupt), Transaction() as tx2:
        tx2.write_bytes(tmp_path / "gone", b"g")
        raise KeyboardInterrupt
    assert tx2.done and not (tmp_path / "gone").exists()
    with Transaction() as tx3:  # committed explicitly: an exception afterwards must not roll back
        tx3.write_bytes(tmp_path / "late", b"l")
        tx3.commit()
    assert (tmp_path / "late").exists()


def test_exception_after_explicit_commit_keeps_changes(tmp_path: Path) -> None:
    with pytest.raises(ValueError), Transaction() as tx:
        tx.write_bytes(tmp_path / "f", b"x")
        tx.commit()
        raise ValueError
    assert (tmp_path / "f").read_bytes() == b"x"


def test_ctrl_c_is_ignored_during_rollback_and_restored_after(tmp_path: Path) -> None:
    seen: list[object] = []
    tx = Transaction()
    tx.write_bytes(tmp_path / "f", b"x")
    original = Path.unlink

    def spy(self: Path, missing_ok: bool = False) -> None:
        seen.append(signal.getsignal(signal.SIGINT))
        original(self, missing_ok=missing_ok)

    handler = signal.getsignal(signal.SIGINT)
    Path.unlink = spy  # type: ignore[method-assign]
    try:
        tx.rollback()
    finally:
        Path.unlink = original  # type: ignore[method-assign]
    assert seen == [signal.SIG_IGN]
    assert signal.getsignal(signal.SIGINT) is handler


def test_rollback_outside_the_main_thread(tmp_path: Path) -> None:
    tx = Transaction()
    tx.write_bytes(tmp_path / "d" / "f", b"x")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            tx.rollback()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert errors == [] and not (tmp_path / "d").exists()


def test_a_directory_removed_and_created_again_is_kept(tmp_path: Path) -> None:
    """An empty directory that existed before: removed, then written into, then rolled back -> still there."""
    (tmp_path / "a" / "empty").mkdir(parents=True)
    before = snapshot(tmp_path)
    tx = Transaction()
    assert tx.done is False
    tx.remove_empty_dirs(tmp_path / "a" / "empty", tmp_path)
    assert not (tmp_path / "a").exists()
    tx.write_bytes(tmp_path / "a" / "empty" / "f", b"x")  # creates both directories again
    tx.remove(tmp_path / "a" / "empty" / "f")
    tx.remove_empty_dirs(tmp_path / "a" / "empty", tmp_path)  # ... and removes them a second time
    tx.ensure_dir(tmp_path / "a" / "empty")
    tx.rollback()
    assert snapshot(tmp_path) == before


def test_rollback_restores_files_whose_directories_vanished(tmp_path: Path) -> None:
    """`git apply --reverse` of a patch that added a file removes the emptied directories as well."""
    f = tmp_path / "a" / "b" / "f"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"orig")
    tx = Transaction()
    tx.track(f)
    shutil.rmtree(tmp_path / "a")  # done outside the transaction's own file operations
    tx.rollback()
    assert f.read_bytes() == b"orig"


def test_rollback_of_a_read_only_file_as_an_ordinary_user(tmp_path: Path) -> None:
    """Root writes read-only files anyway; an ordinary user needs the write bit set before the restore."""
    work = Path(tempfile.mkdtemp())
    work.chmod(0o777)
    pid = os.fork()
    if pid == 0:  # child: drop to nobody when running as root, then roll back over a read-only file
        code = 1
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            f = work / "f"
            f.write_bytes(b"orig")
            f.chmod(0o444)
            tx = Transaction()
            tx.track(f)
            f.chmod(0o644)
            f.write_bytes(b"changed")
            f.chmod(0o444)
            tx.rollback()
            code = 0 if f.read_bytes() == b"orig" and stat.S_IMODE(f.stat().st_mode) == 0o444 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(work)
    Transaction().rollback()  # also in this process: mutmut learns from here which tests run rollback()
    assert os.waitstatus_to_exitcode(status) == 0


# ----------------------------------------------------------------------------- the write-ahead journal


def _changes(tx: Transaction, root: Path) -> None:
    """The same mix of changes as test_rollback_restores_everything, plus a directory removed and made again."""
    tx.write_bytes(root / "pkg" / "a.py", b"changed\n", 0o755)
    tx.write_bytes(root / "new" / "deep" / "c.py", b"new\n")
    tx.remove(root / "pkg" / "sub" / "b.py")
    tx.remove_empty_dirs(root / "pkg" / "sub", root)
    tx.write_bytes(root / "keep" / "x", b"x")
    tx.remove(root / "keep" / "x")
    tx.remove_empty_dirs(root / "keep", root)
    tx.ensure_dir(root / "keep")


def test_recover_rolls_back_what_a_killed_run_journaled(tree: Path, tmp_path: Path) -> None:
    before = snapshot(tree)
    journal = tmp_path / "state" / "run.journal"
    tx = Transaction(journal=journal)
    _changes(tx, tree)
    assert journal.is_dir() and (journal / "entries.jsonl").is_file()
    # the process dies here: nothing but the journal is left
    assert Transaction.recover(journal) == 4  # files tracked: a.py, c.py, b.py, keep/x
    assert snapshot(tree) == before and not journal.exists()


def test_recover_ignores_a_last_entry_cut_short(tree: Path, tmp_path: Path) -> None:
    before = snapshot(tree)
    journal = tmp_path / "run.journal"
    tx = Transaction(journal=journal)
    tx.write_bytes(tree / "pkg" / "a.py", b"changed\n")
    with (journal / "entries.jsonl").open("a") as fh:
        fh.write('{"op": "file", "path": ')  # the kill came while this line was written
    assert Transaction.recover(journal) == 1
    assert snapshot(tree) == before


def test_journal_is_dropped_on_commit_and_rollback(tmp_path: Path) -> None:
    for end in ("commit", "rollback"):
        journal = tmp_path / f"{end}.journal"
        tx = Transaction(journal=journal)
        tx.write_bytes(tmp_path / f"{end}.txt", b"x")
        getattr(tx, end)()
        assert not journal.exists()
    assert (tmp_path / "commit.txt").exists() and not (tmp_path / "rollback.txt").exists()


def test_an_existing_journal_must_be_recovered_first(tmp_path: Path) -> None:
    journal = tmp_path / "run.journal"
    journal.mkdir()
    with pytest.raises(RuntimeError, match=f"^{journal}: a journal already exists; recover it first$"):
        Transaction(journal=journal)


def test_journal_keeps_the_bytes_before_the_change(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"orig")
    f.chmod(0o640)
    journal = tmp_path / "run.journal"
    tx = Transaction(journal=journal)
    tx.track(f)
    tx.track(tmp_path / "absent")
    tx.ensure_dir(tmp_path / "d")
    tx.remove_empty_dirs(tmp_path / "d", tmp_path)
    lines = [json.loads(x) for x in (journal / "entries.jsonl").read_text().splitlines()]
    assert lines == [
        {"op": "file", "path": str(f), "mode": 0o640, "data": "000000.bin"},
        {"op": "file", "path": str(tmp_path / "absent"), "mode": None},
        {"op": "mkdir", "path": str(tmp_path / "d")},
        {"op": "rmdir", "path": str(tmp_path / "d")},
    ]
    assert (journal / "000000.bin").read_bytes() == b"orig"
    tx.commit()


def test_a_journal_already_gone_is_not_an_error(tmp_path: Path) -> None:
    journal = tmp_path / "run.journal"
    tx = Transaction(journal=journal)
    tx.write_bytes(tmp_path / "f", b"x")
    shutil.rmtree(journal)  # removed under us (e.g. by a recovering run)
    tx.commit()
    assert Transaction.recover(tmp_path / "never-existed.journal") == 0
