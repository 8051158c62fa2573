"""patcher.py on a miniature SGLang and patch set (fast: the mutation runs use it; test_apply_cli.py does the
same on the real 0.5.17 trees). A tiny release 9.9.9: two patched files, a pyproject edit step, three overlay files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from sglang_sage import patcher
from sglang_sage.errors import APPLY_FAILED, REFUSED, SageError
from sglang_sage.hashing import sha256_bytes
from sglang_sage.manifest import Manifest
from sglang_sage.overlay import discover, entries

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
VERSION = "9.9.9"
REG, ARGS = "python/sglang/srt/registry.py", "python/sglang/srt/args.py"
# formatted as SGLang's black/isort leave it (the `pr` self-check of test_pr_mini.py runs them on the series)
PRE = {REG: 'BACKENDS = ["a"]\n', ARGS: 'import os\n\nCHOICES = ["a"]\n'}
POST = {REG: 'BACKENDS = ["a", "sage"]\n', ARGS: 'import os\n\nCHOICES = ["a", "sage"]\n'}
OVERLAY = {
    "sglang/srt/sage.py": "X = 1\n",
    "sglang/srt/deep/er/k.py": "K = 2\n",
    "test/registered/test_sage.py": "def test_x():\n    pass\n",
}
PYPROJECT = '[project]\nname = "sglang"\ndependencies = ["torch"]\n'
MAIL = """\
From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001
From: t <t@t>
Date: Sat, 21 Nov 2026 00:00:00 +0000
Subject: [PATCH] Register sage

Description: register the sage backend
Origin: vendor
Forwarded: not-needed
Last-Update: 2026-11-21
---
"""
EDIT = """\
kind = "pyproject"
target = "python/pyproject.toml"
dependencies = ["jinja2>=3.1.0", "tomli>=2"]
[dep3]
Description = "deps"
Origin = "vendor"
Forwarded = "not-needed"
Last-Update = "2026-11-21"
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def package(files: dict[str, str]) -> dict[str, str]:
    """The package's files, repo-relative (python/sglang/...)."""
    return {
        "python/sglang/__init__.py": "",
        "python/sglang/version.py": f'__version__ = "{VERSION}"\n',
        "python/sglang/srt/__init__.py": "",
        **files,
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """patches/9.9.9 (series, mail patch, edit step, manifest) and overlay/."""
    base = tmp_path_factory.mktemp("world")
    scratch = base / "scratch"
    write(scratch, package(PRE))
    git(scratch, "init", "-q")
    git(scratch, "add", "-A")
    git(scratch, "commit", "-qm", "base")
    write(scratch, POST)
    patches = base / "patches"
    pset = patches / VERSION
    pset.mkdir(parents=True)
    (pset / "0001-register.patch").write_text(MAIL + git(scratch, "diff"))
    (pset / "0002-pyproject.edit.toml").write_text(EDIT)
    (pset / "series").write_text("# order\n0001-register.patch\n0002-pyproject.edit.toml\n")
    overlay = base / "overlay"
    write(overlay, OVERLAY)
    manifest = Manifest(
        pset / "manifest.toml",
        VERSION,
        "v" + VERSION,
        "2.0",
        ">=3.10",
        ["3.11"],
        pre={k: sha256_bytes(v.encode()) for k, v in PRE.items()},
        post={k: sha256_bytes(v.encode()) for k, v in POST.items()},
        overlay=entries(discover(overlay)),
    )
    (pset / "manifest.toml").write_text(manifest.dump())
    return {"patches": patches, "overlay": overlay}


def make_checkout(root: Path, pyproject: bool = True) -> Path:
    write(root, package(PRE))
    if pyproject:
        write(root, {"python/pyproject.toml": PYPROJECT})
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "base")
    return root


def make_installed(root: Path) -> Path:
    write(root, {k.removeprefix("python/"): v for k, v in package(PRE).items()})
    write(root, {f"sglang-{VERSION}.dist-info/METADATA": f"Name: sglang\nVersion: {VERSION}\n"})
    return root


def make_source_tree(root: Path) -> Path:
    write(root, {k.removeprefix("python/"): v for k, v in package(PRE).items()})
    write(root, {"pyproject.toml": PYPROJECT})
    return root


MAKERS = {"checkout": make_checkout, "installed": make_installed, "source": make_source_tree}


