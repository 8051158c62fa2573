"""`apply.py pr`: turn the patch set into an upstream pull request (branch, commit series, mails, PR body).

Why plumbing instead of checking the branch out: the commits are built in a temporary index
(`git read-tree`, `git apply --cached`, `git update-index`, `git commit-tree`) with every new object
written to a temporary object directory. The user's HEAD, index and working tree are never touched, so
"restoring the original HEAD" cannot fail, and a failure before the branch is published leaves
`.git` byte-identical. Only the last step copies the new objects in and creates the branch atomically
(`git update-ref` with the all-zero old value refuses an existing branch); anything failing after that
deletes the branch, the copied objects and the files written to the output directory again.

Commits (author and dates taken from the patch mails, so the same base gives the same commit ids):

1. the overlay (the backend's new files, with the set's overlay patches applied, byte for byte what
   `apply` installs), first so that every later commit of the series is importable on its own;
2. one commit per SGLang-file patch of the series (`git apply`, message from its DEP-3 header);
3. the pyproject edit step (the structured tomlkit edit) when it changes anything; a tree
   without `python/pyproject.toml` gets no commit (n/a).

The output is checked before it is reported: `git am` of the written mails on a fresh clone of the
base must give the branch's tree, and `apply` on another fresh checkout of the base must give it too.
"""

from __future__ import annotations

import email.utils
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sglang_sage import dep3, gitrun, overlay_patches, patcher, upstream_style
from sglang_sage import overlay as overlay_mod
from sglang_sage.dep3 import Author
from sglang_sage.errors import APPLY_FAILED, INTERNAL, OK, REFUSED, SageError
from sglang_sage.layout import LayoutKind
from sglang_sage.pr_text import BACKEND_DOC, VerifyReport, docstring, load_report, render_pr
from sglang_sage.pyproject_edit import PyprojectEdit, apply_edit
from sglang_sage.series import PatchStep
from sglang_sage.series import load as load_series

__all__ = ["load_report", "parse_author", "prepare"]  # load_report: the CLI validates --report early

BRANCH_PREFIX = "sage-attn/"
ZERO_OID = "0" * 40
FALLBACK_DATE = "2000-01-01T00:00:00+00:00"
OVERLAY_SUBJECT = "Add the sage_attn attention backend (8-bit SageAttention)"
_AUTHOR = re.compile(r"^\s*([^<>]*?)\s*<([^<>\s@]+@[^<>\s]+)>\s*$")

Progress = Callable[[str], None]


# ----------------------------------------------------------------------------- inputs


def parse_author(text: str) -> Author:
    """`Name <mail>` as git wants it; anything else is refused before any work starts."""
    match = _AUTHOR.match(text or "")
    if not match or not match.group(1):
        raise SageError(f"--author {text!r}: expected 'Name <user@host>'")
    return Author(match.group(1), match.group(2))


# ----------------------------------------------------------------------------- git


def _git(
    repo: Path,
    *args: str,
    step: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    check: bool = True,
    code: int = APPLY_FAILED,
) -> gitrun.GitResult:
    """git in `repo` through the one runner (clean environment + `env`); a failure names the step."""
    args = ("-c", "commit.gpgsign=false", *args)
    if check:
        return gitrun.checked(repo, *args, step=step, env=env, stdin=stdin, code=code)
    return gitrun.run(repo, *args, env=env, stdin=stdin)


def _out(repo: Path, *args: str, step: str, **kw: object) -> str:
    return _git(repo, *args, step=step, **kw).stdout.strip()  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- result


@dataclass
class FileChange:
    """One file of the series, for the "what changed" table."""

    path: str
    source: str  # the patch / edit / overlay step it comes from
    added: int
    removed: int


@dataclass
class Commit:
    """One commit of the branch."""

    sha: str
    subject: str
    step: str
    files: list[FileChange] = field(default_factory=list)


