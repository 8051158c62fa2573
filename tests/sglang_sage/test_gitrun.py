"""One git runner: variables inherited from a hook or an outer git command never redirect sglang-sage's git."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sglang_sage import gitrun
from sglang_sage.apply_cli import main


def test_clean_env_drops_redirecting_and_identity_variables(monkeypatch) -> None:
    for name in (*gitrun.REDIRECTING, "GIT_AUTHOR_NAME", "GIT_COMMITTER_DATE"):
        monkeypatch.setenv(name, "/elsewhere")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "0")  # configuration is the user's business: kept
    env = gitrun.clean_env({"GIT_INDEX_FILE": "/scratch/index"})
    assert not [k for k in env if k in gitrun.REDIRECTING and k != "GIT_INDEX_FILE"]
    assert env["GIT_INDEX_FILE"] == "/scratch/index" and env["GIT_CONFIG_COUNT"] == "0"
    assert not [k for k in env if k.startswith(("GIT_AUTHOR_", "GIT_COMMITTER_"))]


def test_apply_and_revert_ignore_an_inherited_git_dir(
    checkout: Path, tmp_path: Path, digest, capsys, monkeypatch
) -> None:
    """As inside a hook or `git rebase -x`: GIT_DIR/GIT_WORK_TREE/GIT_INDEX_FILE name another repository."""
    other = tmp_path / "other"
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    (other / "f").write_text("x\n")
    other_before = digest(other)
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    monkeypatch.setenv("GIT_INDEX_FILE", str(other / ".git" / "index"))
    before = digest(checkout)
    assert main(["apply", "--sglang-dir", str(checkout), "--no-tests", "--no-build", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["state"] == "applied" and (checkout / ".git/sglang-sage/state.json").is_file(), rep
    assert main(["revert", "--sglang-dir", str(checkout), "--json"]) == 0
    capsys.readouterr()
    assert digest(checkout) == before and digest(other) == other_before


def test_missing_git_is_a_refusal(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(gitrun.SageError, match="git not found on PATH") as exc:
        gitrun.run(tmp_path, "status")
    assert exc.value.code == 4
