#!/usr/bin/env python3
"""End-to-end SGLang benchmark: prefill latency and decode speed of Llama-3.1-8B geometry
(dummy weights) with the attention backends side by side, in one process.

For each engine configuration (``sage_attn``; ``sage_attn+flashinfer`` = sage_attn prefill with
flashinfer decode; ``fa3`` = SGLang's default on Hopper; ``fa3+fp8kv`` = fa3 with
``kv_cache_dtype="fp8_e4m3"``, SGLang's own 8-bit option; ``flashinfer``; ``triton``) one
``sglang.Engine`` is started, serves every prompt length, and is shut down, one after the other:

* warm-up: one request per prompt length (prefill + one decode step) before anything is timed;
* prefill: wall latency of ``engine.generate(input_ids=..., max_new_tokens=1)``, minimum over
  ``--repeats`` calls (default 3 up to 32K, 2 above), each a fresh random prompt (so the radix cache
  never hits; ``cached_tokens`` of every call is recorded to prove it);
* decode: one streamed request per length whose prompt is the last prefill prompt (a radix hit: the
  context is the prompt length, and the decode call does not pay another long prefill); tokens/s =
  ``completion_tokens`` gained between the first and the last streamed chunk over the time between
  them. CUDA graphs stay on for decode (SGLang default), captured up to ``--cuda-graph-max-bs``.

``--tp N`` runs every engine with ``tp_size=N`` (NVLink multicast off: ``NCCL_NVLS_ENABLE=0
TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1`` are set for the engine's processes);
each TP rank's scheduler writes its own sage_attn counter file (``$SGLANG_SAGE_STATS_DIR``, one per
pid, carrying ``tp_rank``), and the result shows them per rank. Results go to
``<out-root>/<gpu>[x<N>]/<stem>.{json,md,png}``.

The model directory holds only a Llama-3.1-8B ``config.json`` (``load_format="dummy"``,
``skip_tokenizer_init=True``); ``context_length`` = the longest prompt + the decode tokens + a margin,
at least 131072 (the config's ``max_position_embeddings`` is raised to match when the 128K prompt
needs it: the rope tables are sized by it; the llama3 frequencies do not depend on it).
Robustness: every engine and every call is guarded (errors are recorded, the run goes on), each call
has a timeout, no new engine or length starts when its estimated time no longer fits the budget, a
global watchdog ends the run before ``--hard-limit-s`` (results are written after every
measurement), and GPU memory is checked after every shutdown. A run that cannot fit one device call
is split with ``--backends`` into phases (scripts/gpu_session.sh) and combined with ``--render``.

Run (GPU machine, after ``python apply.py --sglang-dir /tmp/site --no-tests``)::

    source /tmp/sglang_env.sh && PYTHONPATH=/tmp/site python3 benchmarks/bench_e2e.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import random
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results as R

SITE = os.environ.get("SGLANG_SITE", "/tmp/site")
ENV_FILE = "/tmp/sglang_env.sh"

LLAMA31_8B_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}

# engine configuration name -> attention backend arguments (and the KV cache dtype they imply)
ENGINE_CONFIGS: dict[str, dict[str, str]] = {
    "sage_attn": {"attention_backend": "sage_attn"},
    "sage_attn+flashinfer": {"prefill_attention_backend": "sage_attn", "decode_attention_backend": "flashinfer"},
    "fa3": {"attention_backend": "fa3"},
    "fa3+fp8kv": {"attention_backend": "fa3", "kv_cache_dtype": "fp8_e4m3"},
    "flashinfer": {"attention_backend": "flashinfer"},
    "triton": {"attention_backend": "triton"},
}
# issue #19's set (issue #11's targets read sage_attn and fa3); --tp > 1 defaults to issue #16's pair
DEFAULT_ORDER = "sage_attn,fa3,fa3+fp8kv,flashinfer"
DEFAULT_ORDER_TP = "sage_attn,flashinfer"
DEFAULT_LENGTHS = "4096,16384,32768,65536,131072"
DEFAULT_LENGTHS_TP = "4096,32768"
# NVLink multicast off for every engine process, as the GPU machines' notes require for multi-GPU
# work (NCCL, torch symmetric memory and NVSHMEM would each try it under TP).
NVLS_OFF: dict[str, str] = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
MODEL_MAX_POSITIONS = int(LLAMA31_8B_CONFIG["max_position_embeddings"])
CONTEXT_MARGIN = 64
# rough throughput for the time estimates only: causal attention TFLOPS per configuration (H200,
# measured 2026-11/12: fa3 10.3 s, sage 12.3 s, flashinfer 14.4 s at 130K), dense GEMM TFLOPS, and
# the decode step (weights + KV read) at batch 1
_EST_ATT_TFLOPS = {
    "sage_attn": 450.0,
    "sage_attn+flashinfer": 450.0,
    "fa3": 600.0,
    "fa3+fp8kv": 650.0,
    "flashinfer": 430.0,
    "triton": 120.0,
}
_EST_GEMM_TFLOPS = 700.0
_EST_START_S = 60.0


class CallTimeout(Exception):
    """A generate call (or engine start) ran past its deadline."""


class ChildFailed(Exception):
    """An engine subprocess signalled failure (SIGQUIT)."""


# ------------------------------------------------------------------------------------------------
# process hygiene: timeouts, child failures, watchdog
# ------------------------------------------------------------------------------------------------
_DEADLINE_ACTIVE = threading.Event()
_ENGINE_ACTIVE = threading.Event()  # SIGQUIT raises ChildFailed only while an engine is being used


def _on_sigusr1(signum: int, frame: Any) -> None:
    if _DEADLINE_ACTIVE.is_set():
        _DEADLINE_ACTIVE.clear()
        raise CallTimeout("deadline passed")


def _on_sigquit(signum: int, frame: Any) -> None:
    R.log("[e2e] SIGQUIT from an engine subprocess: it failed; killing the engine's processes")
    kill_children()
    if _ENGINE_ACTIVE.is_set():
        _ENGINE_ACTIVE.clear()
        raise ChildFailed("an engine subprocess failed (SIGQUIT)")


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise CallTimeout in the main thread if the block runs longer than ``seconds``."""
    main_id = threading.main_thread().ident

    def fire() -> None:
        if _DEADLINE_ACTIVE.is_set() and main_id is not None:
            signal.pthread_kill(main_id, signal.SIGUSR1)

    _DEADLINE_ACTIVE.set()
    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        _DEADLINE_ACTIVE.clear()
        timer.cancel()


