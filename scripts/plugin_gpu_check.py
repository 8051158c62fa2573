"""GPU evidence for the SGLang plugin route (issue 14): a pristine SGLang 0.5.17 + this project's wheel, nothing else.

Run by ``bash scripts/gpu_session.sh plugin`` on the GPU machine after the offline bundle (/tmp/site,
/tmp/smollm2, /tmp/sglang_env.sh). Steps, each recorded in ``$OUT/plugin_evidence.json`` as soon as it ends
(a failed step is a recorded result, never an abort):

1. ``pristine``  — /tmp/site is made pristine (``apply.py revert`` if an earlier phase applied it) and proven
   so: server_args.py / attention_registry.py hash to the manifest's pre-images, no ``sage_attn`` path.
2. ``install``   — ``pip wheel`` of this project (pyproject, README, sglang_sage/, overlay/ copied to /tmp) and
   ``pip install --target /tmp/sage_plugin``: what ``pip install sglang-sage`` does. Children then run with
   ``PYTHONPATH=/tmp/site:/tmp/sage_plugin`` from an empty cwd, so the checkout itself is never imported.
3. ``engine``    — ``sglang.Engine(attention_backend="sage_attn")`` in a child: entry point discovered, plugin
   state, then greedy text, a radix hit, decode with CUDA graphs, counters from the scheduler process.
4. ``launch_server`` — ``python -m sglang.launch_server --attention-backend sage_attn``: completion + counters.
5. ``serve_hybrid``  — ``sglang serve --prefill-attention-backend sage_attn --decode-attention-backend triton``.
6. ``tp2``       — the Engine with ``tp_size=2`` (two scheduler processes), only when 2 GPUs are visible.
7. ``filtered``  — ``SGLANG_PLUGINS=another_plugin``: launch_server must reject ``--attention-backend sage_attn``.

Expected duration on a warm H200: ~3 min (each start ~30-40 s; the first one also compiles the Triton kernels).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SITE = Path(os.environ.get("SGLANG_SITE", "/tmp/site"))
MODEL = os.environ.get("SGLANG_SAGE_TEST_MODEL", "/tmp/smollm2")
SRC, WHEELS, TARGET, RUN_DIR, LOGS = (
    Path(p) for p in ("/tmp/sage_src", "/tmp/sage_whl", "/tmp/sage_plugin", "/tmp/sage_run", "/tmp/sage_plugin_logs")
)
PROMPTS = ["The capital of France is", "Hello, my name is", "The three primary colors are"]
PREFIX = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(40))
ENGINE_KW: dict[str, Any] = dict(
    model_path=MODEL, sampling_backend="pytorch", grammar_backend="none", mem_fraction_static=0.3, log_level="warning"
)
SERVER_FLAGS = [
    "--sampling-backend",
    "pytorch",
    "--grammar-backend",
    "none",
    "--mem-fraction-static",
    "0.3",
    "--disable-cuda-graph",
    "--skip-server-warmup",
    "--log-level",
    "warning",
    "--host",
    "127.0.0.1",
]


# -- child: runs under the plugin-only environment ----------------------------------------------------


def child_engine(out_path: Path, tp: int) -> None:
    """Discovery + plugin state + one Engine (the child's own process is the Engine's main process)."""
    res: dict[str, Any] = {"pid": os.getpid()}

    def save() -> None:
        out_path.write_text(json.dumps(res, indent=1, default=str))

    from importlib.metadata import entry_points

    res["entry_points"] = [
        f"{ep.name} = {ep.value} ({ep.dist.name if ep.dist else '?'})"
        for ep in entry_points(group="sglang.srt.plugins")
    ]
    import sglang
    from sglang.srt.plugins import load_plugins

    load_plugins()
    import importlib.util

    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES

    import sglang_sage
    from sglang_sage import plugin

    spec = importlib.util.find_spec("sglang.srt.layers.attention.sage_attn_backend")
    res.update(
        sglang_file=sglang.__file__,
        sglang_version=getattr(sglang, "__version__", None),
        sglang_sage_file=sglang_sage.__file__,
        plugin_state=vars(plugin.STATE),
        choice_count=ATTENTION_BACKEND_CHOICES.count("sage_attn"),
        factory_is_plugin=ATTENTION_BACKENDS.get("sage_attn") is plugin.create_sage_attn_backend,
        backend_origin=spec.origin if spec else None,
    )
    save()
    t0 = time.time()
    engine = sglang.Engine(
        attention_backend="sage_attn", tp_size=tp, cuda_graph_max_bs=4, disable_prefill_cuda_graph=True, **ENGINE_KW
    )
    try:
        res["start_s"] = round(time.time() - t0, 1)
        greedy = {"temperature": 0, "max_new_tokens": 12}
        res["greedy"] = [o["text"] for o in engine.generate(PROMPTS, greedy)]
        cold = engine.generate(PREFIX + " Question: what jumps?", greedy)["text"]
        repeat = engine.generate(PREFIX + " Question: what jumps?", greedy)["text"]  # radix hit: extend with prefix
        res["radix"] = {"cold": cold, "repeat": repeat, "equal": cold == repeat}
        info = engine.get_server_info()
        res["server_info"] = {
            k: info.get(k)
            for k in ("attention_backend", "prefill_attention_backend", "decode_attention_backend", "tp_size")
        }
        save()
    finally:
        engine.shutdown()
    res["done"] = True
    save()


# -- driver -------------------------------------------------------------------------------------------


class Evidence:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.doc: dict[str, Any] = {
            "issue": 14,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "steps": {},
            "verdict": "incomplete",
        }
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.doc, indent=1, default=str))

    def step(self, name: str, fn: Any, *args: Any) -> dict[str, Any]:
        t0 = time.time()
        rec: dict[str, Any]
        try:
            rec = fn(*args)
        except Exception as e:  # noqa: BLE001 - a failed step is a result
            rec = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        rec["seconds"] = round(time.time() - t0, 1)
        self.doc["steps"][name] = rec
        self.save()
        print(f"[plugin] {name}: ok={rec.get('ok')} ({rec['seconds']}s) {rec.get('error', '')}", flush=True)
        return rec


def run(cmd: list[str], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """rc (None on timeout) and the whole stdout/stderr; callers keep tails in the evidence."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        return {"rc": None, "timeout": True, "stdout": str(e.stdout or ""), "stderr": str(e.stderr or "")}
    except OSError as e:  # e.g. no nvidia-smi
        return {"rc": None, "stdout": "", "stderr": f"{type(e).__name__}: {e}"}
    return {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}


