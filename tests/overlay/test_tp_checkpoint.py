"""CPU tests of the tensor-parallel GPU test's own machinery (overlay/test/registered/attention/
test_sage_attn_tp.py): the checkpoint it writes, the workload it sends, the comparison it makes.
The GPU run itself needs two GPUs; everything it relies on that is not SGLang is checked here."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import struct
import sys
import types
from pathlib import Path
from typing import Any

import pytest

TP_TEST = Path(__file__).resolve().parents[2] / "overlay/test/registered/attention/test_sage_attn_tp.py"
TINY = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_hidden_layers": 2,
    "intermediate_size": 96,
    "vocab_size": 128,
    "torch_dtype": "bfloat16",
}


@pytest.fixture(scope="module")
def tp_test(monkeypatch_module: pytest.MonkeyPatch) -> Any:
    """The GPU test module, imported with a stand-in for the one SGLang name it needs at import."""
    ci = types.ModuleType("sglang.test.ci.ci_register")
    ci.register_cuda_ci = lambda *a, **k: None
    for name in ("sglang", "sglang.test", "sglang.test.ci"):
        monkeypatch_module.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch_module.setitem(sys.modules, "sglang.test.ci.ci_register", ci)
    monkeypatch_module.setitem(sys.modules, "sglang.test.test_utils", types.ModuleType("sglang.test.test_utils"))
    spec = importlib.util.spec_from_file_location("sage_attn_tp_gpu_test", TP_TEST)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def read_safetensors(path: Path) -> tuple[dict, bytes]:
    """An independent reader of the format (header length, JSON header, data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def test_registered_for_two_gpus_in_sglang_style(tp_test: Any) -> None:
    tree = ast.parse(TP_TEST.read_text())
    calls = [n.value for n in tree.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    reg = [c for c in calls if getattr(c.func, "id", None) == "register_cuda_ci"]
    assert len(reg) == 1
    kw = {k.arg: k.value.value for k in reg[0].keywords}
    assert kw["runner_config"].startswith("2-gpu") and kw["est_time"] <= 600
    assert tp_test.TP_SIZE == 2  # default without SGLANG_SAGE_TP_SIZE


def test_checkpoint_geometry_splits_in_two(tp_test: Any) -> None:
    cfg = tp_test.CONFIG
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["hidden_size"]) == (
        32,
        8,
        128,
        4096,
    )  # Llama-3.1-8B attention geometry
    for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size"):
        assert cfg[key] % 2 == 0, key
    names = [n for n, _, _ in tp_test._weight_shapes(cfg)]
    assert len(names) == len(set(names)) == 2 + 9 * cfg["num_hidden_layers"] + 1


def test_checkpoint_is_valid_safetensors_deterministic_and_reused(tp_test: Any, tmp_path: Path) -> None:
    import torch

    a = tp_test.make_checkpoint(tmp_path / "a", TINY, seed=7)
    b = tp_test.make_checkpoint(tmp_path / "b", TINY, seed=7)
    c = tp_test.make_checkpoint(tmp_path / "c", TINY, seed=8)
    digest = lambda p: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert digest(a) == digest(b) != digest(c)
    assert json.loads((a / "config.json").read_text()) == TINY
    header, data = read_safetensors(a / "model.safetensors")
    assert header.pop("__metadata__") == {"format": "pt"}
    shapes = {n: s for n, s, _ in tp_test._weight_shapes(TINY)}
    assert set(header) == set(shapes)
    end = 0
    for name, (lo, hi) in sorted(((n, h["data_offsets"]) for n, h in header.items()), key=lambda x: x[1][0]):
        assert lo == end and header[name]["dtype"] == "BF16" and header[name]["shape"] == list(shapes[name])
        assert hi - lo == 2 * int(torch.tensor(shapes[name]).prod())
        end = hi
    assert end == len(data)
    q = header["model.layers.0.self_attn.q_proj.weight"]
    lo, hi = q["data_offsets"]
    w = torch.frombuffer(bytearray(data[lo:hi]), dtype=torch.bfloat16).float()
    assert 0.015 < float(w.std()) < 0.025  # WEIGHT_STD
    lo, hi = header["model.norm.weight"]["data_offsets"]
    assert torch.equal(torch.frombuffer(bytearray(data[lo:hi]), dtype=torch.bfloat16).float(), torch.ones(64))
    # a second call with the same config and seed reuses the files; another config rewrites them
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert tp_test.make_checkpoint(a, TINY, seed=7) == a and (a / "model.safetensors").stat().st_mtime_ns == mtime
    tp_test.make_checkpoint(a, dict(TINY, num_hidden_layers=1), seed=7)
    assert len(read_safetensors(a / "model.safetensors")[0]) == 1 + 2 + 9 + 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("a.")]  # no scratch dir left behind


def test_write_refuses_other_dtypes(tp_test: Any, tmp_path: Path) -> None:
    import torch

    with pytest.raises(ValueError, match="only bfloat16"):
        tp_test.write_safetensors(tmp_path / "x.safetensors", [("w", torch.zeros(2))])


def test_workload_covers_chunked_prefill_and_radix_hits(tp_test: Any) -> None:
    w = tp_test.workload(32768)
    assert w == tp_test.workload(32768)  # fixed seed: the same prompts for every engine and run
    names = [n for n, _ in w]
    by = dict(w)
    assert len(names) == len(set(names)) == 15
    assert sum(len(ids) > tp_test.CHUNK for _, ids in w) >= 6  # chunked prefill
    assert by["radix_A"] == by["radix_A_again"] and by["radix_A"][:675] == by["radix_B"][:675]
    assert by["radix_A"][675] != by["radix_B"][675]
    assert names.index("radix_A") < names.index("radix_B") < names.index("radix_A_again")
    assert all(3 <= t < 32768 for _, ids in w for t in ids)


def test_comparison_helpers_and_rank_stats(tp_test: Any, tmp_path: Path) -> None:
    assert tp_test.equal_rows([[1, 2], [3, 4]], [[1, 2], [3, 5]]) == [True, False]
    assert tp_test.common_prefix([[1, 2, 3], [9]], [[1, 2, 4], [8]]) == [2, 0]
    for pid, rank in ((5, 0), (6, 1)):
        (tmp_path / f"sage_attn_stats_{pid}.json").write_text(
            json.dumps({"pid": pid, "tp_rank": rank, "counters": {"prefill_8bit_layer_calls": 4 + rank}})
        )
    assert tp_test.read_rank_stats(str(tmp_path)) == {
        0: {"prefill_8bit_layer_calls": 4},
        1: {"prefill_8bit_layer_calls": 5},
    }


def test_too_few_gpus_is_a_failure_naming_the_setting(tp_test: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: the test must fail with a message naming SGLANG_SAGE_TP_SIZE, never skip."""
    monkeypatch.setitem(sys.modules, "sglang", types.ModuleType("sglang"))
    with pytest.raises(AssertionError, match="SGLANG_SAGE_TP_SIZE"):
        tp_test.run_engine("sage_attn", 2)
