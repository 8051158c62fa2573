"""GPU worker: one ``sglang.Engine`` for one attention backend runs every engine-side measurement.

Run by the orchestrator as ``python -m sglang_sage.verify.engine_runner --job JOB.json`` in its own
process group, so a hang or crash costs one stage, not the report. One engine start per backend:
every phase reuses it. Each phase is wrapped so its error is recorded and the next phase still
runs; results are rewritten to disk after every phase (a timeout keeps what was done).

SGLang API facts used here (0.5.17): ``Engine.generate(input_ids=[[...]], sampling_params=...,
return_logprob=, logprob_start_len=, top_logprobs_num=)`` returns one dict per request with
``output_ids``, ``text`` (with a tokenizer) and ``meta_info``; ``meta_info["input_token_logprobs"]``
is a list of ``(logprob, token_id, text|None)`` for positions ``logprob_start_len .. len-1`` whose
first entry is ``None``; ``meta_info["input_top_logprobs"]`` is aligned with it (``None`` first,
then lists of ``(logprob, token_id, text|None)``); ``meta_info["cached_tokens"]`` counts radix-cache
hits; ``Engine.flush_cache()`` empties the radix cache; ``Engine.get_server_info()`` carries
``max_total_num_tokens`` and ``internal_states[i]["memory_usage"]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

PREFIX = "[verify]"


def log(tag: str, msg: str) -> None:
    print(f"{PREFIX} [{tag}] {msg}", flush=True)


# ---- pure helpers (CPU-tested) -------------------------------------------------------------


def extract_scored(meta: dict, window_tokens: list[int], logprob_start_len: int, score_from_rel: int,
                   topk: int) -> dict[str, np.ndarray]:
    """Scored positions of one teacher-forced request from SGLang's ``meta_info``.

    Returns ``pos`` (relative), ``tok``, ``lp`` (log-prob of the actual next token), ``topk_ids``
    and ``topk_lp`` ([n, topk]; padded with id -1 / log-prob -1e30 if fewer were returned).
    Checks that SGLang's token ids match the tokens sent (catches an off-by-one in the alignment).
    """
    itl = meta.get("input_token_logprobs")
    if itl is None:
        raise KeyError("meta_info has no input_token_logprobs (return_logprob ignored?)")
    itop = meta.get("input_top_logprobs") if topk > 0 else None
    if topk > 0 and itop is None:
        raise KeyError("meta_info has no input_top_logprobs")
    if itop is not None and len(itop) != len(itl):
        raise ValueError(f"input_top_logprobs has {len(itop)} entries, input_token_logprobs {len(itl)}")
    expected = len(window_tokens) - logprob_start_len
    if len(itl) != expected:
        raise ValueError(f"got {len(itl)} input log-probs, expected {expected} "
                         f"(len {len(window_tokens)} - start {logprob_start_len})")
    pos, tok, lp, tids, tlps = [], [], [], [], []
    for j, entry in enumerate(itl):
        rel = logprob_start_len + j
        if rel < score_from_rel:
            continue
        value, token_id = entry[0], entry[1]
        if value is None:
            raise ValueError(f"no log-prob at scored position {rel}")
        if int(token_id) != int(window_tokens[rel]):
            raise ValueError(f"token id mismatch at position {rel}: SGLang {token_id}, sent {window_tokens[rel]}")
        pos.append(rel)
        tok.append(int(token_id))
        lp.append(float(value))
        if topk > 0:
            row = itop[j] or []
            ids = [int(e[1]) for e in row[:topk]]
            lps = [float(e[0]) for e in row[:topk]]
            ids += [-1] * (topk - len(ids))
            lps += [-1e30] * (topk - len(lps))
            tids.append(ids)
            tlps.append(lps)
    n_expected = len(window_tokens) - score_from_rel
    if len(pos) != n_expected:
        raise ValueError(f"scored {len(pos)} positions, expected {n_expected}")
    out = {"pos": np.asarray(pos, np.int32), "tok": np.asarray(tok, np.int32), "lp": np.asarray(lp, np.float64)}
    if topk > 0:
        out["topk_ids"] = np.asarray(tids, np.int64).reshape(len(pos), topk)
        out["topk_lp"] = np.asarray(tlps, np.float64).reshape(len(pos), topk)
    return out


def describe_output(out: dict, logprob_start_len: int) -> dict:
    """A compact picture of one SGLang output, kept in the results when parsing it failed."""
    meta = out.get("meta_info") or {}
    itl, itop = meta.get("input_token_logprobs"), meta.get("input_top_logprobs")
    return {"keys": sorted(out), "meta_keys": sorted(meta), "logprob_start_len": logprob_start_len,
            "prompt_tokens": meta.get("prompt_tokens"),
            "len_input_token_logprobs": None if itl is None else len(itl),
            "len_input_top_logprobs": None if itop is None else len(itop),
            "first_entries": repr(itl[:3]) if itl else None,
            "first_top": repr(itop[:2])[:600] if itop else None}


def pick_server_info(info: dict) -> dict:
    """The part of ``get_server_info()`` a report needs (the whole dict is saved separately)."""
    keys = ("attention_backend", "prefill_attention_backend", "decode_attention_backend", "sampling_backend",
            "max_total_num_tokens", "max_req_input_len", "chunked_prefill_size", "page_size",
            "mem_fraction_static", "disable_cuda_graph", "cuda_graph_max_bs", "max_running_requests",
            "context_length", "dtype", "kv_cache_dtype", "load_format", "disable_radix_cache", "version",
            "tp_size", "random_seed")
    out = {k: info.get(k) for k in keys if k in info}
    states = info.get("internal_states") or []
    if states and isinstance(states[0], dict):
        out["memory_usage"] = states[0].get("memory_usage")
    return out


WARM_TOKENS = 65_536  # a warm-up batch holds up to this many prompt tokens (at least one request)


def warm_count(batch: int, input_len: int) -> int:
    """Requests in a shape's warm-up: the whole batch when it is small, else enough prompts to cover
    ``WARM_TOKENS`` (warming 32 x 32K prompts would cost as much as the measurement)."""
    return max(1, min(batch, WARM_TOKENS // max(1, input_len)))


def _reps_of(shape: dict, batch: int) -> int:
    """Timed runs of one (shape, batch): ``reps`` is a number or a {batch: number} map."""
    reps = shape.get("reps", 1)
    if isinstance(reps, dict):
        reps = reps.get(str(batch), reps.get(batch, 1))
    return max(1, int(reps))


def _completion_tokens(out: dict) -> int:
    """Generated tokens of one request (meta_info's count, else the ids returned)."""
    n = (out.get("meta_info") or {}).get("completion_tokens")
    return int(n) if isinstance(n, int) else len(out.get("output_ids") or [])


# ---- GPU memory sampling -------------------------------------------------------------------


class MemSampler:
    """Device memory in use (NVML), sampled in a thread: the engine allocates in its scheduler
    process, so the peak must be read device-wide rather than from this process's allocator."""

    def __init__(self, period_s: float = 0.02) -> None:
        self.period_s = period_s
        self.peak_mib: float | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle = None
        self.error: str | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            vis = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
            index = int(vis) if vis.isdigit() else 0
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception as e:  # noqa: BLE001 - any NVML problem only disables the sampler
            self.error = f"NVML unavailable: {type(e).__name__}: {e}"

    def used_mib(self) -> float | None:
        if self._handle is None:
            return None
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                v = self.used_mib()
            except Exception:  # noqa: BLE001
                v = None
            if v is not None:
                self.peak_mib = v if self.peak_mib is None else max(self.peak_mib, v)
                self.samples += 1
            self._stop.wait(self.period_s)

    def start(self) -> None:
        if self._handle is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


def torch_mem_info() -> dict[str, float] | None:
    """(free, total) of this process's view via torch, the cross-check of NVML."""
    try:
        import torch

        free, total = torch.cuda.mem_get_info()
        return {"free_mib": free / 2**20, "total_mib": total / 2**20, "used_mib": (total - free) / 2**20}
    except Exception:  # noqa: BLE001
        return None


# ---- the worker ----------------------------------------------------------------------------


class Results:
    """The worker's JSON output, rewritten atomically after every phase."""

    def __init__(self, path: Path, backend: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"backend": backend, "phases": {}, "errors": {}, "timings_s": {},
                                     "stats": {}, "finished": False}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)

    def error(self, phase: str, exc: BaseException) -> None:
        self.data["errors"][phase] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"
        self.save()


