"""Recognise the three shapes an SGLang tree comes in and map patch paths (`python/...`) onto them.

One patch set serves all layouts: patches are written against the git repository root
(`python/sglang/...`), and a layout says where `python/` (the package root) and the repo root are.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from email.parser import Parser
from enum import Enum
from pathlib import Path

from sglang_sage import gitrun
from sglang_sage.errors import SageError

PKG_PREFIX = "python/"


class LayoutKind(str, Enum):
    """Which shape the target tree has."""

    GIT_CHECKOUT = "git-checkout"
    SOURCE_TREE = "source-tree"
    INSTALLED = "installed"


@dataclass(frozen=True)
class Layout:
    """A detected SGLang tree: where the package lives and how repo-relative paths map onto disk."""

    kind: LayoutKind
    root: Path  # the directory the user named
    pkg_root: Path  # directory that contains the `sglang/` package
    repo_root: Path | None  # directory that holds `test/` (git checkout only)
    version: str
    version_source: str
    dist_info: Path | None = None

    @property
    def is_git(self) -> bool:
        """True when the tree is a git work tree (dirty checks and `--3way` are possible)."""
        return self.kind is LayoutKind.GIT_CHECKOUT and (self.root / ".git").exists()

    @property
    def strip(self) -> int:
        """The `-p` level for `git apply`: checkouts take `a/python/...`, others drop `python/` too."""
        return 1 if self.kind is LayoutKind.GIT_CHECKOUT else 2

    @property
    def apply_dir(self) -> Path:
        """Where `git apply` runs so that the stripped patch paths resolve."""
        return self.root if self.kind is LayoutKind.GIT_CHECKOUT else self.pkg_root

    @property
    def pyproject(self) -> Path | None:
        """The project's pyproject.toml, or None for an installed package (metadata is dist-info)."""
        if self.kind is LayoutKind.INSTALLED:
            return None
        return self.pkg_root / "pyproject.toml"

    def map_path(self, repo_path: str) -> Path | None:
        """Map a git-root-relative path to disk; None where the layout has no such place."""
        if repo_path.startswith(PKG_PREFIX):
            return self.pkg_root / repo_path[len(PKG_PREFIX) :]
        if self.repo_root is None:
            return None
        return self.repo_root / repo_path

    def describe(self) -> str:
        """One line for humans."""
        return f"{self.kind.value} at {self.root} (SGLang {self.version}, from {self.version_source})"


def _literal_version(py_file: Path) -> str | None:
    """Read `__version__ = ... = '<ver>'` from a version module without importing it."""
    try:
        tree = ast.parse(py_file.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if "__version__" in names and isinstance(node.value.value, str):
                return node.value.value
    return None


def _metadata_version(meta_file: Path) -> str | None:
    """Version from a METADATA / PKG-INFO file."""
    try:
        with meta_file.open(encoding="utf-8") as fh:
            headers = Parser().parse(fh, headersonly=True)
    except OSError:
        return None
    if (headers.get("Name") or "").lower() != "sglang":
        return None
    return headers.get("Version")


def _git_tag_version(repo: Path) -> str | None:
    """`v0.5.17` -> `0.5.17` when HEAD sits exactly on a release tag (upstream checkouts lack _version.py)."""
    out = gitrun.run(repo, "describe", "--tags", "--exact-match", "HEAD", timeout=30)
    tag = out.stdout.strip()
    if not out.ok or not tag:
        return None
    return tag[1:] if tag.startswith("v") else tag


def _find_dist_info(site: Path) -> Path | None:
    """The `sglang-X.dist-info` next to an installed package (the newest if several linger)."""
    hits = sorted(site.glob("sglang-*.dist-info"))
    return hits[-1] if hits else None


def _read_version(pkg: Path, extra: list[tuple[str, Path]]) -> tuple[str, str]:
    """Try the version sources in order of trust; name them all when none works."""
    tried: list[str] = []
    for name in ("_version.py", "version.py"):
        candidate = pkg / name
        tried.append(str(candidate))
        found = _literal_version(candidate) if candidate.is_file() else None
        if found:
            return found, str(candidate)
    for label, path in extra:
        tried.append(str(path))
        if label == "git":
            found = _git_tag_version(path)
        else:
            found = _metadata_version(path) if path.is_file() else None
        if found:
            return found, (f"git tag in {path}" if label == "git" else str(path))
    raise SageError(
        f"cannot tell which SGLang version {pkg} is",
        details=[f"looked at {t}" for t in tried],
    )


def detect(directory: Path) -> Layout:
    """Detect the layout of `directory`, or refuse with a message that says what was expected."""
    directory = Path(directory)
    if not directory.exists():
        raise SageError(f"--sglang-dir {directory}: no such directory")
    if not directory.is_dir():
        raise SageError(f"--sglang-dir {directory}: not a directory")
    root = directory.resolve()

    if (root / "python" / "sglang" / "__init__.py").is_file():
        pkg_root = root / "python"
        extra: list[tuple[str, Path]] = []
        if (root / ".git").exists():
            extra.append(("git", root))
        version, source = _read_version(pkg_root / "sglang", extra)
        return Layout(LayoutKind.GIT_CHECKOUT, root, pkg_root, root, version, source)

    if (root / "sglang" / "__init__.py").is_file():
        dist_info = _find_dist_info(root)
        if dist_info is not None:
            version, source = _read_version(root / "sglang", [("meta", dist_info / "METADATA")])
            return Layout(LayoutKind.INSTALLED, root, root, None, version, source, dist_info)
        if (root / "pyproject.toml").is_file() or (root / "PKG-INFO").is_file():
            version, source = _read_version(root / "sglang", [("meta", root / "PKG-INFO")])
            return Layout(LayoutKind.SOURCE_TREE, root, root, None, version, source)

    if (root / "sglang").is_dir() and not (root / "sglang" / "__init__.py").is_file():
        raise SageError(f"--sglang-dir {root}: has sglang/ but no sglang/__init__.py; not an SGLang package")
    raise SageError(
        f"--sglang-dir {root}: not an SGLang tree",
        details=[
            "git checkout: expected DIR/python/sglang/__init__.py",
            "source tree (unpacked sdist): expected DIR/sglang/__init__.py and DIR/pyproject.toml",
            "installed package: expected site-packages/sglang/__init__.py and sglang-X.dist-info",
        ],
    )