@dataclass
class Verdict:
    """Whether the written series reproduces the branch and what `apply` produces."""

    git_am: bool = False
    am_tree: str = ""
    branch_tree: str = ""
    apply_tree: str = ""
    style_checked: int = 0  # Python files of the series run through SGLang's formatters
    style_error: str = "not run"  # why the formatter check could not run ("" when it ran)
    style_problems: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    @property
    def trees_ok(self) -> bool:
        """All three trees identical and `git am` clean."""
        return self.git_am and self.am_tree == self.branch_tree == self.apply_tree != ""

    @property
    def style_ok(self) -> bool:
        """SGLang's isort + black would change none of the series' Python files (and the check ran)."""
        return not self.style_error and not self.style_problems

    @property
    def ok(self) -> bool:
        """Reproducible (trees) and upstream-lint clean (formatters)."""
        return self.trees_ok and self.style_ok

    def to_json(self) -> dict[str, object]:
        """Stable keys for --json."""
        return {
            "ok": self.ok,
            "git_am_applies": self.git_am,
            "am_tree": self.am_tree,
            "branch_tree": self.branch_tree,
            "apply_tree": self.apply_tree,
            "am_tree_equals_branch": bool(self.am_tree) and self.am_tree == self.branch_tree,
            "apply_tree_equals_branch": bool(self.apply_tree) and self.apply_tree == self.branch_tree,
            "style_ok": self.style_ok,
            "style_checked": self.style_checked,
            "style_error": self.style_error,
            "style_problems": self.style_problems,
            "details": self.details,
        }


@dataclass
class PrResult:
    """What `pr` made; the CLI renders it as text or JSON."""

    target: str
    version: str
    branch: str
    base: str
    head: str  # what HEAD was (and still is): a ref name or a commit id
    out: str
    commits: list[Commit]
    written: list[str]
    verdict: Verdict
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    exit_code: int = OK
    message: str = ""

    def to_json(self) -> dict[str, object]:
        """Machine-readable form (stable keys)."""
        return {
            "command": "pr",
            "target": self.target,
            "version": self.version,
            "branch": self.branch,
            "base": self.base,
            "head": self.head,
            "out": self.out,
            "exit_code": self.exit_code,
            "message": self.message,
            "commits": [
                {"sha": c.sha, "subject": c.subject, "step": c.step, "files": [vars(f) for f in c.files]}
                for c in self.commits
            ],
            "written": self.written,
            "skipped_steps": self.skipped,
            "verdict": self.verdict.to_json(),
            "warnings": self.warnings,
        }


# ----------------------------------------------------------------------------- commit plan


@dataclass
class _Step:
    """One commit to build: how it changes the temporary index, and its message and authorship."""

    name: str
    subject: str
    body: str
    trailers: dict[str, str]
    author: Author
    date: str
    change: Callable[[], str | None]  # mutates the index; returns a reason when there is nothing to commit

    def message(self) -> str:
        """Subject, blank line, body, blank line, trailers (git interpret-trailers layout)."""
        parts = [self.subject]
        if self.body.strip():
            parts.append(self.body.strip("\n"))
        trailers = "\n".join(f"{k}: {v}" for k, v in self.trailers.items() if v)
        if trailers:
            parts.append(trailers)
        return "\n\n".join(parts) + "\n"


def _subject_and_body(subject: str, description: str) -> tuple[str, str]:
    """Subject from the mail (else the Description's first line); the body is the Description, without
    its first line when that only repeats the subject."""
    lines = description.splitlines()
    first = lines[0].strip() if lines else ""
    subject = subject or first.rstrip(".")
    if first.rstrip(".") == subject.rstrip("."):
        lines = lines[1:]
    return subject, "\n".join(lines).strip("\n")


def _trailers(fields: dict[str, str]) -> dict[str, str]:
    return {k: " ".join(fields.get(k, "").split()) for k in ("Origin", "Forwarded")}


def _date_key(date: str) -> float:
    try:
        return email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return 0.0


# ----------------------------------------------------------------------------- the command


def prepare(
    sglang_dir: Path,
    out: Path,
    *,
    report: Path | None = None,
    author: str | None = None,
    overlay_root: Path | None = None,
    patches_root: Path | None = None,
    progress: Progress = patcher.quiet,
) -> PrResult:
    """Branch `sage-attn/<version>` + format-patch series + PR.md, checked with `git am` and `apply`.

    Refusals (SageError, exit 4) happen before anything is written; a failure after the branch exists
    deletes it again (exit 5). A self-check mismatch keeps the output for inspection (exit 1).
    """
    verify_report = load_report(report) if report is not None else None
    identity = parse_author(author) if author is not None else None
    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SageError(f"--out {out}: exists and is not an empty directory (the series must not mix with old mails)")

    t = patcher.open_target(sglang_dir, overlay_root, patches_root)
    layout = t.layout
    if layout.kind is not LayoutKind.GIT_CHECKOUT or not layout.is_git:
        what = {
            LayoutKind.INSTALLED: "an installed package",
            LayoutKind.SOURCE_TREE: "a source tree (unpacked sdist)",
        }.get(layout.kind, "a checkout without .git")
        raise SageError(
            f"{layout.root}: not a git checkout but {what}; a pull request needs the SGLang git repository "
            "(DIR/python/sglang + DIR/.git)"
        )
    with patcher.locked(t, progress) as notes:
        result = _prepare_locked(t, out, verify_report, identity, overlay_root, patches_root, progress)
    result.warnings[:0] = notes
    return result