def tails(r: dict[str, Any], n: int = 1500) -> dict[str, Any]:
    return {"rc": r["rc"], "stdout": r["stdout"][-n:], "stderr": r["stderr"][-n:]}


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def apply_state() -> str | None:
    """`apply.py status` of /tmp/site: pristine / applied / partially applied / drifted (None: it failed)."""
    r = run([sys.executable, str(REPO / "apply.py"), "status", "--sglang-dir", str(SITE), "--json"], 120)
    try:
        return json.loads(r.get("stdout", ""))["state"]
    except (ValueError, KeyError, TypeError):
        return None


def step_pristine() -> dict[str, Any]:
    import tomllib  # Python >= 3.11 (the GPU image has 3.12); no third-party module needed here

    rec: dict[str, Any] = {"state_before": apply_state()}
    if rec["state_before"] != "pristine":  # an earlier phase (build/tests/verify) applied the overlay
        rev = run([sys.executable, str(REPO / "apply.py"), "revert", "--sglang-dir", str(SITE), "--json"], 300)
        rec["revert"] = tails(rev, 800)
        rec["state_after_revert"] = apply_state()
    manifest = tomllib.loads((REPO / "patches/0.5.17/manifest.toml").read_text())
    hashes = {}
    for rel, pins in manifest["files"].items():
        got = sha256(SITE / rel.removeprefix("python/"))
        hashes[rel] = {"pre": pins["pre"], "now": got, "pristine": got == pins["pre"]}
    # overlay files and their bytecode (SGLang's own multimodal_gen has unrelated sage_attn*.py files)
    sys.path.insert(0, str(REPO))
    from sglang_sage.plugin import overlay_files

    leftovers = [rel for rel in overlay_files(REPO / "overlay") if (SITE / rel).exists()]
    leftovers += sorted(str(p.relative_to(SITE)) for p in (SITE / "sglang/srt/layers/attention").rglob("*sage_attn*"))
    rec.update(files=hashes, sage_attn_paths_in_site=leftovers)
    rec["ok"] = all(h["pristine"] for h in hashes.values()) and not leftovers
    return rec


