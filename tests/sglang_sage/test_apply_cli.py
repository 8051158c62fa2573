"""apply / status / revert / check end to end on the real SGLang 0.5.17 trees (CPU only)."""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_sage import errors as ec
from sglang_sage.apply_cli import main
from sglang_sage.gitapply import GitApply
from sglang_sage.hashing import sha256_file
from sglang_sage.transaction import Transaction

REPO = Path(__file__).resolve().parents[2]
PATCH = REPO / "patches/0.5.17/0001-Register-the-sage_attn-attention-backend.patch"
REGISTRY = "sglang/srt/layers/attention/attention_registry.py"
SERVER_ARGS = "sglang/srt/server_args.py"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def assert_registered(pkg: Path) -> None:
    """sage_attn is registered (decorated factory) and accepted by server_args (ATTENTION_BACKEND_CHOICES)."""
    reg = ast.parse((pkg / REGISTRY).read_text())
    factories = [
        f
        for f in reg.body
        if isinstance(f, ast.FunctionDef)
        for d in f.decorator_list
        if isinstance(d, ast.Call)
        and getattr(d.func, "id", "") == "register_attention_backend"
        and isinstance(d.args[0], ast.Constant)
        and d.args[0].value == "sage_attn"
    ]
    assert len(factories) == 1
    body = ast.unparse(factories[0])
    assert "from sglang.srt.layers.attention.sage_attn_backend import SageAttnBackend" in body
    assert "return SageAttnBackend(runner)" in body
    sa = ast.parse((pkg / SERVER_ARGS).read_text())
    choices = next(
        n.value
        for n in sa.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "ATTENTION_BACKEND_CHOICES"
    )
    values = [e.value for e in choices.elts]  # type: ignore[attr-defined]
    assert "sage_attn" in values and "flashinfer" in values


def test_checkout_apply_status_idempotent_revert(checkout: Path, digest, capsys) -> None:
    before = digest(checkout)
    code, rep = run(capsys, "status", "--sglang-dir", str(checkout))
    assert code == 0 and rep["state"] == "pristine" and rep["layout"] == "git-checkout"

    code, rep = run(capsys, "apply", "--sglang-dir", str(checkout), "--no-tests", "--no-build")
    assert code == 0 and rep["state"] == "applied", rep
    assert_registered(checkout / "python")
    assert (checkout / "python/sglang/srt/layers/attention/sage_attn_backend.py").is_file()
    assert list((checkout / "test/registered/attention").glob("test_sage_attn*.py"))
    after_apply = digest(checkout)

    code, rep = run(capsys, "apply", "--sglang-dir", str(checkout), "--no-tests", "--no-build")
    assert code == 0 and "already applied" in rep["message"]
    assert digest(checkout) == after_apply

    code, rep = run(capsys, "revert", "--sglang-dir", str(checkout))
    assert code == 0 and rep["state"] == "pristine", rep
    assert digest(checkout) == before
    code, rep = run(capsys, "revert", "--sglang-dir", str(checkout))
    assert code == 0 and "already pristine" in rep["message"]


def test_installed_apply_build_revert(installed: Path, digest, capsys) -> None:
    before = digest(installed)
    code, rep = run(capsys, "apply", "--sglang-dir", str(installed), "--no-tests")
    assert code == 0 and rep["state"] == "applied", rep
    assert_registered(installed)
    assert list((installed / "sglang/srt/layers/attention/__pycache__").glob("sage_attn_backend.*.pyc"))
    assert not (installed / "test").exists()  # tests run from overlay/ for installed packages
    tests = [i for i in rep["items"] if i["path"].startswith("test/")]
    assert tests and all(i["state"] == "n/a" for i in tests)
    assert rep["changed"] and any(a.startswith("built: ") for a in rep["actions"])
    code, again = run(capsys, "apply", "--sglang-dir", str(installed), "--no-tests")
    assert code == 0 and not again["changed"] and again["actions"] == []  # nothing applied: nothing rebuilt
    code, rep = run(capsys, "revert", "--sglang-dir", str(installed))
    assert code == 0, rep
    assert digest(installed) == before