def _prepare_locked(
    t: patcher.Target,
    out: Path,
    verify_report: VerifyReport | None,
    identity: Author | None,
    overlay_root: Path | None,
    patches_root: Path | None,
    progress: Progress,
) -> PrResult:
    """`prepare` after the refusals that need no git, under the tree's lock."""
    layout = t.layout
    root = layout.root
    if out.resolve() == root or root in out.resolve().parents:
        raise SageError(f"--out {out}: is inside the checkout {root}; the mails would dirty the tree they describe")
    step = "checking the checkout"
    progress(step)
    base = _git(root, "rev-parse", "--verify", "-q", "HEAD^{commit}", step=step, check=False)
    if not base.ok:
        raise SageError(f"{root}: HEAD has no commit yet")
    base_sha = base.stdout.strip()
    symbolic = _git(root, "symbolic-ref", "-q", "HEAD", step=step, check=False).stdout.strip()
    head_before = symbolic or base_sha
    patcher.require_clean(t, None, hint="commit or stash first")
    patcher.require_pristine(t)
    branch = BRANCH_PREFIX + layout.version
    ref = f"refs/heads/{branch}"
    if _git(root, "show-ref", "--verify", "-q", ref, step=step, check=False).ok:
        raise SageError(f"{root}: branch {branch} already exists (delete it: git branch -D {branch})")
    patcher.api_check(t, progress)

    with tempfile.TemporaryDirectory(prefix="sglang-sage-pr-") as tmp_name:
        tmp = Path(tmp_name)
        objects_dir = Path(_out(root, "rev-parse", "--git-path", "objects", step=step))
        objects_dir = objects_dir if objects_dir.is_absolute() else (root / objects_dir).resolve()
        scratch = tmp / "objects"
        scratch.mkdir()
        env = {  # the scratch index and object store (passed on purpose: the runner drops inherited ones)
            "GIT_INDEX_FILE": str(tmp / "index"),
            "GIT_OBJECT_DIRECTORY": str(scratch),
            "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects_dir),
        }
        steps, skipped, adapted = _plan(t, root, env, identity, overlay_root)
        progress("building the commit series")
        _git(root, "read-tree", base_sha, step="reading the base tree", env=env)
        parent = base_sha
        built: list[tuple[_Step, str]] = []
        for s in steps:
            reason = s.change()
            tree = _out(root, "write-tree", step=f"{s.name}: write-tree", env=env)
            if reason is not None or tree == _out(root, "rev-parse", f"{parent}^{{tree}}", step=s.name, env=env):
                skipped.append(f"{s.name}: {reason or 'changes nothing on this tree'}")
                continue
            commit_env = dict(env)
            for who in ("AUTHOR", "COMMITTER"):
                commit_env[f"GIT_{who}_NAME"] = s.author.name
                commit_env[f"GIT_{who}_EMAIL"] = s.author.email
                commit_env[f"GIT_{who}_DATE"] = s.date
            parent = _out(
                root,
                "commit-tree",
                "--no-gpg-sign",
                tree,
                "-p",
                parent,
                "-F",
                "-",
                step=f"{s.name}: commit",
                env=commit_env,
                stdin=s.message(),
            )
            built.append((s, parent))
        if not built:
            raise SageError(f"{root}: the patch set changes nothing on this tree", code=REFUSED)

        published: list[Path] = []
        written: list[Path] = []
        created_out = not out.exists()
        try:
            progress(f"creating branch {branch}")
            _publish_objects(scratch, objects_dir, published)
            _git(root, "update-ref", "-m", "sglang-sage pr", ref, parent, ZERO_OID, step=f"creating branch {branch}")
            commits = _describe(root, base_sha, built, adapted)
            progress("writing the format-patch series")
            out.mkdir(parents=True, exist_ok=True)
            # explicit flags: a user's format.* / diff.* config (cover letter, sign-off, suffix, no prefix,
            # attachments, notes) must not change what `git am DIR/*.patch` sees
            names = _out(
                root,
                "format-patch",
                "--no-signature",
                "--no-cover-letter",
                "--suffix=.patch",
                "--no-signoff",
                "--no-attach",
                "--no-notes",
                "--no-from",
                "--no-thread",
                "--src-prefix=a/",
                "--dst-prefix=b/",
                "-o",
                str(out.resolve()),
                f"{base_sha}..{ref}",
                step="git format-patch",
            ).splitlines()
            written += [Path(n) for n in names]
            progress("checking the series (git am and apply on fresh clones)")
            verdict = _self_check(t, root, base_sha, ref, [Path(n) for n in names], tmp, overlay_root, patches_root)
            warnings: list[str] = []
            if verify_report is not None:
                for png in verify_report.plots:
                    shutil.copyfile(png, out / png.name)
                    written.append(out / png.name)
                warnings += [
                    f"report plot {n}: not found next to {verify_report.path}" for n in verify_report.missing_plots
                ]
            pr_md = out / "PR.md"
            pr_md.write_text(render_pr(t, base_sha, branch, commits, verdict, verify_report, skipped), encoding="utf-8")
            written.append(pr_md)
        except BaseException:
            _rollback(root, ref, published, written, out if created_out else None)
            raise

    head_after = _git(root, "symbolic-ref", "-q", "HEAD", step="final check", check=False).stdout.strip() or _out(
        root, "rev-parse", "HEAD", step="final check"
    )
    result = PrResult(
        target=str(root),
        version=layout.version,
        branch=branch,
        base=base_sha,
        head=head_before,
        out=str(out),
        commits=commits,
        written=[str(p) for p in written],
        verdict=verdict,
        skipped=skipped,
        warnings=warnings,
    )
    if head_after != head_before or t.git.dirty([]):
        result.exit_code = INTERNAL
        result.message = f"BUG: HEAD or the working tree of {root} changed ({head_before} -> {head_after})"
    elif not verdict.trees_ok:
        result.exit_code = INTERNAL
        result.message = (
            f"self-check FAILED: the series in {out} does not reproduce branch {branch} and apply's tree; "
            f"kept for inspection (remove with: git -C {root} branch -D {branch})"
        )
    elif not verdict.style_ok:
        result.exit_code = INTERNAL
        result.message = (
            f"self-check FAILED: the series in {out} would not pass SGLang's formatters "
            f"({verdict.style_error or '; '.join(verdict.style_problems)}); format the overlay with "
            f"`python -m sglang_sage.upstream_style --fix overlay/` (kept for inspection; remove with: "
            f"git -C {root} branch -D {branch})"
        )
    else:
        result.message = (
            f"branch {branch}: {len(commits)} commit(s) on {base_sha[:12]}; {len(names)} patch(es) and PR.md in "
            f"{out}; git am on a fresh clone and apply both give tree {verdict.branch_tree[:12]}; HEAD still "
            f"{head_before.removeprefix('refs/heads/')}"
        )
    return result


