"""CPU tests of the benchmarks' result writing: tables, plots, targets, env capture (fake results)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _results as R  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_helpers import load_bench as _load  # noqa: E402
from bench_helpers import run_script as _run  # noqa: E402


def _entry(ms: float | None, cos: float = 0.9999, status: str = "ok", **kw: Any) -> dict[str, Any]:
    if status != "ok":
        return {"status": status, "reason": kw.get("reason", "why not")}
    return {"status": "ok", "ms": ms, "tflops": 100.0 / ms, "cos": cos, "min_cos": cos - 1e-4, **kw}


def fake_kernel_doc() -> dict[str, Any]:
    results = []
    for geo, (hq, d) in (("llama3-8b", (32, 128)), ("smollm2", (9, 64))):
        for pf in (0.0, 0.5):
            for L in (4096, 16384, 32768):
                lq = L - int(L * pf)
                b = {
                    "sage": _entry(1.0, cos=0.9995 if geo == "llama3-8b" else 0.95),
                    "cudnn": _entry(1.5, mask_method="is_causal" if pf == 0 else "dense_mask"),
                    "flash": _entry(2.0, mask_method="is_causal" if pf == 0 else "lower_right"),
                    "sageattn": _entry(1.2) if pf == 0 else _entry(None, status="skipped", reason="top-left"),
                    "triton_extend": _entry(5.0 if L == 16384 else 3.0),
                }
                results.append(
                    {
                        "geometry": geo,
                        "hq": hq,
                        "hkv": hq // 4,
                        "d": d,
                        "batch": 1,
                        "seq_len": L,
                        "prefix_frac": pf,
                        "lq": lq,
                        "lkv": L,
                        "flops": R.causal_flops(1, hq, d, lq, L),
                        "backends": b,
                        "ratios": R.kernel_ratios(b),
                    }
                )
    return {
        "kind": "kernels",
        "env": {"gpu": "NVIDIA H200", "versions": {}, "git": {"commit": "abc"}},
        "config": {"warmup": 25, "rep": 100},
        "results": results,
        "notes": ["a note"],
    }


def fake_e2e_doc() -> dict[str, Any]:
    def rec(name: str, pre: dict[int, float], dec: dict[int, float], counters: dict | None = None) -> dict:
        return {
            "config": name,
            "status": "ok",
            "startup_s": 50.0,
            "prefill": {str(k): {"ms": v} for k, v in pre.items()},
            "decode": {str(k): {"tok_s": v} for k, v in dec.items()},
            "sage_stats": {"counters": counters or {}},
            "engine_args": {"attention_backend": name},
            "gpu_mem": {"before_mib": 500, "after_shutdown_mib": 600, "leak": False},
        }

    return {
        "kind": "e2e",
        "env": {"gpu": "NVIDIA H200"},
        "config": {"repeats": 3},
        "results": [
            rec(
                "sage_attn",
                {4096: 300, 16384: 1100, 32768: 2500},
                {4096: 150, 16384: 140, 32768: 120},
                {"prefill_8bit_batches": 9},
            ),
            rec(
                "sage_attn+flashinfer",
                {4096: 300, 16384: 1100, 32768: 2500},
                {4096: 152, 16384: 141, 32768: 130},
                {"prefill_8bit_batches": 9},
            ),
            rec("flashinfer", {4096: 320, 16384: 1500, 32768: 3600}, {4096: 151, 16384: 141, 32768: 129}),
            rec("triton", {4096: 400, 16384: 2500, 32768: 7000}, {4096: 140, 16384: 120, 32768: 100}),
        ],
    }


def test_gpu_slug() -> None:
    assert R.gpu_slug("NVIDIA H200") == "h200"
    assert R.gpu_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert R.gpu_slug("NVIDIA A100-SXM4-80GB") == "a100"
    assert R.gpu_slug(None) == "unknown-gpu"
    assert R.gpu_slug("Weird GPU!") == "weird-gpu"


@pytest.mark.parametrize(("lq", "lkv"), [(1, 1), (7, 7), (5, 12), (64, 64), (33, 100)])
def test_causal_flops_matches_pair_count(lq: int, lkv: int) -> None:
    p = lkv - lq
    pairs = sum(p + i + 1 for i in range(lq))  # bottom-right causal: query i sees keys 0..p+i
    exact = 4 * 2 * 3 * 16 * pairs
    assert R.causal_flops(2, 3, 16, lq, lkv) == pytest.approx(exact - 4 * 2 * 3 * 16 * lq / 2)


def test_kernel_ratios_and_targets() -> None:
    doc = fake_kernel_doc()
    r0 = doc["results"][1]  # llama 16K prefix 0
    assert r0["ratios"]["sage_vs_cudnn"] == pytest.approx(1.5)
    assert r0["ratios"]["sage_vs_triton_extend"] == pytest.approx(5.0)
    t = R.evaluate_kernel_targets(doc["results"])
    # 16K and 32K only, 2 targets each, 2 geometries x 2 prefixes
    assert len(t) == 2 * 2 * 2 * 2
    by = {(x["config"], x["target"]): x for x in t}
    assert by[("llama3-8b B=1 L=16K prefix=0%", "kernel sage/cudnn >= 1.3x")]["status"] == "PASS"
    assert by[("llama3-8b B=1 L=16K prefix=0%", "kernel sage/triton_extend >= 4.0x")]["status"] == "PASS"
    assert by[("llama3-8b B=1 L=32K prefix=0%", "kernel sage/triton_extend >= 4.0x")]["status"] == "FAIL"
    assert by[("llama3-8b B=1 L=16K prefix=50%", "kernel sage/cudnn >= 1.3x")]["status"] == "N/A"  # dense mask
    # a fast but inaccurate kernel does not pass
    assert by[("smollm2 B=1 L=16K prefix=0%", "kernel sage/cudnn >= 1.3x")]["status"] == "FAIL"
    lines = R.target_lines(t)
    assert all(line.split()[0] in ("PASS", "FAIL", "N/A") for line in lines)


def test_kernel_markdown_and_plot(tmp_path: Path) -> None:
    doc = fake_kernel_doc()
    md = R.render_kernel_markdown(doc)
    assert "| shape | Lq/Lkv | sage_attn (Triton) | cuDNN SDPA |" in md
    assert "llama3-8b B=1 L=32K prefix=50%" in md
    assert "1.000 (100)" in md and "*" in md  # dense-mask cuDNN flagged
    assert "## Targets" in md and "PASS" in md
    assert "skipped: top-left" in md
    paths = R.write_reports(doc, tmp_path, "k")
    assert Path(paths["md"]).read_text() == md
    assert "png_error" not in paths, paths["png_error"]  # matplotlib is in the test extra: a real plot
    png = Path(paths["png"])
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_e2e_targets_markdown_plot(tmp_path: Path) -> None:
    doc = fake_e2e_doc()
    t = R.evaluate_e2e_targets(doc["results"])
    by = {x["target"]: x for x in t}
    assert by["e2e 32K prefill sage_attn vs flashinfer >= 1.4x"]["status"] == "PASS"  # 3600/2500 = 1.44
    assert by["e2e 32K prefill sage_attn vs triton >= 2.5x"]["status"] == "PASS"  # 2.8
    assert by["e2e decode @4K sage_attn vs flashinfer >= 1.0x"]["status"] == "FAIL"  # 150 < 151
    assert by["e2e decode @32K sage_attn+flashinfer vs flashinfer >= 1.0x"]["status"] == "PASS"
    md = R.render_e2e_markdown(doc)
    assert "| config | status | tp | prefill 4K ms |" in md
    assert "sage_attn vs flashinfer" in md and "1.44x" in md
    paths = R.write_reports(doc, tmp_path, "e")
    assert "png_error" not in paths, paths["png_error"]
    assert Path(paths["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_is_recorded_and_the_measurements_are_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ModuleNotFoundError
    for doc, stem in ((fake_kernel_doc(), "k"), (fake_e2e_doc(), "e")):
        paths = R.write_reports(doc, tmp_path, stem)
        assert "png" not in paths and "import of matplotlib halted" in paths["png_error"]
        assert not (tmp_path / f"{stem}.png").exists()
        assert json.loads(Path(paths["json"]).read_text())["results"] == json.loads(R.dump_json(doc))["results"]
        assert Path(paths["md"]).read_text().startswith("#")


def test_e2e_target_fails_without_8bit_prefill() -> None:
    doc = fake_e2e_doc()
    doc["results"][0]["sage_stats"]["counters"]["prefill_8bit_batches"] = 0
    t = {x["target"]: x for x in R.evaluate_e2e_targets(doc["results"])}
    assert t["e2e 32K prefill sage_attn vs flashinfer >= 1.4x"]["status"] == "FAIL"


def test_empty_and_error_docs_render(tmp_path: Path) -> None:
    k = {
        "kind": "kernels",
        "env": {},
        "results": [
            {
                "geometry": "g",
                "batch": 1,
                "seq_len": 1024,
                "prefix_frac": 0,
                "backends": {"sage": {"status": "error", "error": "boom"}},
                "ratios": {},
            }
        ],
    }
    e = {"kind": "e2e", "env": {}, "results": [{"config": "triton", "status": "error", "errors": ["x"]}]}
    assert "boom" in R.render_kernel_markdown(k)
    assert "triton: x" in R.render_e2e_markdown(e)
    for doc, stem in ((k, "k"), (e, "e")):
        paths = R.write_reports(doc, tmp_path, stem)
        assert Path(paths["json"]).exists() and Path(paths["md"]).exists()


def test_results_file_incremental_and_strict_json(tmp_path: Path) -> None:
    rf = R.ResultsFile(tmp_path / "sub" / "r.json", {"kind": "kernels"})
    rf.add({"a": 1, "x": float("nan")})
    assert json.loads((tmp_path / "sub" / "r.json").read_text())["results"] == [{"a": 1, "x": None}]
    rf.replace_where("a", 1, {"a": 1, "y": math.inf})
    rf.replace_where("a", 2, {"a": 2})
    got = json.loads((tmp_path / "sub" / "r.json").read_text())["results"]
    assert got == [{"a": 1, "y": None}, {"a": 2}]
    assert R.load_json(tmp_path / "missing.json") is None


def test_capture_env_without_torch() -> None:
    env = R.capture_env(["x.py", "--quick"], extra_files={"me": __file__}, with_torch=False)
    assert env["command"].endswith("x.py --quick")
    assert env["files_sha256"]["me"] and len(env["files_sha256"]["me"]) == 64
    assert "commit" in env["git"] and env["gpu_slug"]
    assert "date_utc" in env and "versions" in env
    assert "GPU" in R.env_markdown(env)


def test_formatting_helpers() -> None:
    assert R.fmt(None) == "–" and R.fmt(float("nan")) == "–" and R.fmt(1.234) == "1.23"
    assert R.fmt_len(16384) == "16K" and R.fmt_len(1000) == "1000"
    t = R.markdown_table(["a", "b"], [[1, "x|y"]])
    assert t.splitlines()[2] == "| 1 | x\\|y |"


def test_kernel_plan_and_rows() -> None:
    bk = _load("bench_kernels")
    args = bk.parse_args([])
    shapes, notes = bk.plan_shapes(args)
    assert len(shapes) == 32
    assert all(s.batch * s.seq_len <= 131072 for s in shapes)
    assert any("L=64K" in n and "B=8" in n for n in notes)
    s = next(x for x in shapes if x.prefix_frac == 0.5 and x.seq_len == 16384)
    assert (s.prefix, s.lq) == (8192, 8192)
    q = bk.parse_args(["--quick"])
    assert len(bk.plan_shapes(q)[0]) == 8 and q.stem == "kernels_quick"
    rows = bk.pick_rows(1000, 64)
    assert rows[0] == 0 and rows[-1] == 999 and len(rows) <= 64 and rows == sorted(set(rows))
    assert bk.pick_rows(10, 64) == list(range(10))
    assert sum(bk.estimate_seconds(x, list(R.KERNEL_BACKENDS), 25, 100) for x in shapes) < 420


def test_kernel_reference_and_compare_cpu() -> None:
    import torch

    bk = _load("bench_kernels")
    shape = bk.Shape("t", 4, 2, 16, 2, 24, 0.5)
    inp = bk.make_inputs(shape, 0, 1.0, True, "cpu")
    assert inp["q"].shape == (2 * 12, 4, 16) and inp["k_pool"].shape == (2 * 24 + 1, 2, 16)
    assert int(inp["kv_indices"].min()) >= 1  # slot 0 is the padding slot
    rows = bk.pick_rows(shape.lq, 8)
    scale = 0.25
    ref = bk.exact_reference(inp["q"], inp["k_seq"], inp["v_seq"], shape, rows, scale)
    # SDPA math path with an explicit bottom-right mask agrees with the reference
    k = inp["k_hnd"].float().repeat_interleave(2, dim=1)
    v = inp["v_hnd"].float().repeat_interleave(2, dim=1)
    mask = bk._dense_mask(shape.lq, shape.seq_len, torch.float32, "cpu")
    o = torch.nn.functional.scaled_dot_product_attention(inp["q_hnd"].float(), k, v, attn_mask=mask, scale=scale)
    packed = o.transpose(1, 2).reshape(-1, 4, 16)
    c = bk.compare_rows(packed, shape, rows, ref)
    assert c["cos"] > 0.99999 and c["finite"]
    assert bk.full_cosine(packed, packed) == pytest.approx(1.0)
    bad = bk.compare_rows(packed * float("nan"), shape, rows, ref)
    assert bad["cos"] is None and bad["finite"] is False


def test_e2e_args_and_helpers(tmp_path: Path) -> None:
    be = _load("bench_e2e")
    a = be.parse_args(["--lengths", "4096,16384,32768"])
    assert a.chunked_prefill_size == 32768
    assert a.max_prefill_tokens == 32768 and a.decode_tokens == 128
    q = be.parse_args(["--quick"])
    assert q.lengths == "4096" and q.stem == "e2e_quick"
    model = be.write_model_dir(tmp_path / "m")
    cfg = json.loads((model / "config.json").read_text())
    assert (
        cfg["num_hidden_layers"],
        cfg["hidden_size"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["intermediate_size"],
        cfg["vocab_size"],
    ) == (32, 4096, 32, 8, 14336, 128256)
    assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["rope_theta"] == 500000.0
    kw = be.engine_kwargs("sage_attn+flashinfer", a, model)
    assert kw["prefill_attention_backend"] == "sage_attn" and kw["decode_attention_backend"] == "flashinfer"
    assert kw["load_format"] == "dummy" and kw["skip_tokenizer_init"] is True
    assert kw["disable_prefill_cuda_graph"] is True and "disable_cuda_graph" not in kw
    (tmp_path / "s").mkdir()
    for pid, n in ((1, 3), (2, 4)):
        (tmp_path / "s" / f"sage_attn_stats_{pid}.json").write_text(
            json.dumps({"pid": pid, "decode_backend": "flashinfer", "counters": {"prefill_8bit_batches": n}})
        )
    st = be.read_sage_stats(tmp_path / "s")
    assert st["counters"]["prefill_8bit_batches"] == 7 and st["files"] == 2
    assert st["prefill_kernel"] == []  # files without the field (older backends): nothing claimed
    assert be.estimate([4096, 16384, 32768], ["sage_attn", "fa3", "flashinfer"], a) < a.budget_s


def test_e2e_combine_prefers_measured_records() -> None:
    be = _load("bench_e2e")
    a = fake_e2e_doc()
    a["results"][3] = {"config": "triton", "status": "skipped", "reason": "time budget"}
    b = {
        "kind": "e2e",
        "env": {"gpu": "NVIDIA H200"},
        "results": [fake_e2e_doc()["results"][3]],
        "notes": ["second run"],
    }
    doc = be.combine([a, b], ["a.json", "b.json"])
    by = {r["config"]: r for r in doc["results"]}
    assert by["triton"]["status"] == "ok" and len(by) == 4
    again = be.combine([b, a], ["b.json", "a.json"])  # a skipped record never replaces a measured one
    assert {r["config"]: r for r in again["results"]}["triton"]["status"] == "ok"


def test_e2e_main_without_sglang_records_errors(tmp_path: Path) -> None:
    out = _run(
        [
            str(BENCH / "bench_e2e.py"),
            "--quick",
            "--out-dir",
            str(tmp_path),
            "--model-dir",
            str(tmp_path / "model"),
            "--backends",
            "triton,sage_attn",
        ]
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[plan]" in out.stdout and "[done]" in out.stdout
    doc = json.loads((tmp_path / "e2e_quick.json").read_text())
    by = {r["config"]: r for r in doc["results"]}
    if by["triton"]["status"] != "ok":  # no GPU / no SGLang here
        assert by["triton"]["errors"]
    assert (tmp_path / "e2e_quick.md").exists()
    rr = _run([str(BENCH / "bench_e2e.py"), "--render", str(tmp_path / "e2e_quick.json"), "--stem", "again"])
    assert rr.returncode == 0 and (tmp_path / "again.md").exists()


def test_kernel_main_cpu_dry_run(tmp_path: Path) -> None:
    out = _run(
        [
            str(BENCH / "bench_kernels.py"),
            "--device",
            "cpu",
            "--geometries",
            "smollm2",
            "--lengths",
            "32",
            "--batches",
            "1",
            "--prefix",
            "0.5",
            "--backends",
            "sage,flash,sageattn",
            "--out-dir",
            str(tmp_path),
        ],
        {"TRITON_INTERPRET": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads((tmp_path / "kernels.json").read_text())
    (rec,) = doc["results"]
    assert rec["backends"]["sageattn"]["status"] == "skipped"  # the upstream package is not installed here
    assert "sageattention" in rec["backends"]["sageattn"]["reason"]
    sage, flash = rec["backends"]["sage"], rec["backends"]["flash"]
    # the overlay's kernels run under the Triton interpreter: an error here is a failure, not "also fine"
    assert sage["status"] == "ok", sage
    assert sage["finite"] and sage["cos"] > 0.999 and sage["cos_planned"] > 0.999, sage
    assert "planned_error" not in sage and sage["ms"] > 0 and sage["ms_planned"] > 0
    assert flash["status"] == "ok" and flash["mask_method"] == "lower_right", flash  # prefix 50 %: bottom-right
    assert sage["sdpa_ref"] == "flash" and sage["cos_vs_sdpa"] > 0.999
    assert rec["ratios"]["sage_vs_flash"] == pytest.approx(flash["ms"] / sage["ms"])
    md = (tmp_path / "kernels.md").read_text()
    assert "smollm2 B=1 L=32 prefix=50%" in md


def test_e2e_sigquit_takeover_and_deadline() -> None:
    import asyncio
    import signal
    import time

    be = _load("bench_e2e")
    be.kill_children = lambda: 0  # never touch the test runner's own child processes

    class FakeTM:
        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.event_loop = None
            self.loop = loop

        def auto_create_handle_loop(self) -> None:  # like SGLang: must run inside the engine's loop
            running = asyncio.get_running_loop()
            assert running is self.loop
            self.event_loop = running
            running.add_signal_handler(signal.SIGQUIT, lambda: None)

    class FakeEngine:
        def __init__(self) -> None:
            self.loop = asyncio.new_event_loop()
            self.tokenizer_manager = FakeTM(self.loop)

    old = signal.getsignal(signal.SIGQUIT)
    old_usr1 = signal.getsignal(signal.SIGUSR1)
    eng = FakeEngine()
    try:
        be.take_over_sigquit(eng)
        assert eng.tokenizer_manager.event_loop is eng.loop
        assert signal.getsignal(signal.SIGQUIT) is be._on_sigquit
        # a SIGQUIT outside an active engine is logged, not raised
        be._on_sigquit(signal.SIGQUIT, None)
        be._ENGINE_ACTIVE.set()
        with pytest.raises(be.ChildFailed):
            be._on_sigquit(signal.SIGQUIT, None)
        assert not be._ENGINE_ACTIVE.is_set()
        # deadline() interrupts a blocked main thread, and never fires after the block
        signal.signal(signal.SIGUSR1, be._on_sigusr1)
        with pytest.raises(be.CallTimeout), be.deadline(0.2):
            time.sleep(5)
        with be.deadline(0.05):
            pass
        time.sleep(0.2)
    finally:
        eng.loop.close()
        signal.signal(signal.SIGQUIT, old)
        signal.signal(signal.SIGUSR1, old_usr1)