def kill_children() -> int:
    """Terminate (then kill) every process this process started, e.g. a failed engine's."""
    try:
        import psutil
    except ImportError:
        return 0
    procs = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "resource_tracker" not in " ".join(p.cmdline()):
                procs.append(p)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return len(procs)


def reinstall_sigquit(engine: Any) -> None:
    """SGLang's running-phase SIGQUIT handler kills this whole process; replace it with ours."""
    for loop in (
        getattr(getattr(engine, "tokenizer_manager", None), "event_loop", None),
        getattr(engine, "loop", None),
    ):
        if loop is not None:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signal.SIGQUIT)
    signal.signal(signal.SIGQUIT, _on_sigquit)


def take_over_sigquit(engine: Any) -> None:
    """Create SGLang's request loop now (inside the engine's event loop, as the first request would)
    and replace the SIGQUIT handler it installs, so that no request ever runs under a handler that
    SIGKILLs this process when an engine subprocess fails."""
    tm = getattr(engine, "tokenizer_manager", None)
    loop = getattr(engine, "loop", None)
    if (
        tm is not None
        and loop is not None
        and getattr(tm, "event_loop", 1) is None
        and callable(getattr(tm, "auto_create_handle_loop", None))
    ):

        async def _init() -> None:
            tm.auto_create_handle_loop()

        loop.run_until_complete(_init())
    reinstall_sigquit(engine)


def start_watchdog(hard_limit_s: float, t0: float, on_fire: Callable[[], None]) -> None:
    """End the run (after saving) if it is still going at ``hard_limit_s``."""

    def run() -> None:
        time.sleep(max(0.0, t0 + hard_limit_s - time.time()))
        R.log(f"[e2e] WATCHDOG: {hard_limit_s:.0f}s reached; saving results, killing engines, exiting")
        with contextlib.suppress(Exception):
            on_fire()
        kill_children()
        os._exit(4)

    threading.Thread(target=run, daemon=True, name="e2e-watchdog").start()


# ------------------------------------------------------------------------------------------------
# environment, model dir, GPU memory, stats
# ------------------------------------------------------------------------------------------------
def prepare_env() -> list[str]:
    """Bundle on PYTHONPATH (spawned children need it), offline HF, NVLink multicast off, JIT env
    from /tmp/sglang_env.sh."""
    notes = []
    pp = os.environ.get("PYTHONPATH", "")
    if os.path.isdir(SITE) and SITE not in pp.split(os.pathsep):
        os.environ["PYTHONPATH"] = SITE + (os.pathsep + pp if pp else "")
        notes.append(f"PYTHONPATH prefixed with {SITE}")
    if os.path.isdir(SITE) and SITE not in sys.path:
        sys.path.insert(0, SITE)
    for k, v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("PYTHONUNBUFFERED", "1")):
        os.environ.setdefault(k, v)
    for k, v in NVLS_OFF.items():  # forced, not defaulted: a stray NCCL_NVLS_ENABLE=1 must not win
        if os.environ.get(k) not in (None, v):
            notes.append(f"{k}={os.environ[k]} overridden to {v} (NVLink multicast off)")
        os.environ[k] = v
    if os.path.isfile(ENV_FILE) and not os.environ.get("CUDA_HOME"):
        for line in Path(ENV_FILE).read_text().splitlines():
            line = line.strip()
            if not line.startswith("export ") or "=" not in line:
                continue
            key, val = line[7:].split("=", 1)
            val = val.strip().strip("'\"")
            if key == "PYTHONPATH":
                continue
            os.environ.setdefault(key, val)
        notes.append(f"environment read from {ENV_FILE} (CUDA_HOME was unset)")
    return notes


def context_length_for(lengths: list[int], decode_tokens: int) -> int:
    """Context the engines get: the longest prompt plus what is generated on it, plus a margin;
    never below the model's own 131072."""
    return max(MODEL_MAX_POSITIONS, max(lengths) + max(2, decode_tokens) + CONTEXT_MARGIN)


