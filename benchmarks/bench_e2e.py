#!/usr/bin/env python3
"""End-to-end SGLang benchmark: prefill latency and decode speed of Llama-3.1-8B geometry
(dummy weights) with the attention backends side by side, one GPU, one process.

For each engine configuration (``sage_attn``; ``sage_attn+flashinfer`` = sage_attn prefill with
flashinfer decode; ``flashinfer``; ``triton``) an ``sglang.Engine`` is started, warmed on every
prompt length, measured and shut down, one after the other in this process:

* prefill: wall latency of ``engine.generate(input_ids=..., max_new_tokens=1)``, minimum over
  ``--repeats`` calls, each with a fresh random prompt (so the radix cache never hits; the
  ``cached_tokens`` of every call is recorded to prove it);
* decode: ``(n-1) / (T(n tokens) - T(1 token))`` tokens/s at batch 1 (``ignore_eos``), minimum
  times over ``--decode-repeats`` fresh prompts; CUDA graphs stay on for decode (SGLang default),
  captured up to batch ``--cuda-graph-max-bs``.

The model directory holds only a Llama-3.1-8B ``config.json`` (``load_format="dummy"``,
``skip_tokenizer_init=True``). Robustness: every engine and every call is guarded (errors are
recorded, the run goes on), each call has a timeout, a global watchdog ends the run before
``--hard-limit-s`` (results are written after every measurement), and GPU memory is checked after
every shutdown. Results: ``benchmarks/results/<gpu>/e2e.{json,md,png}``.

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
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}

# engine configuration name -> attention backend arguments
ENGINE_CONFIGS: dict[str, dict[str, str]] = {
    "sage_attn": {"attention_backend": "sage_attn"},
    "sage_attn+flashinfer": {"prefill_attention_backend": "sage_attn", "decode_attention_backend": "flashinfer"},
    "flashinfer": {"attention_backend": "flashinfer"},
    "triton": {"attention_backend": "triton"},
}
DEFAULT_ORDER = "sage_attn,flashinfer,triton,sage_attn+flashinfer"


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
    for loop in (getattr(getattr(engine, "tokenizer_manager", None), "event_loop", None),
                 getattr(engine, "loop", None)):
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
    if tm is not None and loop is not None and getattr(tm, "event_loop", 1) is None \
            and callable(getattr(tm, "auto_create_handle_loop", None)):
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
    """Bundle on PYTHONPATH (spawned children need it), offline HF, JIT env from /tmp/sglang_env.sh."""
    notes = []
    pp = os.environ.get("PYTHONPATH", "")
    if os.path.isdir(SITE) and SITE not in pp.split(os.pathsep):
        os.environ["PYTHONPATH"] = SITE + (os.pathsep + pp if pp else "")
        notes.append(f"PYTHONPATH prefixed with {SITE}")
    if os.path.isdir(SITE) and SITE not in sys.path:
        sys.path.insert(0, SITE)
    for k, v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("PYTHONUNBUFFERED", "1"),
                 ("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                 ("NVSHMEM_DISABLE_NVLS", "1")):
        os.environ.setdefault(k, v)
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


def write_model_dir(path: Path) -> Path:
    """A directory holding only Llama-3.1-8B's config.json (dummy weights, no tokenizer)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(LLAMA31_8B_CONFIG, indent=1) + "\n")
    return path


def gpu_mem_used_mib() -> float | None:
    """GPU 0 memory in use (MiB) from nvidia-smi (no CUDA context in this process)."""
    v = R.nvidia_smi_query("memory.used")
    try:
        return float(v[0]) if v else None
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
    """Sum the sage_attn backend counters written by the scheduler processes (CONTRACTS.md)."""
    total: dict[str, int] = {}
    files = sorted(glob.glob(str(stats_dir / "sage_attn_stats_*.json")))
    decode_backends = set()
    for f in files:
        try:
            d = json.loads(Path(f).read_text())
        except (OSError, ValueError):
            continue
        for k, v in (d.get("counters") or {}).items():
            if isinstance(v, (int, float)):
                total[k] = total.get(k, 0) + int(v)
        if d.get("decode_backend"):
            decode_backends.add(str(d["decode_backend"]))
    return {"files": len(files), "counters": total, "decode_backend": sorted(decode_backends)}


def sage_registered() -> tuple[bool, str]:
    """Whether this SGLang knows the ``sage_attn`` attention backend."""
    try:
        from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES
    except Exception as exc:  # noqa: BLE001
        return False, f"cannot import sglang.srt.server_args ({type(exc).__name__}: {exc})"
    if "sage_attn" in ATTENTION_BACKEND_CHOICES:
        return True, "sage_attn registered"
    return False, ("sage_attn is not an attention backend of this SGLang: run "
                   "`python apply.py --sglang-dir /tmp/site --no-tests` first")


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


