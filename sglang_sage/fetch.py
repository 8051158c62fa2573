"""Get a pinned SGLang without a git clone: the PyPI wheel, via `pip download`, cached on disk.

The wheel carries exactly the Python sources of the release; unpacked under `python/` and
committed, it is a git checkout the patches apply to (no compiled extensions, no pyproject:
the 0.5.17 wheel has none). The same wheel unpacked as-is is an installed package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from sglang_sage import gitrun
from sglang_sage.errors import SageError

GIT_ID = ["-c", "user.name=sglang-sage", "-c", "user.email=sglang-sage@localhost", "-c", "commit.gpgsign=false"]
FIXED_DATE = "2000-01-01T00:00:00+00:00"
Progress = Callable[[str], None]


def cache_dir() -> Path:
    """`$SGLANG_SAGE_CACHE`, default ~/.cache/sglang-sage."""
    return Path(os.environ.get("SGLANG_SAGE_CACHE") or Path.home() / ".cache" / "sglang-sage")


def announce(message: str) -> None:
    """Where progress goes when the caller passes no callback: stderr (the test suite redirects it to
    its terminal, so a download of a release is never three silent minutes)."""
    print(message, file=sys.stderr, flush=True)


_PIP_PROGRESS = ("Collecting", "Downloading", "Saved", "File was already downloaded")


def _pip_download(spec: str, dest: Path, *, sdist: bool = False, progress: Progress | None = None) -> Path:
    say = progress or announce
    dest.mkdir(parents=True, exist_ok=True)
    name, _, version = spec.partition("==")
    pattern = f"{name}-{version}.tar.gz" if sdist else f"{name}-{version}-*.whl"
    hits = sorted(dest.glob(pattern))
    if hits:
        return hits[-1]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest), spec]
    # `--no-binary :all:` would also build the sdist's build requirements from source to prepare its
    # metadata (0.5.8 needs grpcio-tools: a C++ build of many minutes); only sglang must be the sdist.
    cmd[5:5] = ["--no-binary", name] if sdist else ["--only-binary", ":all:"]
    say(f"downloading {spec} ({'sdist' if sdist else 'wheel'}) from PyPI into {dest} (once; cached there)")
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            for line in raw.replace("\r", "\n").splitlines():
                if line.strip().startswith(_PIP_PROGRESS):
                    say("  pip: " + line.strip())
                tail = (tail + [line])[-20:]
    hits = sorted(dest.glob(pattern))
    if proc.returncode != 0 or not hits:
        raise SageError(
            f"could not download {spec} from PyPI ({' '.join(cmd)})",
            code=1,
            details=[ln for ln in tail if ln.strip()][-5:],
        )
    say(f"saved {hits[-1].name} ({hits[-1].stat().st_size / 1e6:.1f} MB)")
    return hits[-1]


def wheel(version: str, progress: Progress | None = None) -> Path:
    """The sglang wheel for this interpreter (cached)."""
    return _pip_download(f"sglang=={version}", cache_dir() / "wheels", progress=progress)


def sdist(version: str, progress: Progress | None = None) -> Path:
    """The sglang sdist (cached); only releases up to 0.5.10.post1 have one."""
    return _pip_download(f"sglang=={version}", cache_dir() / "sdists", sdist=True, progress=progress)


def _git(cwd: Path, *args: str) -> None:
    env = {"GIT_AUTHOR_DATE": FIXED_DATE, "GIT_COMMITTER_DATE": FIXED_DATE}
    result = gitrun.run(cwd, *GIT_ID, *args, env=env)
    if not result.ok:
        raise SageError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}", code=1)


def materialize_checkout(whl: Path, dest: Path, tag: str) -> Path:
    """Wheel -> git checkout with `python/sglang/...` committed and tagged (sources only)."""
    if dest.exists() and any(dest.iterdir()):
        raise SageError(f"{dest}: exists and is not empty; refusing to overwrite it", code=4)
    (dest / "python").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as zf:
        for info in zf.infolist():
            name = info.filename
            if not name.startswith("sglang/") or name.endswith((".so", ".pyd")) or info.is_dir():
                continue
            zf.extract(info, dest / "python")
    _git(dest, "init", "-q")
    # No automatic gc in the materialized checkout: a detached `git gc --auto` after a later commit keeps running
    # (gc.pid, gc.log.lock) while the checkout is copied, and the copy fails on the files it removes (seen in CI).
    _git(dest, "config", "gc.auto", "0")
    _git(dest, "config", "maintenance.auto", "false")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", f"SGLang {tag} (python sources from the PyPI wheel {whl.name})")
    _git(dest, "tag", tag)
    _git(dest, "repack", "-adq")  # one pack file: copying the checkout stays cheap
    return dest


def materialize_installed(whl: Path, dest: Path) -> Path:
    """Wheel -> a site-packages-like directory (package + dist-info), like pip would lay it out."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as zf:
        zf.extractall(dest)
    return dest


def ensure_checkout(version: str, tag: str, dest: Path, progress: Progress | None = None) -> Path:
    """The fetched target of `apply.py` (no SGLang installed, or --fetch): `.sglang/<version>/` next to apply.py."""
    if (dest / "python" / "sglang" / "__init__.py").is_file():
        return dest
    whl = wheel(version, progress)
    (progress or announce)(f"unpacking {whl.name} into a git checkout at {dest} (tag {tag})")
    return materialize_checkout(whl, dest, tag)
