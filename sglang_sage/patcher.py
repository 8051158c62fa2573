"""The patch engine: apply / status / revert / check on one target tree. No printing here: results are data.

(Named `patcher`, not `engine`: in this repository "engine" is `sglang.Engine`, which verify/ runs.)

Order of apply (nothing is written before step 6):
 1 layout + version  2 status (already applied? half-applied? drifted?)  3 dirty git files
 4 pre-image pins  5 writability, API check, `git apply --check`  6 transaction: patches,
 pyproject edit, overlay, state; any failure or Ctrl-C rolls all of it back.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sglang_sage import apicheck, overlay_patches
from sglang_sage import overlay as overlay_mod
from sglang_sage.errors import APPLY_FAILED, OK, REFUSED, SageError
from sglang_sage.gitapply import GitApply
from sglang_sage.hashing import sha256_bytes, sha256_file
from sglang_sage.layout import Layout, LayoutKind, detect
from sglang_sage.lock import TreeLock
from sglang_sage.manifest import Manifest
from sglang_sage.pyproject_edit import PyprojectEdit, apply_edit
from sglang_sage.series import Series, load, patchset_dir
from sglang_sage.transaction import Transaction

PRISTINE = "pristine"
APPLIED = "applied"
PARTIAL = "partially applied"
DRIFTED = "drifted"
NA = "n/a"

STATE_FILE = "state.json"


@dataclass
class Item:
    """State of one thing the patch set manages (a patched file, the pyproject edit, an overlay file)."""

    kind: str  # patch | edit | overlay
    step: str  # patch file name / edit file name / overlay/<src>
    path: str  # repo-relative path
    state: str
    detail: str = ""


@dataclass
class Report:
    """What a command did or found; the CLI renders it as tables or JSON."""

    command: str
    target: str = ""
    layout: str = ""
    version: str = ""
    state: str = ""
    items: list[Item] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    exit_code: int = OK
    message: str = ""
    changed: bool = False  # did this command write the tree (False: already applied / pristine, or refused)

    def to_json(self) -> dict[str, object]:
        """Machine-readable form (stable keys)."""
        return {
            "command": self.command,
            "target": self.target,
            "layout": self.layout,
            "version": self.version,
            "state": self.state,
            "changed": self.changed,
            "exit_code": self.exit_code,
            "message": self.message,
            "actions": self.actions,
            "warnings": self.warnings,
            "items": [vars(i) for i in self.items],
        }


Progress = Callable[[str], None]


def quiet(_: str) -> None:
    return None


@dataclass
class Target:
    """Everything known about one tree before touching it."""

    layout: Layout
    series: Series
    manifest: Manifest
    overlay_root: Path
    overlay_files: list[overlay_mod.OverlayFile]
    git: GitApply

    @property
    def edit(self) -> PyprojectEdit | None:
        """The pyproject edit step, if the series has one (`series.load` refuses a second)."""
        return self.series.edit

    def disk(self, repo_path: str) -> Path | None:
        """Where a repo-relative path lives in this layout."""
        return self.layout.map_path(repo_path)

    def state_dir(self) -> Path:
        """Where apply keeps backups (outside the work tree for git checkouts, so `git status` stays honest)."""
        git_dir = self.git.git_dir()
        if git_dir is not None:
            return git_dir / "sglang-sage"
        if self.layout.kind is LayoutKind.INSTALLED and self.layout.dist_info is not None:
            return self.layout.dist_info / "sglang-sage"
        return self.layout.root / ".sglang-sage"

    def lock_path(self) -> Path:
        """The tree's lock file, beside the state directory (not in it: revert removes that)."""
        state = self.state_dir()
        return state.with_name(state.name + ".lock")

    def journal_dir(self) -> Path:
        """Write-ahead journal of the running transaction; left behind only by a killed run."""
        state = self.state_dir()
        return state.with_name(state.name + ".journal")