class Worker:
    """Runs the job's phases against one engine."""

    def __init__(self, job: dict) -> None:
        self.job = job
        self.tag = job["tag"]
        self.work = Path(job["work_dir"])
        self.res = Results(Path(job["result_path"]), job["engine_kwargs"].get("attention_backend", "?"))
        self.deadline = float(job.get("deadline") or 0) or None
        self.w = json.loads(Path(job["workload_path"]).read_text())
        self.tokens: list[int] = self.w["tokens"]
        self.engine = None
        self.stats_dir = job.get("stats_dir")
        self._prefill_s_per_token: dict[int, float] = {}
        self.res.data["job_signature"] = job.get("signature")

    # -- utilities
    def time_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.time()

    def snap(self, name: str) -> dict[str, int] | None:
        if not self.stats_dir:
            return None
        try:
            from sglang_sage.counters import read_counters_detail

            detail = read_counters_detail(self.stats_dir)
        except Exception as e:  # noqa: BLE001
            self.res.data["stats"][name] = {"error": str(e)}
            return None
        self.res.data["stats"][name] = detail
        return detail["counters"]

    def flush(self) -> None:
        try:
            self.engine.flush_cache()
        except Exception as e:  # noqa: BLE001 - flushing is best effort; a failure is recorded
            self.res.data.setdefault("flush_errors", []).append(str(e))

    def gen(self, ids: list[list[int]], sp: dict, **kw) -> list[dict]:
        out = self.engine.generate(input_ids=ids, sampling_params=sp, **kw)
        return out if isinstance(out, list) else [out]

    def phase(self, name: str, fn, min_time_s: float = 5.0) -> None:
        if name not in self.job["phases"]:
            return
        if self.time_left() < min_time_s:
            self.res.data["errors"][name] = f"skipped: time budget exhausted ({self.time_left():.0f}s left)"
            log(self.tag, f"{name}: SKIPPED (time budget)")
            self.res.save()
            return
        t0 = time.time()
        log(self.tag, f"{name} ...")
        try:
            fn()
            log(self.tag, f"{name} done in {time.time() - t0:.1f}s")
        except Exception as e:  # noqa: BLE001 - recorded, the next phase still runs
            log(self.tag, f"{name} FAILED: {type(e).__name__}: {str(e)[:300]}")
            self.res.error(name, e)
        self.res.data["timings_s"][name] = round(time.time() - t0, 2)
        self.res.save()

    # -- engine lifecycle
    def start_engine(self) -> bool:
        mem = self.res.data.setdefault("memory", {})
        self.sampler = MemSampler()
        mem["nvml_error"] = self.sampler.error
        mem["before_start_nvml_mib"] = self.sampler.used_mib()
        mem["before_start_torch"] = torch_mem_info()
        kwargs = dict(self.job["engine_kwargs"])
        log(self.tag, f"starting sglang.Engine({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
        t0 = time.time()
        try:
            import sglang

            self.res.data["sglang_version"] = getattr(sglang, "__version__", None)
            self.engine = sglang.Engine(**kwargs)
        except BaseException as e:  # noqa: BLE001 - SystemExit from a child dying counts too
            self.res.data["engine_started"] = False
            self.res.error("engine_start", e)
            log(self.tag, f"engine start FAILED after {time.time() - t0:.1f}s: {type(e).__name__}: {str(e)[:500]}")
            return False
        self.res.data["engine_started"] = True
        self.res.data["timings_s"]["engine_start"] = round(time.time() - t0, 2)
        log(self.tag, f"engine up in {time.time() - t0:.1f}s")
        mem["after_start_nvml_mib"] = self.sampler.used_mib()
        mem["after_start_torch"] = torch_mem_info()
        try:
            info = self.engine.get_server_info()
            (self.work / f"server_info_{self.tag}.json").write_text(json.dumps(info, indent=1, default=str))
            self.res.data["server_info"] = pick_server_info(info)
        except Exception as e:  # noqa: BLE001
            self.res.error("server_info", e)
        self.snap("after_start")
        self.res.save()
        self.sampler.start()
        return True

    def stop_engine(self) -> None:
        self.sampler.stop()
        mem = self.res.data.setdefault("memory", {})
        mem["peak_nvml_mib"] = self.sampler.peak_mib
        mem["nvml_samples"] = self.sampler.samples
        self.snap("final")
        t0 = time.time()
        try:
            if self.engine is not None:
                self.engine.shutdown()
        except Exception as e:  # noqa: BLE001
            self.res.error("engine_shutdown", e)
        self.res.data["timings_s"]["engine_shutdown"] = round(time.time() - t0, 2)
        self.res.save()

    # -- phases
    def run_determinism(self) -> None:
        d = self.w["determinism"]
        sp = {"temperature": 0.0, "max_new_tokens": d["max_new_tokens"], "ignore_eos": True}
        runs: dict[str, list] = {"cold": [], "radix_hit": [], "after_flush": [], "partial_prefix": []}

        def one(kind: str, ids: list[int]) -> None:
            o = self.gen([ids], sp)[0]
            runs[kind].append({"output_ids": list(o.get("output_ids") or []),
                               "cached_tokens": (o.get("meta_info") or {}).get("cached_tokens")})

        for _ in range(d["repeats"]):  # cold: an empty radix cache every time
            self.flush()
            one("cold", d["ids"])
        before = self.snap("before_radix_hit")
        for _ in range(d["repeats"]):  # the prompt is cached from the last cold run
            one("radix_hit", d["ids"])
        after = self.snap("after_radix_hit")
        self.flush()
        one("after_flush", d["ids"])
        one("partial_prefix", d["partial_ids"])  # shares only its first tokens with the cached prompt
        self.snap("after_partial_prefix")
        if before is not None and after is not None:
            from sglang_sage.counters import counter_delta

            self.res.data["radix_hit_counter_delta"] = counter_delta(before, after)
        self.res.data["phases"]["determinism"] = runs
        if self.w.get("probe_prompt"):
            o = self.engine.generate(prompt=self.w["probe_prompt"],
                                     sampling_params={"temperature": 0.0, "max_new_tokens": 8})
            self.res.data["probe_text"] = o.get("text")

    def run_accuracy(self, key: str) -> None:
        topk = int(self.w["topk"])
        summary = {}
        for bucket in self.w["accuracy"]:
            if self.time_left() < 15:
                summary[bucket["name"]] = {"skipped": "time budget"}
                continue
            try:
                summary[bucket["name"]] = self._accuracy_bucket(key, bucket, topk)
            except Exception as e:  # noqa: BLE001 - one bucket's failure must not cost the others
                summary[bucket["name"]] = {"error": f"{type(e).__name__}: {e}",
                                           "trace": traceback.format_exc()[-2000:]}
                log(self.tag, f"  {key}/{bucket['name']} FAILED: {type(e).__name__}: {str(e)[:300]}")
            self.res.data["phases"][key] = summary
            self.res.save()
        self.snap(f"after_{key}")

    def _accuracy_bucket(self, key: str, bucket: dict, topk: int) -> dict:
        """All windows of one bucket, teacher-forced, after flush_cache (every window a cold prefill)."""
        self.flush()
        t0 = time.time()
        parts: dict[str, list] = {"tok": [], "lp": [], "topk_ids": [], "topk_lp": [], "window": []}
        wins = bucket["windows"]
        chunk = 64 if bucket["window"] <= 512 else (16 if bucket["window"] <= 4096 else 4)
        for c in range(0, len(wins), chunk):
            group = wins[c:c + chunk]
            ids = [self.tokens[b:e] for b, e, _ in group]
            starts = [s - b - 1 for b, _, s in group]
            outs = self.gen(ids, {"temperature": 0.0, "max_new_tokens": 1}, return_logprob=True,
                            logprob_start_len=starts, top_logprobs_num=topk)
            for i, ((b, _, s), o, w_ids) in enumerate(zip(group, outs, ids)):
                try:
                    ex = extract_scored(o["meta_info"], w_ids, s - b - 1, s - b, topk)
                except Exception:
                    self.res.data.setdefault("debug", {})[f"{key}_{bucket['name']}"] = describe_output(o, s - b - 1)
                    raise
                for k in ("tok", "lp", "topk_ids", "topk_lp"):
                    parts[k].append(ex[k])
                parts["window"].append(np.full(len(ex["tok"]), c + i, np.int32))
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
        path = self.work / f"acc_{self.tag}_{key}_{bucket['name']}.npz"
        np.savez_compressed(path, **arrays)
        nll = float(-arrays["lp"].mean())
        log(self.tag, f"  {key}/{bucket['name']}: {len(wins)} windows, {arrays['lp'].size} scored tokens, "
                      f"ppl {np.exp(nll):.3f} ({time.time() - t0:.1f}s)")
        return {"npz": str(path), "positions": int(arrays["lp"].size), "windows": len(wins), "mean_nll": nll,
                "seconds": round(time.time() - t0, 2)}

    def run_passkey(self) -> None:
        self.flush()
        trials = self.w["passkey"]
        outs = self.gen([t["ids"] for t in trials],
                        {"temperature": 0.0, "max_new_tokens": int(self.w["passkey_new_tokens"])})
        self.res.data["phases"]["passkey"] = [
            {"bucket": t["bucket"], "depth": t["depth"], "key": t["key"], "prompt_tokens": len(t["ids"]),
             "answer": o.get("text"), "output_ids": list(o.get("output_ids") or [])}
            for t, o in zip(trials, outs)]
        self.snap("after_passkey")

    def run_throughput(self) -> None:
        """Every (shape, batch) of the workload: warm-up, ``reps`` timed runs (radix cache flushed before
        each), and for decode shapes a 1-token run of the same prompts for the TTFT. A row that cannot run
        (KV pool too small, time budget) is recorded as skipped with the reason, never dropped."""
        results: list[dict] = []
        self.res.data["phases"]["throughput"] = results
        capacity = (self.res.data.get("server_info") or {}).get("max_total_num_tokens")
        for shape in self.w["throughput"]:
            for batch in shape["batches"]:
                row = self._throughput_row(shape, batch, capacity)
                results.append(row)
                self.res.save()
        self.snap("after_throughput")

    def _throughput_row(self, shape: dict, batch: int, capacity: int | None) -> dict:
        from .corpus import distinct_slices

        kind = shape.get("kind") or shape["name"]
        n_in, n_out = int(shape["input_len"]), int(shape["output_len"])
        reps = _reps_of(shape, batch)
        head = {"shape": shape["name"], "kind": kind, "batch": batch, "input_len": n_in, "output_len": n_out}
        resident = batch * (n_in + n_out)
        if kind == "decode" and isinstance(capacity, int) and resident > capacity:
            return {**head, "skipped": f"KV pool holds {capacity:,} tokens, this shape keeps {resident:,}"}
        estimate = self._estimate_s(n_in, batch, reps, n_out)
        if self.time_left() < max(10.0, estimate):
            return {**head, "skipped": f"time budget ({self.time_left():.0f}s left, ~{estimate:.0f}s needed)"}
        n_warm = warm_count(batch, n_in)
        ttft_runs = batch if n_out > 1 else 0
        prompts = distinct_slices(self.tokens, n_warm + batch * reps + ttft_runs, n_in,
                                  seed=1000 * batch + n_in)
        sp = {"temperature": 0.0, "max_new_tokens": n_out, "ignore_eos": True}

        def timed(ids: list[list[int]], params: dict) -> tuple[float, list[dict]]:
            self.flush()
            t0 = time.perf_counter()
            outs = self.gen(ids, params)
            return time.perf_counter() - t0, outs

        # warm-up: this shape's kernels compiled and its chunking seen (a few decode steps are enough for that)
        timed(prompts[:n_warm], dict(sp, max_new_tokens=min(n_out, 16)))
        walls, in_tok, out_tok, e2e = [], 0, 0, []
        for r in range(reps):
            g = prompts[n_warm + r * batch:n_warm + (r + 1) * batch]
            wall, outs = timed(g, sp)
            walls.append(wall)
            in_tok = sum(len(x) for x in g)
            out_tok = sum(_completion_tokens(o) for o in outs)
            e2e += [float(o["meta_info"]["e2e_latency"]) for o in outs
                    if isinstance((o.get("meta_info") or {}).get("e2e_latency"), (int, float))]
        row = {**head, "walls_s": walls, "input_tokens": in_tok, "output_tokens": out_tok, "warmup_requests": n_warm,
               "mean_e2e_latency_s": float(np.mean(e2e)) if e2e else None}
        if ttft_runs:  # TTFT of the same prompt shape: a 1-token request
            ttft_wall, outs = timed(prompts[-ttft_runs:], dict(sp, max_new_tokens=1))
            lat = [float(o["meta_info"]["e2e_latency"]) for o in outs
                   if isinstance((o.get("meta_info") or {}).get("e2e_latency"), (int, float))]
            row["ttft_wall_s"] = ttft_wall
            row["ttft_mean_latency_s"] = float(np.mean(lat)) if lat else None
        med = float(np.median(walls))
        if kind == "prefill":
            self._prefill_s_per_token[n_in] = med / max(1, in_tok)
        log(self.tag, f"  {shape['name']} b={batch}: {in_tok / med:,.0f} in tok/s, "
                      f"{out_tok / med:,.0f} out tok/s (median of {len(walls)}: {med:.3f}s)")
        return row

    def _estimate_s(self, n_in: int, batch: int, reps: int, n_out: int) -> float:
        """Seconds a row will take, from the prefill speed already measured at this prompt length (0 if none:
        the first row of a length always runs). Decode steps are not estimated (rows are short there)."""
        spt = self._prefill_s_per_token.get(n_in)
        if spt is None:
            return 0.0
        runs = reps + warm_count(batch, n_in) / batch + (1 if n_out > 1 else 0)
        return runs * batch * n_in * spt

    def run(self) -> int:
        self.res.data["pid"] = os.getpid()
        if not self.start_engine():
            self.res.data["finished"] = True
            self.res.save()
            return 1
        try:
            self.phase("determinism", self.run_determinism, 5)
            self.phase("accuracy", lambda: self.run_accuracy("accuracy"), 15)
            self.phase("passkey", self.run_passkey, 8)
            self.phase("throughput", self.run_throughput, 15)
        finally:
            self.stop_engine()
        self.phase("probe_flag", self.probe_flag, 3)
        self.res.data["finished"] = True
        self.res.save()
        return 0

    def probe_flag(self) -> None:
        """How SGLang resolves the attention backend without/with the flag (after the engine is gone,
        so that constructing ServerArgs here cannot disturb it)."""
        from sglang.srt import server_args as sa_mod

        probe: dict[str, Any] = {}
        fields = getattr(sa_mod.ServerArgs, "__dataclass_fields__", {})
        if "attention_backend" in fields:
            probe["field_default"] = fields["attention_backend"].default
        probe["choices_has_sage"] = "sage_attn" in getattr(sa_mod, "ATTENTION_BACKEND_CHOICES", [])
        base_kw = {k: v for k, v in self.job["engine_kwargs"].items()
                   if k in ("model_path", "load_format", "skip_tokenizer_init", "mem_fraction_static")}
        try:
            probe["resolved_default"] = sa_mod.ServerArgs(**base_kw).attention_backend
        except Exception as e:  # noqa: BLE001
            probe["resolved_default_error"] = f"{type(e).__name__}: {e}"
            try:
                import inspect

                src = inspect.getsource(sa_mod.ServerArgs._get_default_attn_backend)
                probe["auto_selector_mentions_sage"] = "sage_attn" in src
            except Exception as e2:  # noqa: BLE001
                probe["auto_selector_error"] = str(e2)
        argv = ["--model-path", base_kw["model_path"], "--attention-backend", "sage_attn"]
        if base_kw.get("load_format"):
            argv += ["--load-format", base_kw["load_format"]]
        if base_kw.get("skip_tokenizer_init"):
            argv += ["--skip-tokenizer-init"]
        try:
            probe["cli_flag_backend"] = sa_mod.prepare_server_args(argv).attention_backend
        except BaseException as e:  # noqa: BLE001 - argparse exits with SystemExit on a bad choice
            probe["cli_flag_error"] = f"{type(e).__name__}: {e}"
        self.res.data["flag_probe"] = probe


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="verify.py GPU worker (one engine, one backend)")
    ap.add_argument("--job", required=True)
    args = ap.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    for k, v in (job.get("env") or {}).items():
        os.environ[k] = str(v)
    worker = Worker(job)
    try:
        return worker.run()
    except BaseException as e:  # noqa: BLE001 - never die without writing why
        worker.res.error("worker", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