def write_model_dir(path: Path, max_positions: int = MODEL_MAX_POSITIONS) -> Path:
    """A directory holding only Llama-3.1-8B's config.json (dummy weights, no tokenizer); with
    ``max_positions`` above 131072 the rope tables are sized for it (same frequencies)."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = dict(LLAMA31_8B_CONFIG, max_position_embeddings=max(MODEL_MAX_POSITIONS, int(max_positions)))
    (path / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    return path


def _smi_column(field: str) -> list[str] | None:
    out = R.run_cmd(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"])
    if not out:
        return None
    return [x.strip() for x in out.splitlines() if x.strip()]


def gpu_count() -> int | None:
    """GPUs visible to this process (CUDA_VISIBLE_DEVICES respected), from nvidia-smi (no CUDA
    context here: the engines must get every GPU untouched)."""
    idx = _smi_column("index")
    if idx is None:
        return None
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:  # indices or UUIDs; "" hides every GPU
        return min(len(idx), len([x for x in vis.split(",") if x.strip()]))
    return len(idx)


def gpu_mem_used_mib() -> float | None:
    """GPU memory in use (MiB) summed over all GPUs, from nvidia-smi (no CUDA context here)."""
    v = _smi_column("memory.used")
    try:
        return float(sum(float(x) for x in v)) if v else None
    except ValueError:
        return None


def wait_mem_freed(before: float | None, slack_mib: float, timeout_s: float = 30.0) -> tuple[float | None, bool]:
    """Poll until GPU memory is back to ``before + slack`` (returns (used, freed))."""
    if before is None:
        return None, True
    t_end = time.time() + timeout_s
    used = gpu_mem_used_mib()
    while used is not None and used > before + slack_mib and time.time() < t_end:
        time.sleep(1.0)
        used = gpu_mem_used_mib()
    return used, used is None or used <= before + slack_mib


def read_sage_stats(stats_dir: Path) -> dict[str, Any]:
    """The sage_attn backend counters written by the scheduler processes (docs/CONTRACTS.md):
    summed, and per TP rank (each file is one scheduler process and names its ``tp_rank``)."""
    total: dict[str, int] = {}
    per_rank: dict[str, dict[str, int]] = {}
    files = sorted(glob.glob(str(stats_dir / "sage_attn_stats_*.json")))
    decode_backends = set()
    prefill_kernels = set()  # "sm90" or "triton": which prefill kernel the backend selected at start
    pids = []
    unreadable = []
    for f in files:
        try:
            d = json.loads(Path(f).read_text())
        except (OSError, ValueError):
            unreadable.append(Path(f).name)
            continue
        rank = per_rank.setdefault(str(d.get("tp_rank", "?")), {})
        for k, v in (d.get("counters") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                total[k] = total.get(k, 0) + int(v)
                rank[k] = rank.get(k, 0) + int(v)
        if d.get("decode_backend"):
            decode_backends.add(str(d["decode_backend"]))
        if d.get("prefill_kernel"):
            prefill_kernels.add(str(d["prefill_kernel"]))
        if d.get("pid") is not None:
            pids.append(d["pid"])
    return {
        "files": len(files),
        "counters": total,
        "per_rank": per_rank,
        "pids": pids,
        "decode_backend": sorted(decode_backends),
        "prefill_kernel": sorted(prefill_kernels),
        "unreadable": unreadable,
    }


def sage_registered() -> tuple[bool, str]:
    """Whether this SGLang knows the ``sage_attn`` attention backend."""
    try:
        from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES
    except Exception as exc:  # noqa: BLE001
        return False, f"cannot import sglang.srt.server_args ({type(exc).__name__}: {exc})"
    if "sage_attn" in ATTENTION_BACKEND_CHOICES:
        return True, "sage_attn registered"
    return False, (
        "sage_attn is not an attention backend of this SGLang: run "
        "`python apply.py --sglang-dir /tmp/site --no-tests` first"
    )


# ------------------------------------------------------------------------------------------------
# measurement
# ------------------------------------------------------------------------------------------------
def rand_prompt(rng: random.Random, n: int) -> list[int]:
    """n random token ids (away from the special-token range)."""
    return [rng.randrange(1000, 128000) for _ in range(n)]


def timed_generate(engine: Any, ids: list[int], max_new: int, timeout_s: float) -> tuple[float, dict[str, Any]]:
    """Wall seconds of one generate call and its meta_info."""
    sp = {"max_new_tokens": max_new, "temperature": 0.0, "ignore_eos": True}
    with deadline(timeout_s):
        t = time.perf_counter()
        out = engine.generate(input_ids=ids, sampling_params=sp)
        dt = time.perf_counter() - t
    if isinstance(out, list):
        out = out[0]
    meta = (out or {}).get("meta_info", {}) if isinstance(out, dict) else {}
    return dt, meta


def streamed_decode(engine: Any, ids: list[int], n: int, timeout_s: float) -> dict[str, Any]:
    """Decode speed of one streamed request: completion tokens gained between the first and the
    last chunk over the time between them (the prefill, and how chunks were grouped, drop out)."""
    sp = {"max_new_tokens": n, "temperature": 0.0, "ignore_eos": True}
    marks: list[tuple[float, int]] = []
    meta: dict[str, Any] = {}
    with deadline(timeout_s):
        t0 = time.perf_counter()
        for chunk in engine.generate(input_ids=ids, sampling_params=sp, stream=True):
            if isinstance(chunk, list):
                chunk = chunk[0]
            meta = (chunk or {}).get("meta_info", {}) if isinstance(chunk, dict) else {}
            marks.append((time.perf_counter(), int(meta.get("completion_tokens") or 0)))
    return decode_rate(t0, marks, meta, n)


def decode_rate(t0: float, marks: list[tuple[float, int]], meta: dict[str, Any], n: int) -> dict[str, Any]:
    """The decode record of one streamed request from its (time, completion_tokens) marks."""
    d: dict[str, Any] = {
        "n_tokens": n,
        "method": "stream",
        "chunks": len(marks),
        "cached_tokens": meta.get("cached_tokens"),
        "completion_tokens": meta.get("completion_tokens"),
    }
    if marks:
        d["ttft_ms"] = (marks[0][0] - t0) * 1e3
        d["total_ms"] = (marks[-1][0] - t0) * 1e3
    if len(marks) >= 2 and marks[-1][1] > marks[0][1] and marks[-1][0] > marks[0][0]:
        steps = marks[-1][1] - marks[0][1]
        span = marks[-1][0] - marks[0][0]
        d.update(tok_s=steps / span, ms_per_token=span * 1e3 / steps, steps_timed=steps)
    else:
        d["error"] = (
            f"cannot time decode from {len(marks)} streamed chunk(s) (completion tokens {[m[1] for m in marks[:3]]}...)"
        )
    return d


def repeats_for(length: int, args: argparse.Namespace) -> int:
    """Prefill repeats at one length: --repeats, else 3 up to 32K and 2 above (a 128K prefill is
    ~10 s and varies by < 1 %; the short ones vary more and cost nothing)."""
    if args.repeats:
        return args.repeats
    return 3 if length <= 32768 else 2


def est_prefill_s(cfg: str, length: int, tp: int = 1) -> float:
    """Rough prefill seconds of a Llama-3.1-8B-geometry prompt (GEMMs + causal attention)."""
    gemm = 2 * 8.0e9 * length / (_EST_GEMM_TFLOPS * 1e12)
    att = 32 * 4 * 4096 * length * length / 2 / (_EST_ATT_TFLOPS.get(cfg, 300.0) * 1e12)
    return (gemm + att) / tp + 0.03


def est_length_s(cfg: str, length: int, args: argparse.Namespace) -> float:
    """Rough seconds for one length on a running engine: prefill repeats + the decode request."""
    t = repeats_for(length, args) * (est_prefill_s(cfg, length, args.tp) + 0.05)
    if args.decode_tokens > 1:
        t += args.decode_repeats * (0.3 + args.decode_tokens * (0.005 + 2.7e-8 * length))
    return t


def estimate_engine(cfg: str, lengths: list[int], args: argparse.Namespace) -> float:
    """Rough seconds for one engine: start (+ TP start-up), warm-up, every length, shutdown."""
    t = _EST_START_S + (20.0 if args.tp > 1 else 0.0) + 10.0
    for length in lengths:
        t += est_prefill_s(cfg, length, args.tp) + 0.1 + est_length_s(cfg, length, args)
    return t


def estimate(lengths: list[int], cfgs: list[str], args: argparse.Namespace) -> float:
    """Rough seconds for the whole plan (sequential engines)."""
    return sum(estimate_engine(c, lengths, args) for c in cfgs)


def engine_kwargs(cfg_name: str, args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    """Engine arguments of one configuration (recorded in the results)."""
    kw: dict[str, Any] = {
        "model_path": str(model_dir),
        "load_format": "dummy",
        "skip_tokenizer_init": True,
        "dtype": "bfloat16",
        "tp_size": args.tp,
        "context_length": args.context_length,
        "mem_fraction_static": args.mem_fraction_static,
        "chunked_prefill_size": args.chunked_prefill_size,
        "max_prefill_tokens": args.max_prefill_tokens,
        "max_running_requests": args.max_running_requests,
        "cuda_graph_max_bs_decode": args.cuda_graph_max_bs,
        "sampling_backend": "pytorch",
        "grammar_backend": "none",
        "random_seed": args.seed,
        "log_level": args.log_level,
    }
    if args.prefill_cuda_graph == "off":
        kw["disable_prefill_cuda_graph"] = True
    if args.no_cuda_graph:
        kw["disable_cuda_graph"] = True
    kw.update(ENGINE_CONFIGS[cfg_name])
    return kw


def _resolved(engine: Any) -> dict[str, Any]:
    sa = getattr(engine, "server_args", None)
    out: dict[str, Any] = {}
    for k in (
        "attention_backend",
        "prefill_attention_backend",
        "decode_attention_backend",
        "chunked_prefill_size",
        "max_prefill_tokens",
        "mem_fraction_static",
        "max_running_requests",
        "max_total_tokens",
        "page_size",
        "kv_cache_dtype",
        "cuda_graph_config",
        "context_length",
        "tp_size",
    ):
        if sa is not None and hasattr(sa, k):
            v = getattr(sa, k)
            out[k] = v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
    return out


def resolved_mismatch(cfg_name: str, resolved: dict[str, Any], tp: int) -> str | None:
    """A reason when SGLang resolved other backends / KV dtype / tp than requested (in places it falls
    back with only a log warning, e.g. fa3 + fp8_e5m2 -> triton): numbers under the wrong label are
    worse than none."""
    want = dict(ENGINE_CONFIGS[cfg_name], tp_size=tp)
    bad = [
        f"{k}={resolved.get(k)!r} (requested {v!r})" for k, v in want.items() if k in resolved and resolved.get(k) != v
    ]
    if not bad:
        return None
    return f"SGLang resolved {', '.join(bad)}: measurements of {cfg_name} would be mislabelled, engine not measured"


def _err(exc: BaseException) -> str:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return f"{type(exc).__name__}: {str(exc)[:500]} | {''.join(tb[-2:])[-600:]}".strip()


def run_engine(
    cfg_name: str,
    args: argparse.Namespace,
    model_dir: Path,
    lengths: list[int],
    rf: R.ResultsFile,
    t_start: float,
    stats_root: Path,
) -> dict[str, Any]:
    """Start one engine, warm it, measure prefill and decode per length, shut it down. Never raises."""
    kw = engine_kwargs(cfg_name, args, model_dir)
    rec: dict[str, Any] = {
        "config": cfg_name,
        "status": "starting",
        "engine_args": {k: v for k, v in kw.items() if k != "model_path"},
        "prefill": {},
        "decode": {},
        "warmup_s": {},
        "errors": [],
        "estimate_s": round(estimate_engine(cfg_name, lengths, args), 1),
    }
    save = lambda: rf.replace_where("config", cfg_name, rec)  # noqa: E731
    stats_dir = stats_root / cfg_name.replace("+", "_")
    stats_dir.mkdir(parents=True, exist_ok=True)
    for f in stats_dir.glob("*.json"):
        f.unlink()
    os.environ["SGLANG_SAGE_STATS_DIR"] = str(stats_dir)
    mem_before = gpu_mem_used_mib()
    rec["gpu_mem"] = {"before_mib": mem_before}
    save()
    rng = random.Random(f"{args.seed}-{cfg_name}")
    engine = None
    t_engine = time.time()

    def left() -> float:
        return args.budget_s - (time.time() - t_start)

    try:
        import sglang

        R.log(
            f"[{cfg_name}] starting engine: {ENGINE_CONFIGS[cfg_name]} tp={args.tp} "
            f"(estimate ~{rec['estimate_s']:.0f}s incl. measurements)"
        )
        t = time.time()
        extra = {}
        with contextlib.suppress(Exception):
            import dataclasses

            from sglang.srt.server_args import ServerArgs

            if any(f.name == "custom_sigquit_handler" for f in dataclasses.fields(ServerArgs)):
                extra["custom_sigquit_handler"] = _on_sigquit  # a failing child must not kill us
        _ENGINE_ACTIVE.set()
        with deadline(args.start_timeout_s):
            engine = sglang.Engine(**kw, **extra)
        rec["startup_s"] = round(time.time() - t, 1)
        try:
            take_over_sigquit(engine)
        except Exception as exc:  # noqa: BLE001 - falls back to doing it after the first request
            rec.setdefault("info", []).append(f"SIGQUIT take-over before the first request failed: {_err(exc)}")
        rec["resolved"] = _resolved(engine)
        R.log(f"[{cfg_name}] engine up in {rec['startup_s']}s; resolved {rec['resolved']}")
        mismatch = resolved_mismatch(cfg_name, rec["resolved"], args.tp)
        if mismatch:
            raise RuntimeError(mismatch)
        rec["status"] = "running"
        save()
        # warm every prompt length (prefill shape + a decode step); flashinfer compiles on first use
        for i, L in enumerate(lengths):
            if left() < est_prefill_s(cfg_name, L, args.tp) + 5:
                rec["errors"].append(f"time budget used up before warm-up {L}")
                break
            t = time.time()
            timed_generate(engine, rand_prompt(rng, L), 2, args.warmup_timeout_s)
            if i == 0:
                reinstall_sigquit(engine)  # the first request installed SGLang's running-phase handler
            rec["warmup_s"][str(L)] = round(time.time() - t, 2)
            R.log(f"[{cfg_name}] warm-up {R.fmt_len(L)}: {rec['warmup_s'][str(L)]}s")
        save()
        for L in lengths:
            if str(L) not in rec["warmup_s"]:
                break
            need = est_length_s(cfg_name, L, args)
            if left() < need + 5:
                rec["errors"].append(
                    f"time budget: {left():.0f}s left < ~{need:.0f}s for length {L}; re-run "
                    f"with --backends {cfg_name} --lengths {L} --stem <other> and --render both"
                )
                break
            times, cached, ptoks = [], [], []
            ids: list[int] = []
            for _ in range(repeats_for(L, args)):
                ids = rand_prompt(rng, L)
                dt, meta = timed_generate(engine, ids, 1, args.call_timeout_s)
                times.append(dt * 1e3)
                cached.append(meta.get("cached_tokens"))
                ptoks.append(meta.get("prompt_tokens"))
            rec["prefill"][str(L)] = {
                "ms": min(times),
                "ms_all": [round(x, 2) for x in times],
                "cached_tokens": cached,
                "prompt_tokens": ptoks[0] if ptoks else None,
            }
            R.log(
                f"[{cfg_name}] prefill {R.fmt_len(L)}: min {min(times):.1f} ms "
                f"(all {[round(x, 1) for x in times]}, cached_tokens {cached})"
            )
            save()
            if args.decode_tokens > 1:
                runs = [
                    streamed_decode(engine, ids, args.decode_tokens, args.call_timeout_s)
                    for _ in range(args.decode_repeats)
                ]
                d = max(runs, key=lambda x: x.get("tok_s") or 0.0)  # best of the repeats, like min prefill
                if len(runs) > 1:
                    d = dict(d, tok_s_all=[round(x.get("tok_s") or 0.0, 2) for x in runs])
                if d.get("error"):
                    rec["errors"].append(f"decode {L}: {d['error']}")
                if d.get("completion_tokens") not in (None, args.decode_tokens):
                    rec["errors"].append(
                        f"decode {L}: completion_tokens {d['completion_tokens']} != {args.decode_tokens}"
                    )
                if d.get("cached_tokens") is not None and d["cached_tokens"] < L - 64:
                    rec.setdefault("info", []).append(
                        f"decode {L}: the radix cache held only {d['cached_tokens']} "
                        f"prompt tokens (evicted?); the rate is still at context {L}"
                    )
                rec["decode"][str(L)] = d
                R.log(
                    f"[{cfg_name}] decode @{R.fmt_len(L)}: {R.fmt(d.get('tok_s'), '.1f')} tok/s "
                    f"({d.get('steps_timed')} steps, {d.get('chunks')} chunks, cached {d.get('cached_tokens')})"
                )
                save()
        rec["status"] = "ok" if not rec["errors"] else "partial"
    except (CallTimeout, ChildFailed, Exception) as exc:  # noqa: BLE001 - record and go on
        rec["status"] = "error"
        rec["errors"].append(_err(exc))
        R.log(f"[{cfg_name}] ERROR: {rec['errors'][-1][:800]}")
    finally:
        _ENGINE_ACTIVE.clear()
        with contextlib.suppress(Exception):
            rec["sage_stats"] = read_sage_stats(stats_dir)
        t = time.time()
        if engine is not None:
            try:
                with deadline(90):
                    engine.shutdown()
            except (CallTimeout, ChildFailed, Exception) as exc:  # noqa: BLE001
                rec["errors"].append(f"shutdown: {_err(exc)}")
        n_killed = kill_children()
        if n_killed:
            rec["errors"].append(f"{n_killed} leftover child process(es) killed after shutdown")
        used, freed = wait_mem_freed(mem_before, args.mem_slack_mib * max(1, args.tp))
        rec["gpu_mem"].update(after_shutdown_mib=used, leak=not freed, shutdown_s=round(time.time() - t, 1))
        rec["wall_s"] = round(time.time() - t_engine, 1)
        stats = rec.get("sage_stats", {})
        R.log(
            f"[{cfg_name}] shut down after {rec['wall_s']}s; GPU memory used {mem_before} -> {used} MiB"
            f"{'' if freed else ' (NOT FREED)'}; sage counters per rank "
            f"{ {r: c.get('prefill_8bit_batches') for r, c in (stats.get('per_rank') or {}).items()} }"
            + (f", prefill kernel {stats['prefill_kernel']}" if stats.get("prefill_kernel") else "")
        )
        os.environ.pop("SGLANG_SAGE_STATS_DIR", None)
        save()
    return rec


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4K only, 2 repeats, 32 decode tokens")
    ap.add_argument(
        "--backends",
        default=None,
        help=f"comma list of {list(ENGINE_CONFIGS)} (default {DEFAULT_ORDER}; with --tp > 1 {DEFAULT_ORDER_TP})",
    )
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size of every engine (default 1)")
    ap.add_argument(
        "--lengths",
        default=None,
        help=f"prompt lengths (default {DEFAULT_LENGTHS}; --tp > 1: {DEFAULT_LENGTHS_TP}; quick 4096)",
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="prefill repeats per length (default 3 up to 32K, 2 above; quick 2)"
    )
    ap.add_argument("--decode-tokens", type=int, default=None, help="decode output tokens (default 128; quick 32)")
    ap.add_argument(
        "--decode-repeats",
        type=int,
        default=1,
        help="streamed decode requests per length, the fastest counts (default 1: one request "
        "already averages decode-tokens - 1 steps)",
    )
    ap.add_argument(
        "--prefill-only",
        action="store_true",
        help="no decode measurement and no CUDA graphs at all (no capture at start: faster engines)",
    )
    ap.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="engine context_length (default: longest prompt + decode tokens + 64, at least 131072)",
    )
    ap.add_argument("--mem-fraction-static", type=float, default=0.8)
    ap.add_argument(
        "--chunked-prefill-size",
        type=int,
        default=None,
        help="default: the longest prompt (each prompt prefilled in one chunk)",
    )
    ap.add_argument("--max-prefill-tokens", type=int, default=None, help="default: max(16384, longest prompt)")
    ap.add_argument("--max-running-requests", type=int, default=16)
    ap.add_argument(
        "--cuda-graph-max-bs",
        type=int,
        default=8,
        help="decode CUDA graphs captured up to this batch (default 8; we decode at batch 1)",
    )
    ap.add_argument(
        "--prefill-cuda-graph",
        choices=("off", "default"),
        default="off",
        help="off (default): no prefill graph capture (SGLang would capture token buckets up to "
        "the chunk size at every start); default: SGLang's choice",
    )
    ap.add_argument("--no-cuda-graph", action="store_true", help="disable all CUDA graphs (decode too)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="no new engine/length once its estimate no longer fits (default 480)",
    )
    ap.add_argument(
        "--min-engine-s",
        type=float,
        default=75.0,
        help="start another engine only with at least this much budget left (default 75)",
    )
    ap.add_argument(
        "--hard-limit-s",
        type=float,
        default=540.0,
        help="watchdog: save, kill engines and exit at this wall time (default 540; one device call "
        "allows 600 s in all)",
    )
    ap.add_argument("--start-timeout-s", type=float, default=240.0)
    ap.add_argument("--warmup-timeout-s", type=float, default=240.0, help="first calls compile kernels")
    ap.add_argument("--call-timeout-s", type=float, default=90.0)
    ap.add_argument(
        "--mem-slack-mib",
        type=float,
        default=2048.0,
        help="GPU memory above the pre-start level still counted as freed (per GPU)",
    )
    ap.add_argument("--model-dir", default="/tmp/llama31_8b_dummy")
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out-root",
        default=str(R.RESULTS_ROOT),
        help="results go to <out-root>/<gpu-slug>[x<tp>]/ (default benchmarks/results; on the device "
        "machine use $OUT so that they come back)",
    )
    ap.add_argument("--out-dir", default=None, help="exact output directory (overrides --out-root)")
    ap.add_argument("--stem", default=None, help="output file stem (default e2e / e2e_quick)")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep other configurations' records of an existing <stem>.json (re-run a subset)",
    )
    ap.add_argument(
        "--render",
        default=None,
        nargs="+",
        metavar="JSON",
        help="no GPU: re-render md/png from result JSON(s); several are combined (a later file's "
        "record of a configuration wins) into <first file's dir>/<--stem or first stem>",
    )
    args = ap.parse_args(argv)
    if args.tp < 1:
        ap.error(f"--tp must be >= 1, got {args.tp}")
    if args.decode_repeats < 1:
        ap.error(f"--decode-repeats must be >= 1, got {args.decode_repeats}")
    args.backends = args.backends or (DEFAULT_ORDER_TP if args.tp > 1 else DEFAULT_ORDER)
    args.lengths = args.lengths or ("4096" if args.quick else DEFAULT_LENGTHS_TP if args.tp > 1 else DEFAULT_LENGTHS)
    try:
        lens = [int(x) for x in args.lengths.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--lengths must be a comma list of integers, got {args.lengths!r}")
    if not lens or min(lens) < 1:
        ap.error(f"--lengths needs positive prompt lengths, got {args.lengths!r}")
    args.repeats = args.repeats or (2 if args.quick else None)
    args.decode_tokens = args.decode_tokens or (32 if args.quick else 128)
    if args.prefill_only:
        args.decode_tokens = 1
        args.no_cuda_graph = True
    args.stem_given = args.stem is not None
    args.stem = args.stem or ("e2e_quick" if args.quick else "e2e")
    args.context_length = args.context_length or context_length_for(lens, args.decode_tokens)
    if args.context_length < max(lens) + args.decode_tokens:
        ap.error(
            f"--context-length {args.context_length} < longest prompt {max(lens)} + {args.decode_tokens} "
            "generated tokens"
        )
    args.chunked_prefill_size = args.chunked_prefill_size or max(lens)
    args.max_prefill_tokens = args.max_prefill_tokens or max(16384, max(lens))
    return args


def combine(docs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """One e2e document from several runs (e.g. the phases of one measurement, or a run re-done for
    the configurations it skipped); a measured record is never replaced by a skipped one."""
    out = dict(docs[0])
    by: dict[str, dict[str, Any]] = {}
    for d in docs:
        for r in d.get("results", []):
            old = by.get(r.get("config"))
            if old is None or r.get("status") != "skipped" or old.get("status") == "skipped":
                by[r.get("config")] = r
    out["results"] = list(by.values())
    if len(docs) > 1:
        out["notes"] = [n for d in docs for n in d.get("notes", [])] + [f"combined from {names}"]
        out["previous_env"] = [d.get("env") for d in docs[1:]]
        tps = sorted({R.e2e_tp(r) for r in out["results"]})
        if len(tps) > 1:
            out["notes"].append(f"WARNING: records of different tp sizes {tps} combined")
    return out


def render_only(paths: list[str], stem: str | None) -> int:
    """Re-render markdown/PNG from existing e2e JSON(s) (no GPU needed)."""
    docs = [R.load_json(p) for p in paths]
    bad = [p for p, d in zip(paths, docs) if d is None]
    if bad:
        R.log(f"cannot read {bad} (missing or not JSON); nothing written")
        return 2
    doc = combine(docs, paths)
    doc["targets"] = R.e2e_all_targets(doc.get("results", []))
    p = Path(paths[0])
    R.log("\n".join(R.target_lines(doc["targets"])))
    R.log(f"wrote {R.write_reports(doc, p.parent, stem or p.stem)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if args.render:
        return render_only(args.render, args.stem if args.stem_given else None)
    t_start = time.time()
    cfgs = [c.strip() for c in args.backends.split(",") if c.strip()]
    bad = [c for c in cfgs if c not in ENGINE_CONFIGS]
    if bad:
        R.log(f"unknown configurations {bad}; choose from {list(ENGINE_CONFIGS)}")
        return 2
    lengths = sorted({int(x) for x in args.lengths.split(",") if x.strip()})
    R.log(
        f"[plan] engines {cfgs} (sequential, one process), tp={args.tp}; prompts {lengths}; prefill repeats "
        f"{[repeats_for(L, args) for L in lengths]}; decode {args.decode_tokens if args.decode_tokens > 1 else 0} "
        f"tokens (streamed, radix hit on the last prefill prompt); context_length {args.context_length}; "
        f"chunked_prefill_size {args.chunked_prefill_size}; max_prefill_tokens {args.max_prefill_tokens}; "
        f"mem_fraction_static {args.mem_fraction_static}; decode CUDA graphs "
        f"{'off' if args.no_cuda_graph else 'on'} (max bs {args.cuda_graph_max_bs}); prefill CUDA graph "
        f"{args.prefill_cuda_graph}"
    )
    for c in cfgs:
        R.log(f"[plan]   {c}: ~{estimate_engine(c, lengths, args):.0f}s")
    R.log(
        f"[plan] rough estimate ~{estimate(lengths, cfgs, args):.0f}s (engine start ~30-90s each, first "
        f"flashinfer use compiles ~1 min); budget {args.budget_s:.0f}s, watchdog {args.hard_limit_s:.0f}s"
    )
    notes = prepare_env()
    model_dir = write_model_dir(Path(args.model_dir), args.context_length)
    env = R.capture_env(with_torch=False, extra_files={"bench_e2e.py": __file__, "_results.py": R.__file__})
    env["gpu_count"] = gpu_count()
    slug = env["gpu_slug"] + (f"x{args.tp}" if args.tp > 1 else "")
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.out_root) / slug
    out_path = out_dir / f"{args.stem}.json"
    cfg = {k: v for k, v in vars(args).items() if k != "render"}
    cfg["model_max_position_embeddings"] = json.loads((model_dir / "config.json").read_text())[
        "max_position_embeddings"
    ]
    doc: dict[str, Any] = {"kind": "e2e", "env": env, "config": cfg, "notes": notes, "results": []}
    if args.merge and (old := R.load_json(out_path)):
        doc["results"] = [r for r in old.get("results", []) if r.get("config") not in cfgs]
        doc["previous_env"] = [old.get("env")] + list(old.get("previous_env", []))
        doc["notes"].append(f"merged with earlier records of {[r.get('config') for r in doc['results']]}")
    rf = R.ResultsFile(out_path, doc)
    R.log(
        f"[env] GPU {env.get('gpu')} x{env.get('gpu_count')} driver {env.get('driver')} sglang "
        f"{env['versions'].get('sglang')} torch {env['versions'].get('torch')} -> {out_path}"
    )

    def finalize() -> None:
        rf.doc["targets"] = R.e2e_all_targets(rf.doc["results"])
        rf.doc["total_wall_s"] = round(time.time() - t_start, 1)
        R.write_reports(rf.doc, out_dir, args.stem)

    signal.signal(signal.SIGUSR1, _on_sigusr1)
    signal.signal(signal.SIGQUIT, _on_sigquit)
    start_watchdog(args.hard_limit_s, t_start, lambda: (rf.doc["notes"].append("watchdog fired"), finalize()))
    ok, why = sage_registered()
    R.log(f"[env] {why}")
    n_gpu = env.get("gpu_count")
    stats_root = Path(os.environ.get("TMPDIR", "/tmp")) / f"sage_e2e_stats_{os.getpid()}"
    for c in cfgs:
        remaining = args.budget_s - (time.time() - t_start)
        reason = None
        if n_gpu is not None and n_gpu < args.tp:
            reason = f"--tp {args.tp} needs {args.tp} GPUs, {n_gpu} visible"
        elif "sage_attn" in ENGINE_CONFIGS[c].values() and not ok:
            reason = why
        elif remaining < args.min_engine_s:
            reason = (
                f"time budget: {remaining:.0f}s left < --min-engine-s {args.min_engine_s:.0f}; "
                f"re-run with --backends {c} --stem e2e_rest, then --render {args.stem}.json e2e_rest.json"
            )
        if reason:
            R.log(f"[{c}] SKIPPED: {reason}")
            kw = {k: v for k, v in engine_kwargs(c, args, model_dir).items() if k != "model_path"}
            rf.replace_where("config", c, {"config": c, "status": "skipped", "reason": reason, "engine_args": kw})
            continue
        run_engine(c, args, model_dir, lengths, rf, t_start, stats_root)
    shutil.rmtree(stats_root, ignore_errors=True)  # every engine's counters are in the JSON by now
    finalize()
    R.log(
        "[targets] issue #11: prefill >= 1.1x fa3 at 32K and >= 1.2x at 128K, decode >= "
        f"{R.I11_E2E_MIN_DECODE}x fa3 (unchanged); issue #16: 8-bit prefill on every TP rank; issue #5: 32K "
        "prefill >= 1.4x flashinfer / 2.5x triton, decode 4K-32K >= flashinfer"
    )
    for line in R.target_lines(rf.doc["targets"]) or ["N/A  nothing to compare"]:
        R.log("  " + line)
    R.log(f"[done] {rf.doc['total_wall_s']}s; results in {out_dir}/{args.stem}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    _rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_rc)  # SGLang may leave non-daemon threads behind; everything is written by now