@pytest.fixture(params=sorted(MAKERS))
def tree(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return MAKERS[request.param](tmp_path / request.param)


def target(world: dict[str, Path], root: Path, overlay: Path | None = None) -> patcher.Target:
    return patcher.open_target(root, overlay or world["overlay"], world["patches"])


def states(report: patcher.Report) -> dict[str, str]:
    return {i.path: i.state for i in report.items}


# ----------------------------------------------------------------------------- round trips


def test_apply_status_revert_round_trip(world: dict[str, Path], tree: Path, digest) -> None:
    before = digest(tree)
    t = target(world, tree)
    rep = patcher.status(t)
    assert rep.state == patcher.PRISTINE and rep.command == "status" and rep.version == VERSION
    assert rep.target == str(tree.resolve()) and rep.layout == t.layout.kind.value and rep.warnings == []

    rep = patcher.apply(t)
    assert rep.state == patcher.APPLIED and rep.message == f"applied sage_attn to {t.layout.root}"
    assert rep.command == "apply" and rep.exit_code == 0
    installed = t.layout.kind is patcher.LayoutKind.INSTALLED
    has_pyproject = not installed
    assert rep.actions == [
        "patched 2 file(s)",
        *(
            ["python/pyproject.toml: added dependencies: jinja2>=3.1.0; dependencies: tomli>=2"]
            if has_pyproject
            else []
        ),
        f"installed {2 if t.layout.repo_root is None else 3} overlay file(s)",
    ]
    for rel, text in POST.items():
        assert t.disk(rel).read_text() == text  # type: ignore[union-attr]
    assert (t.layout.pkg_root / "sglang/srt/deep/er/k.py").read_text() == "K = 2\n"
    mode = stat.S_IMODE((t.layout.pkg_root / "sglang/srt/sage.py").stat().st_mode)
    assert mode == 0o644
    assert patcher.status(t).state == patcher.APPLIED
    state = json.loads((t.state_dir() / patcher.STATE_FILE).read_text())
    assert state["version"] == VERSION
    if has_pyproject:
        text = t.disk("python/pyproject.toml").read_text()  # type: ignore[union-attr]
        assert '"jinja2>=3.1.0"' in text
        assert state["pyproject"] == {"post_sha256": sha256_bytes(text.encode())}
        assert (t.state_dir() / "pyproject.toml.orig").read_text() == PYPROJECT
    else:
        assert state["pyproject"] is None

    again = patcher.apply(target(world, tree))
    assert again.message == f"already applied to {t.layout.root}; nothing changed" and again.actions == []
    assert again.state == patcher.APPLIED

    rep = patcher.revert(target(world, tree))
    assert rep.state == patcher.PRISTINE and rep.command == "revert"
    assert rep.message == f"reverted {t.layout.root} to pristine SGLang {VERSION} (pre-image pins verified)"
    assert rep.actions[0] == "reverted 2 patched file(s)"
    assert rep.actions[-1] == f"removed {2 if t.layout.repo_root is None else 3} overlay file(s)"
    assert digest(tree) == before  # byte-identical, nested overlay directories and the state dir gone
    assert not t.state_dir().exists()

    rep = patcher.revert(target(world, tree))
    assert rep.message == f"{t.layout.root} is already pristine; nothing changed" and rep.actions == []


def test_state_dir_per_layout(world: dict[str, Path], tmp_path: Path) -> None:
    co = target(world, make_checkout(tmp_path / "co"))
    assert co.state_dir() == (tmp_path / "co").resolve() / ".git" / "sglang-sage"
    inst = target(world, make_installed(tmp_path / "inst"))
    assert inst.state_dir() == (tmp_path / "inst").resolve() / f"sglang-{VERSION}.dist-info" / "sglang-sage"
    src = target(world, make_source_tree(tmp_path / "src"))
    assert src.state_dir() == (tmp_path / "src").resolve() / ".sglang-sage"


def test_check_reports_what_apply_would_do_and_writes_nothing(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_checkout(tmp_path / "co")
    before = digest(root)
    rep = patcher.check(target(world, root))
    assert rep.command == "check" and rep.message == "all checks passed; apply would succeed"
    assert rep.actions == [
        f"would patch {ARGS}",
        f"would patch {REG}",
        "would add to pyproject: dependencies: jinja2>=3.1.0",
        "would add to pyproject: dependencies: tomli>=2",
        "would install python/sglang/srt/deep/er/k.py",
        "would install python/sglang/srt/sage.py",
        "would install test/registered/test_sage.py",
    ]
    assert digest(root) == before
    patcher.apply(target(world, root))
    rep = patcher.check(target(world, root))
    assert rep.message == "already applied; apply would change nothing" and rep.actions == []


def test_status_items_in_detail(world: dict[str, Path], tmp_path: Path) -> None:
    root = make_installed(tmp_path / "inst")
    items = patcher.status_items(target(world, root))
    assert [(i.kind, i.step, i.path, i.state, i.detail) for i in items] == [
        ("patch", "0001-register.patch", ARGS, patcher.PRISTINE, ""),
        ("patch", "0001-register.patch", REG, patcher.PRISTINE, ""),
        ("edit", "0002-pyproject.edit.toml", "python/pyproject.toml", patcher.NA,
         "installed package: dist-info metadata is left alone"),
        ("overlay", "overlay/sglang/srt/deep/er/k.py", "python/sglang/srt/deep/er/k.py", patcher.PRISTINE,
         "not installed"),
        ("overlay", "overlay/sglang/srt/sage.py", "python/sglang/srt/sage.py", patcher.PRISTINE, "not installed"),
        ("overlay", "overlay/test/registered/test_sage.py", "test/registered/test_sage.py", patcher.NA,
         "tests are run from overlay/ on this layout"),
    ]  # fmt: skip
    (root / "sglang/srt/registry.py").write_text("changed\n")
    (root / "sglang/srt/args.py").unlink()
    (root / "sglang/srt/sage.py").write_text("other\n")
    items = {i.path: i for i in patcher.status_items(target(world, root))}
    assert items[REG].state == patcher.DRIFTED
    sha = sha256_bytes(b"changed\n")
    assert items[REG].detail == f"sha256 {sha[:12]} is neither the pre-image nor the post-image pin"
    assert (items[ARGS].state, items[ARGS].detail) == (patcher.DRIFTED, "missing")
    sage = items["python/sglang/srt/sage.py"]
    assert (sage.state, sage.detail) == (patcher.DRIFTED, "installed file differs from overlay/")


def test_edit_item_states(world: dict[str, Path], tmp_path: Path) -> None:
    root = make_checkout(tmp_path / "co")
    edit = next(i for i in patcher.status_items(target(world, root)) if i.kind == "edit")
    assert (edit.state, edit.detail) == (
        patcher.PRISTINE,
        "would add dependencies: jinja2>=3.1.0; dependencies: tomli>=2",
    )
    assert (edit.kind, edit.step, edit.path) == ("edit", "0002-pyproject.edit.toml", "python/pyproject.toml")
    (root / "python/pyproject.toml").write_text(PYPROJECT.replace('"torch"', '"torch", "Jinja2>=3", "tomli"'))
    edit = next(i for i in patcher.status_items(target(world, root)) if i.kind == "edit")
    assert (edit.state, edit.detail) == (patcher.APPLIED, "dependencies: Jinja2>=3; dependencies: tomli")
    assert (edit.kind, edit.step, edit.path) == ("edit", "0002-pyproject.edit.toml", "python/pyproject.toml")
    bare = make_checkout(tmp_path / "bare", pyproject=False)
    edit = next(i for i in patcher.status_items(target(world, bare)) if i.kind == "edit")
    assert (edit.state, edit.detail) == (patcher.NA, "no python/pyproject.toml in this tree")
    assert (edit.kind, edit.step, edit.path) == ("edit", "0002-pyproject.edit.toml", "python/pyproject.toml")


@pytest.mark.parametrize(
    ("found", "want"),
    [
        ([], patcher.PRISTINE),
        ([patcher.NA], patcher.PRISTINE),
        ([patcher.PRISTINE, patcher.NA], patcher.PRISTINE),
        ([patcher.APPLIED, patcher.NA], patcher.APPLIED),
        ([patcher.APPLIED, patcher.PRISTINE], patcher.PARTIAL),
        ([patcher.APPLIED, patcher.DRIFTED], patcher.DRIFTED),
        ([patcher.PRISTINE, patcher.DRIFTED], patcher.DRIFTED),
    ],
)
def test_overall(found: list[str], want: str) -> None:
    assert patcher.overall([patcher.Item("patch", "s", f"p{n}", s) for n, s in enumerate(found)]) == want


def test_report_json_has_stable_keys() -> None:
    rep = patcher.Report("status", "/t", "installed", "1", "pristine", [patcher.Item("patch", "s", "p", "pristine")])
    assert rep.to_json() == {
        "command": "status",
        "target": "/t",
        "layout": "installed",
        "version": "1",
        "state": "pristine",
        "exit_code": 0,
        "message": "",
        "actions": [],
        "warnings": [],
        "changed": False,
        "items": [{"kind": "patch", "step": "s", "path": "p", "state": "pristine", "detail": ""}],
    }


# ----------------------------------------------------------------------------- refusals change nothing


def refuses(world: dict[str, Path], root: Path, digest, match: str, **kw: object) -> SageError:
    before = digest(root)
    with pytest.raises(SageError, match=match) as info:
        patcher.apply(target(world, root), **kw)  # type: ignore[arg-type]
    assert digest(root) == before
    return info.value


def test_dirty_checkout_is_refused_unless_forced(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_checkout(tmp_path / "co")
    (root / "python/sglang/srt/registry.py").write_text(PRE[REG] + "# local\n")
    git(root, "add", "-A")  # staged only
    err = refuses(world, root, digest, "uncommitted changes in files the patch set touches")
    assert err.message == (
        f"{root.resolve()}: uncommitted changes in files the patch set touches (commit or stash them, or --force)"
    )
    assert err.code == REFUSED and err.details == [REG]


def test_dirty_unrelated_files_do_not_count(world: dict[str, Path], tmp_path: Path) -> None:
    root = make_checkout(tmp_path / "co")
    (root / "python/sglang/srt/__init__.py").write_text("# local\n")
    (root / "notes.txt").write_text("untracked elsewhere\n")
    assert patcher.apply(target(world, root)).state == patcher.APPLIED


def test_apply_of_an_applied_file_is_not_dirt(world: dict[str, Path], tmp_path: Path) -> None:
    """A tree apply itself changed (patches applied, overlay file missing): finished by --force, not called dirty."""
    root = make_checkout(tmp_path / "co")
    patcher.apply(target(world, root))
    (root / "python/sglang/srt/sage.py").unlink()
    t = target(world, root)
    assert patcher.status(t).state == patcher.PARTIAL
    err = refuses(world, root, lambda p: "x", "is partially applied; refusing to apply on top of it")
    assert err.message == (
        f"{root.resolve()} is partially applied; refusing to apply on top of it "
        "(run `revert` first, or `apply --force` to finish the missing steps)"
    )
    assert err.details == [
        f"{ARGS}: applied",
        f"{REG}: applied",
        "python/pyproject.toml: applied",
        "python/sglang/srt/deep/er/k.py: applied",
        "test/registered/test_sage.py: applied",
    ]
    rep = patcher.apply(t, force=True)
    assert rep.state == patcher.APPLIED and rep.actions == ["installed 1 overlay file(s)"]


def test_drifted_pins_are_refused(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_installed(tmp_path / "inst")
    (root / "sglang/srt/registry.py").write_text("# drift\n" + PRE[REG])
    err = refuses(world, root, digest, r"1 file\(s\) differ from the SGLang 9\.9\.9 pins in manifest\.toml")
    assert err.message == (
        f"{root.resolve()}: 1 file(s) differ from the SGLang 9.9.9 pins in manifest.toml "
        "(use --force for a 3-way apply)"
    )
    assert len(err.details) == 1 and err.details[0].startswith(f"{REG}: sha256 ")
    # --force on a tree that is not a git checkout: no 3-way merge possible
    err = refuses(world, root, digest, "patches do not apply cleanly", force=True)
    assert err.message == "patches do not apply cleanly (nothing was written); --3way needs a git checkout"
    assert err.details


def test_force_three_way_on_a_committed_local_change(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_checkout(tmp_path / "co")
    (root / "python/sglang/srt/args.py").write_text("# site-local\n" + PRE[ARGS])
    git(root, "commit", "-qam", "local")
    refuses(world, root, digest, "differ from the SGLang")
    t = target(world, root)
    rep = patcher.check(t, force=True)
    assert "would use git apply --3way (pins differ, --force)" in rep.actions
    rep = patcher.apply(t, force=True)
    assert rep.actions[0] == "patched 2 file(s) with --3way"
    assert (root / "python/sglang/srt/args.py").read_text() == "# site-local\n" + POST[ARGS]
    assert rep.state == patcher.DRIFTED  # forced: reported as it is, not rolled back


def test_overlay_destination_with_other_content(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_installed(tmp_path / "inst")
    (root / "sglang/srt/sage.py").write_text("mine\n")
    err = refuses(world, root, digest, "overlay destinations already hold other content")
    assert err.message == "overlay destinations already hold other content (use --force to overwrite)"
    assert err.details == [f"{root.resolve()}/sglang/srt/sage.py: exists and differs from overlay/sglang/srt/sage.py"]
    rep = patcher.apply(target(world, root), force=True)  # --force overwrites it
    assert (root / "sglang/srt/sage.py").read_text() == "X = 1\n" and rep.state == patcher.APPLIED


def test_read_only_target_is_refused(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_installed(tmp_path / "inst")
    reg = root / "sglang/srt/registry.py"
    reg.chmod(0o444)
    err = refuses(world, root, digest, "cannot write the tree")
    assert err.message == f"{root.resolve()}: cannot write the tree"
    assert err.details == [f"{reg.resolve()}: file is read-only (mode -r--r--r--)"]


def test_writable_problem_cases(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    assert patcher._writable_problem(f) is None
    assert patcher._writable_problem(tmp_path / "new" / "deeper" / "x") is None  # nearest existing dir is writable
    assert patcher._writable_problem(f / "sub" / "x") == f"{f}: is a file where a directory is needed for {f}/sub/x"
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        assert patcher._writable_problem(d / "x") == f"{d}: directory is read-only (mode dr-xr-xr-x)"
    finally:
        d.chmod(0o755)
    f.chmod(0o200)
    assert patcher._writable_problem(f) is None  # owner-writable only
    f.chmod(0o020)
    assert patcher._writable_problem(f) is None or os.geteuid() != 0  # group bit counts for root
    f.chmod(0o002)
    assert patcher._writable_problem(f) is None or os.geteuid() != 0


def test_api_check_miss_is_refused(world: dict[str, Path], tmp_path: Path, digest) -> None:
    overlay = tmp_path / "overlay"
    write(overlay, {**OVERLAY, "sglang/srt/sage.py": "from sglang.srt.nope import X\n"})
    root = make_installed(tmp_path / "inst")
    before = digest(root)
    t = target(world, root, overlay)
    with pytest.raises(SageError, match="the overlay uses SGLang internals that SGLang 9.9.9 lacks") as info:
        patcher.apply(t)
    assert info.value.details == ["overlay/sglang/srt/sage.py:1: sglang.srt.nope: module does not exist"]
    assert digest(root) == before
    rep = patcher.apply(t, skip_api_check=True)  # development only
    assert rep.state == patcher.APPLIED
    stale = "overlay/sglang/srt/sage.py: changed since the manifest was written"
    assert rep.warnings == [f"{stale} (run: python apply.py manifest --update 9.9.9)"]
    assert patcher.status(t).warnings == rep.warnings


def test_progress_names_each_step(world: dict[str, Path], tmp_path: Path) -> None:
    seen: list[str] = []
    patcher.apply(target(world, make_checkout(tmp_path / "co")), progress=seen.append)
    assert seen == [
        "checking git state",
        "verifying pre-image pins",
        "static API check of the overlay",
        "dry-running patches (git apply --check)",
        "applying patches",
        "editing pyproject.toml",
        "installing overlay",
    ]
    seen.clear()
    patcher.revert(target(world, tmp_path / "co"), progress=seen.append)
    assert seen == ["reverse-applying patches"]


def test_post_apply_verification_rolls_back(world: dict[str, Path], tmp_path: Path, digest) -> None:
    """A post-image pin that the applied file does not match: nothing stays written."""
    patches = tmp_path / "patches"
    import shutil

    shutil.copytree(world["patches"], patches)
    m = Manifest.load(patches / VERSION / "manifest.toml")
    m.post[REG] = "0" * 64
    (patches / VERSION / "manifest.toml").write_text(m.dump())
    root = make_source_tree(tmp_path / "src")
    before = digest(root)
    with pytest.raises(SageError, match="post-apply verification failed; rolled back") as info:
        patcher.apply(patcher.open_target(root, world["overlay"], patches))
    assert info.value.code == APPLY_FAILED
    assert info.value.message == "post-apply verification failed; rolled back"
    assert info.value.details == [f"{REG}: drifted sha256 {sha256_bytes(POST[REG].encode())[:12]} is neither the "
                                  "pre-image nor the post-image pin"]  # fmt: skip
    assert digest(root) == before


def test_failing_git_apply_rolls_back(world: dict[str, Path], tmp_path: Path, digest, monkeypatch) -> None:
    root = make_checkout(tmp_path / "co")
    before = digest(root)
    t = target(world, root)
    monkeypatch.setattr(t.git, "apply", lambda *a, **k: patcher.GitApply.run(t.git, ["apply", "/nonexistent"]))
    with pytest.raises(SageError) as info:
        patcher.apply(t)
    assert info.value.message == "git apply failed"
    assert info.value.code == APPLY_FAILED and info.value.details
    assert digest(root) == before


# ----------------------------------------------------------------------------- revert


def test_revert_refuses_files_changed_after_apply(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_installed(tmp_path / "inst")
    patcher.apply(target(world, root))
    (root / "sglang/srt/args.py").write_text("edited after apply\n")
    before = digest(root)
    with pytest.raises(SageError, match="cannot revert, these files changed after apply") as info:
        patcher.revert(target(world, root))
    assert len(info.value.details) == 1 and info.value.details[0].startswith(f"{ARGS}: sha256 ")
    assert digest(root) == before


def test_revert_keeps_an_edited_pyproject(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_source_tree(tmp_path / "src")
    t = target(world, root)
    patcher.apply(t)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "# my edit\n")
    before = digest(root)
    with pytest.raises(SageError, match="changed since apply; not restoring it over your edits") as info:
        patcher.revert(target(world, root))
    assert info.value.details == [f"the original is kept at {t.state_dir() / 'pyproject.toml.orig'}"]
    assert digest(root) == before  # the patches were reverted inside the transaction and are back again


def test_revert_of_a_read_only_tree_is_refused(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_installed(tmp_path / "inst")
    patcher.apply(target(world, root))
    (root / "sglang/srt/sage.py").chmod(0o444)
    before = digest(root)
    with pytest.raises(SageError, match="cannot write the tree") as info:
        patcher.revert(target(world, root))
    assert info.value.details == [f"{(root / 'sglang/srt/sage.py').resolve()}: file is read-only (mode -r--r--r--)"]
    assert digest(root) == before


def test_revert_finishes_a_half_applied_tree(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_checkout(tmp_path / "co")
    before = digest(root)
    patch = world["patches"] / VERSION / "0001-register.patch"
    subprocess.run(["git", "apply", f"--include={ARGS}", str(patch)], cwd=root, check=True)
    write(root, {"python/sglang/srt/sage.py": "X = 1\n"})
    rep = patcher.revert(target(world, root))
    assert rep.state == patcher.PRISTINE
    assert rep.actions == ["reverted 1 patched file(s)", "removed 1 overlay file(s)"]
    assert digest(root) == before


def test_revert_with_a_corrupt_state_file(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_installed(tmp_path / "inst")
    before = digest(root)
    t = target(world, root)
    patcher.apply(t)
    (t.state_dir() / patcher.STATE_FILE).write_text("{not json")
    assert patcher.revert(target(world, root)).state == patcher.PRISTINE
    assert digest(root) == before


def test_revert_removes_a_leftover_state_dir(world: dict[str, Path], tmp_path: Path, digest) -> None:
    """Pristine files but a state file left behind (e.g. a crash after the files were restored): revert cleans up."""
    root = make_installed(tmp_path / "inst")
    before = digest(root)
    t = target(world, root)
    patcher.apply(t)
    saved = (t.state_dir() / patcher.STATE_FILE).read_bytes()
    patcher.revert(target(world, root))
    t.state_dir().mkdir()
    (t.state_dir() / patcher.STATE_FILE).write_bytes(saved)
    rep = patcher.revert(target(world, root))
    assert rep.state == patcher.PRISTINE and rep.actions == []
    assert digest(root) == before


# ----------------------------------------------------------------------------- bytecode of installed packages


def pyc(src: Path) -> Path:
    return src.parent / "__pycache__" / f"{src.stem}.cpython-311.pyc"


def test_bytecode_recorded_replaced_and_restored(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_installed(tmp_path / "inst")
    reg = root / "sglang/srt/registry.py"
    pyc(reg).parent.mkdir()
    pyc(reg).write_bytes(b"old registry bytecode")  # what pip compiled at install time
    pyc(root / "sglang/srt/registry_extra.py").write_bytes(b"unrelated")
    before = digest(root)
    t = target(world, root)
    patcher.apply(t)
    sources = patcher.touched_sources(t)
    assert sorted(p.relative_to(root.resolve()).as_posix() for p in sources) == [
        "sglang/srt/args.py",
        "sglang/srt/deep/er/k.py",
        "sglang/srt/registry.py",
        "sglang/srt/sage.py",
    ]
    old = patcher.existing_pyc(sources)
    assert old == {pyc(reg.resolve()): b"old registry bytecode"}
    for src in sources:  # the rebuild (compileall) writes bytecode for every written file
        pyc(src).parent.mkdir(exist_ok=True)
        pyc(src).write_bytes(b"new " + src.name.encode())
    patcher.record_pyc(t, sources, old)
    state = json.loads((t.state_dir() / patcher.STATE_FILE).read_text())
    assert sorted(state["pyc"]) == sorted(pyc(s).relative_to(root.resolve()).as_posix() for s in sources)
    assert state["version"] == VERSION  # what apply recorded is kept
    bak = t.state_dir() / "pyc" / "sglang/srt/__pycache__/registry.cpython-311.pyc"
    assert bak.read_bytes() == b"old registry bytecode"
    patcher.record_pyc(t, sources, {})  # recording twice adds nothing twice
    again = json.loads((t.state_dir() / patcher.STATE_FILE).read_text())["pyc"]
    assert sorted(again) == sorted(state["pyc"])
    rep = patcher.revert(target(world, root))
    assert rep.state == patcher.PRISTINE
    assert pyc(reg).read_bytes() == b"old registry bytecode"
    assert digest(root) == before  # new bytecode and emptied __pycache__ directories gone


def test_bytecode_python_wrote_by_itself_is_removed(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_installed(tmp_path / "inst")
    before = digest(root)
    patcher.apply(target(world, root))
    k = root / "sglang/srt/deep/er/k.py"
    pyc(k).parent.mkdir()
    pyc(k).write_bytes(b"imported")
    (pyc(k).parent / "k.cpython-312.pyc").write_bytes(b"other python")
    patcher.revert(target(world, root))
    assert digest(root) == before


def test_existing_pyc_and_touched_sources_on_a_pristine_tree(world: dict[str, Path], tmp_path: Path) -> None:
    root = make_installed(tmp_path / "inst")
    t = target(world, root)
    assert [p.name for p in patcher.touched_sources(t)] == ["args.py", "registry.py"]  # overlay not there yet
    assert patcher.existing_pyc(patcher.touched_sources(t)) == {}


# ----------------------------------------------------------------------------- open_target and helpers


def test_open_target_refuses_a_manifest_of_another_version(world: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    patches = tmp_path / "patches"
    shutil.copytree(world["patches"] / VERSION, patches / "9.9.8")
    root = make_installed(tmp_path / "inst")
    (root / "sglang/version.py").write_text('__version__ = "9.9.8"\n')
    with pytest.raises(SageError) as info:
        patcher.open_target(root, world["overlay"], patches)
    assert str(info.value) == f"{patches / '9.9.8' / 'manifest.toml'}: pins SGLang 9.9.9, tree is 9.9.8"
    t = patcher.open_target(root, world["overlay"], patches, patch_set="9.9.8")  # explicit: allowed, pins still apply
    assert t.manifest.version == VERSION and t.layout.version == "9.9.8"
    assert t.series.directory == patches / "9.9.8"
    assert [o.src for o in t.overlay_files] == sorted(OVERLAY)
    assert t.edit is not None and t.edit.name == "0002-pyproject.edit.toml"


# ----------------------------------------------------------------------------- more edges (mutation run)


@pytest.fixture(scope="module")
def world_no_edit(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same set without its pyproject edit step."""
    import shutil

    patches = tmp_path_factory.mktemp("noedit") / "patches"
    shutil.copytree(world["patches"], patches)
    (patches / VERSION / "series").write_text("0001-register.patch\n")
    (patches / VERSION / "0002-pyproject.edit.toml").unlink()
    return {"patches": patches, "overlay": world["overlay"]}


def test_a_set_without_an_edit_step(world_no_edit: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_source_tree(tmp_path / "src")
    before = digest(root)
    t = target(world_no_edit, root)
    assert t.edit is None and not [i for i in patcher.status_items(t) if i.kind == "edit"]
    assert patcher.check(t).actions[:2] == [f"would patch {ARGS}", f"would patch {REG}"]
    rep = patcher.apply(t)
    assert rep.state == patcher.APPLIED and rep.actions == ["patched 2 file(s)", "installed 2 overlay file(s)"]
    assert (root / "pyproject.toml").read_text() == PYPROJECT
    assert patcher.revert(target(world_no_edit, root)).state == patcher.PRISTINE
    assert digest(root) == before


def test_reports_name_their_tree(world: dict[str, Path], tmp_path: Path) -> None:
    root = make_installed(tmp_path / "inst")
    t = target(world, root)
    fields = (str(root.resolve()), "installed", VERSION)
    for rep in (patcher.status(t), patcher.revert(t), patcher.check(t)):  # revert: already pristine
        assert (rep.target, rep.layout, rep.version) == fields, rep.command
        assert [i.path for i in rep.items] == [i.path for i in patcher.status_items(t)]
    assert patcher.revert(t).command == "revert" and patcher.check(t).command == "check"
    patcher.apply(t)
    for rep in (patcher.apply(t), patcher.revert(target(world, root))):
        assert (rep.target, rep.layout, rep.version) == fields, rep.command
        assert rep.items and {i.path for i in rep.items} == {i.path for i in patcher.status_items(t)}


def test_revert_refuses_a_read_only_patched_file(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_installed(tmp_path / "inst")
    patcher.apply(target(world, root))
    reg = root / "sglang/srt/registry.py"
    reg.chmod(0o444)
    before = digest(root)
    with pytest.raises(SageError, match="cannot write the tree") as info:
        patcher.revert(target(world, root))
    assert info.value.details == [f"{reg.resolve()}: file is read-only (mode -r--r--r--)"]
    assert digest(root) == before


def test_failing_reverse_apply_rolls_back(world: dict[str, Path], tmp_path: Path, digest, monkeypatch) -> None:
    root = make_checkout(tmp_path / "co")
    patcher.apply(target(world, root))
    before = digest(root)
    t = target(world, root)
    monkeypatch.setattr(t.git, "apply", lambda *a, **k: patcher.GitApply.run(t.git, ["apply", "/nonexistent"]))
    with pytest.raises(SageError) as info:
        patcher.revert(t)
    assert info.value.message == "git apply --reverse failed" and info.value.code == APPLY_FAILED
    assert info.value.details and "/nonexistent" in info.value.details[0]
    assert digest(root) == before


def test_check_defaults_and_options(world: dict[str, Path], tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    write(overlay, {**OVERLAY, "sglang/srt/sage.py": "from sglang.srt.nope import X\n"})
    root = make_checkout(tmp_path / "co")
    t = target(world, root, overlay)
    with pytest.raises(SageError, match="the overlay uses SGLang internals"):
        patcher.check(t)  # the API check runs by default
    seen: list[str] = []
    rep = patcher.check(t, skip_api_check=True, progress=seen.append)
    assert rep.message == "all checks passed; apply would succeed"
    assert seen == ["checking git state", "verifying pre-image pins", "dry-running patches (git apply --check)"]
    stale = "overlay/sglang/srt/sage.py: changed since the manifest was written"
    assert rep.warnings == [f"{stale} (run: python apply.py manifest --update 9.9.9)"]
    (root / "python/sglang/srt/args.py").write_text("# local\n" + PRE[ARGS])
    git(root, "commit", "-qam", "local")
    with pytest.raises(SageError, match="differ from the SGLang"):
        patcher.check(target(world, root))  # no --force by default


def test_bytecode_records_accumulate_and_share_a_cache_dir(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_installed(tmp_path / "inst")
    srt = root / "sglang/srt"
    (srt / "__pycache__").mkdir()
    for name in ("registry", "args"):  # two backed-up .pyc files in one __pycache__
        pyc(srt / f"{name}.py").write_bytes(f"old {name}".encode())
    before = digest(root)
    t = target(world, root)
    patcher.apply(t)
    reg, args_py = (srt / "registry.py").resolve(), (srt / "args.py").resolve()
    old = patcher.existing_pyc([reg, args_py])
    for src in (reg, args_py):
        pyc(src).write_bytes(b"new")
    patcher.record_pyc(t, [reg], old)
    patcher.record_pyc(t, [args_py], old)  # a second rebuild adds to what the first recorded
    state = json.loads((t.state_dir() / patcher.STATE_FILE).read_text())
    assert (t.state_dir() / patcher.STATE_FILE).read_text() == json.dumps(state, indent=2)
    assert sorted(state["pyc"]) == ["sglang/srt/__pycache__/args.cpython-311.pyc",
                                    "sglang/srt/__pycache__/registry.cpython-311.pyc"]  # fmt: skip
    patcher.revert(target(world, root))
    assert digest(root) == before


def test_preflight_defaults_refuse(world: dict[str, Path], tmp_path: Path) -> None:
    root = make_checkout(tmp_path / "co")
    (root / "python/sglang/srt/registry.py").write_text("# local\n" + PRE[REG])
    with pytest.raises(SageError, match="uncommitted changes"):
        patcher.preflight(target(world, root))  # not forced unless asked
    overlay = tmp_path / "overlay"
    write(overlay, {**OVERLAY, "sglang/srt/sage.py": "from sglang.srt.nope import X\n"})
    with pytest.raises(SageError, match="the overlay uses SGLang internals"):
        patcher.preflight(target(world, make_checkout(tmp_path / "co2"), overlay))  # API check on unless skipped


@pytest.mark.parametrize("state", ["{not json", '{"version": "9.9.9", "pyproject": "garbage"}'])
def test_revert_with_an_unreadable_pyproject_record(world: dict[str, Path], tmp_path: Path, digest, state: str) -> None:
    """Without a usable record of the edited pyproject.toml revert cannot prove it is ours: it refuses, cleanly."""
    root = make_source_tree(tmp_path / "src")
    t = target(world, root)
    patcher.apply(t)
    (t.state_dir() / patcher.STATE_FILE).write_text(state)
    before = digest(root)
    with pytest.raises(SageError) as info:
        patcher.revert(target(world, root))
    assert info.value.message == "revert did not reach the pinned pre-image; rolled back"
    assert info.value.code == APPLY_FAILED
    assert info.value.details == ["python/pyproject.toml: applied dependencies: jinja2>=3.1.0; dependencies: tomli>=2"]
    assert digest(root) == before


def test_revert_restores_the_pyproject_and_says_so(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_source_tree(tmp_path / "src")
    before = digest(root)
    t = target(world, root)
    patcher.apply(t)
    rep = patcher.revert(target(world, root))
    backup = t.state_dir() / "pyproject.toml.orig"
    assert rep.actions == [
        "reverted 2 patched file(s)",
        f"restored pyproject.toml from {backup}",
        "removed 2 overlay file(s)",
    ]
    assert digest(root) == before


def test_a_corrupt_bytecode_record_touches_no_other_file(world: dict[str, Path], tmp_path: Path) -> None:
    root = make_installed(tmp_path / "inst")
    (root / "x").write_text("a file of the user's, named like a character of the corrupt record\n")
    t = target(world, root)
    patcher.apply(t)
    (root / "y").symlink_to(root / "x")  # a link of the user's: the corrupt record must not even look at it
    (t.state_dir() / patcher.STATE_FILE).write_text(json.dumps({"version": VERSION, "pyproject": None, "pyc": "xy"}))
    assert patcher.revert(target(world, root)).state == patcher.PRISTINE
    assert (root / "x").is_file() and (root / "y").is_symlink()


def test_new_bytecode_and_its_cache_dirs_are_removed(world: dict[str, Path], tmp_path: Path, digest) -> None:
    """No .pyc before apply: every one the rebuild wrote goes, and so do the __pycache__ dirs it made."""
    root = make_installed(tmp_path / "inst")
    before = digest(root)
    t = target(world, root)
    patcher.apply(t)
    sources = patcher.touched_sources(t)
    for src in sources:
        pyc(src).parent.mkdir(exist_ok=True)
        pyc(src).write_bytes(b"new")
    patcher.record_pyc(t, sources, patcher.existing_pyc([]))
    patcher.revert(target(world, root))
    assert digest(root) == before


def test_a_dirty_pyproject_is_refused(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_checkout(tmp_path / "co")
    (root / "python/pyproject.toml").write_text(PYPROJECT + "# local\n")
    err = refuses(world, root, digest, "uncommitted changes")
    assert err.details == ["python/pyproject.toml"]


def test_a_read_only_pyproject_is_refused(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_source_tree(tmp_path / "src")
    (root / "pyproject.toml").chmod(0o444)
    err = refuses(world, root, digest, "cannot write the tree")
    assert err.details == [f"{(root / 'pyproject.toml').resolve()}: file is read-only (mode -r--r--r--)"]


def test_installed_package_ignores_a_stray_pyproject(world: dict[str, Path], tmp_path: Path) -> None:
    root = make_installed(tmp_path / "inst")
    (root / "pyproject.toml").write_text(PYPROJECT)  # not SGLang's: dist-info is the metadata of an install
    patcher.apply(target(world, root))
    assert (root / "pyproject.toml").read_text() == PYPROJECT


def test_checkout_without_pyproject_applies(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_checkout(tmp_path / "co", pyproject=False)
    before = digest(root)
    rep = patcher.apply(target(world, root))
    assert rep.state == patcher.APPLIED and rep.actions == ["patched 2 file(s)", "installed 3 overlay file(s)"]
    assert (rep.command, rep.target, rep.layout, rep.version) == ("apply", str(root.resolve()), "git-checkout", VERSION)
    patcher.revert(target(world, root))
    assert digest(root) == before


def test_force_finishes_a_half_patched_tree_without_three_way(world: dict[str, Path], tmp_path: Path) -> None:
    """Only the pending files are checked: the already patched one must not push apply into a 3-way merge."""
    root = make_installed(tmp_path / "inst")
    patch = world["patches"] / VERSION / "0001-register.patch"
    subprocess.run(["git", "apply", "-p2", "--include=sglang/srt/args.py", str(patch)], cwd=root, check=True)
    rep = patcher.apply(target(world, root), force=True)
    assert rep.actions[0] == "patched 1 file(s)" and rep.state == patcher.APPLIED


def test_patch_that_does_not_fit_its_own_pins(world: dict[str, Path], tmp_path: Path, digest) -> None:
    """A broken set (pre-image pin of content the patch does not apply to) is refused by the dry run."""
    import shutil

    patches = tmp_path / "patches"
    shutil.copytree(world["patches"], patches)
    other = "BACKENDS = ['b']\n"
    m = Manifest.load(patches / VERSION / "manifest.toml")
    m.pre[REG] = sha256_bytes(other.encode())
    (patches / VERSION / "manifest.toml").write_text(m.dump())
    root = make_checkout(tmp_path / "co")
    (root / "python/sglang/srt/registry.py").write_text(other)
    git(root, "commit", "-qam", "other")
    before = digest(root)
    with pytest.raises(SageError) as info:
        patcher.apply(patcher.open_target(root, world["overlay"], patches))
    assert info.value.message == "patches do not apply cleanly (nothing was written)"
    assert digest(root) == before


def test_three_way_rollback_restores_the_index(world: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """git apply --3way stages its result: a later failure must put .git/index back too. (The merge's new blobs
    stay in .git/objects: unreferenced, invisible to git status, removed by git gc.)"""
    root = make_checkout(tmp_path / "co")
    (root / "python/sglang/srt/args.py").write_text("# site-local\n" + PRE[ARGS])
    git(root, "commit", "-qam", "local")

    def files() -> dict[str, bytes]:
        return {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and not p.relative_to(root).as_posix().startswith(".git/objects/")
        }

    before = files()

    def boom(self, path, data, mode=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    monkeypatch.setattr(patcher.Transaction, "write_bytes", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        patcher.apply(target(world, root), force=True)
    after = files()
    assert after[".git/index"] == before[".git/index"]
    assert after == before
    assert git(root, "status", "--porcelain") == ""


def test_status_items_of_an_applied_checkout(world: dict[str, Path], tmp_path: Path) -> None:
    root = make_checkout(tmp_path / "co")
    t = target(world, root)
    patcher.apply(t)
    (root / "python/sglang/srt/sage.py").write_text("changed after apply\n")
    items = [(i.kind, i.step, i.path, i.state, i.detail) for i in patcher.status_items(t)]
    assert items == [
        ("patch", "0001-register.patch", ARGS, patcher.APPLIED, ""),
        ("patch", "0001-register.patch", REG, patcher.APPLIED, ""),
        ("edit", "0002-pyproject.edit.toml", "python/pyproject.toml", patcher.APPLIED,
         "dependencies: jinja2>=3.1.0; dependencies: tomli>=2"),
        ("overlay", "overlay/sglang/srt/deep/er/k.py", "python/sglang/srt/deep/er/k.py", patcher.APPLIED, ""),
        ("overlay", "overlay/sglang/srt/sage.py", "python/sglang/srt/sage.py", patcher.DRIFTED,
         "installed file differs from overlay/"),
        ("overlay", "overlay/test/registered/test_sage.py", "test/registered/test_sage.py", patcher.APPLIED, ""),
    ]  # fmt: skip
    state = json.loads((t.state_dir() / patcher.STATE_FILE).read_text())
    assert (t.state_dir() / patcher.STATE_FILE).read_text() == json.dumps(state, indent=2)  # readable by people


def test_overlay_files_are_installed_with_mode_644(world: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    overlay = tmp_path / "overlay"
    shutil.copytree(world["overlay"], overlay)
    (overlay / "sglang/srt/sage.py").chmod(0o600)  # whatever mode the checkout of sglang-sage has
    root = make_installed(tmp_path / "inst")
    patcher.apply(target(world, root, overlay), skip_api_check=True)
    assert stat.S_IMODE((root / "sglang/srt/sage.py").stat().st_mode) == 0o644


def test_three_way_conflict_is_named(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_checkout(tmp_path / "co")
    (root / "python/sglang/srt/registry.py").write_text('BACKENDS = ["a", "mine"]\n')  # the very line the patch edits
    git(root, "commit", "-qam", "local")
    before = digest(root)
    with pytest.raises(SageError) as info:
        patcher.apply(target(world, root), force=True)
    assert info.value.message == "git apply failed (3-way merge left conflicts)" and info.value.code == APPLY_FAILED
    assert any("conflict" in d.lower() for d in info.value.details)
    assert git(root, "status", "--porcelain") == ""
    assert (root / "python/sglang/srt/registry.py").read_text() == 'BACKENDS = ["a", "mine"]\n'
    del before


def test_state_dir_of_a_source_tree_with_a_dist_info(world: dict[str, Path], tmp_path: Path) -> None:
    """Only an installed package keeps its backups in dist-info; a source tree keeps them in DIR/.sglang-sage."""
    root = make_source_tree(tmp_path / "src")
    t = target(world, root)
    object.__setattr__(t.layout, "dist_info", root / "sglang-9.9.9.dist-info")
    assert t.state_dir() == root.resolve() / ".sglang-sage"


def test_an_invalid_pyproject_is_refused_naming_it(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_source_tree(tmp_path / "src")
    (root / "pyproject.toml").write_text("[project\n")
    before = digest(root)
    with pytest.raises(SageError) as info:
        patcher.apply(target(world, root))
    assert info.value.message.startswith(f"{(root / 'pyproject.toml').resolve()}: not valid TOML")
    assert digest(root) == before


# ----------------------------------------------------------------------------- lock, journal, pristine, links


def test_lock_and_journal_sit_beside_the_state_dir(world: dict[str, Path], tmp_path: Path) -> None:
    t = target(world, make_installed(tmp_path / "inst"))
    state = t.state_dir()
    assert t.lock_path() == state.parent / "sglang-sage.lock"
    assert t.journal_dir() == state.parent / "sglang-sage.journal"


def test_status_names_a_journal_left_behind(world: dict[str, Path], tmp_path: Path) -> None:
    t = target(world, make_installed(tmp_path / "inst"))
    t.journal_dir().mkdir(parents=True)
    assert patcher.status(t).warnings == [
        f"an interrupted run left a journal ({t.journal_dir()}): the next apply or revert rolls it back first"
    ]


def test_apply_and_revert_write_ahead_into_the_journal(world: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    t = target(world, make_installed(tmp_path / "inst"))
    seen: list[bool] = []
    real = patcher.Transaction.write_bytes

    def spy(self, path, data, mode=None):  # type: ignore[no-untyped-def]
        seen.append(t.journal_dir().is_dir() and self.journal == t.journal_dir())
        real(self, path, data, mode)

    monkeypatch.setattr(patcher.Transaction, "write_bytes", spy)
    journals: list[object] = []
    real_init = patcher.Transaction.__init__

    def init_spy(self, journal=None):  # type: ignore[no-untyped-def]
        journals.append(journal)
        real_init(self, journal)

    monkeypatch.setattr(patcher.Transaction, "__init__", init_spy)
    rep = patcher.apply(t)
    assert rep.changed is True and seen and all(seen)
    assert not t.journal_dir().exists()  # dropped on commit
    seen.clear()
    rep = patcher.revert(target(world, tmp_path / "inst"))
    assert rep.changed is True and not t.journal_dir().exists()
    assert journals == [t.journal_dir(), t.journal_dir()]  # apply's and revert's transactions both journal
    again = patcher.revert(target(world, tmp_path / "inst"))
    assert again.changed is False and again.command == "revert"
    assert patcher.apply(t).changed is True
    already = patcher.apply(t)
    assert (already.command, already.changed) == ("apply", False)


def test_require_clean_and_require_pristine(world: dict[str, Path], tmp_path: Path) -> None:
    root = make_checkout(tmp_path / "co")
    t = target(world, root)
    patcher.require_clean(t, None, hint="commit first")
    patcher.require_pristine(t)
    for k in range(25):
        (root / f"untracked{k:02d}.txt").write_text("x")
    with pytest.raises(SageError) as info:
        patcher.require_clean(t, None, hint="commit first")
    assert info.value.message == f"{root.resolve()}: uncommitted changes (the checkout is not clean) (commit first)"
    assert info.value.details == [f"untracked{k:02d}.txt" for k in range(20)]  # the first 20
    (root / "python/sglang/srt/sage.py").write_text("other\n")
    (root / "python/pyproject.toml").write_text(PYPROJECT.replace('"torch"', '"torch", "jinja2", "tomli"'))
    with pytest.raises(SageError) as info:
        patcher.require_pristine(t)  # the applied-looking edit step alone would not count
    assert info.value.message == (f"{root.resolve()}: not a pristine SGLang 9.9.9 checkout (pins of {t.manifest.path})")
    assert info.value.details == ["python/sglang/srt/sage.py: drifted (installed file differs from overlay/)"]
    inst = make_installed(tmp_path / "inst")
    ti = target(world, inst)
    patcher.apply(ti)
    with pytest.raises(SageError) as info:
        patcher.require_pristine(ti, patcher.status_items(ti))
    assert info.value.message.endswith(f"not a pristine SGLang 9.9.9 tree (pins of {ti.manifest.path})")
    assert info.value.details[0] == f"{ARGS}: applied"


def test_revert_refuses_a_recorded_bytecode_path_through_a_link(world: dict[str, Path], tmp_path: Path) -> None:
    root = make_installed(tmp_path / "inst")
    t = target(world, root)
    patcher.apply(t)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "sglang/srt/__pycache__").symlink_to(elsewhere)
    patcher.record_pyc(t, [], {})
    state = json.loads((t.state_dir() / patcher.STATE_FILE).read_text())
    state["pyc"] = ["sglang/srt/__pycache__/registry.cpython-311.pyc"]
    (t.state_dir() / patcher.STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(SageError) as info:
        patcher.revert(target(world, root))
    link = f"{root.resolve()}/sglang/srt/__pycache__"
    assert info.value.message == (
        f"{link}: sglang-sage never writes through a symbolic link or outside {root.resolve()} "
        "(nothing was changed; replace the link by a real directory or file)"
    )
    assert info.value.details == [f"{link}: is a symbolic link (-> {elsewhere})"]


def test_overlay_mode_does_not_depend_on_the_umask(world: dict[str, Path], tmp_path: Path) -> None:
    root = make_installed(tmp_path / "inst")
    old = os.umask(0o077)
    try:
        patcher.apply(target(world, root))
    finally:
        os.umask(old)
    assert stat.S_IMODE((root / "sglang/srt/sage.py").stat().st_mode) == 0o644


def test_every_managed_path_is_checked_for_links(world: dict[str, Path], tmp_path: Path, digest) -> None:
    root = make_source_tree(tmp_path / "src")
    real = tmp_path / "real.toml"
    (root / "pyproject.toml").rename(real)
    (root / "pyproject.toml").symlink_to(real)  # the edit step's file
    other = tmp_path / "elsewhere"
    other.mkdir()
    (root / "sglang/srt/deep").symlink_to(other)  # an overlay destination's directory
    before = digest(root)
    with pytest.raises(SageError) as info:
        patcher.apply(target(world, root))
    assert sorted(info.value.details) == [
        f"{root.resolve()}/pyproject.toml: is a symbolic link (-> {real})",
        f"{root.resolve()}/sglang/srt/deep: is a symbolic link (-> {other})",
    ]
    assert digest(root) == before


def test_open_target_uses_the_committed_patch_sets_by_default(world: dict[str, Path], tmp_path: Path) -> None:
    root = make_installed(tmp_path / "inst")
    with pytest.raises(SageError, match="^SGLang 9.9.9 is not supported: no patch set patches/9.9.9/"):
        patcher.open_target(root)