def test_source_tree_pyproject_step(source_tree: Path, digest, capsys) -> None:
    before = digest(source_tree)
    original = (source_tree / "pyproject.toml").read_bytes()
    code, rep = run(capsys, "apply", "--sglang-dir", str(source_tree), "--no-tests", "--no-build")
    assert code == 0 and rep["layout"] == "source-tree", rep
    text = (source_tree / "pyproject.toml").read_text()
    assert '"jinja2>=3.1.0"' in text and 'sage = ["sageattention>=1.0.6"]' in text
    edit = next(i for i in rep["items"] if i["kind"] == "edit")
    assert edit["state"] == "applied"
    code, _ = run(capsys, "revert", "--sglang-dir", str(source_tree))
    assert code == 0
    assert (source_tree / "pyproject.toml").read_bytes() == original
    assert digest(source_tree) == before


def test_pyproject_na_without_file(checkout: Path, capsys) -> None:
    code, rep = run(capsys, "check", "--sglang-dir", str(checkout))
    assert code == 0
    edit = next(i for i in rep["items"] if i["kind"] == "edit")
    assert edit["state"] == "n/a" and "no python/pyproject.toml" in edit["detail"]


def test_no_gpu_exit_code(installed: Path, capsys) -> None:
    """On CPU the apply succeeds and then says, with exit code 3, that the GPU tests did not run."""
    code, rep = run(capsys, "apply", "--sglang-dir", str(installed), "--no-build")
    assert code == ec.NO_GPU == 3
    assert rep["state"] == "applied" and "GPU tests NOT run" in rep["message"]


# ----------------------------------------------------------------------------- bad input: nothing changes


def refused(capsys, target: Path, *extra: str, code: int = ec.REFUSED) -> dict:
    got, rep = run(capsys, "apply", "--sglang-dir", str(target), "--no-tests", "--no-build", *extra)
    assert got == code, rep
    return rep


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_bad_dir(tmp_path: Path, capsys, kind: str) -> None:
    target = tmp_path / "t"
    if kind == "file":
        target.write_text("")
    elif kind == "empty":
        target.mkdir()
    rep = refused(capsys, target)
    assert str(target) in rep["message"]


def test_other_version(sdist_root: Path, digest, capsys) -> None:
    before = digest(sdist_root)
    rep = refused(capsys, sdist_root)
    assert "0.5.10.post1" in rep["message"] and "0.5.17" in rep["message"]
    assert digest(sdist_root) == before


def test_dirty_checkout(checkout: Path, digest, capsys) -> None:
    path = checkout / "python" / SERVER_ARGS
    path.write_text(path.read_text() + "\n# local edit\n")
    before = digest(checkout)
    rep = refused(capsys, checkout)
    assert "uncommitted" in rep["message"]
    assert any("python/sglang/srt/server_args.py" in d for d in rep["details"])
    assert digest(checkout) == before


def test_drifted_file(installed: Path, digest, capsys) -> None:
    path = installed / REGISTRY
    path.write_text(path.read_text().replace("import logging", "import logging  # drift", 1))
    before = digest(installed)
    rep = refused(capsys, installed)
    assert "differ from the SGLang 0.5.17 pins" in rep["message"]
    assert [d for d in rep["details"] if REGISTRY in d] and not [d for d in rep["details"] if SERVER_ARGS in d]
    assert digest(installed) == before


def test_half_applied_refused_then_revert(checkout: Path, pristine_checkout: Path, digest, capsys) -> None:
    subprocess.run(["git", "apply", f"--include=python/{SERVER_ARGS}", str(PATCH)], cwd=checkout, check=True)
    code, rep = run(capsys, "status", "--sglang-dir", str(checkout))
    assert rep["state"] == "partially applied"
    before = digest(checkout)
    rep = refused(capsys, checkout)
    assert "partially applied" in rep["message"] and any(SERVER_ARGS in d for d in rep["details"])
    assert digest(checkout) == before
    code, rep = run(capsys, "revert", "--sglang-dir", str(checkout))
    assert code == 0 and rep["state"] == "pristine"
    assert sha256_file(checkout / "python" / SERVER_ARGS) == sha256_file(pristine_checkout / "python" / SERVER_ARGS)


def test_read_only_tree(installed: Path, digest, capsys) -> None:
    for dirpath, _, files in os.walk(installed):
        for f in files:
            p = Path(dirpath) / f
            p.chmod(p.stat().st_mode & ~0o222)
        Path(dirpath).chmod(Path(dirpath).stat().st_mode & ~0o222)
    try:
        before = digest(installed)
        rep = refused(capsys, installed)
        assert "cannot write" in rep["message"] and any("read-only" in d for d in rep["details"])
        assert digest(installed) == before
    finally:
        for dirpath, _, files in os.walk(installed):
            Path(dirpath).chmod(0o755)
            for f in files:
                (Path(dirpath) / f).chmod(0o644)