def step_install() -> dict[str, Any]:
    for d in (SRC, WHEELS, TARGET):
        shutil.rmtree(d, ignore_errors=True)
    SRC.mkdir(parents=True)
    for name in ("sglang_sage", "overlay"):
        shutil.copytree(REPO / name, SRC / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, SRC / name)
    pip = [sys.executable, "-m", "pip"]
    build = run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", str(SRC), "-w", str(WHEELS)], 240)
    wheels = sorted(WHEELS.glob("sglang_sage-*.whl"))
    if build["rc"] != 0 or not wheels:
        return {"ok": False, "error": "pip wheel failed", "build": tails(build)}
    inst = run(
        [*pip, "install", "--no-deps", "--no-index", "--no-compile", "--target", str(TARGET), str(wheels[0])], 240
    )
    if inst["rc"] != 0:
        return {"ok": False, "error": "pip install --target failed", "install": tails(inst)}
    shipped = sorted(str(p.relative_to(TARGET)) for p in (TARGET / "sglang_sage/_overlay").rglob("*") if p.is_file())
    eps = (next(TARGET.glob("sglang_sage-*.dist-info")) / "entry_points.txt").read_text()
    return {
        "ok": "sglang.srt.plugins" in eps and bool(shipped),
        "wheel": wheels[0].name,
        "entry_points_txt": eps,
        "overlay_files_in_install": shipped,
    }


