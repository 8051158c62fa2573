"""CPU tests of benchmarks/soak.py against a fake SGLang HTTP server on loopback.

What must hold for the GPU numbers to mean anything: the load mix has exactly the proportions the
report claims and is reproducible from its seed; every request is counted exactly once (lost =
sent - answered - cancelled - cut); a client that cancels really goes away; each fault step detects
the misbehaviour it is about (a leaked request, a 200 for a bad request, a slow restart, dropped
answers, answers that change on replay); and the criteria say PASS / FAIL / N/A as specified.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
FAKE = Path(__file__).with_name("fake_sglang_server.py")
sys.path.insert(0, str(BENCH))


sys.path.insert(0, str(Path(__file__).parent))
from bench_helpers import load_bench  # noqa: E402

S = load_bench("soak")
TOKENS = list(range(1000, 21000))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_fake(cfg: dict[str, Any] | None = None, backend: str = "flashinfer") -> tuple[subprocess.Popen, Any]:
    port = _port()
    env = {**os.environ, "FAKE_SGLANG": json.dumps({"*": {"start_delays": [0.0], **(cfg or {})}})}
    p = subprocess.Popen(
        [sys.executable, str(FAKE), "--port", str(port), "--attention-backend", backend],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ep = S.Endpoint("127.0.0.1", port)
    t = time.time()
    while time.time() - t < 20:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return p, ep
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise RuntimeError("fake server did not come up")


@pytest.fixture(scope="module")
def fake() -> Iterator[Any]:
    p, ep = _start_fake({"token_delay_s": 0.002})
    yield ep
    p.kill()
    p.wait()


def small_cfg(n: int = 60, **kw: Any) -> Any:
    base = dict(requests=n, prefix_tokens=(64, 256), short_tokens=(8, 64), max_new_tokens=(1, 24))
    return S.MixConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------
# the load mix
# ------------------------------------------------------------------------------------------------
def test_mix_has_the_exact_proportions_and_ranges() -> None:
    mix = S.build_mix(TOKENS, S.MixConfig(requests=300), seed=3)
    s = S.mix_summary(mix)
    assert (s["requests"], s["shared_prefix"], s["short"]) == (300, 210, 90)
    assert (s["streamed"], s["cancel_planned"], s["n_gt_1"]) == (60, 15, 15)
    assert s["non_greedy"] == 15 + 45  # every n > 1 request samples, plus 15 % n = 1 seeded sampling
    assert s["prefix_lengths"][0] == 512 and s["prefix_lengths"][-1] == 6144 and len(s["prefix_lengths"]) == 8
    prefixes: dict[int, tuple[int, ...]] = {}
    for r in mix.specs:
        assert 1 <= r.max_new_tokens <= 256
        if r.kind == "shared":
            L = s["prefix_lengths"][r.prefix]
            head = r.input_ids[:L]
            assert prefixes.setdefault(r.prefix, head) == head  # every request of a prefix shares it
            assert 8 <= len(r.input_ids) - L <= 64
        else:
            assert r.prefix is None and 16 <= len(r.input_ids) <= 256
        if r.cancel_after is not None:
            assert r.stream and r.max_new_tokens > r.cancel_after and r.max_new_tokens >= 32
        if r.n > 1:
            assert not r.stream and not r.greedy and r.seed is not None
        assert r.greedy == (r.seed is None)
    assert len(prefixes) == 8
    assert len({p[:16] for p in prefixes.values()}) == 8  # eight different prefixes


def test_mix_is_reproducible_from_its_seed() -> None:
    cfg = small_cfg()
    a, b = S.build_mix(TOKENS, cfg, 1), S.build_mix(TOKENS, cfg, 1)
    assert a.digest() == b.digest() and a.specs == b.specs
    assert S.build_mix(TOKENS, cfg, 2).digest() != a.digest()
    assert S.build_mix(TOKENS[::-1], cfg, 1).digest() != a.digest()
    assert json.loads(json.dumps(a.specs[0].payload(True)))["sampling_params"]["ignore_eos"] is True


def test_mix_config_errors_name_the_flag() -> None:
    with pytest.raises(ValueError, match="--cancel-frac"):
        S.MixConfig(cancel_frac=0.3, stream_frac=0.2).check()
    with pytest.raises(ValueError, match="--prefix-tokens"):
        S.MixConfig(prefix_tokens=(600, 500)).check()
    with pytest.raises(ValueError, match="--max-new-tokens"):
        S.MixConfig(max_new_tokens=(1, 4), cancel_after=(1, 8)).check()
    with pytest.raises(SystemExit):
        S.parse_args(["--phases", "core,nap"])
    with pytest.raises(SystemExit):
        S.parse_args(["--stream-frac", "1.5"])
    a = S.parse_args(["--quick"])
    assert (a.requests, a.replay, a.stem, a.concurrency) == (300, 16, "soak_quick", 64)
    assert S.parse_args([]).requests == 2000


# ------------------------------------------------------------------------------------------------
# accounting
# ------------------------------------------------------------------------------------------------
def test_summary_counts_every_request_once() -> None:
    Oc = S.Outcome
    outs = [
        Oc(0, S.OK, 200, 0.1, 0.01, 10),
        Oc(1, S.OK, 200, 0.3, None, 5),
        Oc(2, S.CANCELLED, 200, 0.05, 0.02),
        Oc(3, S.ERROR, 400),
        Oc(4, S.TIMEOUT),
        Oc(5, S.TRANSPORT),
        Oc(6, S.TRANSPORT),
        Oc(7, S.CUT),
    ]
    s = S.summarize(outs, wall_s=2.0, not_sent=3)
    assert (s["sent"], s["answered"], s["ok"], s["cancelled"], s["cut"]) == (8, 3, 2, 1, 1)
    assert s["lost"] == 8 - 3 - 1 - 1 == 3  # timeout + two transport errors
    assert s["errors"] == 4 and s["error_responses"] == 1
    assert s["complete"] is False and s["not_sent"] == 3
    assert s["out_tok_s"] == 7.5 and s["req_s"] == 1.0
    assert s["ttft_ms"]["n"] == 2 and s["ttft_ms"]["p50"] == pytest.approx(15.0)
    assert s["latency_ms"]["p99"] == pytest.approx(100 + 200 * 0.99)
    assert set(s["error_samples"]) == {S.ERROR, S.TIMEOUT, S.TRANSPORT, S.CUT}
    clean = S.summarize([Oc(0, S.OK, 200, 0.1, None, 3)], wall_s=1.0)
    assert clean["lost"] == 0 and clean["errors"] == 0 and clean["complete"] is True


def test_percentile_and_first_diff() -> None:
    assert S.percentile([], 50) is None
    assert S.percentile([5.0], 99) == 5.0
    assert S.percentile([1, 2, 3, 4], 50) == 2.5
    assert S.percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert S.first_diff([1, 2, 3], [1, 2, 3]) is None
    assert S.first_diff([1, 2, 3], [1, 9, 3]) == 1
    assert S.first_diff([1, 2], [1, 2, 3]) == 2


# ------------------------------------------------------------------------------------------------
# the client against the fake server
# ------------------------------------------------------------------------------------------------
def _spec(
    rid: int, n_new: int = 12, stream: bool = False, cancel: int | None = None, n: int = 1, temp: float = 0.0
) -> Any:
    return S.RequestSpec(
        rid=rid,
        kind="short",
        prefix=None,
        input_ids=tuple(range(200, 240)),
        max_new_tokens=n_new,
        stream=stream,
        cancel_after=cancel,
        n=n,
        temperature=temp,
        top_p=1.0,
        seed=None if temp == 0 else 7,
    )


def test_plain_streamed_multi_and_cancelled_requests(fake: Any) -> None:
    async def go() -> list[Any]:
        plain = await S.run_one(fake, _spec(0), 10, True)
        streamed = await S.run_one(fake, _spec(1, stream=True), 10, True)
        multi = await S.run_one(fake, _spec(2, n=3, temp=0.8), 10, True)
        cancelled = await S.run_one(fake, _spec(3, n_new=400, stream=True, cancel=3), 10, True)
        drained = await S.wait_drained(fake, 5.0)
        return [plain, streamed, multi, cancelled, drained]

    plain, streamed, multi, cancelled, drained = asyncio.run(go())
    assert plain.kind == S.OK and len(plain.output_ids) == 12 and plain.ttft_s is None
    assert streamed.kind == S.OK and streamed.output_ids == plain.output_ids  # same greedy answer, streamed
    assert streamed.ttft_s is not None and streamed.events == 12
    assert multi.kind == S.OK and multi.completion_tokens == 36 and multi.output_ids is None
    assert cancelled.kind == S.CANCELLED and cancelled.events == 3
    assert drained["drained"] is True and drained["last"]["source"] == "/v1/loads"  # the client really left


def test_transport_errors_and_timeouts_are_lost(fake: Any) -> None:
    closed = S.Endpoint("127.0.0.1", _port())

    async def go() -> list[Any]:
        refused = await S.run_one(closed, _spec(0), 5, True)
        slow = await S.run_one(fake, _spec(1, n_new=500), 0.2, True)
        return [refused, slow]

    refused, slow = asyncio.run(go())
    assert refused.kind == S.TRANSPORT and "connect" in refused.detail
    assert slow.kind == S.TIMEOUT
    s = S.summarize([refused, slow], wall_s=1.0)
    assert s["lost"] == 2 and s["answered"] == 0


def test_load_over_the_fake_counts_cancellations_and_cuts(fake: Any) -> None:
    mix = S.build_mix(TOKENS, small_cfg(60), 5)
    planned = sum(r.cancel_after is not None for r in mix.specs)
    state: dict[str, int] = {}
    run = asyncio.run(S.run_load(fake, mix.specs, 8, 10, time.monotonic() + 60, True, state=state))
    s = S.summarize(run.outcomes, run.wall_s, run.not_sent)
    assert s["sent"] == 60 and s["ok"] + s["cancelled"] == 60 and s["lost"] == 0 and s["errors"] == 0
    assert s["cancelled"] == planned > 0
    assert state == {"done": 60, "in_flight": 0}
    assert sorted(o.rid for o in run.outcomes) == list(range(60))
    long = [_spec(i, n_new=2000) for i in range(20)]
    cut = asyncio.run(S.run_load(fake, long, 4, 30, time.monotonic() + 0.3, True))
    cs = S.summarize(cut.outcomes, cut.wall_s, cut.not_sent)
    assert cs["cut"] == 4 and cs["not_sent"] == 16 and cs["lost"] == 0 and cs["complete"] is False


def test_dropped_answers_are_lost_not_errors_only() -> None:
    p, ep = _start_fake({"drop_every": 4, "token_delay_s": 0.0})
    try:
        run = asyncio.run(S.run_load(ep, [_spec(i, n_new=4) for i in range(12)], 3, 5, time.monotonic() + 30, True))
    finally:
        p.kill()
        p.wait()
    s = S.summarize(run.outcomes, run.wall_s)
    assert s["lost"] == 3 and s["transport_errors"] == 3 and s["ok"] == 9


def test_bad_request_cases_cover_the_issue() -> None:
    names = [c[0] for c in S.bad_request_cases(100, 5000)]
    for want in ("empty text", "over the context", "temperature", "invalid JSON", "huge n (5000)"):
        assert any(want in n for n in names), want
    over = next(c for c in S.bad_request_cases(100, 5) if c[0].startswith("over"))
    assert len(over[1]["input_ids"]) > 100
    raw = next(c for c in S.bad_request_cases(100, 5) if c[0] == "invalid JSON")[2]
    with pytest.raises(ValueError):
        json.loads(raw)


def test_group_members_sees_a_live_group() -> None:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        assert S.group_members(p.pid) == [p.pid]
    finally:
        p.kill()
        p.wait()
    assert S.group_members(p.pid) == []


# ------------------------------------------------------------------------------------------------
# criteria and report (synthetic documents)
# ------------------------------------------------------------------------------------------------
def _rec(backend: str, share: float, tok_s: float, **kw: Any) -> dict[str, Any]:
    compared = 40
    ident = round(share * compared)
    load = {
        "sent": 2000,
        "ok": 1900,
        "cancelled": 100,
        "errors": 0,
        "lost": 0,
        "cut": 0,
        "not_sent": 0,
        "complete": True,
        "out_tok_s": tok_s,
        "ttft_ms": {"p50": 10, "p99": 50},
        "latency_ms": {"p50": 100, "p99": 900},
        "answer_digests": {"1": "a", "2": "b", "3": "c"},
    }
    rec = {
        "backend": backend,
        "status": "ok",
        "startup_s": 60.0,
        "load": load,
        "gpu_mem": {"before_load_mib": 40000, "after_load_mib": 40100, "growth": 0.0025},
        "answers": {
            "sampled": 48,
            "compared": compared,
            "identical": ident,
            "share": ident / compared,
            "items": [{"rid": 1, "first_diff": 5}],
        },
        "sage_stats": {"delta": {"prefill_8bit_batches": 9, "extend_prefix_8bit_batches": 30, "decode_batches": 500}},
        "faults": {k: {"ok": True, "detail": f"{k} fine"} for k in S.FAULTS},
    }
    for k, v in kw.items():
        rec[k] = v
    return rec


def _doc(sage: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "soak",
        "env": {"gpu": "NVIDIA H200"},
        "config": {"baseline": "flashinfer", "concurrency": 64},
        "mix": {"requests": 2000, "prefix_lengths": [512, 6144], "digest": "abc"},
        "results": [sage, base],
    }


def _status(targets: list[dict[str, Any]], word: str) -> str:
    return next(t["status"] for t in targets if word in t["target"])


def test_targets_pass_and_fail_as_specified() -> None:
    good = S.evaluate_targets(_doc(_rec("sage_attn", 0.75, 960.0), _rec("flashinfer", 0.5, 1000.0)))
    assert {t["status"] for t in good} == {"PASS"}, S.R.target_lines(good)
    assert len(good) == 9

    bad = _rec("sage_attn", 0.4, 900.0, gpu_mem={"before_load_mib": 40000, "after_load_mib": 40800, "growth": 0.02})
    bad["load"] = {**bad["load"], "errors": 2, "lost": 1, "error_samples": {"transport": ["#1 reset"]}}
    bad["sage_stats"] = {"delta": {"prefill_8bit_batches": 5, "extend_prefix_8bit_batches": 0}}
    bad["faults"]["kill"] = {"ok": False, "detail": "restart too slow"}
    t = S.evaluate_targets(_doc(bad, _rec("flashinfer", 0.5, 1000.0)))
    for word in ("0 errors", "0 lost", "GPU memory", "identical", "throughput", "8-bit", "SIGKILL"):
        assert _status(t, word) == "FAIL", word
    assert _status(t, "drains") == "PASS"

    cut = _rec("sage_attn", 0.9, 1000.0)
    cut["load"] = {**cut["load"], "complete": False, "cut": 5}
    missing = _rec("flashinfer", 0.5, 1000.0, answers={}, gpu_mem={})
    del missing["faults"]
    t = S.evaluate_targets(_doc(cut, missing))
    assert _status(t, "0 errors") == "N/A" and _status(t, "throughput") == "N/A"
    assert _status(t, "identical") == "N/A"
    t = S.evaluate_targets({"results": []})
    assert {x["status"] for x in t} == {"N/A"}


def test_paired_answer_counts() -> None:
    a = {
        "items": [
            {"rid": 1, "first_diff": None},
            {"rid": 2, "first_diff": 3},
            {"rid": 3, "first_diff": None},
            {"rid": 4, "error": "timeout"},
        ]
    }
    b = {
        "items": [
            {"rid": 1, "first_diff": 7},
            {"rid": 2, "first_diff": None},
            {"rid": 3, "first_diff": None},
            {"rid": 4, "first_diff": None},
        ]
    }
    assert S.paired_answers(a, b) == "paired on 3: identical only with sage 1, only with the baseline 1"


def test_markdown_report(tmp_path: Path) -> None:
    doc = _doc(_rec("sage_attn", 0.75, 960.0), _rec("flashinfer", 0.5, 1000.0))
    doc["results"][0]["faults"]["bad"]["cases"] = [
        {"case": "empty text", "status": 400, "s": 0.01, "alive_after": True, "body": "{'error': ...}"}
    ]
    paths = S.write_reports(doc, tmp_path, "soak")
    md = Path(paths["md"]).read_text()
    for want in (
        "## Load",
        "## Answers",
        "## Faults",
        "## Targets (issue #17): 9 of 9 PASS",
        "| sage_attn | ok |",
        "empty text",
        "PASS identical to a lone replay",
    ):
        assert want in md, want
    saved = json.loads(Path(paths["json"]).read_text())
    assert saved["cross_backend"] == {"compared": 3, "identical": 3, "share": 1.0}
    assert len(saved["targets"]) == 9


# ------------------------------------------------------------------------------------------------
# the whole script, with the fake as launcher
# ------------------------------------------------------------------------------------------------
SMALL = [
    "--requests",
    "60",
    "--concurrency",
    "8",
    "--warmup",
    "8",
    "--replay",
    "8",
    "--prefix-tokens",
    "64,256",
    "--short-tokens",
    "8,64",
    "--max-new-tokens",
    "1,24",
    "--kill-requests",
    "40",
    "--kill-after-s",
    "0.3",
    "--post-restart-requests",
    "8",
    "--disconnect-tokens",
    "1500",
    "--drain-timeout-s",
    "2",
    "--huge-n",
    "1000",
    "--bad-timeout-s",
    "5",
    "--budget-s",
    "150",
    "--hard-limit-s",
    "170",
    "--request-timeout-s",
    "20",
]


def run_soak(tmp_path: Path, cfg: dict[str, Any], *extra: str) -> dict[str, Any]:
    state = tmp_path / "state"
    state.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FAKE_SGLANG_STATE": str(state),
        "FAKE_SGLANG": json.dumps({"*": {"token_delay_s": 0.003, "start_delays": [2.0]}, **cfg}),
    }
    cmd = [
        sys.executable,
        str(BENCH / "soak.py"),
        "--launcher",
        f"{sys.executable} {FAKE}",
        "--out-dir",
        str(tmp_path / "out"),
        *SMALL,
        *extra,
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "soak.json").read_text())
    doc["_stdout"] = p.stdout
    return doc


def test_soak_end_to_end_with_well_behaved_servers(tmp_path: Path) -> None:
    doc = run_soak(tmp_path, {})
    by = {r["backend"]: r for r in doc["results"]}
    assert list(by) == ["sage_attn", "flashinfer"], doc["_stdout"][-2000:]
    assert doc["mix"]["requests"] == 60 and doc["corpus"]["source"] == "/tokenize"
    for r in by.values():
        assert r["status"] == "ok", r.get("errors")
        assert r["load"]["sent"] == 60 and r["load"]["lost"] == 0 and r["load"]["complete"]
        assert r["answers"]["compared"] == 8 and r["answers"]["flush_failures"] == 0
        assert r["faults"]["kill"]["client_in_flight_at_kill"] > 0
    t = {x["target"]: x["status"] for x in doc["targets"]}
    for name, st in t.items():
        if "GPU memory" in name:
            assert st == "N/A"  # no nvidia-smi here
        elif "throughput" not in name:  # the fake's speed is noise
            assert st == "PASS", (name, doc["targets"])
    assert by["sage_attn"]["sage_stats"]["delta"]["prefill_8bit_batches"] > 0
    assert by["flashinfer"]["sage_stats"]["delta"]["prefill_8bit_batches"] == 0
    out = tmp_path / "out"
    assert "## Targets (issue #17)" in (out / "soak.md").read_text()
    assert (out / "soak_server_logs.tgz").stat().st_size > 0
    assert "[criteria]" in doc["_stdout"]


def test_soak_detects_changing_answers_lost_requests_and_silent_backend(tmp_path: Path) -> None:
    doc = run_soak(tmp_path, {"sage_attn": {"flaky": 0.7, "drop_every": 9, "no_stats": True}}, "--phases", "core")
    t = {x["target"]: x for x in doc["targets"]}
    sage = doc["results"][0]["load"]
    assert sage["lost"] > 0 and sage["transport_errors"] == sage["lost"]
    for word in ("0 errors", "0 lost", "identical", "8-bit"):
        hit = next(v for k, v in t.items() if word in k)
        assert hit["status"] == "FAIL", (word, hit)
    assert next(v for k, v in t.items() if "SIGKILL" in k)["status"] == "N/A"  # faults not run: never a pass


def test_soak_detects_leaks_accepted_bad_requests_and_slow_restarts(tmp_path: Path) -> None:
    cfg = {"sage_attn": {"leak": True, "accept_bad": True, "start_delays": [0.5, 4.0]}}
    doc = run_soak(tmp_path, cfg, "--phases", "faults", "--backends", "sage_attn")
    f = doc["results"][0]["faults"]
    assert f["disconnect"]["ok"] is False and f["disconnect"]["drain"]["drained"] is False
    assert f["bad"]["ok"] is False and all(c["status"] == 200 for c in f["bad"]["cases"])
    assert f["kill"]["ok"] is False and f["kill"]["restart_s"] > f["kill"]["restart_limit_s"]
    t = {x["target"]: x["status"] for x in doc["targets"]}
    assert [v for k, v in t.items() if k.startswith("fault")] == ["FAIL", "FAIL", "FAIL"]


def test_soak_restarts_a_server_killed_by_a_bad_request(tmp_path: Path) -> None:
    doc = run_soak(
        tmp_path,
        {"sage_attn": {"die_on_empty": True}},
        "--phases",
        "faults",
        "--faults",
        "bad",
        "--backends",
        "sage_attn",
    )
    bad = doc["results"][0]["faults"]["bad"]
    first = bad["cases"][0]
    assert first["case"] == "empty text" and first["server_died"] and not first["alive_after"]
    assert bad["restarts"] == 1 and len(bad["cases"]) == len(S.bad_request_cases(100, 5))
    assert all(c["4xx"] for c in bad["cases"][1:]) and bad["ok"] is False


def test_render_only_and_gpu_session_phase(tmp_path: Path) -> None:
    doc = _doc(_rec("sage_attn", 0.75, 960.0), _rec("flashinfer", 0.5, 1000.0))
    (tmp_path / "x.json").write_text(json.dumps(doc))
    assert S.main(["--render", str(tmp_path / "x.json")]) == 0
    assert "## Targets (issue #17)" in (tmp_path / "x.md").read_text()
    sh = (ROOT / "scripts" / "gpu_session.sh").read_text()
    assert "soak)" in sh and "benchmarks/soak.py" in sh
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_session.sh")]).returncode == 0