def test_interrupt_after_first_overlay_file(checkout: Path, digest, capsys, monkeypatch) -> None:
    before = digest(checkout)
    original = Transaction.write_bytes

    def write_then_interrupt(self, path, data, mode=None):  # type: ignore[no-untyped-def]
        original(self, path, data, mode)
        raise KeyboardInterrupt

    monkeypatch.setattr(Transaction, "write_bytes", write_then_interrupt)
    assert main(["apply", "--sglang-dir", str(checkout), "--no-tests", "--no-build"]) == ec.INTERRUPTED
    assert digest(checkout) == before


def test_interrupt_after_git_apply(installed: Path, digest, monkeypatch) -> None:
    before = digest(installed)
    original = GitApply.apply

    def apply_then_interrupt(self, *a, **kw):  # type: ignore[no-untyped-def]
        result = original(self, *a, **kw)
        assert result.ok
        raise KeyboardInterrupt

    monkeypatch.setattr(GitApply, "apply", apply_then_interrupt)
    assert main(["apply", "--sglang-dir", str(installed), "--no-tests", "--no-build"]) == ec.INTERRUPTED
    assert digest(installed) == before


def test_git_missing(installed: Path, tmp_path: Path, digest) -> None:
    """PATH without git: a clear refusal (exit 4), nothing written.

    The interpreter is started by its own path, not through a link in a PATH-only directory: a
    venv's python reached through a symlink elsewhere does not find its pyvenv.cfg and leaves the
    venv (no `rich`, no GitPython), which is a different failure than the one tested here.
    """
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(PATH=str(empty_path), PYTHONPATH=str(REPO))
    before = digest(installed)
    proc = subprocess.run(
        [sys.executable, str(REPO / "apply.py"), "--sglang-dir", str(installed), "--no-tests"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == ec.REFUSED, proc.stdout + proc.stderr
    assert "git not found on PATH" in proc.stdout + proc.stderr
    assert digest(installed) == before


def test_force_three_way_on_drifted_checkout(checkout: Path, capsys) -> None:
    """A committed local change far from the hunks: pins differ, --force merges with git apply --3way."""
    path = checkout / "python" / SERVER_ARGS
    path.write_text("# site-local header\n" + path.read_text())
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "local"], cwd=checkout, check=True
    )
    rep = refused(capsys, checkout)
    code, rep = run(capsys, "apply", "--sglang-dir", str(checkout), "--no-tests", "--no-build", "--force")
    assert code == 0, rep
    assert '"sage_attn",' in path.read_text()


def test_help_lists_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for code in (0, 3, 4, 5, 130):
        assert f"{code:>3}  " in out


