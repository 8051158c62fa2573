"""The 0.5.8 and 0.5.23 patch sets against the real releases (issue #7).

0.5.8 comes from its PyPI sdist (real pyproject.toml), as a source tree and as a git checkout built
from it; 0.5.23 (no sdist on PyPI) from its wheel, installed and as a git checkout. Every set goes
through check (with the API check), apply, apply again (idempotent), status, revert (byte-identical),
plus version selection (unknown versions, --patch-set) and the overlay-patch mechanism.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Callable
from email.parser import Parser
from pathlib import Path

import pytest

from sglang_sage import apicheck, apply_cli, fetch, overlay, overlay_patches, patcher
from sglang_sage.errors import REFUSED, SageError
from sglang_sage.hashing import sha256_file
from sglang_sage.layout import LayoutKind, detect
from sglang_sage.manifest import Manifest
from sglang_sage.series import PATCHES_DIR, available_versions, load, nearest_version, patchset_dir

BACKEND = "python/sglang/srt/layers/attention/sage_attn_backend.py"
TESTS = ("test/registered/attention/test_sage_attn_engine.py", "test/registered/attention/test_sage_attn_kernels.py")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def sdist_058(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real sglang 0.5.8 sdist, unpacked (sglang/ + pyproject.toml + PKG-INFO)."""
    dest = tmp_path_factory.mktemp("sdist058")
    with tarfile.open(fetch.sdist("0.5.8")) as tf:
        tf.extractall(dest, filter="data")
    return dest / "sglang-0.5.8"