def _plan(
    t: patcher.Target, root: Path, env: dict[str, str], identity: Author | None, overlay_root: Path | None
) -> tuple[list[_Step], list[str], dict[str, list[str]]]:
    """The commits to build, in order: overlay, then the series' SGLang patches and edit step; also which
    overlay files the set's overlay patches adapted (for the "what changed" table)."""
    full = load_series(t.series.directory)
    # Split against the overlay as committed (the one `t` was opened with): t.overlay_files is what the set
    # installs, which lacks the files an overlay patch deletes (0.5.8 drops the sm90 kernel), and those paths
    # are still overlay paths.
    _, overlay_steps = overlay_patches.split(full, overlay_mod.discover(overlay_root or overlay_mod.OVERLAY_DIR))
    mails = {p.name: p.header for p in full.patches}  # dep3.parse read the mail header with the DEP-3 fields
    dates = [m.date for m in mails.values() if m.date]
    date = max(dates, key=_date_key) if dates else FALLBACK_DATE
    default_author = next((m.author for m in mails.values() if m.author), None)
    fallback = identity or default_author
    if fallback is None:
        raise SageError(f"{t.series.directory}: no patch has a From: line; pass --author 'Name <mail>'")
    version = t.layout.version
    skipped: list[str] = []
    adapted = {of.dest: [s.name for s in overlay_steps if of.dest in s.files] for of in t.overlay_files}

    def add_overlay() -> str | None:
        if not t.overlay_files:
            return "no overlay files"
        # --no-filters: the blobs are the overlay's bytes, as `apply` writes them (mode 644 like apply's chmod)
        shas = _out(
            root,
            "hash-object",
            "-w",
            "--no-filters",
            "--stdin-paths",
            step="overlay: hash-object",
            env=env,
            stdin="\n".join(str(of.source) for of in t.overlay_files) + "\n",
        ).split()
        info = "".join(f"100644 {sha}\t{of.dest}\n" for sha, of in zip(shas, t.overlay_files))
        _git(root, "update-index", "--add", "--index-info", step="overlay: update-index", env=env, stdin=info)
        return None

    doc = docstring(t.overlay_root / BACKEND_DOC) or "New files of the sage_attn attention backend."
    body = doc + "\n\nNew files:\n" + "\n".join(f"- {of.dest}" for of in t.overlay_files)
    for ov in overlay_steps:
        body += f"\n\nAdapted to SGLang {version} by {ov.name} ({ov.header.subject}):\n{ov.header.description}"
    steps = [
        _Step(
            "overlay",
            OVERLAY_SUBJECT,
            body,
            {
                "Origin": f"vendor, sglang-sage overlay/ (sha256 pinned in patches/{t.manifest.version}/manifest.toml)",
                "Forwarded": "not-yet",
            },
            fallback,
            date,
            add_overlay,
        )
    ]
    by_name: dict[str, PatchStep | PyprojectEdit] = {p.name: p for p in t.series.patches}
    if t.edit is not None:
        by_name[t.edit.name] = t.edit
    for name in t.series.order:
        item = by_name.get(name)
        if isinstance(item, PatchStep):
            mail = mails[name]
            subject, body = _subject_and_body(mail.subject, mail.description)
            steps.append(
                _Step(
                    name,
                    subject,
                    body,
                    _trailers(item.header.fields),
                    identity or mail.author or fallback,
                    mail.date or date,
                    _patch_change(root, env, item),
                )
            )
        elif isinstance(item, PyprojectEdit):
            subject, body = _subject_and_body("", dep3.from_fields(item.header).description)
            steps.append(
                _Step(name, subject, body, _trailers(item.header), fallback, date, _edit_change(root, env, item))
            )
    return steps, skipped, adapted