def test_read_only_mode_bits_restored_on_rollback(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("a")
    f.chmod(0o444)
    with pytest.raises(RuntimeError), Transaction() as tx:
        tx.track(f)
        f.chmod(0o644)
        f.write_text("b")
        raise RuntimeError
    assert f.read_text() == "a" and stat.S_IMODE(f.stat().st_mode) == 0o444


def test_default_target_is_fetched_checkout(tmp_path: Path, capsys, monkeypatch) -> None:
    """`python apply.py` with no --sglang-dir: wheel -> .sglang/0.5.17/ git checkout, applied; no GPU -> 3."""
    import sglang_sage.apply_cli as cli

    monkeypatch.setattr(cli, "REPO", tmp_path)
    code, rep = run(capsys, "--no-build")
    target = tmp_path / ".sglang" / "0.5.17"
    assert code == ec.NO_GPU, rep
    assert rep["target"] == str(target) and rep["state"] == "applied"
    assert_registered(target / "python")
    code, rep = run(capsys, "status")
    assert code == 0 and rep["state"] == "applied"


# ----------------------------------------------------------------------------- default target, --help


def python_importing(tmp_path: Path, site: Path) -> str:
    """An interpreter (this one) whose `import sglang` finds the package under `site`."""
    exe = tmp_path / "bin-with-sglang" / "python"
    exe.parent.mkdir()
    exe.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    exe.chmod(0o755)
    return str(exe)


def test_default_target_is_the_installed_sglang(installed: Path, tmp_path: Path, capsys) -> None:
    """No --sglang-dir: the SGLang that --python imports is patched, and named before anything is written."""
    python = python_importing(tmp_path, installed)
    code, rep = run(capsys, "apply", "--python", python, "--no-tests", "--no-build")
    assert code == 0 and rep["target"] == str(installed) and rep["layout"] == "installed", rep
    assert_registered(installed)
    code, rep = run(capsys, "status", "--python", python)
    assert code == 0 and rep["state"] == "applied" and rep["target"] == str(installed)


def test_installed_target_is_named_first(installed: Path, tmp_path: Path, capsys) -> None:
    python = python_importing(tmp_path, installed)
    assert main(["check", "--python", python]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.index(f"target: SGLang 0.5.17 installed for {python}") < out.index("check ")


def test_editable_checkout_is_targeted_as_a_checkout(checkout: Path, tmp_path: Path, capsys) -> None:
    code, rep = run(capsys, "status", "--python", python_importing(tmp_path, checkout / "python"))
    assert code == 0 and rep["target"] == str(checkout) and rep["layout"] == "git-checkout", rep


def test_installed_unsupported_version_is_refused(sdist_root: Path, tmp_path: Path, digest, capsys) -> None:
    before = digest(sdist_root)
    code, rep = run(capsys, "apply", "--python", python_importing(tmp_path, sdist_root), "--no-tests")
    assert code == ec.REFUSED and "0.5.10.post1 is not supported" in rep["message"], rep
    assert any("--fetch" in d for d in rep["details"])
    assert digest(sdist_root) == before


def test_fetch_forces_the_pinned_release(installed: Path, checkout: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import sglang_sage.apply_cli as cli

    asked: list[tuple[str, str, Path]] = []

    def fake_checkout(version: str, tag: str, dest: Path, *_: object) -> Path:
        asked.append((version, tag, dest))
        return checkout

    monkeypatch.setattr(cli, "REPO", tmp_path)
    monkeypatch.setattr(cli.fetch, "ensure_checkout", fake_checkout)
    code, rep = run(capsys, "status", "--python", python_importing(tmp_path, installed), "--fetch")
    assert code == 0 and rep["target"] == str(checkout), rep
    assert asked == [("0.5.17", "v0.5.17", tmp_path / ".sglang" / "0.5.17")]
    code, rep = run(capsys, "status", "--fetch", "--sglang-dir", str(installed))
    assert code == ec.USAGE and "--fetch" in rep["message"]


def test_top_level_help_shows_the_apply_options(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    section = out[out.index("options of apply, the default command") :]
    for flag in ("--sglang-dir", "--no-tests", "--json", "--python", "--fetch", "--force", "--no-build"):
        assert flag in section, flag


def test_fetch_says_what_it_downloads_and_how_big(tmp_path: Path, monkeypatch) -> None:
    """A download names the release, the destination, pip's own size line and the saved size."""
    from sglang_sage import fetch

    fake_pip = tmp_path / "python"
    fake_pip.write_text(
        "#!/bin/sh\n"
        'for a; do [ "$prev" = "-d" ] && out="$a"; prev="$a"; done\n'
        'echo "Collecting sglang==9.9"\n'
        'echo "  Downloading sglang-9.9-py3-none-any.whl (1.5 MB)"\n'
        'head -c 1500000 /dev/zero > "$out/sglang-9.9-py3-none-any.whl"\n'
        'echo "Saved $out/sglang-9.9-py3-none-any.whl"\n'
    )
    fake_pip.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake_pip))
    monkeypatch.setenv("SGLANG_SAGE_CACHE", str(tmp_path / "cache"))
    said: list[str] = []
    whl = fetch.wheel("9.9", said.append)
    assert whl == tmp_path / "cache" / "wheels" / "sglang-9.9-py3-none-any.whl"
    assert said[0] == f"downloading sglang==9.9 (wheel) from PyPI into {whl.parent} (once; cached there)"
    assert "  pip: Downloading sglang-9.9-py3-none-any.whl (1.5 MB)" in said
    assert said[-1] == "saved sglang-9.9-py3-none-any.whl (1.5 MB)"
    said.clear()
    assert fetch.wheel("9.9", said.append) == whl and said == []  # cached: silent, no second download