@pytest.fixture(scope="session")
def checkout_058(sdist_058: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git checkout of v0.5.8 built from the sdist: python/ holds sglang/ and the real pyproject.toml."""
    dest = tmp_path_factory.mktemp("co058") / "sglang"
    shutil.copytree(sdist_058, dest / "python")
    for args in (("init", "-q"), ("add", "-A"), ("commit", "-q", "-m", "SGLang v0.5.8 (sdist)"), ("tag", "v0.5.8")):
        fetch._git(dest, *args)
    return dest


@pytest.fixture(scope="session")
def wheel_0523() -> Path:
    return fetch.wheel("0.5.23")


@pytest.fixture(scope="session")
def installed_0523(wheel_0523: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fetch.materialize_installed(wheel_0523, tmp_path_factory.mktemp("inst0523") / "site-packages")


@pytest.fixture(scope="session")
def checkout_0523(wheel_0523: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fetch.materialize_checkout(wheel_0523, tmp_path_factory.mktemp("co0523") / "sglang", "v0.5.23")


TREES = {
    "0.5.8-source-tree": ("sdist_058", "0.5.8", LayoutKind.SOURCE_TREE),
    "0.5.8-git-checkout": ("checkout_058", "0.5.8", LayoutKind.GIT_CHECKOUT),
    "0.5.23-installed": ("installed_0523", "0.5.23", LayoutKind.INSTALLED),
    "0.5.23-git-checkout": ("checkout_0523", "0.5.23", LayoutKind.GIT_CHECKOUT),
}


@pytest.fixture(params=sorted(TREES))
def tree(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str, LayoutKind]:
    """A private copy of one pristine tree, with its version and expected layout."""
    fixture, version, kind = TREES[request.param]
    dest = tmp_path / "t"
    shutil.copytree(request.getfixturevalue(fixture), dest, symlinks=True)
    return dest, version, kind


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = apply_cli.main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


# ----------------------------------------------------------------------------- the full cycle


def test_check_apply_idempotent_status_revert(
    tree: tuple[Path, str, LayoutKind], capsys: pytest.CaptureFixture[str], digest: Callable[[Path], str]
) -> None:
    root, version, kind = tree
    layout = detect(root)
    assert (layout.kind, layout.version) == (kind, version)
    pristine = digest(root)

    code, rep = _run(capsys, "check", "--sglang-dir", str(root))
    assert code == 0, rep
    assert rep["state"] == "pristine" and rep["version"] == version
    assert digest(root) == pristine  # check writes nothing

    code, rep = _run(capsys, "apply", "--sglang-dir", str(root), "--no-build", "--no-tests")
    assert code == 0, rep
    assert rep["state"] == "applied"
    applied = digest(root)

    # What got installed is the overlay *with this set's overlay patch applied*.
    backend = layout.map_path(BACKEND)
    assert backend is not None
    text = backend.read_text()
    if version == "0.5.8":
        assert "def init_forward_metadata_replay_cuda_graph(" in text
        assert "def init_forward_metadata_out_graph(" not in text
    else:
        assert "def init_forward_metadata_out_graph(" in text
    # version drift only through overlay patches: 0.5.23's reads the runner's stamped decode backend,
    # the others call ServerArgs.get_attention_backends (no getattr probe in the installed backend)
    if version == "0.5.23":
        assert "return model_runner.decode_attention_backend_str" in text
        assert "get_attention_backends()" not in text
    else:
        assert "return model_runner.server_args.get_attention_backends()[1]" in text
    assert 'getattr(model_runner, "decode_attention_backend_str"' not in text
    for rel in TESTS:
        dest = layout.map_path(rel)
        if dest is not None:  # tests exist in the tree only where it has a repo root
            call = "suite=" if version == "0.5.8" else "stage="
            assert "register_cuda_ci(est_time=" in dest.read_text() and call in dest.read_text()

    pyproject = layout.map_path("python/pyproject.toml")
    if kind is not LayoutKind.INSTALLED and pyproject is not None and pyproject.is_file():
        body = pyproject.read_text()
        assert '"jinja2>=3.1.0"' in body and 'sage = ["sageattention>=1.0.6"]' in body

    code, rep = _run(capsys, "apply", "--sglang-dir", str(root), "--no-build", "--no-tests")
    assert code == 0 and rep["message"].startswith("already applied"), rep
    assert digest(root) == applied  # idempotent: byte-identical, nothing rewritten

    code, rep = _run(capsys, "status", "--sglang-dir", str(root))
    assert code == 0 and rep["state"] == "applied"
    states = {(i["kind"], i["state"]) for i in rep["items"]}
    assert ("overlay", "drifted") not in states and ("patch", "drifted") not in states
    assert not rep["warnings"], rep["warnings"]  # manifest overlay pins match the patched overlay

    code, rep = _run(capsys, "revert", "--sglang-dir", str(root))
    assert code == 0 and rep["state"] == "pristine", rep
    assert digest(root) == pristine  # byte-identical, modes and .git included

    code, rep = _run(capsys, "revert", "--sglang-dir", str(root))
    assert code == 0 and "already pristine" in rep["message"]


# ----------------------------------------------------------------------------- API check


@pytest.mark.parametrize("version, fixture", [("0.5.8", "sdist_058"), ("0.5.23", "installed_0523")])
def test_api_check_needs_and_accepts_the_overlay_patch(
    version: str, fixture: str, request: pytest.FixtureRequest
) -> None:
    """The raw 0.5.17 overlay misses on 0.5.8 (CUDA-graph hooks) and needs 0.5.8's overlay patch;
    on 0.5.23 the raw overlay passes as it is (its spelling of the decode-backend lookup is version-neutral)."""
    layout = detect(request.getfixturevalue(fixture))
    raw = apicheck.check(overlay.OVERLAY_DIR, layout)
    if version == "0.5.8":
        names = {m.name for m in raw}
        assert "SageAttnBackend.init_forward_metadata_out_graph" in names
        assert "SageAttnBackend.init_forward_metadata_in_graph" in names
        _, effective = overlay_patches.effective_overlay(load(PATCHES_DIR / version), overlay.OVERLAY_DIR)
        assert effective != overlay.OVERLAY_DIR
        assert apicheck.check(effective, layout) == []
    else:
        assert raw == []


def test_0523_has_no_get_attention_backends_but_stamps_the_runner(installed_0523: Path) -> None:
    """Why the backend reads the runner's stamped name first (see docs/sglang-api-differences.md)."""
    server_args = (installed_0523 / "sglang/srt/server_args.py").read_text()
    assert "def get_attention_backends" not in server_args
    runner = (installed_0523 / "sglang/srt/model_executor/model_runner.py").read_text()
    stamp = runner.index("self.decode_attention_backend_str = resolved.decode")
    assert stamp < runner.index("backends = build_attention_backends(model_runner=self)")


# ----------------------------------------------------------------------------- the sets themselves


@pytest.mark.parametrize("version", ["0.5.8", "0.5.23"])
def test_series_dep3_and_registration(version: str) -> None:
    series = load(PATCHES_DIR / version)
    for step in series.patches:
        text = step.path.read_text()
        assert text.startswith("From 0000000000000000000000000000000000000000 ") and "\nSubject: [PATCH] " in text
        assert {"Description", "Origin", "Forwarded", "Last-Update"} <= set(step.header.fields)
    tree_series, ov_steps = overlay_patches.split(series, overlay.discover())
    choices = {
        "0.5.8": "python/sglang/srt/server_args.py",
        "0.5.23": "python/sglang/srt/arg_groups/choices.py",
    }[version]
    assert set(tree_series.patched_files) == {"python/sglang/srt/layers/attention/attention_registry.py", choices}
    assert [s.name for s in ov_steps] == [n for n in series.order if n.startswith("0003-")]
    registration = series.patches[0].path.read_text()
    assert '+@register_attention_backend("sage_attn")' in registration
    assert '+    "sage_attn",' in registration
    assert series.edits and series.edits[0].dependencies == ("jinja2>=3.1.0",)
    assert series.edits[0].extras == {"sage": ("sageattention>=1.0.6",)}


@pytest.mark.parametrize(
    "version, fixture, meta",
    [("0.5.8", "sdist_058", "PKG-INFO"), ("0.5.23", "installed_0523", "sglang-0.5.23.dist-info/METADATA")],
)
def test_manifest_pins_match_the_release(version: str, fixture: str, meta: str, request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue(fixture)
    m = Manifest.load(PATCHES_DIR / version / "manifest.toml")
    assert (m.version, m.upstream_tag, m.tier) == (version, f"v{version}", "source")
    with (root / meta).open() as fh:
        headers = Parser().parse(fh, headersonly=True)
    assert headers["Version"] == version
    assert headers["Requires-Python"] == m.requires_python
    assert f"torch=={m.torch}" in headers.get_all("Requires-Dist")
    layout = detect(root)
    tree_series, _ = overlay_patches.split(load(PATCHES_DIR / version), overlay.discover())
    for f in tree_series.patched_files:
        assert sha256_file(layout.map_path(f)) == m.pre[f], f  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["0.5.8", "0.5.23"])
def test_manifest_pins_the_patched_overlay(version: str) -> None:
    """Fails when overlay/ changed without `python apply.py manifest --update VERSION`."""
    m = Manifest.load(PATCHES_DIR / version / "manifest.toml")
    _, effective = overlay_patches.effective_overlay(load(PATCHES_DIR / version), overlay.OVERLAY_DIR)
    assert overlay.stale(overlay.discover(effective), m.overlay) == []
    for f in overlay.discover(effective):  # the adapted backend and tests still compile
        if f.src.endswith(".py"):
            compile(f.source.read_text(), str(f.source), "exec")


def test_tiers_and_default_version() -> None:
    tiers = {v: Manifest.load(patchset_dir(v) / "manifest.toml").tier for v in available_versions()}
    assert tiers == {"0.5.8": "source", "0.5.17": "gpu", "0.5.23": "source"}
    assert available_versions() == ["0.5.8", "0.5.17", "0.5.23"]  # version order, not string order
    assert apply_cli._default_version() == "0.5.17"  # the GPU-verified set, not merely the newest


# ----------------------------------------------------------------------------- version selection


def test_nearest_version() -> None:
    have = ["0.5.8", "0.5.17", "0.5.23"]
    assert nearest_version("0.5.18", have) == "0.5.17"
    assert nearest_version("0.5.22", have) == "0.5.23"
    assert nearest_version("0.5.20", have) == "0.5.17"  # tie: the older set
    assert nearest_version("0.5.9", have) == "0.5.8"
    assert nearest_version("0.6.0", have) == "0.5.23"
    assert nearest_version("0.4.3", have) == "0.5.8"
    assert nearest_version("0.5.17.post1", have) == "0.5.17"
    assert nearest_version("not-a-version", have) is None


def _retag(root: Path, version: str) -> None:
    (root / "sglang" / "_version.py").write_text(f'__version__ = version = "{version}"\n')


def test_unknown_version_names_supported_and_nearest(
    installed_0523: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], digest: Callable[[Path], str]
) -> None:
    root = tmp_path / "site-packages"
    shutil.copytree(installed_0523, root, symlinks=True)
    _retag(root, "0.5.24")
    before = digest(root)
    code, rep = _run(capsys, "check", "--sglang-dir", str(root))
    assert code == REFUSED
    assert "SGLang 0.5.24 is not supported" in rep["message"]
    assert "supported: 0.5.8, 0.5.17, 0.5.23" in rep["message"]
    assert any("--patch-set 0.5.23" in d for d in rep["details"])

    # --patch-set picks the set explicitly; its pins still vouch for the files (identical here).
    code, rep = _run(capsys, "apply", "--sglang-dir", str(root), "--patch-set", "0.5.23", "--no-build", "--no-tests")
    assert code == 0 and rep["state"] == "applied", rep
    assert rep["warnings"] and "--patch-set 0.5.23 on SGLang 0.5.24" in rep["warnings"][0]
    code, rep = _run(capsys, "revert", "--sglang-dir", str(root), "--patch-set", "0.5.23")
    assert code == 0 and digest(root) == before