@contextmanager
def locked(t: Target, progress: Progress = quiet) -> Iterator[list[str]]:
    """Hold the tree's lock; roll back what a killed run left half-done first. Yields warnings to report.

    Used by every command that writes the tree (apply, revert, pr).
    """
    notes: list[str] = []
    with TreeLock(t.lock_path(), waiting=progress) as lock:
        stale = lock.stale_message()
        if stale:
            notes.append(stale)
        journal = t.journal_dir()
        if journal.exists():
            progress("rolling back an interrupted run")
            restored = Transaction.recover(journal)
            notes.append(
                f"an interrupted sglang-sage run left a journal ({journal}); rolled its {restored} change(s) back"
            )
        yield notes


def open_target(
    sglang_dir: Path,
    overlay_root: Path | None = None,
    patches_root: Path | None = None,
    patch_set: str | None = None,
) -> Target:
    """Detect the tree and load the matching patch set; refuses (SageError) on anything unexpected.

    `patch_set` picks a set other than the tree's version (the set's sha256 pins are still checked).
    Overlay patches of the set are applied to a scratch copy of the overlay (`overlay_patches`).
    """
    layout = detect(sglang_dir)
    directory = patchset_dir(patch_set or layout.version, *([patches_root] if patches_root else []))
    series = load(directory)
    manifest = Manifest.load(directory / "manifest.toml")
    if manifest.version != layout.version and patch_set is None:
        raise SageError(f"{manifest.path}: pins SGLang {manifest.version}, tree is {layout.version}")
    series, root = overlay_patches.effective_overlay(series, overlay_root or overlay_mod.OVERLAY_DIR)
    git = GitApply(layout)
    return Target(layout, series, manifest, root, overlay_mod.discover(root), git)


# ----------------------------------------------------------------------------- status


def _file_state(actual: str | None, pre: str | None, post: str | None) -> str:
    if actual == post:
        return APPLIED
    if actual == pre:
        return PRISTINE
    return DRIFTED


def status_items(t: Target) -> list[Item]:
    """Per patched file, per edit step and per overlay file: pristine / applied / drifted / n/a."""
    items: list[Item] = []
    for step in t.series.patches:
        for f in step.files:
            path = t.disk(f)
            actual = sha256_file(path) if path else None
            pre, post = t.manifest.pre.get(f), t.manifest.post.get(f)
            state = _file_state(actual, pre, post)
            detail = (
                ""
                if state != DRIFTED
                else (
                    "missing"
                    if actual is None
                    else f"sha256 {actual[:12]} is neither the pre-image nor the post-image pin"
                )
            )
            items.append(Item("patch", step.name, f, state, detail))
    if t.edit is not None:
        items.append(_edit_item(t, t.edit))
    for of in t.overlay_files:
        dest = t.disk(of.dest)
        if dest is None:
            items.append(
                Item("overlay", f"overlay/{of.src}", of.dest, NA, "tests are run from overlay/ on this layout")
            )
            continue
        actual = sha256_file(dest)
        if actual is None:
            items.append(Item("overlay", f"overlay/{of.src}", of.dest, PRISTINE, "not installed"))
        elif actual == sha256_file(of.source):
            items.append(Item("overlay", f"overlay/{of.src}", of.dest, APPLIED))
        else:
            items.append(Item("overlay", f"overlay/{of.src}", of.dest, DRIFTED, "installed file differs from overlay/"))
    return items


def _edit_item(t: Target, edit: PyprojectEdit) -> Item:
    if t.layout.kind is LayoutKind.INSTALLED:
        return Item("edit", edit.name, edit.target, NA, "installed package: dist-info metadata is left alone")
    path = t.disk(edit.target)
    if path is None or not path.is_file():
        return Item("edit", edit.name, edit.target, NA, f"no {edit.target} in this tree")
    result = apply_edit(path.read_text(encoding="utf-8"), edit, str(path))
    if result.changed:
        return Item("edit", edit.name, edit.target, PRISTINE, "would add " + "; ".join(result.added))
    return Item("edit", edit.name, edit.target, APPLIED, "; ".join(result.kept))


