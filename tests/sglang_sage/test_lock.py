"""One run per tree: a concurrent run waits, then refuses naming the holder; a run killed with SIGKILL
mid-apply leaves a lock and a journal that the next run recognises, rolls back and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sglang_sage import errors as ec
from sglang_sage import lock, patcher
from sglang_sage.apply_cli import main

REPO = Path(__file__).resolve().parents[2]

# Runs apply.py's main in a child that SIGKILLs itself right after its Nth file write inside the
# transaction: no handler, no rollback, no lock release, exactly like `kill -9`.
KILLER = """
import os, signal, sys
from sglang_sage import transaction
from sglang_sage.apply_cli import main
write, count = transaction.Transaction.write_bytes, [0]
def write_then_die(self, path, data, mode=None):
    write(self, path, data, mode)
    count[0] += 1
    if count[0] == int(os.environ["KILL_AFTER_WRITES"]):
        os.kill(os.getpid(), signal.SIGKILL)
transaction.Transaction.write_bytes = write_then_die
sys.exit(main(sys.argv[1:]))
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def kill_mid_apply(target: Path, writes: int = 3) -> int:
    """Start apply in a child and let it SIGKILL itself mid-transaction; returns the dead child's pid."""
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLER, "apply", "--sglang-dir", str(target), "--no-tests", "--no-build"],
        env=dict(os.environ, PYTHONPATH=str(REPO), KILL_AFTER_WRITES=str(writes)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.wait(timeout=300) == -9
    return proc.pid


def test_concurrent_run_waits_then_refuses_naming_the_pid(installed: Path, digest, capsys, monkeypatch) -> None:
    t = patcher.open_target(installed)
    monkeypatch.setattr(lock, "WAIT_S", 0.3)
    with lock.TreeLock(t.lock_path()):
        before = digest(installed)
        started = time.monotonic()
        code, rep = run(capsys, "apply", "--sglang-dir", str(installed), "--no-tests", "--no-build")
        assert code == ec.REFUSED, rep
        assert rep["message"] == f"another sglang-sage run (pid {os.getpid()}) holds {t.lock_path()}"
        assert time.monotonic() - started >= 0.3
        assert digest(installed) == before
        code, rep = run(capsys, "revert", "--sglang-dir", str(installed))
        assert code == ec.REFUSED and "another sglang-sage run" in rep["message"]
    assert not t.lock_path().exists()


def test_second_run_waits_for_the_first(installed: Path, capsys) -> None:
    t = patcher.open_target(installed)
    held = lock.TreeLock(t.lock_path())
    held.acquire()
    releaser = threading.Timer(0.5, held.release)
    releaser.start()
    try:
        code, rep = run(capsys, "apply", "--sglang-dir", str(installed), "--no-tests", "--no-build")
    finally:
        releaser.join()
    assert code == 0 and rep["state"] == "applied", rep
    assert not t.lock_path().exists()


def test_kill_9_mid_apply_then_revert_is_byte_identical(checkout: Path, digest, capsys) -> None:
    before = digest(checkout)
    pid = kill_mid_apply(checkout)
    t = patcher.open_target(checkout)
    assert t.lock_path().exists() and t.journal_dir().exists()

    code, rep = run(capsys, "status", "--sglang-dir", str(checkout))
    assert rep["state"] == "partially applied", rep  # the half-done run is visible, and status says what follows
    assert any("interrupted run left a journal" in w for w in rep["warnings"])

    code, rep = run(capsys, "revert", "--sglang-dir", str(checkout))
    assert code == 0 and rep["state"] == "pristine", rep
    assert any(f"pid {pid}, which is gone" in w for w in rep["warnings"]), rep["warnings"]
    assert any("rolled its" in w for w in rep["warnings"]), rep["warnings"]
    assert not t.lock_path().exists() and not t.journal_dir().exists()
    assert digest(checkout) == before


def test_kill_9_mid_apply_then_apply_finishes_consistently(installed: Path, digest, capsys) -> None:
    before = digest(installed)
    kill_mid_apply(installed, writes=2)
    code, rep = run(capsys, "apply", "--sglang-dir", str(installed), "--no-tests", "--no-build")
    assert code == 0 and rep["state"] == "applied", rep
    assert any("took over" in w for w in rep["warnings"]) and any("rolled its" in w for w in rep["warnings"])
    code, rep = run(capsys, "revert", "--sglang-dir", str(installed))
    assert code == 0 and rep["state"] == "pristine", rep
    assert digest(installed) == before


def test_stale_lock_without_journal_is_taken_over(installed: Path, capsys) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    t = patcher.open_target(installed)
    t.lock_path().write_text(f"{dead.pid}\n")
    code, rep = run(capsys, "apply", "--sglang-dir", str(installed), "--no-tests", "--no-build")
    assert code == 0, rep
    assert rep["warnings"][0].startswith(
        f"took over {t.lock_path()} from sglang-sage run pid {dead.pid}, which is gone"
    )
    assert not t.lock_path().exists()
