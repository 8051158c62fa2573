"""Start-up refusals name the setting, its value and what is supported; counters publish JSON."""

import json

import pytest
import torch


def _facts(sage_attn, **over):
    base = dict(
        use_mla=False, is_encoder_decoder=False, sliding_window_size=None, attn_logit_softcapping=None,
        head_dim=64, v_head_dim=64, dtype=torch.bfloat16, kv_cache_dtype=torch.bfloat16, page_size=1,
        speculative_algorithm=None, dcp_size=1, is_causal_lm=True,
    )
    base.update(over)
    return sage_attn["support"].ModelFacts(**base)


def test_supported_model_has_no_reasons(sage_attn):
    assert sage_attn["support"].refusal_reasons(_facts(sage_attn)) == []


@pytest.mark.parametrize("over,needle", [
    ({"use_mla": True}, "MLA"),
    ({"is_encoder_decoder": True}, "cross-attention"),
    ({"is_causal_lm": False}, "encoder-only"),
    ({"sliding_window_size": 4096}, "sliding_window=4096"),
    ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping=50.0"),
    ({"head_dim": 96, "v_head_dim": 96}, "head_dim=96"),
    ({"v_head_dim": 128}, "v_head_dim=128"),
    ({"dtype": torch.float32}, "torch.float32"),
    ({"kv_cache_dtype": torch.float8_e4m3fn}, "KV cache dtype"),
    ({"page_size": 16}, "--page-size 16"),
    ({"speculative_algorithm": "EAGLE"}, "EAGLE"),
    ({"dcp_size": 2}, "dcp_size=2"),
])
def test_each_unsupported_setting_is_named(sage_attn, over, needle):
    reasons = sage_attn["support"].refusal_reasons(_facts(sage_attn, **over))
    assert len(reasons) == 1 and needle in reasons[0], reasons


def test_check_supported_raises_with_all_reasons(sage_attn, monkeypatch):
    sup = sage_attn["support"]
    monkeypatch.setattr(sup, "facts_from_runner", lambda r: _facts(sage_attn, use_mla=True, page_size=4))
    with pytest.raises(sup.SageAttnUnsupported, match="MLA.*--page-size 4"):
        sup.check_supported(object())


def test_stats_publish_and_count(sage_attn, tmp_path, monkeypatch):
    monkeypatch.setenv("SGLANG_SAGE_STATS_DIR", str(tmp_path))
    st = sage_attn["stats"].SageStats("flashinfer")
    st.add("prefill_8bit_layer_calls", 30)
    st.batch_done("prefill_8bit_batches")
    files = list(tmp_path.glob("sage_attn_stats_*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["decode_backend"] == "flashinfer"
    assert data["counters"]["prefill_8bit_layer_calls"] == 30
    assert data["counters"]["prefill_8bit_batches"] == 1


def test_stats_publish_first_use_at_once_and_then_throttled(sage_attn, tmp_path, monkeypatch):
    monkeypatch.setenv("SGLANG_SAGE_STATS_DIR", str(tmp_path))
    stats = sage_attn["stats"]
    st = stats.SageStats("flashinfer")
    clock = [1000.0]
    monkeypatch.setattr(stats.time, "monotonic", lambda: clock[0])

    def on_disk():
        return json.loads(next(tmp_path.glob("sage_attn_stats_*.json")).read_text())["counters"]

    st.batch_done("decode_batches")
    assert on_disk()["decode_batches"] == 1  # first decode batch: published at once
    st.batch_done("decode_batches")
    assert on_disk()["decode_batches"] == 1  # same paths, within the interval: not rewritten
    st.batch_done("extend_prefix_8bit_batches")
    assert on_disk()["extend_prefix_8bit_batches"] == 1  # a new path: published at once
    assert on_disk()["decode_batches"] == 2
    clock[0] += stats.PUBLISH_INTERVAL_S
    st.batch_done("decode_batches")
    assert on_disk()["decode_batches"] == 3  # interval over: published


def test_counter_names_match_the_reader(sage_attn):
    """The overlay cannot import this project (it is installed into SGLang) and the reader runs
    without SGLang, so the counter names live twice: keep them equal."""
    from sglang_sage import counters as reader

    assert sage_attn["stats"].COUNTER_NAMES == reader.COUNTER_NAMES
    assert sage_attn["stats"].STATS_DIR_ENV == reader.STATS_DIR_ENV