def engine_kwargs(cfg_name: str, args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    """Engine arguments of one configuration (recorded in the results)."""
    kw: dict[str, Any] = {
        "model_path": str(model_dir),
        "load_format": "dummy",
        "skip_tokenizer_init": True,
        "dtype": "bfloat16",
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
    for k in ("attention_backend", "prefill_attention_backend", "decode_attention_backend",
              "chunked_prefill_size", "max_prefill_tokens", "mem_fraction_static", "max_running_requests",
              "max_total_tokens", "page_size", "kv_cache_dtype", "cuda_graph_config", "context_length"):
        if sa is not None and hasattr(sa, k):
            v = getattr(sa, k)
            out[k] = v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
    return out


def _err(exc: BaseException) -> str:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return f"{type(exc).__name__}: {str(exc)[:500]} | {''.join(tb[-2:])[-600:]}".strip()


def run_engine(cfg_name: str, args: argparse.Namespace, model_dir: Path, lengths: list[int],
               rf: R.ResultsFile, t_start: float, stats_root: Path) -> dict[str, Any]:
    """Start one engine, warm it, measure prefill and decode, shut it down. Never raises."""
    kw = engine_kwargs(cfg_name, args, model_dir)
    rec: dict[str, Any] = {"config": cfg_name, "status": "starting",
                           "engine_args": {k: v for k, v in kw.items() if k != "model_path"},
                           "prefill": {}, "decode": {}, "warmup_s": {}, "errors": []}
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

    def left() -> float:
        return args.budget_s - (time.time() - t_start)

    try:
        import sglang

        R.log(f"[{cfg_name}] starting engine: {ENGINE_CONFIGS[cfg_name]}")
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
        rec["status"] = "running"
        R.log(f"[{cfg_name}] engine up in {rec['startup_s']}s; resolved {rec['resolved']}")
        save()
        # warm every prompt length (prefill shape + a decode step); flashinfer compiles on first use
        for L in lengths:
            t = time.time()
            timed_generate(engine, rand_prompt(rng, L), 2, args.warmup_timeout_s)
            if L == lengths[0]:
                reinstall_sigquit(engine)  # the first request installed SGLang's running-phase handler
            rec["warmup_s"][str(L)] = round(time.time() - t, 2)
            R.log(f"[{cfg_name}] warm-up {R.fmt_len(L)}: {rec['warmup_s'][str(L)]}s")
        save()
        for L in lengths:
            if left() < 5:
                rec["errors"].append(f"time budget used up before prefill {L}")
                break
            times, cached, ptoks = [], [], []
            for _ in range(args.repeats):
                dt, meta = timed_generate(engine, rand_prompt(rng, L), 1, args.call_timeout_s)
                times.append(dt * 1e3)
                cached.append(meta.get("cached_tokens"))
                ptoks.append(meta.get("prompt_tokens"))
            rec["prefill"][str(L)] = {"ms": min(times), "ms_all": [round(x, 2) for x in times],
                                      "cached_tokens": cached, "prompt_tokens": ptoks[0] if ptoks else None}
            R.log(f"[{cfg_name}] prefill {R.fmt_len(L)}: min {min(times):.1f} ms "
                  f"(all {[round(x, 1) for x in times]}, cached_tokens {cached})")
            save()
        n = args.decode_tokens
        for L in lengths if n > 1 else []:
            if left() < 5:
                rec["errors"].append(f"time budget used up before decode {L}")
                break
            t1 = rec["prefill"].get(str(L), {}).get("ms")
            tn, comp = [], []
            for _ in range(args.decode_repeats):
                dt, meta = timed_generate(engine, rand_prompt(rng, L), n, args.call_timeout_s)
                tn.append(dt * 1e3)
                comp.append(meta.get("completion_tokens"))
            d: dict[str, Any] = {"n_tokens": n, "ms_n": min(tn), "ms_n_all": [round(x, 2) for x in tn],
                                 "ms_1": t1, "completion_tokens": comp}
            if t1 is not None and min(tn) > t1:
                d["tok_s"] = (n - 1) / ((min(tn) - t1) / 1e3)
                d["ms_per_token"] = (min(tn) - t1) / (n - 1)
            if any(c is not None and c != n for c in comp):
                rec["errors"].append(f"decode {L}: completion_tokens {comp} != {n}")
            rec["decode"][str(L)] = d
            R.log(f"[{cfg_name}] decode @{R.fmt_len(L)}: {R.fmt(d.get('tok_s'), '.1f')} tok/s "
                  f"({n} tokens in {min(tn):.1f} ms, 1 token {R.fmt(t1, '.1f')} ms)")
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
        used, freed = wait_mem_freed(mem_before, args.mem_slack_mib)
        rec["gpu_mem"].update(after_shutdown_mib=used, leak=not freed, shutdown_s=round(time.time() - t, 1))
        R.log(f"[{cfg_name}] shut down; GPU memory used {mem_before} -> {used} MiB"
              f"{'' if freed else ' (NOT FREED)'}; sage counters {rec.get('sage_stats', {}).get('counters')}")
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
    ap.add_argument("--backends", default=DEFAULT_ORDER, help=f"comma list of {list(ENGINE_CONFIGS)}")
    ap.add_argument("--lengths", default=None, help="prompt lengths (default 4096,16384,32768; quick 4096)")
    ap.add_argument("--repeats", type=int, default=None, help="prefill repeats (default 3; quick 2)")
    ap.add_argument("--decode-tokens", type=int, default=None, help="decode output tokens (default 128; quick 32)")
    ap.add_argument("--decode-repeats", type=int, default=None, help="decode repeats (default 2; quick 1)")
    ap.add_argument("--mem-fraction-static", type=float, default=0.8)
    ap.add_argument("--chunked-prefill-size", type=int, default=None,
                    help="default: the longest prompt (each prompt prefilled in one chunk)")
    ap.add_argument("--max-prefill-tokens", type=int, default=None, help="default: max(16384, longest prompt)")
    ap.add_argument("--max-running-requests", type=int, default=16)
    ap.add_argument("--cuda-graph-max-bs", type=int, default=8,
                    help="decode CUDA graphs captured up to this batch (default 8; we decode at batch 1)")
    ap.add_argument("--prefill-cuda-graph", choices=("off", "default"), default="off",
                    help="off (default): no prefill graph capture (SGLang would capture token buckets up to "
                         "the chunk size at every start); default: SGLang's choice")
    ap.add_argument("--no-cuda-graph", action="store_true", help="disable all CUDA graphs (decode too)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="no new engine/measurement after this (default 420)")
    ap.add_argument("--min-engine-s", type=float, default=75.0,
                    help="start another engine only with at least this much budget left (default 75)")
    ap.add_argument("--hard-limit-s", type=float, default=470.0,
                    help="watchdog: save, kill engines and exit at this wall time (default 470)")
    ap.add_argument("--start-timeout-s", type=float, default=240.0)
    ap.add_argument("--warmup-timeout-s", type=float, default=240.0, help="first calls compile kernels")
    ap.add_argument("--call-timeout-s", type=float, default=90.0)
    ap.add_argument("--mem-slack-mib", type=float, default=2048.0,
                    help="GPU memory above the pre-start level still counted as freed")
    ap.add_argument("--model-dir", default="/tmp/llama31_8b_dummy")
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-root", default=str(R.RESULTS_ROOT),
                    help="results go to <out-root>/<gpu-slug>/ (default benchmarks/results; on the device "
                         "machine use $OUT so that they come back)")
    ap.add_argument("--out-dir", default=None, help="exact output directory (overrides --out-root)")
    ap.add_argument("--stem", default=None, help="output file stem (default e2e / e2e_quick)")
    ap.add_argument("--merge", action="store_true",
                    help="keep other configurations' records of an existing <stem>.json (re-run a subset)")
    ap.add_argument("--render", default=None, nargs="+", metavar="JSON",
                    help="no GPU: re-render md/png from result JSON(s); several are combined (a later file's "
                         "record of a configuration wins) into <first file's dir>/<--stem or first stem>")
    args = ap.parse_args(argv)
    args.lengths = args.lengths or ("4096" if args.quick else "4096,16384,32768")
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.decode_tokens = args.decode_tokens or (32 if args.quick else 128)
    args.decode_repeats = args.decode_repeats or (1 if args.quick else 2)
    args.stem_given = args.stem is not None
    args.stem = args.stem or ("e2e_quick" if args.quick else "e2e")
    lens = [int(x) for x in args.lengths.split(",") if x.strip()]
    args.chunked_prefill_size = args.chunked_prefill_size or max(lens)
    args.max_prefill_tokens = args.max_prefill_tokens or max(16384, max(lens))
    return args


def estimate(lengths: list[int], cfgs: list[str], args: argparse.Namespace) -> float:
    """Very rough seconds for the plan (startup ~60s per engine dominates)."""
    total = 0.0
    for c in cfgs:
        att_tflops = 120.0 if c == "triton" else 400.0
        t = 60.0
        for L in lengths:
            pre = 2 * 8e9 * L / 600e12 + 32 * 4 * 4096 * L * L / 2 / (att_tflops * 1e12)
            t += (1 + args.repeats + args.decode_repeats) * pre + args.decode_repeats * args.decode_tokens * 0.008
        total += t
    return total


def combine(docs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """One e2e document from several runs (e.g. a run re-done for the configurations it skipped)."""
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
    return out


def render_only(paths: list[str], stem: str | None) -> int:
    """Re-render markdown/PNG from existing e2e JSON(s) (no GPU needed)."""
    docs = [R.load_json(p) for p in paths]
    if any(d is None for d in docs):
        R.log(f"cannot read one of {paths}")
        return 2
    doc = combine(docs, paths)
    doc["targets"] = R.evaluate_e2e_targets(doc.get("results", []))
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
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    R.log(f"[plan] engines {cfgs} (sequential, one process); prompts {lengths}; prefill repeats "
          f"{args.repeats}; decode {args.decode_tokens} tokens x {args.decode_repeats}; chunked_prefill_size "
          f"{args.chunked_prefill_size}; max_prefill_tokens {args.max_prefill_tokens}; mem_fraction_static "
          f"{args.mem_fraction_static}; decode CUDA graphs {'off' if args.no_cuda_graph else 'on'} "
          f"(max bs {args.cuda_graph_max_bs}); prefill CUDA graph {args.prefill_cuda_graph}")
    R.log(f"[plan] rough estimate ~{estimate(lengths, cfgs, args):.0f}s (engine start ~40-120s each, first "
          f"flashinfer use compiles); budget {args.budget_s:.0f}s, watchdog {args.hard_limit_s:.0f}s")
    notes = prepare_env()
    model_dir = write_model_dir(Path(args.model_dir))
    env = R.capture_env(with_torch=False, extra_files={"bench_e2e.py": __file__, "_results.py": R.__file__})
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.out_root) / env["gpu_slug"]
    out_path = out_dir / f"{args.stem}.json"
    cfg = {k: v for k, v in vars(args).items() if k != "render"}
    doc: dict[str, Any] = {"kind": "e2e", "env": env, "config": cfg, "notes": notes, "results": []}
    if args.merge and (old := R.load_json(out_path)):
        doc["results"] = [r for r in old.get("results", []) if r.get("config") not in cfgs]
        doc["previous_env"] = [old.get("env")] + list(old.get("previous_env", []))
        doc["notes"].append(f"merged with earlier records of {[r.get('config') for r in doc['results']]}")
    rf = R.ResultsFile(out_path, doc)
    R.log(f"[env] GPU {env.get('gpu')} driver {env.get('driver')} sglang {env['versions'].get('sglang')} "
          f"torch {env['versions'].get('torch')} -> {out_path}")

    def finalize() -> None:
        rf.doc["targets"] = R.evaluate_e2e_targets(rf.doc["results"])
        rf.doc["total_wall_s"] = round(time.time() - t_start, 1)
        R.write_reports(rf.doc, out_dir, args.stem)

    signal.signal(signal.SIGUSR1, _on_sigusr1)
    signal.signal(signal.SIGQUIT, _on_sigquit)
    start_watchdog(args.hard_limit_s, t_start, lambda: (rf.doc["notes"].append("watchdog fired"), finalize()))
    ok, why = sage_registered()
    R.log(f"[env] {why}")
    stats_root = Path(os.environ.get("TMPDIR", "/tmp")) / f"sage_e2e_stats_{os.getpid()}"
    for c in cfgs:
        remaining = args.budget_s - (time.time() - t_start)
        reason = None
        if "sage_attn" in ENGINE_CONFIGS[c].values() and not ok:
            reason = why
        elif remaining < args.min_engine_s:
            reason = (f"time budget: {remaining:.0f}s left < --min-engine-s {args.min_engine_s:.0f}; "
                      f"re-run with --backends {c} --merge")
        if reason:
            R.log(f"[{c}] SKIPPED: {reason}")
            kw = {k: v for k, v in engine_kwargs(c, args, model_dir).items() if k != "model_path"}
            rf.replace_where("config", c, {"config": c, "status": "skipped", "reason": reason,
                                           "engine_args": kw})
            continue
        run_engine(c, args, model_dir, lengths, rf, t_start, stats_root)
    finalize()
    R.log("[targets] (issue #5: 32K prefill >= 1.4x flashinfer and >= 2.5x triton; decode 4K-32K >= flashinfer)")
    for line in R.target_lines(rf.doc["targets"]) or ["N/A  nothing to compare"]:
        R.log("  " + line)
    R.log(f"[done] {rf.doc['total_wall_s']}s; results in {out_dir}/{args.stem}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    _rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_rc)  # SGLang may leave non-daemon threads behind; everything is written by now
