"""The whole orchestration on CPU against a fake sglang (tests/verify/fake_sglang): stages as real
subprocesses, job files, worker results, HTTP server stage, checks, report.json/md, exit code.

Dummy-weight runs use a config-only model dir; accuracy runs (floor, compared configurations) use the
fake's word-level ``transformers.AutoTokenizer`` on the real corpus.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).resolve().parent / "fake_sglang"


def run_fake(tmp_path: Path, *extra: str, env_extra: dict | None = None, weights: bool = False,
             out_name: str = "out") -> tuple[subprocess.CompletedProcess, dict]:
    """verify.py against the fake sglang; ``weights``: a model dir with (fake) weights and tokenizer, so the
    accuracy stages run (baseline, sage, floor, compared configurations)."""
    cfg = tmp_path / "model"
    cfg.mkdir(exist_ok=True)
    (cfg / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "vocab_size": 32000,
                                                 "max_position_embeddings": 8192, "num_hidden_layers": 2}))
    if weights:
        (cfg / "model.safetensors").write_bytes(b"")
        (cfg / "tokenizer.json").write_text("{}")
    out = tmp_path / out_name
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKE), str(REPO)]), SGLANG_SITE=str(tmp_path / "nosite"),
               SGLANG_ENV_FILE=str(tmp_path / "noenv.sh"), **(env_extra or {}))
    fmt = [] if weights else ["--load-format", "dummy"]
    p = subprocess.run([sys.executable, str(REPO / "verify.py"), "--assume-gpu", *fmt,
                        "--model", str(cfg), "--quick", "--out", str(out), "--work-dir", str(tmp_path / "work"),
                        "--time-budget", "240", "--no-preflight", *extra],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    rep = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    return p, rep


def test_dummy_run_through_fake_sglang(tmp_path):
    # the fake's speeds are CPU noise, so the ratio bars are set to 0: the check then passes exactly when
    # every (shape, batch) was measured on both backends, and fails on any row that was not
    p, rep = run_fake(
        tmp_path,
        "--only",
        "runtime_flag,determinism,throughput,memory,perplexity",
        "--threshold",
        "prefill_min_ratio=0",
        "--threshold",
        "decode_min_ratio=0",
    )
    assert rep, p.stdout[-3000:] + p.stderr[-3000:]
    status = {c["id"]: c["status"] for c in rep["checks"]}
    assert status["runtime_flag"] == "pass", json.dumps(rep["checks"][0], indent=1)[:3000]
    assert status["determinism"] == "pass"
    assert status["perplexity"] == "n/a"  # dummy weights: never reported as pass
    assert status["throughput"] == "pass"
    tp = next(c for c in rep["checks"] if c["id"] == "throughput")
    judged = [c for c in tp["criteria"] if c["op"] is not None]
    rows = sorted(
        (re.search(r"(prefill|decode)", c["name"]).group(1), int(re.search(r"batch (\d+)", c["name"]).group(1)))
        for c in judged
    )
    assert rows == [("decode", 1), ("decode", 32), ("prefill", 1), ("prefill", 32)], tp
    assert all(c["passed"] is True and c["value"] > 0 and c["threshold"] == 0 for c in judged), tp
    assert status["memory"] == "fail"  # no NVML on CPU: "not measured" must fail, not pass
    assert rep["verdict"] == "fail" and p.returncode == 1
    assert rep["stages"]["baseline"]["status"] == "done" and rep["stages"]["sage"]["status"] == "done"
    assert rep["stages"]["server"]["status"] == "done"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**Verdict: FAIL**" in md and "runtime_flag" in md
    assert (tmp_path / "out" / "logs" / "sage.log").is_file()


def test_engine_start_failure_becomes_errors_not_a_crash(tmp_path):
    p, rep = run_fake(tmp_path, "--only", "determinism,throughput", env_extra={"FAKE_SGLANG_FAIL_START": "sage_attn"})
    assert rep, p.stdout[-3000:] + p.stderr[-3000:]
    status = {c["id"]: c["status"] for c in rep["checks"]}
    assert status == {"throughput": "error", "determinism": "error"}
    assert rep["stages"]["sage"]["status"] == "failed"
    assert "fake start failure" in json.dumps(rep["raw"]["sage"])
    assert p.returncode == 1


def by_id(rep: dict) -> dict:
    return {c["id"]: c for c in rep["checks"]}


def criterion(check: dict, prefix: str) -> dict:
    return next(c for c in check["criteria"] if c["name"].startswith(prefix))


ACC = ("--only", "logits,perplexity,context,throughput", "--compare-config", "fa3+fp8_e4m3")


def test_floor_and_compare_config_on_the_same_positions(tmp_path):
    """Issue #12 + #19 through the real orchestration: baseline, sage, floor (flashinfer) and fa3+fp8_e4m3
    engines, one per backend, every accuracy table on the same positions, floor columns in the report."""
    p, rep = run_fake(tmp_path, *ACC, weights=True)
    assert rep, p.stdout[-3000:] + p.stderr[-3000:]
    assert [k for k in rep["stages"]] == ["baseline", "sage", "floor", "compare-fa3+fp8_e4m3"]
    assert all(v["status"] == "done" for v in rep["stages"].values()), rep["stages"]
    job = json.loads((tmp_path / "work" / "job_floor.json").read_text())
    assert job["phases"] == ["accuracy"] and job["engine_kwargs"]["attention_backend"] == "flashinfer"
    job = json.loads((tmp_path / "work" / "job_compare-fa3+fp8_e4m3.json").read_text())
    assert job["engine_kwargs"]["attention_backend"] == "fa3" and job["engine_kwargs"]["kv_cache_dtype"] == "fp8_e4m3"
    assert job["phases"] == ["accuracy", "passkey", "throughput"]
    t = rep["tables"]
    for name in ("short", "medium", "long", "pooled"):
        n = t["buckets"][name]["positions"]
        assert t["floor"][name]["positions"] == n == t["compare"]["fa3+fp8_e4m3"][name]["positions"] > 0
    c = by_id(rep)
    assert c["logits"]["status"] == "pass", c["logits"]
    top1 = criterion(c["logits"], "top-1 agreement")
    assert top1["floor"] == t["floor"]["pooled"]["top1_agreement"] < 1.0
    assert top1["threshold"] == round(top1["floor"] - 0.01, 10)
    kl = criterion(c["logits"], "mean KL")
    assert kl["floor"] > 0 and kl["threshold"] == max(3 * kl["floor"], 1e-3)
    fp8 = criterion(c["logits"], "fa3+fp8_e4m3 vs baseline: top-1")
    assert fp8["passed"] is None and fp8["value"] < top1["floor"]  # the fake's FP8 KV is noisier than the floor
    assert c["context"]["status"] == "pass" and c["perplexity"]["status"] == "pass"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "floor (flashinfer)" in md and "### Compared configurations" in md and "| top-1 floor |" in md
    assert "context_buckets.png" in rep["plots"] and rep["plots"]["context_buckets.png"] == "context_buckets.png"
    assert len(t["throughput"]["compare"]["fa3+fp8_e4m3"]) == 4


def test_a_worse_sage_fails_against_the_floor(tmp_path):
    p, rep = run_fake(tmp_path, "--only", "logits,context", weights=True,
                      env_extra={"FAKE_SGLANG_NOISE": "sage_attn=0.6"})
    assert rep, p.stdout[-3000:] + p.stderr[-3000:]
    c = by_id(rep)
    assert c["logits"]["status"] == "fail" and criterion(c["logits"], "top-1 agreement")["passed"] is False
    assert p.returncode == 1


def test_floor_start_failure_fails_the_accuracy_checks(tmp_path):
    p, rep = run_fake(tmp_path, "--only", "logits,perplexity", weights=True,
                      env_extra={"FAKE_SGLANG_FAIL_START": "flashinfer"})
    assert rep, p.stdout[-3000:] + p.stderr[-3000:]
    assert rep["stages"]["floor"]["status"] == "failed"
    c = by_id(rep)
    top1 = criterion(c["logits"], "top-1 agreement")
    assert top1["passed"] is False and "fake start failure for flashinfer" in top1["note"]
    assert c["logits"]["status"] == "fail" and p.returncode == 1


def test_speed_model_and_resume(tmp_path):
    """--speed-model adds speed stages (Llama-3.1-8B config, dummy weights, token ids); --resume reuses every
    finished stage of an unchanged job and re-runs the changed ones."""
    speed = ("--only", "throughput", "--compare-config", "fa3+fp8_e4m3", "--speed-model", "--speed-prompts",
             "256,1024", "--speed-batches", "1,4", "--speed-decode-tokens", "8")
    p, rep = run_fake(tmp_path, *speed)
    assert rep, p.stdout[-3000:] + p.stderr[-3000:]
    assert [k for k in rep["stages"]] == ["baseline", "sage", "compare-fa3+fp8_e4m3", "speed-baseline",
                                          "speed-sage", "speed-compare-fa3+fp8_e4m3"]
    job = json.loads((tmp_path / "work" / "job_speed-sage.json").read_text())
    kw = job["engine_kwargs"]
    assert kw["load_format"] == "dummy" and kw["skip_tokenizer_init"] and kw["mem_fraction_static"] == 0.5
    cfg = json.loads(Path(kw["model_path"], "config.json").read_text())
    assert cfg["num_attention_heads"] == 32 and cfg["num_key_value_heads"] == 8 and cfg["head_dim"] == 128
    sp = rep["tables"]["speed"]
    assert sp["model"] == "Llama-3.1-8B geometry"
    shapes = {(r["shape"], r["batch"]) for r in sp["sage"]}
    assert shapes == {("prefill 256", 1), ("prefill 256", 4), ("prefill 1K", 1), ("prefill 1K", 4),
                      ("decode 256", 1), ("decode 256", 4), ("decode 1K", 1), ("decode 1K", 4)}
    assert len(sp["compare"]["fa3+fp8_e4m3"]) == 8
    c = by_id(rep)["throughput"]
    assert criterion(c, "Llama-3.1-8B geometry: sage prefill_8bit")["passed"] is True
    assert criterion(c, "Llama-3.1-8B geometry: prefill 1K (prompt 1024, 1 new), batch 4")["threshold"] == 0.95
    assert "### Llama-3.1-8B geometry (dummy weights)" in (tmp_path / "out" / "report.md").read_text()
    assert rep["plots"]["throughput_speed_model.png"] == "throughput_speed_model.png"
    # resume: the same command reuses everything; other speed batches re-run only the speed stages
    p2, rep2 = run_fake(tmp_path, *speed, "--resume", out_name="out2")
    assert {v["status"] for v in rep2["stages"].values()} == {"reused"}, rep2["stages"]
    assert rep2["tables"]["speed"]["sage"] == sp["sage"]
    p3, rep3 = run_fake(tmp_path, *speed[:-3], "1,2", "--speed-decode-tokens", "8", "--resume", out_name="out3")
    status = {k: v["status"] for k, v in rep3["stages"].items()}
    assert status == {"baseline": "reused", "sage": "reused", "compare-fa3+fp8_e4m3": "reused",
                      "speed-baseline": "done", "speed-sage": "done", "speed-compare-fa3+fp8_e4m3": "done"}
    assert {r["batch"] for r in rep3["tables"]["speed"]["sage"]} == {1, 2}
