"""Session fixtures: the real SGLang 0.5.17 (PyPI wheel) as a git checkout, an installed package and a
source tree, plus the real 0.5.10.post1 sdist (the newest release with a pyproject.toml on PyPI).

Downloads are cached in ${SGLANG_SAGE_CACHE:-~/.cache/sglang-sage}; each test gets its own copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from sglang_sage import fetch

VERSION = "0.5.17"
SDIST_VERSION = "0.5.10.post1"
REPO = Path(__file__).resolve().parent.parent


def tree_digest(root: Path) -> str:
    """sha256 over every path, file mode and file content under root (.git included)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d + "/" for d in dirnames]:
            p = Path(dirpath) / name.rstrip("/")
            st = p.lstat()
            h.update(f"{p.relative_to(root)}\0{stat.S_IMODE(st.st_mode):o}\0".encode())
            if stat.S_ISREG(st.st_mode):
                h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@pytest.fixture(scope="session", autouse=True)
def announce_downloads(pytestconfig: pytest.Config):
    """Say on the terminal when the suite downloads a release (pytest captures stderr, where
    `fetch` reports by default): the first run fetches ~70 MB and should not look hung."""
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    with pytest.MonkeyPatch.context() as mp:
        if reporter is not None:
            mp.setattr(fetch, "announce", lambda message: reporter.write_line(f"[sglang-sage] {message}"))
        yield


@pytest.fixture(scope="session")
def digest():
    """The tree hashing function (a fixture, so test modules need not import conftest)."""
    return tree_digest


@pytest.fixture(scope="session")
def sglang_wheel() -> Path:
    return fetch.wheel(VERSION)


@pytest.fixture(scope="session")
def pristine_checkout(sglang_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fetch.materialize_checkout(sglang_wheel, tmp_path_factory.mktemp("pristine") / "checkout", "v" + VERSION)


@pytest.fixture(scope="session")
def pristine_installed(sglang_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fetch.materialize_installed(sglang_wheel, tmp_path_factory.mktemp("pristine") / "site-packages")


@pytest.fixture(scope="session")
def sdist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real sglang 0.5.10.post1 sdist, unpacked (has the real upstream pyproject.toml)."""
    archive = fetch.sdist(SDIST_VERSION)
    dest = tmp_path_factory.mktemp("sdist")
    with tarfile.open(archive) as tf:
        tf.extractall(dest, filter="data")
    return dest / f"sglang-{SDIST_VERSION}"


@pytest.fixture
def checkout(pristine_checkout: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "sglang"
    shutil.copytree(pristine_checkout, dest, symlinks=True)
    return dest


@pytest.fixture
def installed(pristine_installed: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "site-packages"
    shutil.copytree(pristine_installed, dest, symlinks=True)
    return dest


@pytest.fixture
def source_tree(pristine_installed: Path, sdist_root: Path, tmp_path: Path) -> Path:
    """0.5.17 sources in the sdist layout (DIR/sglang + DIR/pyproject.toml); pyproject is the real
    0.5.10.post1 one, because no 0.5.17 pyproject is published."""
    dest = tmp_path / "sglang-src"
    shutil.copytree(pristine_installed / "sglang", dest / "sglang", symlinks=True)
    shutil.copyfile(sdist_root / "pyproject.toml", dest / "pyproject.toml")
    return dest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test is an untested claim: the CPU suite fails when anything was skipped."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and exitstatus == 0:
        session.exitstatus = 1
        if reporter is not None:
            reporter.write_line(f"FAILED: {len(skipped)} test(s) skipped; the suite allows no skips", red=True)
