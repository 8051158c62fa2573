"""Static API check: fake overlays for each failure class, and the real overlay against real 0.5.17."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from sglang_sage import apicheck
from sglang_sage import errors as ec
from sglang_sage.apply_cli import main
from sglang_sage.layout import detect
from sglang_sage.overlay import OVERLAY_DIR

BACKEND = "sglang/srt/layers/attention/sage_attn_backend.py"

HEADER = """\
from __future__ import annotations
from typing import TYPE_CHECKING, Optional
from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
if TYPE_CHECKING:
    from sglang.srt.layers.radix_attention import RadixAttention
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch
    from sglang.srt.model_executor.model_runner import ModelRunner
"""

GOOD = (
    HEADER
    + """
class SageAttnBackend(AttentionBackend):
    def __init__(self, model_runner: ModelRunner):
        super().__init__()
        self.device = model_runner.device
        self.pool = model_runner.token_to_kv_pool

    def init_forward_metadata(self, forward_batch: ForwardBatch):
        self.lens = forward_batch.extend_prefix_lens, forward_batch.seq_lens, forward_batch.forward_mode

    def forward_extend(self, q, k, v, layer: RadixAttention, forward_batch: ForwardBatch,
                       save_kv_cache: bool = True, **kwargs):
        return layer.tp_q_head_num * layer.tp_k_head_num * layer.tp_v_head_num, layer.head_dim, layer.layer_id

    def _helper(self):
        return None
"""
)


def write_overlay(root: Path, source: str, rel: str = BACKEND) -> Path:
    path = root / "overlay" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return root / "overlay"


def misses(pristine_installed: Path, overlay: Path) -> list[apicheck.Miss]:
    return apicheck.check(overlay, detect(pristine_installed))


def test_good_fake_overlay_passes(pristine_installed: Path, tmp_path: Path) -> None:
    assert misses(pristine_installed, write_overlay(tmp_path, GOOD)) == []


def test_seed_bug_tp_kv_head_num_is_reported(pristine_installed: Path, tmp_path: Path) -> None:
    src = GOOD.replace("layer.tp_v_head_num", "layer.tp_kv_head_num")
    found = misses(pristine_installed, write_overlay(tmp_path, src))
    assert len(found) == 1
    m = found[0]
    assert m.name == "layer.tp_kv_head_num" and m.file == f"overlay/{BACKEND}"
    line = src.splitlines()[m.line - 1]
    assert "tp_kv_head_num" in line
    assert "RadixAttention" in m.reason


@pytest.mark.parametrize(
    ("snippet", "name"),
    [
        (
            "from sglang.srt.layers.attention.triton_backend import NoSuchBackend\n",
            "sglang.srt.layers.attention.triton_backend.NoSuchBackend",
        ),
        ("from sglang.srt.layers.no_such_module import X\n", "sglang.srt.layers.no_such_module"),
        ("import sglang.srt.no_such_pkg\n", "sglang.srt.no_such_pkg"),
    ],
)
def test_missing_imports(pristine_installed: Path, tmp_path: Path, snippet: str, name: str) -> None:
    found = misses(pristine_installed, write_overlay(tmp_path, snippet + GOOD))
    assert [m.name for m in found] == [name] and found[0].line == 1


def test_forward_batch_and_model_runner_attributes(pristine_installed: Path, tmp_path: Path) -> None:
    src = GOOD.replace("forward_batch.seq_lens,", "forward_batch.seq_lens, forward_batch.no_such_field,")
    src = src.replace("model_runner.token_to_kv_pool", "model_runner.kv_pool_that_is_not_there")
    names = sorted(m.name for m in misses(pristine_installed, write_overlay(tmp_path, src)))
    assert names == ["forward_batch.no_such_field", "model_runner.kv_pool_that_is_not_there"]


def test_backend_method_rules(pristine_installed: Path, tmp_path: Path) -> None:
    src = (
        GOOD
        + """
    def init_forward_metadata_capture_cuda_graph(self, bs, num_tokens):
        pass

    def forward_decode(self, q, k, v, lyr, forward_batch, save_kv_cache=True):
        pass

    def public_helper(self):
        pass
"""
    )
    found = misses(pristine_installed, write_overlay(tmp_path, src))
    text = "\n".join(map(str, found))
    assert "SageAttnBackend.init_forward_metadata_capture_cuda_graph" in text  # removed from 0.5.17's ABC
    assert "SageAttnBackend.public_helper" in text
    assert "parameter 4 is 'lyr', base has 'layer'" in text
    assert "**kwargs" in text


def test_relative_import_inside_overlay(pristine_installed: Path, tmp_path: Path) -> None:
    overlay = write_overlay(tmp_path, "X = 1\n", "sglang/srt/layers/attention/sage_attn/helpers.py")
    write_overlay(tmp_path, "from .sage_attn.helpers import X, Y\n" + GOOD)
    assert [m.name for m in misses(pristine_installed, overlay)] == ["sglang.srt.layers.attention.sage_attn.helpers.Y"]


def test_api_miss_refuses_apply_and_changes_nothing(
    installed: Path, tmp_path: Path, digest, capsys, monkeypatch
) -> None:
    overlay = write_overlay(tmp_path, GOOD.replace("layer.tp_v_head_num", "layer.tp_kv_head_num"))
    import sglang_sage.overlay as overlay_mod

    monkeypatch.setattr(overlay_mod, "OVERLAY_DIR", overlay)
    before = digest(installed)
    code = main(["apply", "--sglang-dir", str(installed), "--no-tests", "--no-build", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert code == ec.REFUSED
    assert any("layer.tp_kv_head_num" in d and f"overlay/{BACKEND}:" in d for d in rep["details"])
    assert digest(installed) == before


def test_real_overlay_against_real_tree(pristine_installed: Path) -> None:
    """The backend in overlay/ only uses internals SGLang 0.5.17 has (fails loudly while it does not)."""
    found = apicheck.check(OVERLAY_DIR, detect(pristine_installed))
    assert found == [], "\n".join(map(str, found))


@pytest.mark.parametrize(
    "annotation",
    ['"ForwardBatch"', 'Optional["ForwardBatch"]', '"Optional[ForwardBatch]"', "ForwardBatch | None"],
)
def test_quoted_and_optional_annotations_are_followed(
    pristine_installed: Path, tmp_path: Path, annotation: str
) -> None:
    src = GOOD.replace(
        "def init_forward_metadata(self, forward_batch: ForwardBatch):",
        f"def init_forward_metadata(self, forward_batch: {annotation}):",
    ).replace("forward_batch.seq_lens,", "forward_batch.seq_lens, forward_batch.no_such_field,")
    assert annotation in src and "no_such_field" in src
    assert [m.name for m in misses(pristine_installed, write_overlay(tmp_path, src))] == ["forward_batch.no_such_field"]