def _patch_change(root: Path, env: dict[str, str], step: PatchStep) -> Callable[[], str | None]:
    def change() -> str | None:
        _git(root, "apply", "--cached", "-p1", "--whitespace=nowarn", str(step.path), step=step.name, env=env)
        return None

    return change


def _edit_change(root: Path, env: dict[str, str], edit: PyprojectEdit) -> Callable[[], str | None]:
    def change() -> str | None:
        staged = _out(root, "ls-files", "--stage", "--", edit.target, step=edit.name, env=env)
        if not staged:
            return f"n/a: no {edit.target} in this tree"
        mode, blob = staged.split()[:2]
        text = _git(root, "cat-file", "blob", blob, step=edit.name, env=env).stdout
        result = apply_edit(text, edit, edit.target)
        if not result.changed:
            return "already satisfied: " + "; ".join(result.kept)
        new = _out(root, "hash-object", "-w", "--stdin", step=edit.name, env=env, stdin=result.text)
        _git(root, "update-index", "--cacheinfo", f"{mode},{new},{edit.target}", step=edit.name, env=env)
        return None

    return change


def _publish_objects(scratch: Path, objects_dir: Path, added: list[Path]) -> None:
    """Copy the new loose objects into the repository, appending each path to `added` before it is made: a
    failure half-way (disk full, Ctrl-C) leaves the rollback the complete list of what to remove."""
    for src in sorted(scratch.glob("??/*")):
        dest = objects_dir / src.parent.name / src.name
        if dest.exists():
            continue
        if not dest.parent.exists():
            added.append(dest.parent)
            dest.parent.mkdir()
        tmp = dest.with_name(dest.name + ".sglang-sage-tmp")
        added += [tmp, dest]  # tmp is gone once renamed; the rollback tolerates that
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)