def test_patch_set_pins_still_enforced(
    installed_0523: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], digest: Callable[[Path], str]
) -> None:
    """The 0.5.17 set on a 0.5.23 tree: its pre-image pins do not match, so nothing is written."""
    root = tmp_path / "site-packages"
    shutil.copytree(installed_0523, root, symlinks=True)
    before = digest(root)
    code, rep = _run(capsys, "apply", "--sglang-dir", str(root), "--patch-set", "0.5.17", "--no-build", "--no-tests")
    assert code == REFUSED
    assert "differ from the SGLang 0.5.17 pins" in rep["message"]
    assert digest(root) == before
    code, rep = _run(capsys, "check", "--sglang-dir", str(root), "--patch-set", "9.9.9")
    assert code == REFUSED and "SGLang 9.9.9 is not supported" in rep["message"]


def test_without_patch_set_a_mismatched_manifest_is_refused(installed_0523: Path) -> None:
    with pytest.raises(SageError, match="not supported"):
        patchset_dir("0.5.24")
    t = patcher.open_target(installed_0523, patch_set="0.5.23")
    assert t.manifest.version == t.layout.version == "0.5.23"


# ----------------------------------------------------------------------------- overlay patches


def test_overlay_patch_that_no_longer_applies_is_refused(tmp_path: Path) -> None:
    ov = tmp_path / "overlay"
    shutil.copytree(overlay.OVERLAY_DIR, ov, ignore=shutil.ignore_patterns("__pycache__"))
    backend = ov / "sglang/srt/layers/attention/sage_attn_backend.py"
    backend.write_text(backend.read_text().replace("def init_forward_metadata_in_graph(", "def init_in_graph("))
    with pytest.raises(SageError, match="overlay patch does not apply") as err:
        overlay_patches.effective_overlay(load(PATCHES_DIR / "0.5.8"), ov)
    assert "regenerate" in err.value.message