def child_env(stats: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SGLANG_PLUGINS", "SGLANG_SAGE_PLUGIN"))}
    env["PYTHONPATH"] = f"{SITE}{os.pathsep}{TARGET}"  # the bundle's SGLang (pristine) + the installed wheel only
    env["SGLANG_SAGE_DECODE_BACKEND"] = "triton"  # no flashinfer JIT build on a fresh machine: the plugin is the point
    if stats is not None:
        shutil.rmtree(stats, ignore_errors=True)
        stats.mkdir(parents=True)
        env["SGLANG_SAGE_STATS_DIR"] = str(stats)
    env.update(extra)
    return env


def stats_of(stats: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from sglang_sage.counters import read_counters_detail as read_stats_detail

    return read_stats_detail(stats)


def step_engine(tp: int, timeout: float) -> dict[str, Any]:
    stats = LOGS / f"stats_engine_tp{tp}"
    out = LOGS / f"engine_tp{tp}.json"
    out.unlink(missing_ok=True)
    log = LOGS / f"engine_tp{tp}.log"
    sys.path.insert(0, str(REPO))
    from sglang_sage.verify.procs import Proc

    # own process group: a timeout takes the Engine's spawned scheduler processes down with it
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-engine", str(out), "--tp", str(tp)]
    rc = Proc(f"engine_tp{tp}", cmd, child_env(stats), log, cwd=str(RUN_DIR)).wait(timeout)
    res = json.loads(out.read_text()) if out.is_file() else {}
    st = stats_of(stats)
    c = st["counters"]
    criteria = {
        "plugin_registered": (res.get("plugin_state") or {}).get("status") == "registered",
        "backend_from_installed_wheel": str(res.get("backend_origin", "")).startswith(str(TARGET)),
        "engine_done": bool(res.get("done")) and rc == 0,
        "prefill_8bit_ran": c.get("prefill_8bit_layer_calls", 0) > 0,
        "extend_prefix_8bit_ran": c.get("extend_prefix_8bit_layer_calls", 0) > 0,
        "decode_ran": c.get("decode_batches", 0) > 0,
        "cuda_graph_replayed": c.get("cuda_graph_decode_replays", 0) > 0,
        "counters_from_scheduler_processes": st["processes"] == tp and res.get("pid") not in st["pids"],
        "radix_repeat_equal": bool((res.get("radix") or {}).get("equal")),
    }
    return {
        "ok": all(criteria.values()),
        "criteria": criteria,
        "rc": rc,
        "child": res,
        "stats": st,
        "log_tail": log.read_text(errors="replace").splitlines()[-25:],
    }


def step_server(name: str, argv: list[str], timeout: float, hybrid: bool) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from sglang_sage.verify.procs import Proc
    from sglang_sage.verify.server import free_port, http

    stats = LOGS / f"stats_{name}"
    port = free_port()
    cmd = [*argv, "--model-path", MODEL, "--port", str(port), *SERVER_FLAGS]
    base = f"http://127.0.0.1:{port}"
    rec: dict[str, Any] = {"cmd": " ".join(cmd)}
    proc = Proc(name, cmd, child_env(stats), LOGS / f"{name}.log", cwd=str(RUN_DIR))
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.poll()} before it was ready")
            try:
                if http("GET", base + "/health", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, OSError, TimeoutError):
                pass
            time.sleep(1.0)
        else:
            raise TimeoutError(f"not healthy within {timeout:.0f}s")
        rec["start_s"] = round(time.time() - (deadline - timeout), 1)
        status, body = http(
            "POST",
            base + "/v1/completions",
            {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0},
            timeout=60,
        )
        rec["completion"] = {"status": status, "text": body["choices"][0]["text"] if status == 200 else str(body)[:500]}
        texts = []
        for _ in range(2):  # the second one is a radix hit: extend with a cached prefix
            status, body = http(
                "POST",
                base + "/generate",
                {"text": PREFIX + " Question: what jumps?", "sampling_params": {"max_new_tokens": 8, "temperature": 0}},
                timeout=60,
            )
            texts.append(body.get("text") if status == 200 and isinstance(body, dict) else f"{status}: {body}")
        rec["radix_texts"] = texts
        status, info = http("GET", base + "/server_info", timeout=30)
        if status == 200 and isinstance(info, dict):
            rec["server_info"] = {
                k: info.get(k) for k in ("attention_backend", "prefill_attention_backend", "decode_attention_backend")
            }
    except Exception as e:  # noqa: BLE001
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        proc.kill()
        rec["log_tail"] = list(proc.tail)[-25:]
    st = stats_of(stats)
    c = st["counters"]
    info = rec.get("server_info") or {}
    criteria = {
        "completion_200": (rec.get("completion") or {}).get("status") == 200,
        "prefill_8bit_ran": c.get("prefill_8bit_layer_calls", 0) > 0,
        "extend_prefix_8bit_ran": c.get("extend_prefix_8bit_layer_calls", 0) > 0,
    }
    if hybrid:
        criteria["server_info_prefill_is_sage"] = info.get("prefill_attention_backend") == "sage_attn"
        criteria["decode_not_in_sage"] = c.get("decode_batches", 0) == 0  # decode went to --decode-attention-backend
    else:
        criteria["server_info_is_sage"] = info.get("attention_backend") == "sage_attn"
        criteria["decode_in_sage"] = c.get("decode_batches", 0) > 0
    rec.update(ok=all(criteria.values()) and "error" not in rec, criteria=criteria, stats=st)
    return rec


def step_filtered() -> dict[str, Any]:
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", MODEL, "--attention-backend", "sage_attn"]
    r = run(cmd, 120, env=child_env(None, SGLANG_PLUGINS="another_plugin"), cwd=RUN_DIR)
    text = r.get("stdout", "") + r.get("stderr", "")
    ok = r["rc"] == 2 and any("invalid choice" in line and "sage_attn" in line for line in text.splitlines())
    return {"ok": ok, "cmd": "SGLANG_PLUGINS=another_plugin " + " ".join(cmd), "rc": r["rc"], "tail": text[-1200:]}


def gpu_count() -> int:
    r = run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], 30)
    return len([line for line in r.get("stdout", "").splitlines() if line.strip()])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/plugin_out")))
    ap.add_argument("--budget-s", type=float, default=520.0, help="skip steps that cannot finish within this")
    ap.add_argument("--child-engine", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--tp", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_engine:
        child_engine(a.child_engine, a.tp)
        return 0
    t_end = time.time() + a.budget_s
    sys.path.insert(0, str(REPO))
    from sglang_sage.verify.procs import install_cleanup

    install_cleanup()  # SIGTERM (the shell's timeout) / exit: no SGLang process outlives this script
    a.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    ev = Evidence(a.out / "plugin_evidence.json")
    ev.doc["gpus"] = n_gpus = gpu_count()
    ev.doc["python"] = sys.version.split()[0]
    ev.doc["git_commit"] = os.environ.get("SGLANG_SAGE_GIT_COMMIT")

    def left() -> float:
        return t_end - time.time()

    ok_pre = ev.step("pristine", step_pristine).get("ok")
    ok_inst = ev.step("install", step_install).get("ok")
    if ok_pre and ok_inst:
        ev.step("engine", step_engine, 1, min(240.0, left() - 60))
        plan = [
            (
                "launch_server",
                [sys.executable, "-m", "sglang.launch_server", "--attention-backend", "sage_attn"],
                False,
            ),
            (
                "serve_hybrid",
                [
                    sys.executable,
                    *_serve_entry(),
                    "serve",
                    "--model-type",
                    "llm",
                    "--prefill-attention-backend",
                    "sage_attn",
                    "--decode-attention-backend",
                    "triton",
                ],
                True,
            ),
        ]
        for name, argv, hybrid in plan:
            if left() < 70:
                ev.doc["steps"][name] = {"ok": False, "error": "not run: time budget"}
                continue
            ev.step(name, step_server, name, argv, min(150.0, left() - 20), hybrid)
        if n_gpus >= 2 and left() > 150:
            ev.step("tp2", step_engine, 2, min(240.0, left() - 30))
        else:
            ev.doc["steps"]["tp2"] = {"ok": None, "note": f"not run: {n_gpus} GPU(s) visible or no time left"}
        if left() > 40:
            ev.step("filtered", step_filtered)
    required = ["pristine", "install", "engine", "launch_server", "serve_hybrid", "filtered"]
    ev.doc["verdict"] = "pass" if all(ev.doc["steps"].get(s, {}).get("ok") for s in required) else "fail"
    ev.doc["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ev.save()
    with tarfile.open(a.out / "plugin_logs.tgz", "w:gz") as tf:
        tf.add(LOGS, arcname="plugin_logs")
    print(f"[plugin] verdict: {ev.doc['verdict']}", flush=True)
    return 0 if ev.doc["verdict"] == "pass" else 1


def _serve_entry() -> list[str]:
    """`sglang serve` as installed: the bundle's console script when present, else what it runs."""
    script = SITE / "bin" / "sglang"
    if script.is_file():
        return [str(script)]
    return ["-c", "import sys; sys.argv[0] = 'sglang'; from sglang.cli.main import main; sys.exit(main())"]


if __name__ == "__main__":
    sys.exit(main())
