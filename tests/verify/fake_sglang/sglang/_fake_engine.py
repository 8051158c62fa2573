"""A deterministic fake of ``sglang.Engine`` with SGLang 0.5.17's output format (see ../README.md)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

N_CAND = 64  # tokens that get real probability mass after each token
CAND_MASS = 0.9
LAYERS = 30
# logit noise per backend (triton is exact here). sage_attn and the exact "floor" kernels share one noise
# pattern (the fake corpus' top-1 flips concentrate on a few frequent tokens, so different patterns would make
# the gap between them a lottery); an FP8 KV cache adds its own, larger noise.
# FAKE_SGLANG_NOISE="sage_attn=0.6,..." overrides (tests of failing criteria).
NOISE = {"sage_attn": 0.01, "flashinfer": 0.01, "fa3": 0.01, "torch_native": 0.01}
FP8_KV_NOISE = 0.05


def _noise(backend: str) -> float:
    table = dict(NOISE)
    for item in filter(None, os.environ.get("FAKE_SGLANG_NOISE", "").split(",")):
        name, value = item.split("=")
        table[name] = float(value)
    return table.get(backend, 0.0)


class Engine:
    def __init__(self, **kwargs) -> None:
        self.kw = kwargs
        self.backend = kwargs.get("attention_backend") or "fa3"
        self.kv_cache_dtype = kwargs.get("kv_cache_dtype")
        self.noise = _noise(self.backend)
        self._lp_cache: dict[int, list[tuple[float, int]]] = {}
        cfg = Path(kwargs["model_path"]) / "config.json"
        self.vocab = int(json.loads(cfg.read_text()).get("vocab_size", 49152)) if cfg.is_file() else 49152
        self.cache: list[list[int]] = []
        self.counters = {n: 0 for n in ("prefill_8bit_batches", "extend_prefix_8bit_batches", "decode_batches",
                                        "prefill_8bit_layer_calls", "extend_prefix_8bit_layer_calls",
                                        "decode_layer_calls", "cuda_graph_decode_replays")}
        self._publish()
        if os.environ.get("FAKE_SGLANG_FAIL_START") == self.backend:
            raise RuntimeError(f"fake start failure for {self.backend}")

    # -- the "model"
    def _cands(self, prev: int) -> list[int]:
        return [(prev * 31 + j * 97 + 7) % self.vocab for j in range(N_CAND)]

    def _logprobs(self, prev: int) -> list[tuple[float, int]]:
        """(log-prob, token) of the candidates after ``prev``, sorted descending (cached per ``prev``)."""
        hit = self._lp_cache.get(prev)
        if hit is not None:
            return hit
        logits = [3.0 * math.cos(prev * 0.37 + j * 1.3) - 0.08 * j for j in range(N_CAND)]
        if self.noise:
            logits = [x + self.noise * math.sin(prev * 1.7 + j * 0.9) for j, x in enumerate(logits)]
        if str(self.kv_cache_dtype or "").startswith("fp8"):
            logits = [x + FP8_KV_NOISE * math.sin(prev * 0.3 + j * 2.1) for j, x in enumerate(logits)]
        m = max(logits)
        z = sum(math.exp(x - m) for x in logits)
        lps = [math.log(CAND_MASS) + (x - m) - math.log(z) for x in logits]
        out = sorted(zip(lps, self._cands(prev)), reverse=True)
        self._lp_cache[prev] = out
        return out

    def _lp_of(self, prev: int, tok: int) -> float:
        for lp, t in self._logprobs(prev):
            if t == tok:
                return lp
        return math.log((1 - CAND_MASS) / (self.vocab - N_CAND))

    # -- counters (the real backend's file format)
    def _publish(self) -> None:
        d = os.environ.get("SGLANG_SAGE_STATS_DIR")
        if not d or self.backend != "sage_attn":
            return
        p = Path(d) / f"sage_attn_stats_{os.getpid()}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        decode = os.environ.get("SGLANG_SAGE_DECODE_BACKEND", "flashinfer")
        p.write_text(json.dumps({"pid": os.getpid(), "tp_rank": 0, "decode_backend": decode,
                                 "counters": self.counters}))

    def _encode(self, text: str) -> list[int]:
        return [(ord(c) * 7) % self.vocab for c in text]

    # -- API
    def generate(self, prompt=None, sampling_params=None, input_ids=None, return_logprob=False,
                 logprob_start_len=None, top_logprobs_num=None, **kw):
        single = False
        if input_ids is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            single = isinstance(prompt, str)
            batch = [self._encode(p) for p in prompts]
        elif input_ids and isinstance(input_ids[0], int):
            batch, single = [list(input_ids)], True
        else:
            batch = [list(x) for x in input_ids]
        n = len(batch)

        def per(v, default):
            if v is None:
                return [default] * n
            return list(v) if isinstance(v, list) else [v] * n

        sps = per(sampling_params, {})
        rls, lss, tks = per(return_logprob, False), per(logprob_start_len, -1), per(top_logprobs_num, 0)
        outs = []
        for ids, sp, rl, ls, tk in zip(batch, sps, rls, lss, tks):
            t0 = time.perf_counter()
            cached = 0
            for seq in self.cache:
                k = 0
                while k < min(len(seq), len(ids) - 1) and seq[k] == ids[k]:
                    k += 1
                cached = max(cached, k)
            if rl and ls >= 0:
                cached = min(cached, ls)
            if self.backend == "sage_attn":
                kind = "extend_prefix_8bit" if cached > 0 else "prefill_8bit"
                self.counters[kind + "_batches"] += 1
                self.counters[kind + "_layer_calls"] += LAYERS
            new = []
            last = ids[-1]
            for _ in range(int(sp.get("max_new_tokens", 16))):
                last = self._logprobs(last)[0][1]
                new.append(last)
            if self.backend == "sage_attn" and len(new) > 1:
                self.counters["decode_batches"] += len(new) - 1
                self.counters["decode_layer_calls"] += LAYERS * (len(new) - 1)
            self._publish()
            meta = {"id": "x", "finish_reason": {"type": "length"}, "prompt_tokens": len(ids),
                    "completion_tokens": len(new), "cached_tokens": cached}
            if rl:
                start = max(ls, 0)
                itl = [(None, ids[start], None)]
                itl += [(self._lp_of(ids[i - 1], ids[i]), ids[i], None) for i in range(start + 1, len(ids))]
                meta["input_token_logprobs"] = itl
                meta["output_token_logprobs"] = []
                if tk:
                    meta["input_top_logprobs"] = [None] + [
                        [(lp, t, None) for lp, t in self._logprobs(ids[i - 1])[:tk]]
                        for i in range(start + 1, len(ids))]
                    meta["output_top_logprobs"] = []
            meta["e2e_latency"] = time.perf_counter() - t0 + 1e-4
            out = {"output_ids": new, "meta_info": meta}
            if not self.kw.get("skip_tokenizer_init"):
                out["text"] = " " + " ".join(str(t) for t in new[:3])
            outs.append(out)
            self.cache.append(ids + new)
        return outs[0] if single else outs

    def flush_cache(self):
        self.cache = []
        return {"success": True}

    def get_server_info(self) -> dict:
        return {"attention_backend": self.backend, "kv_cache_dtype": self.kv_cache_dtype or "auto",
                "max_total_num_tokens": 123456 * (2 if self.kv_cache_dtype else 1), "max_req_input_len": 8190,
                "chunked_prefill_size": 8192, "page_size": 1, "version": "0.0.0+fake",
                "internal_states": [{"memory_usage": {"weight": 0.27, "kvcache": 2.8, "token_capacity": 123456}}]}

    def shutdown(self) -> None:
        pass
