"""The environment a report was measured in (versions are read from package metadata, not imports)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("sglang", "sglang-kernel", "sgl-kernel", "torch", "triton", "transformers", "flashinfer-python",
            "sageattention", "tokenizers", "numpy")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(repo: Path) -> dict[str, Any]:
    """HEAD and whether the tree had uncommitted changes (a report of a dirty tree says so).

    ``$SGLANG_SAGE_GIT_COMMIT``, when set, wins: a tree copied to a GPU machine may carry no .git or
    a stale one (the device tool's copy kept the session's first HEAD), and the sender knows better.
    """
    import os

    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    given = os.environ.get("SGLANG_SAGE_GIT_COMMIT")
    if given:
        return {"commit": given, "dirty": None, "note": "commit from $SGLANG_SAGE_GIT_COMMIT (set by the sender)"}
    commit = run("rev-parse", "HEAD")
    if commit is None:  # a copy of the tree without .git (e.g. sent to a GPU machine)
        return {"commit": None, "dirty": None, "note": "no git metadata and no $SGLANG_SAGE_GIT_COMMIT"}
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def overlay_match(overlay_root: Path, package_dir: Path | None) -> dict[str, Any]:
    """Do the installed sglang's sage_attn files equal this checkout's overlay? (proves which code ran)"""
    import hashlib

    if package_dir is None or not overlay_root.is_dir():
        return {"checked": False}
    files = sorted(p for p in overlay_root.rglob("*.py") if "__pycache__" not in p.parts)
    differ, missing = [], []
    for src in files:
        rel = src.relative_to(overlay_root)
        dst = package_dir / rel
        if not dst.is_file():
            missing.append(str(rel))
        elif hashlib.sha256(src.read_bytes()).digest() != hashlib.sha256(dst.read_bytes()).digest():
            differ.append(str(rel))
    return {"checked": True, "files": len(files), "identical": not differ and not missing,
            "differ": differ, "missing": missing, "package_dir": str(package_dir)}


def gpu_info() -> dict[str, Any]:
    """GPU name, driver, memory via NVML (no CUDA context); torch as a fallback."""
    info: dict[str, Any] = {}
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(h)
        info["name"] = name.decode() if isinstance(name, bytes) else name
        drv = pynvml.nvmlSystemGetDriverVersion()
        info["driver"] = drv.decode() if isinstance(drv, bytes) else drv
        info["memory_total_mib"] = pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**20
        info["count"] = pynvml.nvmlDeviceGetCount()
    except Exception:  # noqa: BLE001
        pass
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        if "name" not in info and torch.cuda.is_available():
            info["name"] = torch.cuda.get_device_name(0)
            info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except Exception:  # noqa: BLE001
        pass
    if "driver" not in info:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=15).stdout.strip()
            info["driver"] = out.splitlines()[0] if out else None
        except (OSError, subprocess.SubprocessError):
            info.setdefault("driver", None)
    return info


def slug(text: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200' (report directory names)."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "unknown-gpu"


def collect(repo: Path, argv: list[str]) -> dict[str, Any]:
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *argv]),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "gpu": gpu_info(),
        "packages": package_versions(),
        "git": git_commit(repo),
    }
