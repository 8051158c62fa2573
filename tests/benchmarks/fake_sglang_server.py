"""A stand-in for ``python -m sglang.launch_server`` on loopback, for the CPU tests of benchmarks/soak.py.

It speaks the few endpoints the soak uses the way SGLang 0.5.17 does (``/health``, ``/generate``
plain and SSE-streamed with cumulative ``output_ids`` and a final ``data: [DONE]``, ``/v1/loads``,
``/tokenize``, ``/flush_cache``), writes ``sage_attn`` counter files like the real backend, and can
be told to misbehave, per ``--attention-backend``, through the JSON in ``$FAKE_SGLANG``:

``{"sage_attn": {"flaky": 0.5}, "*": {...}}`` with keys
``start_delays`` (seconds before listening, per start: the last value repeats; start count is kept
in ``$FAKE_SGLANG_STATE``), ``token_delay_s``, ``flaky`` (probability that a greedy answer is
perturbed), ``drop_every`` (close every k-th /generate without an answer), ``leak`` (a client that
goes away leaves its request "running"), ``accept_bad`` (invalid requests get 200), ``no_stats``
(no counter files), ``die_on_empty`` (exit on an empty text).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import zlib
from pathlib import Path
from typing import Any

CTX = 2048
TOK = 100


class Fake:
    def __init__(self, backend: str, cfg: dict[str, Any]) -> None:
        self.backend = backend
        self.cfg = cfg
        self.running = 0
        self.generates = 0
        self.rng = random.Random()
        self.counters = {
            "prefill_8bit_batches": 0,
            "extend_prefix_8bit_batches": 0,
            "decode_batches": 0,
            "prefill_8bit_layer_calls": 0,
            "extend_prefix_8bit_layer_calls": 0,
            "decode_layer_calls": 0,
            "cuda_graph_decode_replays": 0,
        }

    def publish(self) -> None:
        d = os.environ.get("SGLANG_SAGE_STATS_DIR")
        if not d or self.backend != "sage_attn" or self.cfg.get("no_stats"):
            return
        path = Path(d) / f"sage_attn_stats_{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"pid": os.getpid(), "tp_rank": 0, "decode_backend": "flashinfer", "counters": self.counters})
        )
        os.replace(tmp, path)

    def tokens(self, ids: list[int], n_new: int, greedy: bool) -> list[int]:
        base = sum(ids[-8:]) * 31 + len(ids)
        out = [TOK + (base + 17 * i) % 30000 for i in range(n_new)]
        if n_new and (not greedy or self.rng.random() < float(self.cfg.get("flaky", 0.0))):
            k = self.rng.randrange(n_new)
            out[k:] = [TOK + self.rng.randrange(30000) for _ in out[k:]]
        return out


def bad(req: dict[str, Any]) -> str | None:
    """SGLang-like validation (what 0.5.17 answers with 400)."""
    if "text" in req and req["text"] == "":
        return "empty text"
    ids = req.get("input_ids")
    if "input_ids" in req and not isinstance(ids, list):
        return "input_ids must be a list"
    if ids is not None and len(ids) == 0:
        return "input_ids cannot be empty."
    if ids is not None and len(ids) >= CTX:
        return f"The input ({len(ids)} tokens) is longer than the model's context length ({CTX} tokens)."
    sp = req.get("sampling_params") or {}
    if sp.get("temperature", 1.0) < 0:
        return "temperature must be a non-negative finite number"
    if not 0.0 < sp.get("top_p", 1.0) <= 1.0:
        return "top_p must be in (0, 1]"
    if sp.get("max_new_tokens", 1) < 0:
        return "max_new_tokens must be at least 0"
    if sp.get("n", 1) > 256:
        return "n too large"
    return None


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    line = (await reader.readline()).decode()
    method, path, _ = line.split(" ", 2)
    length = 0
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode().partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    body = await reader.readexactly(length) if length else b""
    return method, path, body


def respond(writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    writer.write(
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n".encode()
        + body
    )


async def generate(fake: Fake, req: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    cfg = fake.cfg
    sp = req.get("sampling_params") or {}
    ids = req.get("input_ids") or [TOK] * 4
    n_new = int(sp.get("max_new_tokens", 16))
    greedy = float(sp.get("temperature", 1.0)) == 0.0
    n = int(sp.get("n", 1))
    delay = float(cfg.get("token_delay_s", 0.002))
    fake.counters["prefill_8bit_batches"] += 1
    if len(ids) > 64:
        fake.counters["extend_prefix_8bit_batches"] += 1
    fake.publish()

    def item(out: list[int], k: int, done: bool) -> dict[str, Any]:
        return {
            "text": "x" * k,
            "output_ids": out[:k],
            "meta_info": {
                "id": "r",
                "prompt_tokens": len(ids),
                "completion_tokens": k,
                "cached_tokens": 0,
                "finish_reason": {"type": "length", "length": k} if done else None,
            },
        }

    gone = False
    fake.running += 1
    try:
        outs = [fake.tokens(ids, n_new, greedy) for _ in range(n)]
        if req.get("stream"):
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n"
            )
            for k in range(1, n_new + 1):
                await asyncio.sleep(delay)
                if reader.at_eof():
                    gone = True
                    return
                ev = b"data: " + json.dumps(item(outs[0], k, k == n_new)).encode() + b"\n\n"
                writer.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                try:
                    await writer.drain()
                except ConnectionError:
                    gone = True
                    return
                fake.counters["decode_batches"] += 1
            ev = b"data: [DONE]\n\n"
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(ev), ev))
        else:
            for _ in range(n_new):
                await asyncio.sleep(delay)
                if reader.at_eof():
                    gone = True
                    return
            res = [item(o, n_new, True) for o in outs]
            respond(writer, 200, res if n > 1 else res[0])
    finally:
        if not (gone and cfg.get("leak")):
            fake.running -= 1
        fake.publish()


async def handle(fake: Fake, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        method, path, body = await read_request(reader)
        if path in ("/health", "/health_generate"):
            respond(writer, 200, b"")
        elif path.startswith("/v1/loads"):
            respond(writer, 200, {"loads": [{"dp_rank": 0, "num_running_reqs": fake.running, "num_waiting_reqs": 0}]})
        elif path.startswith("/flush_cache"):
            respond(writer, 200, b"Cache flushed.")
        elif path == "/tokenize":
            text = json.loads(body).get("prompt", "")
            toks = [TOK + zlib.crc32(w.encode()) % 30000 for w in text.split()]
            respond(writer, 200, {"tokens": toks, "count": len(toks), "max_model_len": CTX})
        elif path == "/generate":
            fake.generates += 1
            drop = int(fake.cfg.get("drop_every", 0))
            try:
                req = json.loads(body)
                why = bad(req) if isinstance(req, dict) else "not an object"
            except ValueError:
                req, why = {}, "invalid JSON"
            if why and req.get("text") == "" and fake.cfg.get("die_on_empty"):
                os._exit(1)
            if why and not fake.cfg.get("accept_bad"):
                respond(writer, 400, {"error": {"message": why}})
            elif drop and fake.generates % drop == 0:
                pass  # close without an answer: the client sees a lost request
            else:
                if why:  # accepted nonsense: answer something small
                    req = {"input_ids": [TOK] * 4, "sampling_params": {"max_new_tokens": 1, "temperature": 0}}
                await generate(fake, req, reader, writer)
        else:
            respond(writer, 404, {"error": "not found"})
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--attention-backend", default="flashinfer")
    args, _ = ap.parse_known_args()
    allcfg = json.loads(os.environ.get("FAKE_SGLANG") or "{}")
    cfg = {**allcfg.get("*", {}), **allcfg.get(args.attention_backend, {})}
    starts = 1
    state = os.environ.get("FAKE_SGLANG_STATE")
    if state:
        f = Path(state) / f"starts_{args.attention_backend}"
        starts = int(f.read_text()) + 1 if f.exists() else 1
        f.write_text(str(starts))
    delays = cfg.get("start_delays", [1.0])
    time.sleep(float(delays[min(starts, len(delays)) - 1]))
    fake = Fake(args.attention_backend, cfg)
    server = await asyncio.start_server(lambda r, w: handle(fake, r, w), args.host, args.port, reuse_address=True)
    print(f"fake sglang ({args.attention_backend}) listening on {args.port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
