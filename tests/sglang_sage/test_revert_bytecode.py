"""`revert` is byte-identical on an installed SGLang whose bytecode pip compiled beforehand.

pip byte-compiles every module of a wheel at install time, so the patched files already have a
.pyc when `apply` rebuilds: apply replaces it (after backing it up) and creates new ones for the
overlay; revert must put the old ones back and remove the new ones.
"""

from __future__ import annotations

import json
import py_compile
import sys
from pathlib import Path

from sglang_sage import errors as ec
from sglang_sage.apply_cli import main

PATCHED = ("sglang/srt/layers/attention/attention_registry.py", "sglang/srt/server_args.py")


def pyc_of(installed: Path, rel: str) -> Path:
    src = installed / rel
    return src.parent / "__pycache__" / f"{src.stem}.{sys.implementation.cache_tag}.pyc"


def test_revert_restores_precompiled_bytecode(installed: Path, digest, capsys) -> None:
    for rel in PATCHED:
        py_compile.compile(str(installed / rel), cfile=str(pyc_of(installed, rel)), doraise=True)
    original = {rel: pyc_of(installed, rel).read_bytes() for rel in PATCHED}
    before = digest(installed)

    code = main(["apply", "--sglang-dir", str(installed), "--no-tests", "--python", sys.executable, "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert code == ec.OK and rep["state"] == "applied", rep
    for rel in PATCHED:  # the rebuild really replaced the bytecode pip had written
        assert pyc_of(installed, rel).read_bytes() != original[rel], rel
    backend = "sglang/srt/layers/attention/sage_attn_backend.py"
    assert pyc_of(installed, backend).is_file()
    state = json.loads((installed / "sglang-0.5.17.dist-info/sglang-sage/state.json").read_text())
    recorded = set(state["pyc"])  # every .pyc the rebuild wrote, the replaced ones included
    assert {pyc_of(installed, r).relative_to(installed).as_posix() for r in (*PATCHED, backend)} <= recorded

    code = main(["revert", "--sglang-dir", str(installed), "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert code == ec.OK and rep["state"] == "pristine", rep
    assert {rel: pyc_of(installed, rel).read_bytes() for rel in PATCHED} == original
    assert digest(installed) == before


def test_revert_removes_bytecode_of_overlay_files_it_did_not_record(installed: Path, digest, capsys) -> None:
    """Importing the applied tree (e.g. the GPU tests) writes .pyc files apply never saw: revert removes them."""
    before = digest(installed)
    assert main(["apply", "--sglang-dir", str(installed), "--no-tests", "--no-build"]) == ec.OK
    backend = installed / "sglang/srt/layers/attention/sage_attn_backend.py"
    py_compile.compile(str(backend), cfile=str(pyc_of(installed, backend.relative_to(installed).as_posix())))
    assert main(["revert", "--sglang-dir", str(installed)]) == ec.OK
    capsys.readouterr()
    assert digest(installed) == before