def _rollback(root: Path, ref: str, published: list[Path], written: list[Path], created_out: Path | None) -> None:
    """Undo a half-made PR: branch, copied objects, written files (HEAD and the work tree were never touched)."""
    _git(root, "update-ref", "-d", ref, step="rollback", check=False)
    for path in reversed(published):
        if path.is_dir():
            try:
                path.rmdir()
            except OSError:
                pass
        else:
            path.unlink(missing_ok=True)
    for path in written:
        path.unlink(missing_ok=True)
    if created_out is not None and created_out.is_dir() and not any(created_out.iterdir()):
        created_out.rmdir()


def _describe(root: Path, base: str, built: list[tuple[_Step, str]], adapted: dict[str, list[str]]) -> list[Commit]:
    commits: list[Commit] = []
    parent = base
    for s, sha in built:
        numstat = _out(root, "diff", "--numstat", "--no-renames", parent, sha, step="describing commits")
        files = []
        for line in numstat.splitlines():
            plus, minus, path = line.split("\t", 2)
            source = s.name
            if s.name == "overlay":
                source = " + ".join(["overlay/" + path.removeprefix("python/"), *adapted.get(path, [])])
            files.append(FileChange(path, source, int(plus) if plus != "-" else 0, int(minus) if minus != "-" else 0))
        commits.append(Commit(sha, s.subject, s.name, files))
        parent = sha
    return commits


def _self_check(
    t: patcher.Target,
    root: Path,
    base: str,
    ref: str,
    mails: list[Path],
    tmp: Path,
    overlay_root: Path | None,
    patches_root: Path | None,
) -> Verdict:
    """On a fresh clone: SGLang's formatters over the branch's Python files, `git am` of the mails on the
    base, then `apply` on the same clone reset to the base."""
    verdict = Verdict(branch_tree=_out(root, "rev-parse", f"{ref}^{{tree}}", step="self-check"))
    clone = tmp / "check"
    step = "self-check: clone"
    _git(tmp, "clone", "-q", "--no-checkout", str(root), str(clone), step=step)
    ident = ["-c", "user.name=sglang-sage", "-c", "user.email=sglang-sage@localhost", "-c", "core.hooksPath=/dev/null"]
    head = _out(root, "rev-parse", ref, step=step)
    # *ident: hooks off here too (a user's global core.hooksPath post-checkout hook must not run, or fail, in the clone)
    _git(clone, *ident, "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", head, step="self-check: style")
    changed = _out(clone, "diff", "--name-only", "--no-renames", base, head, step="self-check: style").splitlines()
    style = upstream_style.check([clone / f for f in changed if f.endswith(".py")])
    verdict.style_checked, verdict.style_error = style.checked, style.error
    verdict.style_problems = [p.removeprefix(f"{clone}/") for p in style.problems]
    verdict.details += [f"formatters: {p}" for p in verdict.style_problems]
    if style.error:
        verdict.details.append(f"formatters not run: {style.error}")
    _git(clone, *ident, "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", base, step=step)
    am = _git(clone, *ident, "am", "-q", "--no-3way", *[str(m) for m in mails], step="self-check: git am", check=False)
    verdict.git_am = am.ok
    if verdict.git_am:
        verdict.am_tree = _out(clone, "rev-parse", "HEAD^{tree}", step="self-check")
        if verdict.am_tree != verdict.branch_tree:
            verdict.details += _tree_diff(clone, verdict.branch_tree, verdict.am_tree, "git am")
    else:
        verdict.details.append("git am failed: " + " ".join((am.stderr or am.stdout).split())[:500])
        _git(clone, "am", "--abort", step="self-check", check=False)
    _git(clone, "reset", "-q", "--hard", base, step="self-check: reset to base")
    try:
        applied = patcher.apply(patcher.open_target(clone, overlay_root, patches_root), skip_api_check=True)
        if applied.exit_code != OK:
            raise SageError(applied.message)
    except SageError as exc:
        verdict.details.append(f"apply on a fresh clone failed: {exc}")
        return verdict
    _git(clone, "add", "-A", step="self-check: git add")
    verdict.apply_tree = _out(clone, "write-tree", step="self-check: write-tree")
    if verdict.apply_tree != verdict.branch_tree:
        verdict.details += _tree_diff(clone, verdict.branch_tree, verdict.apply_tree, "apply")
    return verdict


def _tree_diff(repo: Path, a: str, b: str, label: str) -> list[str]:
    diff = _out(repo, "diff", "--stat=200", a, b, step="self-check: diff", check=False)
    return [f"branch vs {label}: {line.strip()}" for line in diff.splitlines()] or [f"branch vs {label}: trees differ"]
