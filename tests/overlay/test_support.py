"""Start-up refusals name the setting, its value and what is supported; counters publish JSON."""

import json
from types import SimpleNamespace

import pytest
import torch


def _facts(sage_attn, **over):
    base = dict(
        use_mla=False,
        is_encoder_decoder=False,
        sliding_window_size=None,
        attn_logit_softcapping=None,
        head_dim=64,
        v_head_dim=64,
        dtype=torch.bfloat16,
        kv_cache_dtype=torch.bfloat16,
        page_size=1,
        speculative_algorithm=None,
        dcp_size=1,
        is_causal_lm=True,
    )
    base.update(over)
    return sage_attn["support"].ModelFacts(**base)


def test_supported_model_has_no_reasons(sage_attn):
    assert sage_attn["support"].refusal_reasons(_facts(sage_attn)) == []


@pytest.mark.parametrize(
    "over,needle",
    [
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
    ],
)
def test_each_unsupported_setting_is_named(sage_attn, over, needle):
    reasons = sage_attn["support"].refusal_reasons(_facts(sage_attn, **over))
    assert len(reasons) == 1 and needle in reasons[0], reasons


def test_check_supported_raises_with_all_reasons(sage_attn, monkeypatch):
    sup = sage_attn["support"]
    monkeypatch.setattr(sup, "facts_from_runner", lambda r: _facts(sage_attn, use_mla=True, page_size=4))
    with pytest.raises(sup.SageAttnUnsupported, match="MLA.*--page-size 4"):
        sup.check_supported(object())


class Recorder:
    """Stands in for an SGLang object: serves the given attributes and records which ones were read."""

    def __init__(self, log: list[str], role: str, **attrs):
        self.__dict__.update(_log=log, _role=role, _attrs=attrs)

    def __getattr__(self, name):
        if name not in self._attrs:
            raise AttributeError(name)
        self._log.append(f"{self._role}.{name}")
        return self._attrs[name]


def fake_runner(log: list[str], *, hf_text=True, **over):
    """A ModelRunner-shaped object with SGLang 0.5.17's attribute names (checked against the release below)."""
    hf = SimpleNamespace(attn_logit_softcapping=over.pop("softcap", None), is_causal=over.pop("is_causal", True))
    mc = dict(is_encoder_decoder=False, head_dim=128, v_head_dim=128, hf_config=hf)
    mc["hf_text_config"] = hf if hf_text else None
    mc.update({k[3:]: over.pop(k) for k in list(over) if k.startswith("mc_")})
    sa = dict(speculative_algorithm=over.pop("spec", None), dcp_size=over.pop("dcp_size", 1))
    runner = dict(
        use_mla_backend=False,
        sliding_window_size=None,
        dtype=torch.bfloat16,
        kv_cache_dtype=torch.bfloat16,
        page_size=1,
        model_config=Recorder(log, "ModelConfig", **mc),
        server_args=Recorder(log, "ServerArgs", **sa),
    )
    runner.update(over)
    return Recorder(log, "ModelRunner", **runner)


def test_facts_from_runner_reads_the_runner(sage_attn):
    sup = sage_attn["support"]
    facts = sup.facts_from_runner(fake_runner([]))
    assert facts == _facts(sage_attn, head_dim=128, v_head_dim=128)
    assert sup.refusal_reasons(facts) == []
    sup.check_supported(fake_runner([]))  # a supported model starts


def test_facts_from_runner_maps_every_setting(sage_attn):
    sup = sage_attn["support"]
    runner = fake_runner(
        [],
        hf_text=False,
        softcap=30.0,
        is_causal=False,
        spec="EAGLE",
        dcp_size=2,
        use_mla_backend=1,
        sliding_window_size=4096,
        dtype=torch.float16,
        kv_cache_dtype=torch.float8_e4m3fn,
        page_size=16,
        mc_is_encoder_decoder=1,
        mc_head_dim="64",
        mc_v_head_dim=96,
    )
    facts = sup.facts_from_runner(runner)
    assert facts == sup.ModelFacts(
        use_mla=True,
        is_encoder_decoder=True,
        sliding_window_size=4096,
        attn_logit_softcapping=30.0,
        head_dim=64,
        v_head_dim=96,
        dtype=torch.float16,
        kv_cache_dtype=torch.float8_e4m3fn,
        page_size=16,
        speculative_algorithm="EAGLE",
        dcp_size=2,
        is_causal_lm=False,
    )
    with pytest.raises(sup.SageAttnUnsupported) as info:
        sup.check_supported(runner)
    text = str(info.value)
    assert text.startswith("--attention-backend sage_attn cannot serve this model: MLA")
    for needle in ("sliding_window=4096", "softcapping=30.0", "v_head_dim=96", "--page-size 16", "EAGLE", "dcp_size=2"):
        assert needle in text
    assert text.endswith(". Choose another backend (e.g. flashinfer or triton).")


def test_facts_from_runner_defaults(sage_attn):
    """dcp_size 0/None and a config without is_causal mean the plain case, not a refusal."""
    runner = fake_runner([], dcp_size=None, is_causal=None, page_size=None)
    facts = sage_attn["support"].facts_from_runner(runner)
    assert facts.dcp_size == 1 and facts.is_causal_lm is True and facts.page_size == 1


def test_runner_attributes_exist_in_sglang_0_5_17(sage_attn, pristine_installed):
    """Every SGLang attribute facts_from_runner reads exists on the release's classes (read from its source)."""
    from sglang_sage import apicheck
    from sglang_sage.layout import detect
    from sglang_sage.overlay import OVERLAY_DIR

    log: list[str] = []
    sage_attn["support"].facts_from_runner(fake_runner(log))
    classes = {
        "ModelRunner": "sglang.srt.model_executor.model_runner.ModelRunner",
        "ModelConfig": "sglang.srt.configs.model_config.ModelConfig",
        "ServerArgs": "sglang.srt.server_args.ServerArgs",
    }
    src = apicheck.Sources(detect(pristine_installed), OVERLAY_DIR)
    assert {entry.split(".")[0] for entry in log} == set(classes)
    for entry in log:
        role, name = entry.split(".")
        info = src.class_info(classes[role])
        assert info is not None and not info.open and name in info.names, entry


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