def test_patch_mixing_overlay_and_sglang_files_is_refused(tmp_path: Path) -> None:
    src = PATCHES_DIR / "0.5.8"
    mixed = tmp_path / "set"
    mixed.mkdir()
    reg = (src / "0001-Register-the-sage_attn-attention-backend.patch").read_text()
    ov = (src / "0003-sage_attn-use-SGLang-0.5.8-CUDA-graph-hooks-and-CI-registration.patch").read_text()
    body = ov[ov.index("diff --git") :]
    (mixed / "0001-mixed.patch").write_text(reg.rstrip("\n").removesuffix("--").rstrip("\n") + "\n" + body)
    (mixed / "series").write_text("0001-mixed.patch\n")
    with pytest.raises(SageError, match="touches overlay files and SGLang files"):
        overlay_patches.split(load(mixed), overlay.discover())


def test_materialize_leaves_the_overlay_alone(tmp_path: Path) -> None:
    before = {f.src: sha256_file(f.source) for f in overlay.discover()}
    _, steps = overlay_patches.split(load(PATCHES_DIR / "0.5.8"), overlay.discover())
    out = overlay_patches.materialize(overlay.OVERLAY_DIR, steps, tmp_path / "eff")
    after = {f.src: sha256_file(f.source) for f in overlay.discover()}
    assert before == after
    changed = {f.src for f in overlay.discover(out) if sha256_file(f.source) != before[f.src]}
    assert changed == {
        "sglang/srt/layers/attention/sage_attn_backend.py",
        "test/registered/attention/test_sage_attn_engine.py",
        "test/registered/attention/test_sage_attn_kernels.py",
        "test/registered/attention/test_sage_attn_tp.py",
    }
    # 0.5.8 has no sglang.kernels JIT framework: the patch deletes the sm90 kernel from its overlay
    gone = set(before) - {f.src for f in overlay.discover(out)}
    assert gone == {src for src in before if "sage_attn_sm90" in src} and len(gone) == 5
    assert "sage_attn_sm90" not in (PATCHES_DIR / "0.5.8" / "manifest.toml").read_text()


def test_materialized_checkout_never_gcs_in_the_background(checkout_0523: Path) -> None:
    """A detached auto-gc in the shared checkout raced copies of it (CI: copytree failed on gc.pid/gc.log.lock)."""
    import subprocess

    def cfg(key: str) -> str:
        return subprocess.run(
            ["git", "config", "--local", "--get", key], cwd=checkout_0523, capture_output=True, text=True
        ).stdout.strip()

    assert cfg("gc.auto") == "0" and cfg("maintenance.auto") == "false"