def overall(items: list[Item]) -> str:
    """One word for the whole tree."""
    states = {i.state for i in items if i.state != NA}
    if DRIFTED in states:
        return DRIFTED
    if states <= {PRISTINE}:
        return PRISTINE
    if states == {APPLIED}:
        return APPLIED
    return PARTIAL


def status(t: Target) -> Report:
    """The `status` command."""
    items = status_items(t)
    report = _report("status", t, items)
    for line in overlay_mod.stale(t.overlay_files, t.manifest.overlay):
        report.warnings.append(f"{line} (run: python apply.py manifest --update {t.layout.version})")
    if t.journal_dir().exists():
        report.warnings.append(
            f"an interrupted run left a journal ({t.journal_dir()}): the next apply or revert rolls it back first"
        )
    return report


def _report(command: str, t: Target, items: list[Item]) -> Report:
    return Report(
        command=command,
        target=str(t.layout.root),
        layout=t.layout.kind.value,
        version=t.layout.version,
        state=overall(items),
        items=items,
    )


# ----------------------------------------------------------------------------- pre-flight


def _writable_problem(path: Path) -> str | None:
    """Why `path` cannot be written (root ignores permission bits, so mode bits count too)."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    mode = probe.stat().st_mode
    if not os.access(probe, os.W_OK) or not (mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)):
        kind = "directory" if probe.is_dir() else "file"
        return f"{probe}: {kind} is read-only (mode {stat.filemode(mode)})"
    if probe != path and probe.is_file():
        return f"{probe}: is a file where a directory is needed for {path}"
    return None


@dataclass
class Plan:
    """What apply will do, computed without writing."""

    pending_patch_files: list[str]
    three_way: bool
    edit_text: str | None
    edit_added: list[str]
    overlay: list[tuple[overlay_mod.OverlayFile, Path]]
    writes: list[Path]


def managed_paths(t: Target) -> list[Path]:
    """Every path apply or revert may write or delete: patched files, the pyproject edit, overlay destinations."""
    repo_paths = t.series.patched_files + ([t.edit.target] if t.edit else []) + [o.dest for o in t.overlay_files]
    return [p for p in (t.disk(r) for r in repo_paths) if p is not None]


def link_problems(root: Path, paths: list[Path]) -> list[str]:
    """Paths that are, or lie below, a symbolic link, or that resolve outside `root`.

    Writing through a link writes outside the tree the user named (and revert would delete there),
    so any link on the way from the root to a managed file is refused, whatever it points to.
    """
    problems: dict[str, None] = {}
    for path in paths:
        current = root
        for part in path.relative_to(root).parts:
            current = current / part
            if current.is_symlink():
                problems[f"{current}: is a symbolic link (-> {os.readlink(current)})"] = None
                break
            if not current.exists():
                break
        if current.is_symlink():
            continue
        resolved = path.resolve()
        if root != resolved and root not in resolved.parents:
            problems[f"{path}: resolves outside {root} (to {resolved})"] = None
    return list(problems)


def _refuse_links(t: Target, paths: list[Path]) -> None:
    problems = link_problems(t.layout.root, paths)
    if problems:
        raise SageError(
            f"{problems[0].split(': ', 1)[0]}: sglang-sage never writes through a symbolic link or outside "
            f"{t.layout.root} (nothing was changed; replace the link by a real directory or file)",
            details=problems,
        )


def require_clean(t: Target, repo_paths: list[str] | None, *, ignore: set[str] | None = None, hint: str) -> None:
    """Refuse (exit 4) when git reports uncommitted changes: in `repo_paths`, or anywhere with None."""
    dirty = [d for d in t.git.dirty(repo_paths or []) if d not in (ignore or set())]
    if dirty:
        where = "in files the patch set touches" if repo_paths else "(the checkout is not clean)"
        raise SageError(f"{t.layout.root}: uncommitted changes {where} ({hint})", details=dirty[:20])


def require_pristine(t: Target, items: list[Item] | None = None) -> None:
    """Refuse unless every patched file and overlay destination is at the pre-image (the edit may be n/a)."""
    bad = [i for i in (items or status_items(t)) if i.kind != "edit" and i.state not in (PRISTINE, NA)]
    if bad:
        raise SageError(
            f"{t.layout.root}: not a pristine SGLang {t.manifest.version} "
            f"{'checkout' if t.layout.kind is LayoutKind.GIT_CHECKOUT else 'tree'} (pins of {t.manifest.path})",
            details=[f"{i.path}: {i.state}{' (' + i.detail + ')' if i.detail else ''}" for i in bad],
        )


def api_check(t: Target, progress: Progress = quiet) -> None:
    """The static API check of the (effective) overlay against this tree; refuses listing every miss."""
    progress("static API check of the overlay")
    misses = apicheck.check(t.overlay_root, t.layout)
    if misses:
        raise SageError(
            f"the overlay uses SGLang internals that SGLang {t.layout.version} lacks",
            details=[str(m) for m in misses],
        )


def preflight(t: Target, *, force: bool = False, skip_api_check: bool = False, progress: Progress = quiet) -> Plan:
    """Every check apply makes, in order, without writing; raises SageError naming what is wrong."""
    _refuse_links(t, managed_paths(t))
    items = status_items(t)
    patch_items = [i for i in items if i.kind == "patch"]

    progress("checking git state")
    if not force:
        watched = t.series.patched_files + ([t.edit.target] if t.edit else []) + [o.dest for o in t.overlay_files]
        ours = {i.path for i in items if i.state == APPLIED}  # changes apply itself made are not "dirty"
        require_clean(t, watched, ignore=ours, hint="commit or stash them, or --force")

    progress("verifying pre-image pins")
    mismatched = [i for i in patch_items if i.state == DRIFTED]
    if mismatched and not force:
        raise SageError(
            f"{t.layout.root}: {len(mismatched)} file(s) differ from the SGLang {t.manifest.version} pins in "
            f"{t.manifest.path.name} (use --force for a 3-way apply)",
            details=[f"{i.path}: {i.detail}" for i in mismatched],
        )
    state = overall(items)
    if state == PARTIAL and not force:
        raise SageError(
            f"{t.layout.root} is {state}; refusing to apply on top of it "
            "(run `revert` first, or `apply --force` to finish the missing steps)",
            details=[f"{i.path}: {i.state}" for i in items if i.state == APPLIED],
        )
    pending = [i.path for i in patch_items if i.state != APPLIED]

    edit_text, edit_added = None, []
    edit = t.edit
    if edit is not None and t.layout.kind is not LayoutKind.INSTALLED:
        path = t.disk(edit.target)
        if path is not None and path.is_file():
            result = apply_edit(path.read_text(encoding="utf-8"), edit, str(path))
            if result.changed:
                edit_text, edit_added = result.text, result.added

    overlay_plan: list[tuple[overlay_mod.OverlayFile, Path]] = []
    drifted_overlay = []
    for of in t.overlay_files:
        dest = t.disk(of.dest)
        if dest is None:
            continue
        actual = sha256_file(dest)
        want = sha256_file(of.source)
        if actual == want:
            continue
        if actual is not None and not force:
            drifted_overlay.append(f"{dest}: exists and differs from overlay/{of.src}")
        overlay_plan.append((of, dest))
    if drifted_overlay:
        raise SageError(
            "overlay destinations already hold other content (use --force to overwrite)", details=drifted_overlay
        )

    writes = [p for p in (t.disk(f) for f in pending) if p is not None]
    if edit_text is not None:
        writes.append(t.disk(edit.target))  # type: ignore[arg-type, union-attr]
    writes += [d for _, d in overlay_plan]
    writes.append(t.state_dir() / STATE_FILE)
    problems = [p for p in (_writable_problem(w) for w in writes) if p]
    if problems:
        raise SageError(f"{t.layout.root}: cannot write the tree", details=sorted(set(problems)))

    if not skip_api_check:
        api_check(t, progress)

    three_way = False
    if pending:
        progress("dry-running patches (git apply --check)")
        patches = [s.path for s in t.series.patches if set(s.files) & set(pending)]
        result = t.git.check(patches, include=pending)
        if not result.ok:
            if force and t.layout.is_git:
                three_way = True
            else:
                raise SageError(
                    "patches do not apply cleanly (nothing was written)"
                    + ("" if t.layout.is_git else "; --3way needs a git checkout"),
                    details=result.stderr.strip().splitlines(),
                )
    return Plan(pending, three_way, edit_text, edit_added, overlay_plan, writes)


# ----------------------------------------------------------------------------- apply


def _require_states(t: Target, allowed: tuple[str, ...], failure: str) -> list[Item]:
    """Status of every step after writing; raising inside the transaction rolls the writes back.

    The items are also the report's, so the tree is hashed once, not twice.
    """
    items = status_items(t)
    bad = [i for i in items if i.state not in allowed]
    if bad:
        raise SageError(failure, code=APPLY_FAILED, details=[f"{i.path}: {i.state} {i.detail}" for i in bad])
    return items


def apply(t: Target, *, force: bool = False, skip_api_check: bool = False, progress: Progress = quiet) -> Report:
    """Apply patches, the pyproject edit and the overlay as one transaction."""
    items = status_items(t)
    if overall(items) == APPLIED:
        report = _report("apply", t, items)
        report.message = f"already applied to {t.layout.root}; nothing changed"
        return report

    plan = preflight(t, force=force, skip_api_check=skip_api_check, progress=progress)
    report = Report("apply", str(t.layout.root), t.layout.kind.value, t.layout.version)
    for line in overlay_mod.stale(t.overlay_files, t.manifest.overlay):
        report.warnings.append(f"{line} (run: python apply.py manifest --update {t.layout.version})")
    state_dir = t.state_dir()
    with Transaction(journal=t.journal_dir()) as tx:
        if plan.pending_patch_files:
            progress("applying patches")
            for f in plan.pending_patch_files:
                tx.track(t.disk(f))  # type: ignore[arg-type]
            if plan.three_way:
                git_dir = t.git.git_dir()
                if git_dir is not None:
                    tx.track(git_dir / "index")
            patches = [s.path for s in t.series.patches if set(s.files) & set(plan.pending_patch_files)]
            result = t.git.apply(patches, three_way=plan.three_way, include=plan.pending_patch_files)
            conflicted = plan.three_way and ("conflict" in result.stderr.lower())
            if not result.ok or conflicted:
                raise SageError(
                    "git apply failed" + (" (3-way merge left conflicts)" if conflicted else ""),
                    code=APPLY_FAILED,
                    details=result.stderr.strip().splitlines(),
                )
            report.actions.append(
                f"patched {len(plan.pending_patch_files)} file(s)" + (" with --3way" if plan.three_way else "")
            )
        state: dict[str, object] = {"version": t.layout.version, "pyproject": None}
        if plan.edit_text is not None and t.edit is not None:
            progress("editing pyproject.toml")
            path = t.disk(t.edit.target)
            assert path is not None
            original = path.read_bytes()
            tx.write_bytes(state_dir / "pyproject.toml.orig", original)
            tx.write_bytes(path, plan.edit_text.encode("utf-8"))
            state["pyproject"] = {"post_sha256": sha256_bytes(plan.edit_text.encode("utf-8"))}
            report.actions.append(f"{t.edit.target}: added {'; '.join(plan.edit_added)}")
        if plan.overlay:
            progress("installing overlay")
        for of, dest in plan.overlay:
            tx.write_bytes(dest, of.source.read_bytes(), 0o644)
        if plan.overlay:
            report.actions.append(f"installed {len(plan.overlay)} overlay file(s)")
        tx.write_bytes(state_dir / STATE_FILE, json.dumps(state, indent=2).encode())

        if force:
            items = status_items(t)
        else:
            items = _require_states(t, (APPLIED, NA), "post-apply verification failed; rolled back")
    report.items = items
    report.state = overall(report.items)
    report.message = f"applied sage_attn to {t.layout.root}"
    report.changed = True
    return report


# ----------------------------------------------------------------------------- revert


def _load_state(state_dir: Path) -> dict[str, object]:
    try:
        return json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def revert(t: Target, *, progress: Progress = quiet) -> Report:
    """Back to a byte-identical pristine tree, verified against the manifest's pre-image pins."""
    items = status_items(t)
    state = overall(items)
    state_dir = t.state_dir()
    if state == PRISTINE and not (state_dir / STATE_FILE).exists():
        report = _report("revert", t, items)
        report.message = f"{t.layout.root} is already pristine; nothing changed"
        return report
    saved = _load_state(state_dir)
    pyc = [t.layout.root / str(r) for r in saved.get("pyc", [])] if isinstance(saved.get("pyc"), list) else []
    _refuse_links(t, managed_paths(t) + pyc)
    drifted = [i for i in items if i.state == DRIFTED]
    if drifted:
        raise SageError(
            f"{t.layout.root}: cannot revert, these files changed after apply (restore them first)",
            details=[f"{i.path}: {i.detail}" for i in drifted],
        )
    applied_files = [i.path for i in items if i.kind == "patch" and i.state == APPLIED]
    pyproject_path = t.disk(t.edit.target) if t.edit else None
    backup = state_dir / "pyproject.toml.orig"
    writes = [p for p in (t.disk(f) for f in applied_files) if p]
    writes += [t.disk(i.path) for i in items if i.kind == "overlay" and i.state == APPLIED]  # type: ignore[misc]
    problems = [p for p in (_writable_problem(w) for w in writes) if p]
    if problems:
        raise SageError(f"{t.layout.root}: cannot write the tree", details=sorted(set(problems)))

    report = Report("revert", str(t.layout.root), t.layout.kind.value, t.layout.version)
    with Transaction(journal=t.journal_dir()) as tx:
        if applied_files:
            progress("reverse-applying patches")
            for f in applied_files:
                tx.track(t.disk(f))  # type: ignore[arg-type]
            patches = [s.path for s in t.series.patches if set(s.files) & set(applied_files)]
            result = t.git.apply(patches, reverse=True, include=applied_files)
            if not result.ok:
                raise SageError(
                    "git apply --reverse failed", code=APPLY_FAILED, details=result.stderr.strip().splitlines()
                )
            report.actions.append(f"reverted {len(applied_files)} patched file(s)")
        pyproject_state = saved.get("pyproject") if isinstance(saved.get("pyproject"), dict) else None
        if pyproject_path is not None and pyproject_state and backup.is_file():
            current = sha256_file(pyproject_path)
            if current != pyproject_state.get("post_sha256"):  # type: ignore[union-attr]
                raise SageError(
                    f"{pyproject_path}: changed since apply; not restoring it over your edits",
                    details=[f"the original is kept at {backup}"],
                )
            tx.write_bytes(pyproject_path, backup.read_bytes())
            report.actions.append(f"restored {pyproject_path.name} from {backup}")
        removed = 0
        for i in items:
            if i.kind == "overlay" and i.state == APPLIED:
                dest = t.disk(i.path)
                assert dest is not None
                tx.remove(dest)
                _remove_pyc(tx, dest)
                tx.remove_empty_dirs(dest.parent, t.layout.pkg_root if i.path.startswith("python/") else t.layout.root)
                removed += 1
        if removed:
            report.actions.append(f"removed {removed} overlay file(s)")
        for rel in saved.get("pyc", []) if isinstance(saved.get("pyc"), list) else []:
            pyc = t.layout.root / str(rel)
            bak = state_dir / "pyc" / str(rel)
            if bak.is_file():
                tx.write_bytes(pyc, bak.read_bytes())
            else:
                tx.remove(pyc)
                tx.remove_empty_dirs(pyc.parent, t.layout.root)
        if state_dir.exists():
            for f in sorted(state_dir.rglob("*"), reverse=True):
                if f.is_file():
                    tx.remove(f)
            for d in sorted((p for p in state_dir.rglob("*") if p.is_dir()), reverse=True):
                tx.remove_empty_dirs(d, state_dir)
            tx.remove_empty_dirs(state_dir, state_dir.parent)

        items = _require_states(t, (PRISTINE, NA), "revert did not reach the pinned pre-image; rolled back")
    report.items = items
    report.state = overall(report.items)
    report.message = f"reverted {t.layout.root} to pristine SGLang {t.layout.version} (pre-image pins verified)"
    report.changed = True
    return report


def _remove_pyc(tx: Transaction, source: Path) -> None:
    cache = source.parent / "__pycache__"
    if cache.is_dir():
        for pyc in cache.glob(f"{source.stem}.*.pyc"):
            tx.remove(pyc)
        tx.remove_empty_dirs(cache, source.parent)


def record_pyc(t: Target, sources: list[Path], before: dict[Path, bytes]) -> None:
    """After byte-compiling an installed package, remember new .pyc files (and back up replaced ones)."""
    state_dir = t.state_dir()
    saved = _load_state(state_dir)
    rels: list[str] = list(saved.get("pyc", []))  # type: ignore[arg-type]
    for src in sources:
        cache = src.parent / "__pycache__"
        for pyc in cache.glob(f"{src.stem}.*.pyc") if cache.is_dir() else []:
            rel = pyc.relative_to(t.layout.root).as_posix()
            if rel not in rels:
                rels.append(rel)
            if pyc in before:
                bak = state_dir / "pyc" / rel
                bak.parent.mkdir(parents=True, exist_ok=True)
                bak.write_bytes(before[pyc])
    saved["pyc"] = rels
    (state_dir / STATE_FILE).write_text(json.dumps(saved, indent=2))


def existing_pyc(sources: list[Path]) -> dict[Path, bytes]:
    """Current .pyc bytes next to these sources (so revert can put them back exactly)."""
    found: dict[Path, bytes] = {}
    for src in sources:
        cache = src.parent / "__pycache__"
        if cache.is_dir():
            for pyc in cache.glob(f"{src.stem}.*.pyc"):
                found[pyc] = pyc.read_bytes()
    return found


def touched_sources(t: Target) -> list[Path]:
    """Python files apply wrote (patched + overlay), for byte-compiling an installed package."""
    paths = [t.disk(f) for f in t.series.patched_files]
    paths += [t.disk(o.dest) for o in t.overlay_files]
    return [p for p in paths if p is not None and p.suffix == ".py" and p.is_file()]


# ----------------------------------------------------------------------------- check


def check(t: Target, *, force: bool = False, skip_api_check: bool = False, progress: Progress = quiet) -> Report:
    """Everything apply does short of writing."""
    items = status_items(t)
    report = _report("check", t, items)
    if report.state == APPLIED:
        report.message = "already applied; apply would change nothing"
        return report
    plan = preflight(t, force=force, skip_api_check=skip_api_check, progress=progress)
    report.actions = [f"would patch {f}" for f in plan.pending_patch_files]
    if plan.three_way:
        report.actions.append("would use git apply --3way (pins differ, --force)")
    report.actions += [f"would add to pyproject: {a}" for a in plan.edit_added]
    report.actions += [f"would install {of.dest}" for of, _ in plan.overlay]
    for line in overlay_mod.stale(t.overlay_files, t.manifest.overlay):
        report.warnings.append(f"{line} (run: python apply.py manifest --update {t.layout.version})")
    report.message = "all checks passed; apply would succeed"
    return report


__all__ = ["APPLY_FAILED", "REFUSED", "apply", "check", "open_target", "revert", "status"]
