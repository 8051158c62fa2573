#!/usr/bin/env python3
"""Soak benchmark (issue #17): ``sage_attn`` and a baseline backend served by SGLang's HTTP server
under a mixed load and under faults, in the same run, on one GPU.

Why: reliability is what operators check before switching a backend. For each backend
(``sage_attn`` first, then ``--baseline``, default ``flashinfer``) ``python -m sglang.launch_server``
is started on 127.0.0.1 and driven through ``/generate`` by a stdlib asyncio HTTP/1.1 client:

* **core** -- warm-up, then the load: ``--requests`` (2,000; ``--quick`` 300) at ``--concurrency``
  64, built from the committed Shakespeare corpus (tokenized by the server's ``/tokenize``): 70 %
  share one of 8 long prefixes (0.5-6K tokens) plus a short suffix, 30 % short prompts;
  ``max_new_tokens`` 1-256; 20 % streamed, 5 % cancelled by the client mid-stream (it closes the
  connection); 5 % with ``n`` in 2-4 and 15 % more with seeded non-greedy sampling (``ignore_eos``
  so both backends do the same work). Figures: errors, lost (sent - answered - cancelled),
  throughput, TTFT and latency p50/p99, GPU memory after the load vs before, the scheduler's
  ``sage_attn`` counters (``SGLANG_SAGE_STATS_DIR``), and a drain to zero running requests.
  Then **answers**: a seeded sample of greedy requests is replayed alone (radix cache flushed before
  each) and compared token by token with its answer under load.
* **faults** -- ``disconnect``: streams (and non-streamed requests) whose client goes away must not
  stay running (drain to 0 within ``--drain-timeout-s``); ``bad``: empty text / input_ids, over
  the context length, invalid sampling parameters, invalid JSON, a wrong type and a huge ``n`` must
  get a 4xx while the server keeps answering; ``kill``: the server is SIGKILLed during a load, every
  in-flight request must fail at once (none hangs), the process group must go, and the restarted
  server must be healthy and serving within ``RESTART_FACTOR`` x its first start-up time.

Every phase is guarded and time-bounded: results are rewritten to ``<stem>.json`` after every
phase (and every few seconds during a load), a phase that does not fit the remaining ``--budget-s``
is recorded as skipped with the command that finishes it, and a watchdog saves, kills the servers
and exits at ``--hard-limit-s``. Criteria (issue #17, PASS/FAIL/N/A, never asserted): 0 errors,
0 lost, memory back within 1 %, identical share >= the baseline's, throughput >= 0.95x the
baseline's, the 8-bit paths ran, and each fault check.

Expected time on an H200 (SmolLM2-135M, CUDA graphs on): ~50-90 s per server start, load ~30-60 s,
replay ~20-40 s, faults ~60-100 s (one restart) per backend: the full run is ~7-9 min and is
budgeted to fit one 10-minute device call (``--budget-s 500``, watchdog 550 s); what does not fit
is skipped with a re-run command (``--backends X --phases faults --merge``). ``--quick``: ~5 min.

Run (GPU machine; the bundle of shared/device/README.md, sage_attn applied)::

    source /tmp/sglang_env.sh; python3 apply.py --sglang-dir /tmp/site --no-tests; \\
      PYTHONPATH=/tmp/site python3 benchmarks/soak.py --out-root "$OUT" [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import shlex
import signal
import sys
import tarfile
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))

import _results as R  # noqa: E402
from bench_e2e import gpu_mem_used_mib, prepare_env  # noqa: E402

from sglang_sage.counters import counter_delta, read_counters_detail  # noqa: E402
from sglang_sage.verify import corpus as corpus_mod  # noqa: E402
from sglang_sage.verify.procs import Proc, kill_all  # noqa: E402

CANDIDATE = "sage_attn"
DEFAULT_BASELINE = "flashinfer"
# criteria of issue #17
MAX_MEM_GROWTH = 0.01  # GPU memory after the load at most 1 % above before it
MIN_THROUGHPUT_VS_BASELINE = 0.95
RESTART_FACTOR = 1.5  # restarted server serving within this x the first start-up time
KILL_RESOLVE_S = 10.0  # every request in flight at the SIGKILL must have failed within this
TOKEN_FLOOR = 100  # random fallback token ids start here (away from special tokens)

PHASES = ("core", "faults")
FAULTS = ("disconnect", "bad", "kill")


def log(msg: str) -> None:
    """Progress line with the seconds since start (the lead watches the output live)."""
    R.log(f"[{time.monotonic() - _T0:6.1f}s] {msg}")


_T0 = time.monotonic()


# ================================================================================================
# the load mix
# ================================================================================================
@dataclass(frozen=True)
class MixConfig:
    """Shape of a load: sizes, proportions and ranges (all validated by ``check``)."""

    requests: int = 2000
    prefixes: int = 8
    prefix_tokens: tuple[int, int] = (512, 6144)
    suffix_tokens: tuple[int, int] = (8, 64)
    short_tokens: tuple[int, int] = (16, 256)
    max_new_tokens: tuple[int, int] = (1, 256)
    shared_frac: float = 0.70
    stream_frac: float = 0.20
    cancel_frac: float = 0.05
    multi_frac: float = 0.05
    sampled_frac: float = 0.15
    cancel_after: tuple[int, int] = (1, 8)  # token events received before the client closes
    min_cancel_tokens: int = 32  # a cancelled stream asks for at least this many tokens

    def check(self) -> None:
        """Raise ValueError naming the flag of the first bad setting."""

        def rng_ok(name: str, r: tuple[int, int], low: int) -> None:
            if len(r) != 2 or r[0] < low or r[1] < r[0]:
                raise ValueError(f"--{name} must be LO,HI with {low} <= LO <= HI, got {r}")

        if self.requests < 1:
            raise ValueError(f"--requests must be >= 1, got {self.requests}")
        if self.prefixes < 1:
            raise ValueError(f"--prefixes must be >= 1, got {self.prefixes}")
        rng_ok("prefix-tokens", self.prefix_tokens, 1)
        rng_ok("suffix-tokens", self.suffix_tokens, 1)
        rng_ok("short-tokens", self.short_tokens, 1)
        rng_ok("max-new-tokens", self.max_new_tokens, 1)
        rng_ok("cancel-after", self.cancel_after, 1)
        for name in ("shared_frac", "stream_frac", "cancel_frac", "multi_frac", "sampled_frac"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {v}")
        if self.cancel_frac > self.stream_frac:
            raise ValueError(
                f"--cancel-frac {self.cancel_frac} > --stream-frac {self.stream_frac}: only streams "
                "can be cancelled mid-stream"
            )
        if self.multi_frac + self.stream_frac > 1.0:
            raise ValueError(
                f"--multi-frac {self.multi_frac} + --stream-frac {self.stream_frac} > 1: n > 1 "
                "requests are not streamed"
            )
        if self.multi_frac + self.cancel_frac + self.sampled_frac > 1.0:
            raise ValueError("--multi-frac + --cancel-frac + --sampled-frac > 1")
        if self.cancel_frac > 0 and self.max_new_tokens[1] <= self.cancel_after[1]:
            raise ValueError(
                f"--max-new-tokens upper bound {self.max_new_tokens[1]} must exceed --cancel-after "
                f"upper bound {self.cancel_after[1]} (a cancelled stream must still be running)"
            )


@dataclass(frozen=True)
class RequestSpec:
    """One request of a load (what is sent and what the client does with it)."""

    rid: int
    kind: str  # "shared" (long shared prefix + suffix) or "short"
    prefix: int | None
    input_ids: tuple[int, ...]
    max_new_tokens: int
    stream: bool
    cancel_after: int | None  # close the connection after this many token events (streams only)
    n: int
    temperature: float
    top_p: float
    seed: int | None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def payload(self, ignore_eos: bool, stream: bool | None = None) -> dict[str, Any]:
        """The ``/generate`` JSON body (``stream`` overrides, e.g. for a replay)."""
        sp: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "ignore_eos": ignore_eos,
        }
        if self.n > 1:
            sp["n"] = self.n
        if self.seed is not None:
            sp["sampling_seed"] = self.seed
        return {
            "input_ids": list(self.input_ids),
            "sampling_params": sp,
            "stream": self.stream if stream is None else stream,
        }


@dataclass
class Mix:
    """A load: the request specs and the shared prefixes they use."""

    specs: list[RequestSpec]
    prefix_lengths: list[int]
    seed: int

    def digest(self) -> str:
        """sha256 over every spec: two runs (or a merged re-run) measured the same load iff equal."""
        h = hashlib.sha256()
        for s in self.specs:
            h.update(
                repr(
                    (
                        s.kind,
                        s.prefix,
                        s.input_ids,
                        s.max_new_tokens,
                        s.stream,
                        s.cancel_after,
                        s.n,
                        s.temperature,
                        s.top_p,
                        s.seed,
                    )
                ).encode()
            )
        return h.hexdigest()


def tile_tokens(tokens: Sequence[int], need: int) -> list[int]:
    """The token stream repeated until it holds at least ``need`` tokens."""
    if not tokens:
        raise ValueError("empty token stream")
    out = list(tokens)
    while len(out) < need:
        out.extend(tokens)
    return out


def _slice(rng: random.Random, tokens: list[int], length: int) -> tuple[int, ...]:
    start = rng.randrange(0, len(tokens) - length + 1)
    return tuple(tokens[start : start + length])


def build_mix(tokens: Sequence[int], cfg: MixConfig, seed: int) -> Mix:
    """A deterministic load (same tokens, config and seed -> the same specs).

    Proportions are exact counts (``round(frac * requests)``) placed by seeded permutations, not
    coin flips, so a 300-request quick run has exactly its 5 % of cancellations. Prefix lengths
    are spread evenly over ``prefix_tokens`` so the range is covered whatever the seed.
    """
    cfg.check()
    rng = random.Random(seed)
    n = cfg.requests
    need = max(cfg.prefix_tokens[1], cfg.short_tokens[1], cfg.suffix_tokens[1]) + 1
    stream_tokens = tile_tokens(tokens, need * 2)
    lo, hi = cfg.prefix_tokens
    p = cfg.prefixes
    lengths = [round(lo + (hi - lo) * k / (p - 1)) if p > 1 else hi for k in range(p)]
    prefixes = [_slice(rng, stream_tokens, L) for L in lengths]

    def count(frac: float) -> int:
        return int(round(frac * n))

    order = list(range(n))
    rng.shuffle(order)
    shared = set(order[: count(cfg.shared_frac)])
    rng.shuffle(order)
    streamed = order[: count(cfg.stream_frac)]
    cancelled = set(streamed[: count(cfg.cancel_frac)])
    streamed_set = set(streamed)
    not_streamed = [i for i in order if i not in streamed_set]
    multi = set(not_streamed[: count(cfg.multi_frac)])
    pool = [i for i in order if i not in multi and i not in cancelled]
    sampled = set(pool[: count(cfg.sampled_frac)])

    specs = []
    for i in range(n):
        if i in shared:
            k = rng.randrange(p)
            ids = prefixes[k] + _slice(rng, stream_tokens, rng.randint(*cfg.suffix_tokens))
            kind, prefix = "shared", k
        else:
            ids = _slice(rng, stream_tokens, rng.randint(*cfg.short_tokens))
            kind, prefix = "short", None
        cancel_after = None
        if i in cancelled:
            hi = cfg.max_new_tokens[1]  # check(): hi > cancel_after[1], so lo <= hi
            mnt = rng.randint(max(min(cfg.min_cancel_tokens, hi), cfg.cancel_after[1] + 1, cfg.max_new_tokens[0]), hi)
            cancel_after = rng.randint(*cfg.cancel_after)
        else:
            mnt = rng.randint(*cfg.max_new_tokens)
        nn = rng.choice((2, 3, 4)) if i in multi else 1
        if i in multi or i in sampled:
            temp, top_p, s = round(rng.uniform(0.6, 1.0), 2), 0.95, rng.randrange(2**31)
        else:
            temp, top_p, s = 0.0, 1.0, None
        specs.append(
            RequestSpec(
                rid=i,
                kind=kind,
                prefix=prefix,
                input_ids=ids,
                max_new_tokens=mnt,
                stream=i in streamed_set,
                cancel_after=cancel_after,
                n=nn,
                temperature=temp,
                top_p=top_p,
                seed=s,
            )
        )
    return Mix(specs=specs, prefix_lengths=lengths, seed=seed)


def mix_summary(mix: Mix) -> dict[str, Any]:
    """What the report says about a load: counts and shares of every kind of request."""
    s = mix.specs
    n = len(s)

    def share(k: int) -> float:
        return round(k / n, 4) if n else 0.0

    counts = {
        "requests": n,
        "shared_prefix": sum(x.kind == "shared" for x in s),
        "short": sum(x.kind == "short" for x in s),
        "streamed": sum(x.stream for x in s),
        "cancel_planned": sum(x.cancel_after is not None for x in s),
        "n_gt_1": sum(x.n > 1 for x in s),
        "non_greedy": sum(not x.greedy for x in s),
        "greedy_n1": sum(x.greedy and x.n == 1 for x in s),
    }
    return {
        **counts,
        "shares": {k: share(v) for k, v in counts.items() if k != "requests"},
        "prefix_lengths": mix.prefix_lengths,
        "prompt_tokens_total": sum(len(x.input_ids) for x in s),
        "max_new_tokens_range": [
            min((x.max_new_tokens for x in s), default=0),
            max((x.max_new_tokens for x in s), default=0),
        ],
        "samples_total": sum(x.n for x in s),
        "seed": mix.seed,
        "digest": mix.digest(),
    }


# ================================================================================================
# a small HTTP/1.1 client (stdlib asyncio: works the same on the GPU image and in the CPU tests)
# ================================================================================================
class TransportError(Exception):
    """No complete HTTP answer: connection refused/reset or closed mid-response (a lost request)."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class HttpConn:
    """One HTTP/1.1 exchange on its own connection (``Connection: close``).

    Closing the connection is how a client goes away mid-stream; SGLang must then abort the request.
    """

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self._mode = "eof"
        self._left = 0
        self._done = False

    async def send(
        self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
    ) -> int:
        """Connect, send the request, read the status line and headers; returns the status."""
        try:
            self.reader, self.writer = await asyncio.open_connection(self.ep.host, self.ep.port)
        except OSError as e:
            raise TransportError(f"connect: {type(e).__name__}: {e}") from e
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.ep.host}:{self.ep.port}", "Connection: close", "Accept: */*"]
        if body is not None:
            head += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        try:
            self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
            await self.writer.drain()
            line = await self.reader.readline()
            if not line:
                raise TransportError("connection closed before the status line")
            parts = line.decode("latin-1").split(None, 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise TransportError(f"bad status line {line[:80]!r}")
            self.status = int(parts[1])
            while True:
                h = await self.reader.readline()
                if not h:
                    raise TransportError("connection closed in the headers")
                if h in (b"\r\n", b"\n"):
                    break
                k, _, v = h.decode("latin-1").partition(":")
                self.headers[k.strip().lower()] = v.strip()
        except (OSError, asyncio.IncompleteReadError) as e:
            raise TransportError(f"{type(e).__name__}: {e}") from e
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._mode = "chunked"
        elif "content-length" in self.headers:
            self._mode, self._left = "length", int(self.headers["content-length"])
        if method == "HEAD" or self.status in (204, 304):
            self._done = True
        return self.status

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body; None at its (complete) end. TransportError when cut short."""
        if self._done:
            return None
        assert self.reader is not None
        try:
            if self._mode == "chunked":
                size_line = await self.reader.readline()
                if not size_line:
                    raise TransportError("connection closed mid-body (chunked)")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    self._done = True
                    return None
                data = await self.reader.readexactly(size)
                await self.reader.readexactly(2)
                return data
            if self._mode == "length":
                if self._left == 0:
                    self._done = True
                    return None
                data = await self.reader.read(min(self._left, 1 << 16))
                if not data:
                    raise TransportError(f"connection closed with {self._left} body bytes missing")
                self._left -= len(data)
                return data
            data = await self.reader.read(1 << 16)
            if not data:
                self._done = True
                return None
            return data
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            raise TransportError(f"{type(e).__name__}: {e}") from e

    async def read_body(self) -> bytes:
        parts = []
        while (c := await self.next_chunk()) is not None:
            parts.append(c)
        return b"".join(parts)

    async def close(self) -> None:
        """Close the socket (for a stream: the client going away)."""
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 2.0)


class SSEReader:
    """Server-sent events of a streaming ``/generate``: each ``data:`` payload as a string."""

    def __init__(self, conn: HttpConn) -> None:
        self.conn = conn
        self.buf = b""

    async def next_event(self) -> str | None:
        """The next event's data, or None when the body ended (cleanly)."""
        while b"\n\n" not in self.buf:
            chunk = await self.conn.next_chunk()
            if chunk is None:
                return None
            self.buf = (self.buf + chunk).replace(b"\r\n", b"\n")
        raw, self.buf = self.buf.split(b"\n\n", 1)
        data = [ln[5:].lstrip() for ln in raw.split(b"\n") if ln.startswith(b"data:")]
        if not data:
            return await self.next_event()
        return b"\n".join(data).decode("utf-8", "replace")


async def http_json(
    ep: Endpoint, method: str, path: str, payload: Any = None, timeout: float = 30.0, raw: bytes | None = None
) -> tuple[int, Any]:
    """(status, parsed JSON body or text). TransportError / asyncio.TimeoutError pass through."""

    async def go() -> tuple[int, Any]:
        conn = HttpConn(ep)
        try:
            body = raw if raw is not None else (None if payload is None else json.dumps(payload).encode())
            status = await conn.send(method, path, body)
            data = await conn.read_body()
        finally:
            await conn.close()
        text = data.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    return await asyncio.wait_for(go(), timeout)


# ================================================================================================
# one request: outcome and accounting
# ================================================================================================
OK, ERROR, CANCELLED, TIMEOUT, TRANSPORT, CUT = "ok", "error", "cancelled", "timeout", "transport", "cut"


@dataclass
class Outcome:
    """What happened to one request, from the client's side.

    ``ok``: a complete answer; ``error``: the server answered with an error (HTTP >= 400, an error
    event, an aborted finish); ``cancelled``: the client closed the stream on purpose; ``timeout`` /
    ``transport``: no complete answer (lost); ``cut``: still in flight when the run's own time
    budget ended (neither answered nor lost: the load was incomplete).
    """

    rid: int
    kind: str
    status: int = 0
    latency_s: float | None = None
    ttft_s: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    events: int = 0
    output_ids: list[int] | None = None  # greedy n=1 answers only
    detail: str = ""


def _finish(meta: dict[str, Any]) -> tuple[bool, str | None]:
    """(finished, abort message) of a meta_info."""
    fr = meta.get("finish_reason")
    if fr is None:
        return False, None
    if isinstance(fr, dict) and fr.get("type") == "abort":
        return True, str(fr.get("message") or fr)[:300]
    return True, None


def _meta_numbers(o: Outcome, items: Sequence[dict[str, Any]]) -> None:
    for it in items:
        m = it.get("meta_info") or {}
        o.completion_tokens += int(m.get("completion_tokens") or 0)
        o.prompt_tokens = max(o.prompt_tokens, int(m.get("prompt_tokens") or 0))
        o.cached_tokens = max(o.cached_tokens, int(m.get("cached_tokens") or 0))


async def _run_stream(ep: Endpoint, spec: RequestSpec, body: bytes, o: Outcome, t0: float, cancel: bool) -> None:
    conn = HttpConn(ep)
    try:
        o.status = await conn.send("POST", "/generate", body)
        if o.status >= 400:
            o.kind, o.detail = ERROR, (await conn.read_body()).decode("utf-8", "replace")[:300]
            return
        sse = SSEReader(conn)
        last: dict[str, Any] | None = None
        done = False
        while (ev := await sse.next_event()) is not None:
            if ev.strip() == "[DONE]":
                done = True
                break
            try:
                obj = json.loads(ev)
            except ValueError:
                o.kind, o.detail = ERROR, f"unparsable event {ev[:120]!r}"
                return
            if isinstance(obj, dict) and "error" in obj:
                o.kind, o.detail = ERROR, json.dumps(obj["error"])[:300]
                return
            last = obj
            if obj.get("output_ids"):
                o.events += 1
                if o.ttft_s is None:
                    o.ttft_s = time.perf_counter() - t0
            finished, _ = _finish(obj.get("meta_info") or {})
            if cancel and spec.cancel_after is not None and not finished and o.events >= spec.cancel_after:
                o.kind, o.latency_s = CANCELLED, time.perf_counter() - t0
                return  # the finally closes the connection: the client has gone away
        if not done:
            o.kind, o.detail = TRANSPORT, f"stream ended without [DONE] after {o.events} token events"
            return
        finished, abort = _finish((last or {}).get("meta_info") or {})
        if not finished:
            o.kind, o.detail = ERROR, "[DONE] without a finished chunk"
        elif abort:
            o.kind, o.detail = ERROR, f"aborted: {abort}"
        else:
            o.kind = OK
            _meta_numbers(o, [last or {}])
            if spec.greedy and spec.n == 1:
                o.output_ids = list((last or {}).get("output_ids") or [])
        o.latency_s = time.perf_counter() - t0
    finally:
        await conn.close()


async def _run_plain(ep: Endpoint, spec: RequestSpec, body: bytes, o: Outcome, t0: float) -> None:
    conn = HttpConn(ep)
    try:
        o.status = await conn.send("POST", "/generate", body)
        data = await conn.read_body()
    finally:
        await conn.close()
    o.latency_s = time.perf_counter() - t0
    text = data.decode("utf-8", "replace")
    if o.status >= 400:
        o.kind, o.detail = ERROR, text[:300]
        return
    try:
        obj = json.loads(text)
    except ValueError:
        o.kind, o.detail = ERROR, f"unparsable body {text[:120]!r}"
        return
    items = obj if isinstance(obj, list) else [obj]
    if len(items) != spec.n or not all(isinstance(x, dict) for x in items):
        o.kind, o.detail = ERROR, f"expected {spec.n} answer(s), got {type(obj).__name__} of {len(items)}"
        return
    for it in items:
        finished, abort = _finish(it.get("meta_info") or {})
        if not finished or abort:
            o.kind, o.detail = ERROR, f"aborted: {abort}" if abort else "answer without finish_reason"
            return
    o.kind = OK
    _meta_numbers(o, items)
    if spec.greedy and spec.n == 1:
        o.output_ids = list(items[0].get("output_ids") or [])


async def run_one(
    ep: Endpoint, spec: RequestSpec, timeout_s: float, ignore_eos: bool, stream: bool | None = None, cancel: bool = True
) -> Outcome:
    """Send one request and classify what came back (never raises, except on cancellation)."""
    o = Outcome(rid=spec.rid, kind=TRANSPORT)
    body = json.dumps(spec.payload(ignore_eos, stream=stream)).encode()
    streamed = spec.stream if stream is None else stream
    t0 = time.perf_counter()
    try:
        if streamed:
            await asyncio.wait_for(_run_stream(ep, spec, body, o, t0, cancel), timeout_s)
        else:
            await asyncio.wait_for(_run_plain(ep, spec, body, o, t0), timeout_s)
    except asyncio.TimeoutError:
        o.kind, o.detail, o.latency_s = TIMEOUT, f"no complete answer within {timeout_s:.0f}s", None
    except TransportError as e:
        o.kind, o.detail = TRANSPORT, str(e)[:300]
    return o


def percentile(values: Sequence[float], q: float) -> float | None:
    """q-th percentile with linear interpolation between order statistics (None for no data)."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    f, c = math.floor(k), math.ceil(k)
    return s[f] + (s[c] - s[f]) * (k - f)


def answer_digest(ids: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:16]


def summarize(outcomes: Sequence[Outcome], wall_s: float | None, not_sent: int = 0) -> dict[str, Any]:
    """Figures of one load. ``lost = sent - answered - cancelled - cut``: a request that got no
    complete answer (timeout, connection reset, stream cut short) and was not given up on by us."""
    by: dict[str, int] = {k: 0 for k in (OK, ERROR, CANCELLED, TIMEOUT, TRANSPORT, CUT)}
    for o in outcomes:
        by[o.kind] = by.get(o.kind, 0) + 1
    sent = len(outcomes)
    answered = by[OK] + by[ERROR]
    lost = sent - answered - by[CANCELLED] - by[CUT]
    oks = [o for o in outcomes if o.kind == OK]
    lat = [o.latency_s * 1e3 for o in oks if o.latency_s is not None]
    ttft = [o.ttft_s * 1e3 for o in outcomes if o.ttft_s is not None and o.kind in (OK, CANCELLED)]
    out_tok = sum(o.completion_tokens for o in oks)
    samples: dict[str, list[str]] = {}
    for o in outcomes:
        if o.kind not in (OK, CANCELLED):
            lst = samples.setdefault(o.kind, [])
            if len(lst) < 5:
                lst.append(f"#{o.rid} status {o.status}: {o.detail}")
    return {
        "sent": sent,
        "not_sent": not_sent,
        "answered": answered,
        "ok": by[OK],
        "cancelled": by[CANCELLED],
        "error_responses": by[ERROR],
        "timeouts": by[TIMEOUT],
        "transport_errors": by[TRANSPORT],
        "cut": by[CUT],
        "errors": by[ERROR] + by[TIMEOUT] + by[TRANSPORT],
        "lost": lost,
        "complete": by[CUT] == 0 and not_sent == 0,
        "wall_s": None if wall_s is None else round(wall_s, 2),
        "req_s": round(by[OK] / wall_s, 2) if wall_s else None,
        "out_tok_s": round(out_tok / wall_s, 1) if wall_s else None,
        "output_tokens": out_tok,
        "prompt_tokens": sum(o.prompt_tokens for o in oks),
        "cached_tokens": sum(o.cached_tokens for o in oks),
        "ttft_ms": {"p50": percentile(ttft, 50), "p99": percentile(ttft, 99), "n": len(ttft)},
        "latency_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "n": len(lat)},
        "error_samples": samples,
    }


@dataclass
class LoadRun:
    outcomes: list[Outcome]
    wall_s: float | None
    not_sent: int
    started: float = 0.0


async def run_load(
    ep: Endpoint,
    specs: Sequence[RequestSpec],
    concurrency: int,
    timeout_s: float,
    deadline: float | Callable[[], float],
    ignore_eos: bool,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[list[Outcome], int], None] | None = None,
    progress_every_s: float = 5.0,
    state: dict[str, int] | None = None,
) -> LoadRun:
    """Send ``specs`` in order, at most ``concurrency`` at a time, until done, ``stop`` is set or the
    monotonic ``deadline`` passes (then what is in flight is recorded as ``cut``). ``state`` (when
    given) is kept current: ``done`` and ``in_flight`` counts. ``deadline`` may
    be a function, read again while waiting (the SIGKILL fault shortens it after the kill)."""
    queue = deque(specs)
    outcomes: list[Outcome] = []
    inflight: dict[int, RequestSpec] = {}
    stop = stop or asyncio.Event()
    t_first: list[float] = []
    t_last = [0.0]

    def dl() -> float:
        return deadline() if callable(deadline) else deadline

    async def worker() -> None:
        while queue and not stop.is_set() and time.monotonic() < dl():
            spec = queue.popleft()
            inflight[spec.rid] = spec
            if not t_first:
                t_first.append(time.monotonic())
            if state is not None:
                state["in_flight"] = len(inflight)
            o = await run_one(ep, spec, timeout_s, ignore_eos)
            outcomes.append(o)
            inflight.pop(spec.rid, None)
            t_last[0] = time.monotonic()
            if state is not None:
                state.update(done=len(outcomes), in_flight=len(inflight))

    async def progress() -> None:
        while True:
            await asyncio.sleep(progress_every_s)
            if on_progress:
                on_progress(outcomes, len(inflight))

    pending = {asyncio.ensure_future(worker()) for _ in range(max(1, concurrency))}
    prog = asyncio.ensure_future(progress())
    try:
        while pending and time.monotonic() < dl():
            _, pending = await asyncio.wait(pending, timeout=min(0.5, max(0.0, dl() - time.monotonic())))
    finally:
        for t in pending:
            t.cancel()
        prog.cancel()
        await asyncio.gather(prog, *pending, return_exceptions=True)
    for rid in list(inflight):
        outcomes.append(Outcome(rid=rid, kind=CUT, detail="in flight when the time budget ended"))
    outcomes.sort(key=lambda o: o.rid)
    wall = (t_last[0] - t_first[0]) if t_first and t_last[0] else None
    return LoadRun(outcomes=outcomes, wall_s=wall, not_sent=len(queue), started=t_first[0] if t_first else 0.0)


# ================================================================================================
# server state: running requests, drain, counters
# ================================================================================================
async def read_running(ep: Endpoint, timeout: float = 5.0) -> dict[str, Any]:
    """Requests the scheduler still holds: ``/v1/loads?include=core`` (0.5.17: num_running_reqs,
    num_waiting_reqs per DP rank, republished when the scheduler goes idle), else ``/get_load``
    (running + waiting only), else ``/metrics`` (only with ``--enable-metrics``)."""
    with contextlib.suppress(TransportError, asyncio.TimeoutError):
        st, body = await http_json(ep, "GET", "/v1/loads?include=core", timeout=timeout)
        if st == 200 and isinstance(body, dict) and body.get("loads"):
            loads = body["loads"]
            return {
                "running": sum(int(x.get("num_running_reqs", 0)) for x in loads),
                "waiting": sum(int(x.get("num_waiting_reqs", 0)) for x in loads),
                "source": "/v1/loads",
            }
    with contextlib.suppress(TransportError, asyncio.TimeoutError):
        st, body = await http_json(ep, "GET", "/get_load", timeout=timeout)
        if st == 200 and isinstance(body, list) and body:
            reqs = sum(int(x.get("num_reqs", 0)) for x in body)
            waiting = sum(int(x.get("num_waiting_reqs", 0)) for x in body)
            return {"running": reqs - waiting, "waiting": waiting, "source": "/get_load"}
    with contextlib.suppress(TransportError, asyncio.TimeoutError):
        st, body = await http_json(ep, "GET", "/metrics", timeout=timeout)
        if st == 200 and isinstance(body, str):
            vals: dict[str, float] = {}
            for line in body.splitlines():
                for name in ("num_running_reqs", "num_queue_reqs"):
                    if line.startswith(f"sglang:{name}"):
                        with contextlib.suppress(ValueError, IndexError):
                            vals[name] = vals.get(name, 0.0) + float(line.rsplit(None, 1)[1])
            if "num_running_reqs" in vals:
                return {
                    "running": int(vals["num_running_reqs"]),
                    "waiting": int(vals.get("num_queue_reqs", 0)),
                    "source": "/metrics",
                }
    return {"running": None, "waiting": None, "source": None}


async def wait_drained(ep: Endpoint, timeout_s: float, poll_s: float = 0.2) -> dict[str, Any]:
    """Poll until the scheduler holds no running or waiting request. ``drained`` is None when the
    server exposes no way to tell (never counted as a pass)."""
    t0 = time.monotonic()
    last: dict[str, Any] = {}
    while True:
        last = await read_running(ep)
        if last["running"] is None:
            return {"drained": None, "waited_s": round(time.monotonic() - t0, 2), "last": last}
        if last["running"] == 0 and last["waiting"] == 0:
            return {"drained": True, "waited_s": round(time.monotonic() - t0, 2), "last": last}
        if time.monotonic() - t0 > timeout_s:
            return {"drained": False, "waited_s": round(time.monotonic() - t0, 2), "last": last}
        await asyncio.sleep(poll_s)


async def tiny_generate(ep: Endpoint, timeout: float = 30.0) -> tuple[int, Any]:
    """One 1-token greedy request (a prefill only: it also makes the sage counters publish)."""
    return await http_json(
        ep,
        "POST",
        "/generate",
        {"input_ids": [TOKEN_FLOOR + 1, TOKEN_FLOOR + 2], "sampling_params": {"max_new_tokens": 1, "temperature": 0}},
        timeout=timeout,
    )


async def fresh_counters(ep: Endpoint, stats_dir: Path) -> dict[str, Any]:
    """The sage counters, made current: they are republished at most every 0.5 s, so wait past that
    and run a one-token request (one prefill batch, no decode) before reading."""
    await asyncio.sleep(0.6)
    with contextlib.suppress(TransportError, asyncio.TimeoutError):
        await tiny_generate(ep)
    await asyncio.sleep(0.05)
    return read_counters_detail(stats_dir)


# ================================================================================================
# the server process
# ================================================================================================
class ServerDown(Exception):
    """The server exited or never became healthy."""


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group (Linux /proc)."""
    out = []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) >= 3 and rest[0] != "Z" and int(rest[2]) == pgid:
            out.append(int(name))
    return out


class Server:
    """One ``sglang.launch_server`` (or ``--launcher``) process group on 127.0.0.1."""

    def __init__(self, backend: str, cmd: list[str], env: dict[str, str], ep: Endpoint, log_dir: Path) -> None:
        self.backend, self.cmd, self.env, self.ep, self.log_dir = backend, cmd, env, ep, log_dir
        self.proc: Proc | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log_path = self.log_dir / f"{self.backend}_{self.starts}.log"
        self.proc = Proc(f"{self.backend}#{self.starts}", self.cmd, self.env, log_path, echo=None)

    def tail(self, n: int = 25) -> str:
        return "\n".join(list(self.proc.tail)[-n:]) if self.proc else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_serving(self, timeout_s: float) -> float:
        """Seconds from start until ``/health`` is 200 and a generate is answered."""
        assert self.proc is not None
        t0 = self.proc.started
        deadline = time.time() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise ServerDown(f"server exited with {self.proc.poll()} before serving; log tail:\n{self.tail()}")
            if time.time() > deadline:
                raise ServerDown(f"not serving within {timeout_s:.0f}s; log tail:\n{self.tail()}")
            with contextlib.suppress(TransportError, asyncio.TimeoutError):
                st, _ = await http_json(self.ep, "GET", "/health", timeout=5)
                if st == 200:
                    st, body = await tiny_generate(self.ep, timeout=max(5.0, deadline - time.time()))
                    if st == 200:
                        return round(time.time() - t0, 1)
                    raise ServerDown(f"healthy but the first generate got {st}: {str(body)[:300]}")
            await asyncio.sleep(0.2)

    def sigkill_main(self) -> int:
        """SIGKILL the server's main process only (a crash/OOM kill), not its group."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.pid

    async def wait_group_gone(self, timeout_s: float) -> tuple[bool, list[int]]:
        """Whether the main process and every process of its group exit (children die with their
        parent: SGLang sets PR_SET_PDEATHSIG); survivors are listed, then killed."""
        assert self.proc is not None
        pgid = self.proc.pid
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.proc.poll()  # reap the killed main process
            if not group_members(pgid):
                return True, []
            await asyncio.sleep(0.25)
        survivors = group_members(pgid)
        return not survivors, survivors

    def stop(self) -> None:
        """SIGTERM the group (SIGKILL what is left after 15 s)."""
        if self.proc is not None:
            self.proc.kill(grace_s=15.0)


def build_server_cmd(args: argparse.Namespace, backend: str, port: int) -> list[str]:
    """The launch command; ``--launcher`` replaces ``python -m sglang.launch_server`` (tests: a fake)."""
    launcher = shlex.split(args.launcher) if args.launcher else [sys.executable, "-m", "sglang.launch_server"]
    cmd = [
        *launcher,
        "--model-path",
        args.model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--attention-backend",
        backend,
        "--mem-fraction-static",
        str(args.mem_fraction_static),
        "--random-seed",
        str(args.seed),
        "--log-level",
        args.log_level,
        "--sampling-backend",
        "pytorch",
        "--grammar-backend",
        "none",
        "--cuda-graph-max-bs-decode",
        str(args.cuda_graph_max_bs),
    ]
    if args.prefill_cuda_graph == "off":
        cmd.append("--disable-prefill-cuda-graph")
    if args.enable_metrics:
        cmd.append("--enable-metrics")
    return cmd + shlex.split(args.server_args or "")


# ================================================================================================
# phases
# ================================================================================================
class Budget:
    """Wall-clock budget of the run: phases ask before they start."""

    def __init__(self, budget_s: float) -> None:
        self.t0 = time.monotonic()
        self.budget_s = budget_s

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def deadline(self, cap_s: float) -> float:
        return time.monotonic() + max(0.0, min(cap_s, self.left()))


@dataclass
class Ctx:
    """Everything the phases share."""

    args: argparse.Namespace
    budget: Budget
    rf: R.ResultsFile
    log_dir: Path
    stats_root: Path
    mix: Mix | None = None
    warm: Mix | None = None
    tokens: list[int] | None = None
    startup_s: dict[str, float] = field(default_factory=dict)
    load_wall_s: dict[str, float] = field(default_factory=dict)
    replay_s: dict[str, float] = field(default_factory=dict)
    answers: dict[str, dict[int, list[int]]] = field(default_factory=dict)

    def est_start(self) -> float:
        return max(self.startup_s.values(), default=self.args.start_est_s) + 5.0

    def est_core(self) -> float:
        load = max(self.load_wall_s.values(), default=self.args.requests * self.args.est_s_per_request)
        replay = max(self.replay_s.values(), default=self.args.replay * 0.8)
        return self.est_start() + 15.0 + load * 1.2 + replay + 10.0


async def load_tokens(ctx: Ctx, ep: Endpoint) -> dict[str, Any]:
    """The corpus as token ids, tokenized by the server under test (its tokenizer, no client-side
    transformers): the committed Shakespeare text (sha256-checked). Falls back to seeded random
    ids, recorded, when ``/tokenize`` fails."""
    text = corpus_mod.load_text()
    info: dict[str, Any] = {**corpus_mod.corpus_info()}
    try:
        st, body = await http_json(ep, "POST", "/tokenize", {"prompt": text, "add_special_tokens": False}, timeout=60)
        if st == 200 and isinstance(body, dict) and isinstance(body.get("tokens"), list) and body["tokens"]:
            ctx.tokens = [int(t) for t in body["tokens"]]
            info.update(source="/tokenize", tokens=len(ctx.tokens), max_model_len=body.get("max_model_len"))
            return info
        info["tokenize_error"] = f"status {st}: {str(body)[:200]}"
    except (TransportError, asyncio.TimeoutError) as e:
        info["tokenize_error"] = f"{type(e).__name__}: {e}"
    ctx.tokens = corpus_mod.random_tokens(100_000, 30_000, seed=ctx.args.seed, low=TOKEN_FLOOR)
    info.update(source="random token ids (fallback)", tokens=len(ctx.tokens))
    return info


def mix_config(args: argparse.Namespace, requests: int) -> MixConfig:
    return MixConfig(
        requests=requests,
        prefixes=args.prefixes,
        prefix_tokens=args.prefix_tokens,
        suffix_tokens=args.suffix_tokens,
        short_tokens=args.short_tokens,
        max_new_tokens=args.max_new_tokens,
        shared_frac=args.shared_frac,
        stream_frac=args.stream_frac,
        cancel_frac=args.cancel_frac,
        multi_frac=args.multi_frac,
        sampled_frac=args.sampled_frac,
    )


async def ensure_mix(ctx: Ctx, ep: Endpoint) -> None:
    """Build the load once (the first server that is up tokenizes), the same for every backend."""
    if ctx.mix is not None:
        return
    info = await load_tokens(ctx, ep)
    assert ctx.tokens is not None
    a = ctx.args
    ctx.mix = build_mix(ctx.tokens, mix_config(a, a.requests), a.seed)
    ctx.warm = build_mix(ctx.tokens, mix_config(a, a.warmup), a.seed + 1)
    summary = mix_summary(ctx.mix)
    old = ctx.rf.doc.get("mix") or {}
    if a.merge and old.get("digest") and old["digest"] != summary["digest"]:
        ctx.rf.doc["notes"].append(
            f"merged runs used different loads (mix digest {old['digest'][:12]} vs "
            f"{summary['digest'][:12]}): compare with care"
        )
    ctx.rf.doc["corpus"] = info
    ctx.rf.set("mix", summary)
    log(
        f"[mix] {summary['requests']} requests: {summary['shared_prefix']} shared-prefix "
        f"(prefixes {summary['prefix_lengths']}), {summary['short']} short, {summary['streamed']} streamed, "
        f"{summary['cancel_planned']} cancelled, {summary['n_gt_1']} with n>1, {summary['non_greedy']} "
        f"non-greedy; {summary['prompt_tokens_total']} prompt tokens; corpus {info.get('source')}"
    )


async def phase_core(ctx: Ctx, server: Server, rec: dict[str, Any], save: Callable[[], None]) -> None:
    """Warm-up, load, drain, memory, counters, then the lone replays of a greedy sample."""
    a, ep, b = ctx.args, server.ep, server.backend
    assert ctx.mix is not None and ctx.warm is not None
    stats_dir = ctx.stats_root / b
    t = time.monotonic()
    warm = await run_load(
        ep, ctx.warm.specs, a.concurrency, a.request_timeout_s, ctx.budget.deadline(120), a.ignore_eos
    )
    rec["warmup"] = {
        k: v
        for k, v in summarize(warm.outcomes, warm.wall_s, warm.not_sent).items()
        if k in ("sent", "ok", "errors", "lost", "cancelled", "wall_s", "error_samples")
    }
    rec["warmup"]["s"] = round(time.monotonic() - t, 1)
    log(f"[{b}] warm-up: {rec['warmup']}")
    rec["drain_before_load"] = await wait_drained(ep, a.drain_timeout_s * 4)
    counters_before = await fresh_counters(ep, stats_dir)
    mem_before = gpu_mem_used_mib()
    save()

    def progress(outs: list[Outcome], inflight: int) -> None:
        s = summarize(outs, None)
        rec["load"] = {**s, "partial": True, "in_flight": inflight}
        save()
        log(
            f"[{b}] load {len(outs)}/{len(ctx.mix.specs)} done ({inflight} in flight): ok {s['ok']}, "
            f"cancelled {s['cancelled']}, errors {s['errors']}"
        )

    log(f"[{b}] load: {len(ctx.mix.specs)} requests at concurrency {a.concurrency}")
    run = await run_load(
        ep,
        ctx.mix.specs,
        a.concurrency,
        a.request_timeout_s,
        ctx.budget.deadline(a.load_timeout_s),
        a.ignore_eos,
        on_progress=progress,
    )
    load = summarize(run.outcomes, run.wall_s, run.not_sent)
    if run.wall_s:
        ctx.load_wall_s[b] = run.wall_s
    answers = {o.rid: o.output_ids for o in run.outcomes if o.kind == OK and o.output_ids is not None}
    ctx.answers[b] = answers
    load["answer_digests"] = {str(rid): answer_digest(ids) for rid, ids in sorted(answers.items())}
    rec["load"] = load
    save()
    log(
        f"[{b}] load done: sent {load['sent']}, ok {load['ok']}, cancelled {load['cancelled']}, errors "
        f"{load['errors']}, lost {load['lost']}, cut {load['cut']}, not sent {load['not_sent']}; "
        f"{R.fmt(load['out_tok_s'], '.0f')} out tok/s, TTFT p50/p99 {R.fmt(load['ttft_ms']['p50'], '.0f')}/"
        f"{R.fmt(load['ttft_ms']['p99'], '.0f')} ms, latency p50/p99 {R.fmt(load['latency_ms']['p50'], '.0f')}/"
        f"{R.fmt(load['latency_ms']['p99'], '.0f')} ms"
    )
    rec["drain_after_load"] = await wait_drained(ep, a.drain_timeout_s * 4)
    counters_after = await fresh_counters(ep, stats_dir)
    mem_after = gpu_mem_used_mib()
    growth = (mem_after / mem_before - 1.0) if mem_before and mem_after is not None else None
    rec["gpu_mem"] = {
        **rec.get("gpu_mem", {}),
        "before_load_mib": mem_before,
        "after_load_mib": mem_after,
        "growth": growth,
    }
    rec["sage_stats"] = {
        "before": counters_before,
        "after": counters_after,
        "delta": counter_delta(counters_before["counters"], counters_after["counters"]),
    }
    save()
    log(
        f"[{b}] drained: {rec['drain_after_load']}; GPU memory {mem_before} -> {mem_after} MiB; "
        f"sage counters during the load: {rec['sage_stats']['delta']}"
    )
    await phase_answers(ctx, server, rec, save)


def replay_sample(mix: Mix, k: int, seed: int) -> list[RequestSpec]:
    """A seeded sample of greedy n=1 requests that are not cancelled (the same for every backend)."""
    pool = [s for s in mix.specs if s.greedy and s.n == 1 and s.cancel_after is None]
    rng = random.Random(f"replay-{seed}")
    return sorted(rng.sample(pool, min(k, len(pool))), key=lambda s: s.rid)


def first_diff(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token (None when identical)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


async def flush_cache(ep: Endpoint, tries: int = 10) -> bool:
    """Empty the radix cache; SGLang refuses (400) while a request is still being finished, so retry."""
    for _ in range(tries):
        with contextlib.suppress(TransportError, asyncio.TimeoutError):
            st, _ = await http_json(ep, "POST", "/flush_cache?timeout=5", timeout=30)
            if st == 200:
                return True
        await asyncio.sleep(0.05)
    return False


async def phase_answers(ctx: Ctx, server: Server, rec: dict[str, Any], save: Callable[[], None]) -> None:
    """Replay a greedy sample one request at a time (cache flushed first unless --replay-cache keep)
    and count the answers identical to the same request's answer under load."""
    a, ep, b = ctx.args, server.ep, server.backend
    assert ctx.mix is not None
    sample = replay_sample(ctx.mix, a.replay, a.seed)
    loaded = ctx.answers.get(b, {})
    res: dict[str, Any] = {
        "sampled": len(sample),
        "compared": 0,
        "identical": 0,
        "missing_under_load": 0,
        "replay_errors": 0,
        "flush_failures": 0,
        "cache": a.replay_cache,
        "items": [],
    }
    rec["answers"] = res
    t0 = time.monotonic()
    deadline = ctx.budget.deadline(a.replay_timeout_s)
    for spec in sample:
        if time.monotonic() > deadline:
            res["cut_by_budget"] = True
            break
        if spec.rid not in loaded:
            res["missing_under_load"] += 1
            continue
        if a.replay_cache == "flush" and not await flush_cache(ep):
            res["flush_failures"] += 1
        o = await run_one(ep, spec, a.request_timeout_s, a.ignore_eos, stream=False, cancel=False)
        if o.kind != OK or o.output_ids is None:
            res["replay_errors"] += 1
            res["items"].append({"rid": spec.rid, "error": f"{o.kind}: {o.detail}"[:200]})
            continue
        d = first_diff(loaded[spec.rid], o.output_ids)
        res["compared"] += 1
        res["identical"] += d is None
        res["items"].append({"rid": spec.rid, "kind": spec.kind, "len": len(o.output_ids), "first_diff": d})
    res["share"] = res["identical"] / res["compared"] if res["compared"] else None
    res["s"] = round(time.monotonic() - t0, 1)
    if res["compared"]:
        ctx.replay_s[server.backend] = res["s"] / res["compared"] * len(sample)
    save()
    log(
        f"[{b}] answers: {res['identical']}/{res['compared']} identical to a lone replay "
        f"({R.fmt(res['share'], '.3f')}); {res['missing_under_load']} not answered under load, "
        f"{res['replay_errors']} replay errors, {res['s']}s"
    )


async def fault_disconnect(ctx: Ctx, server: Server) -> dict[str, Any]:
    """Clients that go away: streams closed after 2 token events and non-streamed requests whose
    connection is closed after 0.5 s, all asking for many tokens (so a request that is not aborted
    would run for many seconds). Pass: the scheduler drains to 0 within --drain-timeout-s."""
    a, ep = ctx.args, server.ep
    ctx_len = int((ctx.rf.doc.get("corpus") or {}).get("max_model_len") or a.context_length)
    long_new = max(64, min(a.disconnect_tokens, ctx_len - 64))
    res: dict[str, Any] = {"streams": a.disconnect_streams, "plain": a.disconnect_plain, "max_new_tokens": long_new}
    res["before"] = await wait_drained(ep, a.drain_timeout_s * 4)
    rng = random.Random(f"disconnect-{a.seed}")
    toks = ctx.tokens or [TOKEN_FLOOR + 1] * 64

    def spec(i: int, stream: bool) -> RequestSpec:
        return RequestSpec(
            rid=i,
            kind="short",
            prefix=None,
            input_ids=_slice(rng, tile_tokens(toks, 64), 32),
            max_new_tokens=long_new,
            stream=stream,
            cancel_after=2 if stream else None,
            n=1,
            temperature=0.0,
            top_p=1.0,
            seed=None,
        )

    async def plain_and_leave(s: RequestSpec) -> str:
        conn = HttpConn(ep)
        try:
            await asyncio.wait_for(conn.send("POST", "/generate", json.dumps(s.payload(True)).encode()), 0.5)
            return "answered before the client left"
        except asyncio.TimeoutError:
            return "left"
        except TransportError as e:
            return f"transport: {e}"
        finally:
            await conn.close()

    streams = [run_one(ep, spec(i, True), a.request_timeout_s, True) for i in range(a.disconnect_streams)]
    plains = [plain_and_leave(spec(1000 + i, False)) for i in range(a.disconnect_plain)]
    outs = await asyncio.gather(*streams, *plains)
    so = outs[: a.disconnect_streams]
    res["stream_outcomes"] = {k: sum(o.kind == k for o in so) for k in {o.kind for o in so}}
    res["plain_outcomes"] = {
        k: sum(x == k for x in outs[a.disconnect_streams :]) for k in set(outs[a.disconnect_streams :])
    }
    t_left = time.monotonic()
    res["running_right_after"] = await read_running(ep)
    res["drain"] = await wait_drained(ep, a.drain_timeout_s)
    res["drain_s_after_last_disconnect"] = round(time.monotonic() - t_left, 2)
    all_left = all(o.kind == CANCELLED for o in so) and all(x == "left" for x in outs[a.disconnect_streams :])
    res["all_clients_left_mid_request"] = all_left
    drained = res["drain"]["drained"]
    res["ok"] = None if drained is None else bool(drained and all_left)
    res["detail"] = (
        f"drained to 0 running in {res['drain']['waited_s']}s after {a.disconnect_streams} streams "
        f"+ {a.disconnect_plain} plain requests left"
        if drained
        else f"still {res['drain']['last']} after {a.drain_timeout_s}s"
        if drained is False
        else "running requests not readable"
    )
    if not all_left:
        res["detail"] += f"; not every client left mid-request: {res['stream_outcomes']} {res['plain_outcomes']}"
    return res


def bad_request_cases(ctx_len: int, huge_n: int) -> list[tuple[str, dict[str, Any] | None, bytes | None]]:
    """(name, JSON body, raw body) of each invalid request; each must get a 4xx."""
    ok_ids = [TOKEN_FLOOR + 7] * 8
    sp = {"max_new_tokens": 8, "temperature": 0}
    return [
        ("empty text", {"text": "", "sampling_params": sp}, None),
        ("empty input_ids", {"input_ids": [], "sampling_params": sp}, None),
        ("over the context length", {"input_ids": [TOKEN_FLOOR + 7] * (ctx_len + 16), "sampling_params": sp}, None),
        ("temperature -1", {"input_ids": ok_ids, "sampling_params": {**sp, "temperature": -1.0}}, None),
        ("top_p 0", {"input_ids": ok_ids, "sampling_params": {**sp, "top_p": 0.0}}, None),
        ("max_new_tokens -5", {"input_ids": ok_ids, "sampling_params": {**sp, "max_new_tokens": -5}}, None),
        ("invalid JSON", None, b'{"input_ids": [101, 102], "sampling_params": {"max_new_tokens": 8'),
        ("wrong type (input_ids a string)", {"input_ids": "not ids", "sampling_params": sp}, None),
        (
            f"huge n ({huge_n})",
            {"input_ids": ok_ids, "sampling_params": {"max_new_tokens": 1, "n": huge_n, "temperature": 1.0}},
            None,
        ),
    ]


async def fault_bad_requests(ctx: Ctx, server: Server) -> dict[str, Any]:
    """Each invalid request must get a 4xx, and the server must still answer: ``/health_generate``
    (a 1-token generation through the scheduler) after each case, a normal generate and a drain at
    the end. A server that dies on a case is recorded and restarted (budget permitting) so that the
    remaining cases are still tried. Pass: all 4xx, never dead, answering at the end."""
    a, ep = ctx.args, server.ep
    ctx_len = int((ctx.rf.doc.get("corpus") or {}).get("max_model_len") or a.context_length)
    all_cases = bad_request_cases(ctx_len, a.huge_n)
    cases = []
    restarts = 0
    for name, payload, raw in all_cases:
        c: dict[str, Any] = {"case": name}
        t = time.monotonic()
        try:
            st, body = await http_json(ep, "POST", "/generate", payload, timeout=a.bad_timeout_s, raw=raw)
            c.update(status=st, body=str(body)[:200])
        except asyncio.TimeoutError:
            c.update(status=None, body=f"no answer within {a.bad_timeout_s:.0f}s")
        except TransportError as e:
            c.update(status=None, body=f"transport: {e}")
        c["s"] = round(time.monotonic() - t, 2)
        c["4xx"] = c["status"] is not None and 400 <= c["status"] < 500
        await asyncio.sleep(0.3)  # a crashing scheduler takes its server down within a moment
        try:
            st, _ = await http_json(ep, "GET", "/health_generate", timeout=30)
            c["alive_after"] = st == 200 and server.alive()
        except (TransportError, asyncio.TimeoutError) as e:
            c["alive_after"] = False
            c["health_error"] = f"{type(e).__name__}: {e}"[:200]
        log(f"[{server.backend}] bad request {name!r}: status {c['status']} in {c['s']}s, alive {c['alive_after']}")
        cases.append(c)
        if not c["alive_after"]:  # a dying server stops answering before its process is gone: give it time
            deadline = time.monotonic() + 10
            while server.alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        if not server.alive():
            c["server_died"] = True
            c["log_tail"] = server.tail(15)
            if ctx.budget.left() < ctx.est_start() + 30:
                log(f"[{server.backend}] the server died on {name!r}; no time left to restart it")
                break
            log(f"[{server.backend}] the server died on {name!r}: restarting it for the remaining cases")
            server.stop()
            server.start()
            restarts += 1
            await server.wait_serving(a.start_timeout_s)
    res: dict[str, Any] = {"cases": cases, "restarts": restarts}
    try:
        st, _ = await tiny_generate(ep, timeout=a.bad_timeout_s * 2)
        res["generate_after"] = st
    except (TransportError, asyncio.TimeoutError) as e:
        res["generate_after"] = f"{type(e).__name__}: {e}"[:200]
    res["drain"] = await wait_drained(ep, a.bad_timeout_s * 2)
    non4xx = [c["case"] for c in cases if not c["4xx"]]
    dead = [c["case"] for c in cases if not c["alive_after"]]
    res["ok"] = (
        not non4xx
        and not dead
        and len(cases) == len(all_cases)
        and res["generate_after"] == 200
        and res["drain"]["drained"] is not False
    )
    res["detail"] = (
        f"all {len(cases)} cases got a 4xx and the server kept answering"
        if res["ok"]
        else f"not 4xx: {non4xx}; not answering after: {dead}; tried {len(cases)}/{len(all_cases)}; "
        f"generate at the end: {res['generate_after']}; drained: {res['drain']['drained']}"
    )
    return res


async def fault_kill(ctx: Ctx, server: Server, rec: dict[str, Any]) -> dict[str, Any]:
    """SIGKILL the server's main process during a load; every in-flight request must fail within
    KILL_RESOLVE_S (none hangs), its process group must go, and the restarted server must serve
    within RESTART_FACTOR x the first start-up time, then answer a short load without errors."""
    a, ep, b = ctx.args, server.ep, server.backend
    toks = ctx.tokens or [TOKEN_FLOOR + 1] * 64
    res: dict[str, Any] = {}
    specs = build_mix(toks, mix_config(a, a.kill_requests), a.seed + 2).specs
    stop = asyncio.Event()
    limit = [ctx.budget.deadline(a.kill_after_s + 120)]
    state = {"done": 0, "in_flight": 0}
    load = asyncio.ensure_future(
        run_load(ep, specs, a.concurrency, a.request_timeout_s, lambda: limit[0], a.ignore_eos, stop=stop, state=state)
    )
    # mid-load: after --kill-after-s, or earlier once half of the requests are answered
    t0 = time.monotonic()
    while time.monotonic() - t0 < a.kill_after_s and state["done"] < len(specs) // 2 and not load.done():
        await asyncio.sleep(0.02)
    res["running_at_kill"] = await read_running(ep, timeout=2.0)
    res["client_in_flight_at_kill"], res["answered_before_kill"] = state["in_flight"], state["done"]
    t_kill = time.monotonic()
    res["killed_pid"] = server.sigkill_main()
    stop.set()
    limit[0] = t_kill + KILL_RESOLVE_S
    run = await load
    res["resolved_s_after_kill"] = round(time.monotonic() - t_kill, 2)
    s = summarize(run.outcomes, run.wall_s, run.not_sent)
    res["load"] = {
        k: s[k]
        for k in ("sent", "ok", "cancelled", "error_responses", "timeouts", "transport_errors", "cut", "error_samples")
    }
    res["no_hang"] = s["timeouts"] == 0 and s["cut"] == 0
    gone, survivors = await server.wait_group_gone(20.0)
    res["group_gone"], res["survivors"] = gone, survivors
    server.stop()  # survivors, if any, go with the group (recorded above)
    before = (rec.get("gpu_mem") or {}).get("before_start_mib")
    used, freed = await asyncio.to_thread(_wait_mem, before, a.mem_slack_mib)
    res["gpu_mem_after_kill_mib"], res["gpu_mem_freed_after_kill"] = used, freed
    log(
        f"[{b}] SIGKILL pid {res['killed_pid']} with {res['running_at_kill'].get('running')} running: in flight "
        f"resolved in {res['resolved_s_after_kill']}s ({s['ok']} ok, {s['transport_errors']} transport, "
        f"{s['timeouts']} timeouts, {s['cut']} hung), group gone {gone}, survivors {survivors}"
    )
    first = ctx.startup_s.get(b) or rec.get("startup_s")
    allowed = RESTART_FACTOR * first if first else a.start_timeout_s
    res["restart_limit_s"] = round(allowed, 1)
    server.start()
    try:
        res["restart_s"] = await server.wait_serving(min(a.start_timeout_s, max(allowed * 2, 30.0)))
    except ServerDown as e:
        res.update(
            restart_s=None,
            restart_error=str(e)[-1500:],
            ok=False,
            detail=f"not serving after the restart: {str(e)[:200]}",
        )
        return res
    post = build_mix(toks, mix_config(a, a.post_restart_requests), a.seed + 3).specs
    prun = await run_load(ep, post, a.concurrency, a.request_timeout_s, ctx.budget.deadline(60), a.ignore_eos)
    ps = summarize(prun.outcomes, prun.wall_s, prun.not_sent)
    res["after_restart"] = {k: ps[k] for k in ("sent", "ok", "cancelled", "errors", "lost", "cut", "error_samples")}
    res["drain_after_restart"] = await wait_drained(ep, a.drain_timeout_s * 2)
    serving = ps["errors"] == 0 and ps["lost"] == 0 and ps["complete"]
    in_time = res["restart_s"] <= allowed
    inflight = res["client_in_flight_at_kill"]
    res["ok"] = bool(res["no_hang"] and gone and serving and in_time) if inflight else None
    res["detail"] = (
        f"restart serving in {res['restart_s']}s (limit {allowed:.0f}s = {RESTART_FACTOR}x first start "
        f"{first}s); the {inflight} requests in flight at the kill {'all' if res['no_hang'] else 'NOT all'} "
        f"resolved within {res['resolved_s_after_kill']}s; process group gone: {gone}; {ps['ok']}/{ps['sent']} "
        f"ok after the restart"
    )
    if not inflight:
        res["detail"] = "inconclusive: no request was in flight at the kill; " + res["detail"]
    return res


# ================================================================================================
# targets and report
# ================================================================================================
def _target(name: str, status: str, value: Any, detail: str, threshold: Any = None) -> dict[str, Any]:
    return {
        "target": name,
        "config": CANDIDATE,
        "issue": 17,
        "status": status,
        "value": value,
        "threshold": threshold,
        "detail": detail,
    }


def paired_answers(a: dict[str, Any], b: dict[str, Any]) -> str:
    """On the replays both backends compared (the same seeded sample): how many only one got identical.
    A paired count says more than two shares of ~50 samples each when the verdict is close."""
    da = {x["rid"]: x.get("first_diff") is None for x in a.get("items", []) if "first_diff" in x}
    db = {x["rid"]: x.get("first_diff") is None for x in b.get("items", []) if "first_diff" in x}
    common = set(da) & set(db)
    only_a = sum(da[r] and not db[r] for r in common)
    only_b = sum(db[r] and not da[r] for r in common)
    return f"paired on {len(common)}: identical only with sage {only_a}, only with the baseline {only_b}"


def evaluate_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The criteria of issue #17 for ``sage_attn`` (PASS/FAIL/N/A; N/A is never a pass)."""
    by = {r.get("backend"): r for r in doc.get("results", [])}
    base_name = (doc.get("config") or {}).get("baseline", DEFAULT_BASELINE)
    c, bl = by.get(CANDIDATE) or {}, by.get(base_name) or {}
    cl, bll = c.get("load") or {}, bl.get("load") or {}
    out = []
    for key, label in (("errors", "load: 0 errors"), ("lost", "load: 0 lost requests (sent - answered - cancelled)")):
        v = cl.get(key)
        if v is None or cl.get("partial"):
            out.append(_target(label, "N/A", None, "no (complete) load of sage_attn"))
        elif not cl.get("complete"):
            out.append(
                _target(
                    label,
                    "FAIL" if v else "N/A",
                    v,
                    f"{v}; the load was cut by the time budget ({cl.get('cut')} in flight, "
                    f"{cl.get('not_sent')} not sent)",
                )
            )
        else:
            out.append(
                _target(
                    label,
                    "PASS" if v == 0 else "FAIL",
                    v,
                    f"{v} (baseline {bll.get(key, '–')}); {json.dumps(cl.get('error_samples'))[:300]}"
                    if v
                    else f"0 of {cl.get('sent')} (baseline {bll.get(key, '–')})",
                    0,
                )
            )
    mem = c.get("gpu_mem") or {}
    g = mem.get("growth")
    out.append(
        _target(
            f"GPU memory after the load within {MAX_MEM_GROWTH:.0%} of before",
            "N/A" if g is None else "PASS" if g <= MAX_MEM_GROWTH else "FAIL",
            g,
            f"{mem.get('before_load_mib')} -> {mem.get('after_load_mib')} MiB ({R.fmt(g, '+.4f')})"
            if g is not None
            else "no nvidia-smi reading",
            MAX_MEM_GROWTH,
        )
    )
    ca, ba = c.get("answers") or {}, bl.get("answers") or {}
    sc, sb = ca.get("share"), ba.get("share")
    if sc is None or sb is None:
        out.append(
            _target(
                "identical to a lone replay: share >= baseline's", "N/A", sc, f"missing: sage {sc}, {base_name} {sb}"
            )
        )
    else:
        out.append(
            _target(
                "identical to a lone replay: share >= baseline's",
                "PASS" if sc >= sb else "FAIL",
                sc,
                f"{ca['identical']}/{ca['compared']} = {sc:.3f} vs {base_name} "
                f"{ba['identical']}/{ba['compared']} = {sb:.3f}; {paired_answers(ca, ba)}",
                sb,
            )
        )
    tc, tb = cl.get("out_tok_s"), bll.get("out_tok_s")
    if not tc or not tb or not cl.get("complete") or not bll.get("complete"):
        out.append(
            _target(
                f"throughput >= {MIN_THROUGHPUT_VS_BASELINE}x baseline",
                "N/A",
                None,
                f"missing or incomplete load: sage {tc}, {base_name} {tb}",
            )
        )
    else:
        r = tc / tb
        out.append(
            _target(
                f"throughput >= {MIN_THROUGHPUT_VS_BASELINE}x baseline",
                "PASS" if r >= MIN_THROUGHPUT_VS_BASELINE else "FAIL",
                r,
                f"{r:.3f}x ({tc:.0f} vs {tb:.0f} output tok/s; waits on the sm90 kernel issue)",
                MIN_THROUGHPUT_VS_BASELINE,
            )
        )
    delta = (c.get("sage_stats") or {}).get("delta")
    if not delta:
        out.append(_target("8-bit prefill and extend-with-prefix ran during the load", "N/A", None, "no counters"))
    else:
        p, e = delta.get("prefill_8bit_batches", 0), delta.get("extend_prefix_8bit_batches", 0)
        out.append(
            _target(
                "8-bit prefill and extend-with-prefix ran during the load",
                "PASS" if p > 0 and e > 0 else "FAIL",
                {"prefill": p, "extend_prefix": e},
                f"prefill_8bit_batches +{p}, extend_prefix_8bit_batches +{e}, decode_batches "
                f"+{delta.get('decode_batches', 0)}",
            )
        )
    faults = c.get("faults") or {}
    for key, label in (
        ("kill", "SIGKILL mid-load: in-flight fail fast, restart serving within start-up time"),
        ("disconnect", "client gone mid-request: server drains to 0 running"),
        ("bad", "bad requests get 4xx, server keeps answering"),
    ):
        f = faults.get(key)
        if not f or f.get("ok") is None:
            why = (f or {}).get("reason") or (f or {}).get("detail") or "not run"
            out.append(_target(f"fault: {label}", "N/A", None, why))
        else:
            bf = ((bl.get("faults") or {}).get(key) or {}).get("ok")
            out.append(
                _target(
                    f"fault: {label}",
                    "PASS" if f["ok"] else "FAIL",
                    f["ok"],
                    f"{f.get('detail', '')} (baseline: {'–' if bf is None else bf})",
                )
            )
    return out


def cross_backend_agreement(doc: dict[str, Any]) -> dict[str, Any] | None:
    """Share of greedy answers under load that are identical between the two backends (info only)."""
    by = {r.get("backend"): r for r in doc.get("results", [])}
    base = (doc.get("config") or {}).get("baseline", DEFAULT_BASELINE)
    a = ((by.get(CANDIDATE) or {}).get("load") or {}).get("answer_digests") or {}
    b = ((by.get(base) or {}).get("load") or {}).get("answer_digests") or {}
    common = set(a) & set(b)
    if not common:
        return None
    same = sum(a[k] == b[k] for k in common)
    return {"compared": len(common), "identical": same, "share": same / len(common)}


def render_markdown(doc: dict[str, Any]) -> str:
    """The soak report: mix, load figures per backend, answers, faults, targets, notes."""
    parts = R._doc_header("Soak: sage_attn vs baseline through SGLang's HTTP server", doc)
    mix = doc.get("mix") or {}
    corpus = doc.get("corpus") or {}
    if mix:
        parts.append(
            f"Load: {mix.get('requests')} requests at concurrency {doc.get('config', {}).get('concurrency')}: "
            f"{mix.get('shared_prefix')} share one of {len(mix.get('prefix_lengths', []))} prefixes "
            f"({', '.join(R.fmt_len(x) for x in mix.get('prefix_lengths', []))} tokens), {mix.get('short')} short; "
            f"{mix.get('streamed')} streamed, {mix.get('cancel_planned')} cancelled by the client mid-stream, "
            f"{mix.get('n_gt_1')} with n > 1, {mix.get('non_greedy')} non-greedy (seeded); max_new_tokens "
            f"{mix.get('max_new_tokens_range')}; prompts cut from {corpus.get('name', corpus.get('source'))} "
            f"({corpus.get('source')}); mix digest `{str(mix.get('digest'))[:12]}`.\n\n"
        )
    rows = []
    for r in doc.get("results", []):
        ld = r.get("load") or {}
        mem = r.get("gpu_mem") or {}
        d = (r.get("sage_stats") or {}).get("delta") or {}
        rows.append(
            [
                r.get("backend"),
                r.get("status"),
                R.fmt(r.get("startup_s"), ".0f"),
                ld.get("sent", "–"),
                ld.get("ok", "–"),
                ld.get("cancelled", "–"),
                ld.get("errors", "–"),
                ld.get("lost", "–"),
                ld.get("cut", "–"),
                R.fmt(ld.get("wall_s"), ".1f"),
                R.fmt(ld.get("req_s"), ".1f"),
                R.fmt(ld.get("out_tok_s"), ".0f"),
                f"{R.fmt((ld.get('ttft_ms') or {}).get('p50'), '.0f')} / "
                f"{R.fmt((ld.get('ttft_ms') or {}).get('p99'), '.0f')}",
                f"{R.fmt((ld.get('latency_ms') or {}).get('p50'), '.0f')} / "
                f"{R.fmt((ld.get('latency_ms') or {}).get('p99'), '.0f')}",
                f"{R.fmt(mem.get('before_load_mib'), '.0f')} → {R.fmt(mem.get('after_load_mib'), '.0f')}",
                f"{d.get('prefill_8bit_batches', '–')} / {d.get('extend_prefix_8bit_batches', '–')} / "
                f"{d.get('decode_batches', '–')}"
                if r.get("backend") == CANDIDATE
                else "",
            ]
        )
    parts.append("## Load\n\n")
    parts.append(
        R.markdown_table(
            [
                "backend",
                "status",
                "start s",
                "sent",
                "ok",
                "cancelled",
                "errors",
                "lost",
                "cut",
                "wall s",
                "req/s",
                "out tok/s",
                "TTFT p50/p99 ms",
                "latency p50/p99 ms",
                "GPU MiB before → after",
                "sage 8-bit prefill / extend / decode batches",
            ],
            rows,
        )
    )
    parts.append(
        "\n`lost` = sent − answered − cancelled (no complete answer: timeout, reset, stream cut short); "
        "`errors` = error answers + lost; `cut` = still in flight when the run's own time budget "
        "ended (the load is then incomplete and its targets are not passed). TTFT over streamed "
        "requests; latency over requests answered in full.\n\n"
    )
    parts.append("## Answers (greedy sample replayed alone vs its answer under load)\n\n")
    rows = []
    for r in doc.get("results", []):
        a = r.get("answers") or {}
        diffs = [x["first_diff"] for x in a.get("items", []) if x.get("first_diff") is not None]
        rows.append(
            [
                r.get("backend"),
                a.get("sampled", "–"),
                a.get("compared", "–"),
                a.get("identical", "–"),
                R.fmt(a.get("share"), ".3f"),
                a.get("missing_under_load", "–"),
                a.get("replay_errors", "–"),
                R.fmt(percentile(diffs, 50), ".0f"),
                a.get("cache", "–"),
            ]
        )
    parts.append(
        R.markdown_table(
            [
                "backend",
                "sampled",
                "compared",
                "identical",
                "share",
                "not answered under load",
                "replay errors",
                "median first divergence (token)",
                "cache before replay",
            ],
            rows,
        )
    )
    agree = doc.get("cross_backend") or cross_backend_agreement(doc)
    if agree:
        parts.append(
            f"\nGreedy answers under load identical between the two backends: {agree['identical']}/"
            f"{agree['compared']} ({agree['share']:.3f}).\n"
        )
    parts.append("\n## Faults\n\n")
    rows = []
    for r in doc.get("results", []):
        for key in FAULTS:
            f = (r.get("faults") or {}).get(key)
            if f is None:
                continue
            st = (
                "skipped"
                if f.get("skipped")
                else ("PASS" if f.get("ok") else "FAIL" if f.get("ok") is False else "N/A")
            )
            rows.append([r.get("backend"), key, st, f.get("reason") or f.get("detail", "")])
    parts.append(R.markdown_table(["backend", "fault", "result", "detail"], rows) if rows else "No fault ran.\n")
    bad_rows = []
    for r in doc.get("results", []):
        for c in ((r.get("faults") or {}).get("bad") or {}).get("cases", []):
            bad_rows.append(
                [
                    r.get("backend"),
                    c["case"],
                    c.get("status"),
                    c.get("s"),
                    c.get("alive_after"),
                    str(c.get("body", ""))[:90],
                ]
            )
    if bad_rows:
        parts.append(
            "\n"
            + R.markdown_table(
                ["backend", "bad request", "HTTP status", "s", "alive after", "answer (start)"], bad_rows
            )
        )
    targets = doc.get("targets") or evaluate_targets(doc)
    parts.append(R.targets_markdown(targets))
    notes = [f"- {x}" for x in doc.get("notes", [])]
    for r in doc.get("results", []):
        notes += [f"- {r.get('backend')}: {str(e)[:500]}" for e in r.get("errors", [])]
        for k, v in (r.get("skipped") or {}).items():
            notes.append(f"- {r.get('backend')}: {k} skipped: {v}")
        if r.get("server_cmd"):
            notes.append(f"- {r.get('backend')} server: `{r['server_cmd']}`")
        after = (r.get("sage_stats") or {}).get("after") or {}
        if after.get("processes"):
            notes.append(
                f"- {r.get('backend')}: counter files of {after['processes']} scheduler process(es); prefill kernel "
                f"{after.get('prefill_kernels') or '?'}, decode backend {after.get('decode_backends') or '?'}"
            )
        m = r.get("gpu_mem") or {}
        if m.get("before_start_mib") is not None:
            notes.append(
                f"- {r.get('backend')}: GPU memory used before start / after stop: "
                f"{m.get('before_start_mib')} / {m.get('after_stop_mib')} MiB"
            )
    if notes:
        parts.append("\n## Notes\n\n" + "\n".join(notes) + "\n")
    return "".join(parts)


def write_reports(doc: dict[str, Any], out_dir: Path, stem: str) -> dict[str, str]:
    """<stem>.json and <stem>.md (targets refreshed)."""
    doc["targets"] = evaluate_targets(doc)
    doc["cross_backend"] = cross_backend_agreement(doc)
    R.atomic_write_text(out_dir / f"{stem}.md", render_markdown(doc))
    R.atomic_write_text(out_dir / f"{stem}.json", R.dump_json(doc))
    return {"json": str(out_dir / f"{stem}.json"), "md": str(out_dir / f"{stem}.md")}


# ================================================================================================
# orchestration
# ================================================================================================
def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:1500]}"


async def run_backend(ctx: Ctx, backend: str, later: list[str]) -> None:
    """Every phase for one backend, in order; never raises. ``later``: backends still to run (their
    core phase is reserved time before this backend's expensive SIGKILL/restart fault)."""
    a = ctx.args
    old = next((r for r in ctx.rf.doc["results"] if r.get("backend") == backend), None)
    rec: dict[str, Any] = dict(old) if (old and a.merge) else {}
    rec.update(backend=backend, status="starting", errors=[], skipped={})
    faults: dict[str, Any] = dict(rec.get("faults") or {})
    rec["faults"] = faults

    def save() -> None:
        ctx.rf.replace_where("backend", backend, rec)

    stats_dir = ctx.stats_root / backend
    stats_dir.mkdir(parents=True, exist_ok=True)
    for f in stats_dir.glob("*.json"):
        f.unlink()
    port = a.port or _free_port()
    ep = Endpoint("127.0.0.1", port)
    env = {**os.environ, "SGLANG_SAGE_STATS_DIR": str(stats_dir)}
    cmd = build_server_cmd(a, backend, port)
    rec["server_cmd"] = shlex.join(cmd)
    server = Server(backend, cmd, env, ep, ctx.log_dir)
    need = ctx.est_start() + 20
    if ctx.budget.left() < need:
        rec["status"] = "skipped"
        rec["skipped"]["all"] = (
            f"time budget: {ctx.budget.left():.0f}s left < {need:.0f}s; re-run with --backends {backend} --merge"
        )
        save()
        log(f"[{backend}] SKIPPED: {rec['skipped']['all']}")
        return
    rec.setdefault("gpu_mem", {})["before_start_mib"] = gpu_mem_used_mib()
    save()
    try:
        log(f"[{backend}] starting: {rec['server_cmd']}")
        server.start()
        rec["startup_s"] = await server.wait_serving(a.start_timeout_s)
        ctx.startup_s[backend] = rec["startup_s"]
        rec["status"] = "running"
        save()
        log(f"[{backend}] serving after {rec['startup_s']}s on port {port}")
        await ensure_mix(ctx, ep)
        if "core" in a.phases:
            if ctx.budget.left() < ctx.est_core() - ctx.est_start():
                rec["skipped"]["core"] = f"time budget: {ctx.budget.left():.0f}s left"
            else:
                await phase_core(ctx, server, rec, save)
        if "faults" in a.phases:
            for name, fn, est in (
                ("disconnect", fault_disconnect, 15.0),
                ("bad", fault_bad_requests, 10.0 + a.bad_timeout_s),
            ):
                if name not in a.faults:
                    continue
                if ctx.budget.left() < est:
                    faults[name] = {
                        "skipped": True,
                        "ok": None,
                        "reason": f"time budget: {ctx.budget.left():.0f}s left < {est:.0f}s",
                    }
                    continue
                log(f"[{backend}] fault: {name}")
                try:
                    faults[name] = await fn(ctx, server)
                except Exception as e:  # noqa: BLE001 - a failed fault check is a result
                    faults[name] = {"ok": False, "detail": f"the check itself failed: {_err(e)}"}
                log(f"[{backend}] fault {name}: ok={faults[name].get('ok')} {faults[name].get('detail', '')}")
                save()
                if not server.alive():
                    raise ServerDown(f"the server died during the {name} fault check; log tail:\n{server.tail()}")
            if "kill" in a.faults:
                reserve = sum(ctx.est_core() for _ in later)
                need = ctx.est_start() * RESTART_FACTOR + a.kill_after_s + 30 + reserve
                if ctx.budget.left() < need:
                    faults["kill"] = {
                        "skipped": True,
                        "ok": None,
                        "reason": f"time budget: {ctx.budget.left():.0f}s left < {need:.0f}s "
                        f"(restart + {reserve:.0f}s kept for {later}); re-run with "
                        f"--backends {backend} --phases faults --faults kill --merge",
                    }
                else:
                    log(f"[{backend}] fault: kill")
                    faults["kill"] = await fault_kill(ctx, server, rec)
                    log(f"[{backend}] fault kill: ok={faults['kill'].get('ok')} {faults['kill'].get('detail')}")
                save()
        rec["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - record and go on with the next backend
        rec["status"] = "error"
        rec["errors"].append(_err(e))
        log(f"[{backend}] ERROR: {rec['errors'][-1][:800]}")
    finally:
        t = time.monotonic()
        server.stop()
        used, freed = await asyncio.to_thread(
            _wait_mem, rec.get("gpu_mem", {}).get("before_start_mib"), a.mem_slack_mib
        )
        rec.setdefault("gpu_mem", {}).update(
            after_stop_mib=used, freed_after_stop=freed, stop_s=round(time.monotonic() - t, 1)
        )
        save()
        log(f"[{backend}] stopped; status {rec['status']}")


def _wait_mem(before: float | None, slack: float) -> tuple[float | None, bool]:
    from bench_e2e import wait_mem_freed

    return wait_mem_freed(before, slack)


def _free_port() -> int:
    from sglang_sage.verify.server import free_port

    return free_port(31555)


def parse_range(text: str) -> tuple[int, int]:
    """'LO,HI' -> (LO, HI)."""
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two integers), got {text!r}") from e
    return lo, hi


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 requests, 16 replays, 64 warm-up (~5 min)")
    ap.add_argument("--model", default="/tmp/smollm2", help="model path (default: the bundle's SmolLM2)")
    ap.add_argument(
        "--backends",
        default=f"{CANDIDATE},{DEFAULT_BASELINE}",
        help="comma list, run in this order (default sage_attn,flashinfer)",
    )
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="the backend sage_attn is compared with")
    ap.add_argument("--phases", default="core,faults", help=f"comma list of {PHASES}")
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"comma list of {FAULTS}")
    ap.add_argument("--requests", type=int, default=None, help="load size (default 2000; quick 300)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=None, help="warm-up requests (default 128; quick 64)")
    ap.add_argument("--replay", type=int, default=None, help="greedy requests replayed alone (default 48; quick 16)")
    ap.add_argument(
        "--replay-cache",
        choices=("flush", "keep"),
        default="flush",
        help="flush the radix cache before each replay (default: a lone, one-shot prefill)",
    )
    ap.add_argument("--prefixes", type=int, default=8)
    ap.add_argument("--prefix-tokens", type=parse_range, default=(512, 6144))
    ap.add_argument("--suffix-tokens", type=parse_range, default=(8, 64))
    ap.add_argument("--short-tokens", type=parse_range, default=(16, 256))
    ap.add_argument("--max-new-tokens", type=parse_range, default=(1, 256))
    ap.add_argument("--shared-frac", type=float, default=0.70)
    ap.add_argument("--stream-frac", type=float, default=0.20)
    ap.add_argument("--cancel-frac", type=float, default=0.05)
    ap.add_argument("--multi-frac", type=float, default=0.05, help="share of requests with n in 2-4")
    ap.add_argument("--sampled-frac", type=float, default=0.15, help="share of n=1 non-greedy (seeded) requests")
    ap.add_argument(
        "--no-ignore-eos",
        dest="ignore_eos",
        action="store_false",
        help="let requests stop at EOS (default: ignore_eos, so both backends do the same work)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kill-requests", type=int, default=128, help="load during which the server is SIGKILLed")
    ap.add_argument("--kill-after-s", type=float, default=2.0)
    ap.add_argument("--post-restart-requests", type=int, default=32)
    ap.add_argument("--disconnect-streams", type=int, default=8)
    ap.add_argument("--disconnect-plain", type=int, default=4)
    ap.add_argument(
        "--disconnect-tokens",
        type=int,
        default=8000,
        help="max_new_tokens of the requests whose client leaves (capped by the context; long, so that a "
        "request not aborted would still run well past --drain-timeout-s)",
    )
    ap.add_argument("--huge-n", type=int, default=10000)
    ap.add_argument("--context-length", type=int, default=8192, help="used when /tokenize does not report it")
    ap.add_argument("--mem-fraction-static", type=float, default=0.25)
    ap.add_argument(
        "--cuda-graph-max-bs", type=int, default=None, help="decode CUDA graphs up to (default concurrency + 16)"
    )
    ap.add_argument(
        "--prefill-cuda-graph",
        choices=("off", "default"),
        default="off",
        help="off (default, as bench_e2e.py): no prefill graph capture, which SGLang would redo at every start "
        "and restart; default: SGLang's choice",
    )
    ap.add_argument("--enable-metrics", action="store_true", help="pass --enable-metrics (adds a /metrics reading)")
    ap.add_argument("--server-args", default="", help="extra flags for every server (one string)")
    ap.add_argument(
        "--launcher",
        default=None,
        help="command that starts an SGLang-compatible server (default: python -m "
        "sglang.launch_server; the CPU tests use a fake)",
    )
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--start-timeout-s", type=float, default=240.0)
    ap.add_argument("--start-est-s", type=float, default=90.0, help="start-up estimate before one was measured")
    ap.add_argument("--est-s-per-request", type=float, default=0.03, help="load time estimate per request")
    ap.add_argument("--request-timeout-s", type=float, default=120.0)
    ap.add_argument("--load-timeout-s", type=float, default=None, help="cap of one load (default 150; quick 60)")
    ap.add_argument("--replay-timeout-s", type=float, default=None, help="cap of the replays (default 45; quick 20)")
    ap.add_argument(
        "--drain-timeout-s",
        type=float,
        default=10.0,
        help="a gone client's request must have left the scheduler within this (SGLang notices a "
        "non-streamed client gone at its 4 s state-wait timeout)",
    )
    ap.add_argument("--bad-timeout-s", type=float, default=30.0)
    ap.add_argument("--mem-slack-mib", type=float, default=1024.0)
    ap.add_argument("--budget-s", type=float, default=500.0, help="no new phase after this (default 500)")
    ap.add_argument("--hard-limit-s", type=float, default=550.0, help="watchdog: save, kill servers, exit")
    ap.add_argument("--out-root", default=str(R.RESULTS_ROOT), help="results go to <out-root>/<gpu-slug>/")
    ap.add_argument("--out-dir", default=None, help="exact output directory (overrides --out-root)")
    ap.add_argument("--stem", default=None, help="file stem (default soak / soak_quick)")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep other backends' records (and this backend's earlier phases) of an existing <stem>.json",
    )
    ap.add_argument("--render", default=None, metavar="JSON", help="no GPU: re-render the markdown of a result")
    a = ap.parse_args(argv)
    a.requests = a.requests or (300 if a.quick else 2000)
    a.warmup = a.warmup or (64 if a.quick else 128)
    a.replay = a.replay if a.replay is not None else (16 if a.quick else 48)
    a.load_timeout_s = a.load_timeout_s or (60.0 if a.quick else 150.0)
    a.replay_timeout_s = a.replay_timeout_s or (20.0 if a.quick else 45.0)
    a.cuda_graph_max_bs = a.cuda_graph_max_bs or a.concurrency + 16
    a.stem_given = a.stem is not None
    a.stem = a.stem or ("soak_quick" if a.quick else "soak")
    a.backends = [x.strip() for x in a.backends.split(",") if x.strip()]
    a.phases = [x.strip() for x in a.phases.split(",") if x.strip()]
    a.faults = [x.strip() for x in a.faults.split(",") if x.strip()]
    bad = [p for p in a.phases if p not in PHASES] + [f for f in a.faults if f not in FAULTS]
    if bad:
        ap.error(f"unknown phase/fault {bad}: phases {PHASES}, faults {FAULTS}")
    if a.concurrency < 1:
        ap.error(f"--concurrency must be >= 1, got {a.concurrency}")
    if not a.backends:
        ap.error("--backends is empty")
    try:
        mix_config(a, a.requests).check()
    except ValueError as e:
        ap.error(str(e))
    return a


def render_only(path: str, stem: str | None) -> int:
    doc = R.load_json(path)
    if doc is None:
        R.log(f"cannot read {path}")
        return 2
    p = Path(path)
    R.log(f"wrote {write_reports(doc, p.parent, stem or p.stem)}")
    return 0


def pack_logs(log_dir: Path, out: Path) -> str | None:
    """One archive of the server logs (the device tool brings back only a few files)."""
    logs = sorted(log_dir.glob("*.log"))
    if not logs:
        return None
    with tarfile.open(out, "w:gz") as tar:
        for f in logs:
            tar.add(f, arcname=f.name)
    return str(out)


async def amain(a: argparse.Namespace, ctx: Ctx) -> None:
    for i, b in enumerate(a.backends):
        await run_backend(ctx, b, a.backends[i + 1 :])


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.render:
        return render_only(a.render, a.stem if a.stem_given else None)
    notes = prepare_env()
    env = R.capture_env(with_torch=False, extra_files={"soak.py": __file__, "_results.py": R.__file__})
    out_dir = Path(a.out_dir) if a.out_dir else Path(a.out_root) / env["gpu_slug"]
    out_path = out_dir / f"{a.stem}.json"
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items() if k not in ("render", "stem_given")}
    doc: dict[str, Any] = {"kind": "soak", "env": env, "config": cfg, "notes": notes, "results": []}
    if a.merge and (old := R.load_json(out_path)):
        doc["results"] = old.get("results", [])
        doc["mix"], doc["corpus"] = old.get("mix"), old.get("corpus")
        doc["previous_env"] = [old.get("env")] + list(old.get("previous_env", []))
        when = (old.get("env") or {}).get("date_utc")
        doc["notes"] = list(old.get("notes", [])) + notes + [f"merged into an earlier run of {when}"]
    rf = R.ResultsFile(out_path, doc)
    tmp = Path(tempfile.mkdtemp(prefix="soak_"))
    ctx = Ctx(args=a, budget=Budget(a.budget_s), rf=rf, log_dir=tmp / "logs", stats_root=tmp / "stats")
    log(
        f"[plan] backends {a.backends} (baseline {a.baseline}), phases {a.phases}, faults {a.faults}; "
        f"{a.requests} requests at concurrency {a.concurrency}, {a.replay} replays; budget {a.budget_s:.0f}s, "
        f"watchdog {a.hard_limit_s:.0f}s -> {out_path}"
    )
    log(f"[env] GPU {env.get('gpu')} driver {env.get('driver')} sglang {env['versions'].get('sglang')}")
    done = threading.Event()

    def finalize(note: str | None = None) -> None:
        if note:
            rf.doc["notes"].append(note)
        rf.doc["total_wall_s"] = round(time.monotonic() - ctx.budget.t0, 1)
        with contextlib.suppress(Exception):
            rf.doc["server_logs"] = pack_logs(ctx.log_dir, out_dir / f"{a.stem}_server_logs.tgz")
        write_reports(rf.doc, out_dir, a.stem)

    def watchdog() -> None:
        if done.wait(max(0.0, a.hard_limit_s - (time.monotonic() - ctx.budget.t0))):
            return
        log(f"[soak] WATCHDOG: {a.hard_limit_s:.0f}s reached; saving, killing the servers, exiting")
        with contextlib.suppress(Exception):
            finalize(f"watchdog fired at {a.hard_limit_s:.0f}s: later phases did not run")
        kill_all()
        os._exit(4)

    def on_term(signum: int, frame: Any) -> None:
        log(f"[soak] signal {signum}: saving, killing the servers, exiting")
        with contextlib.suppress(Exception):
            finalize(f"interrupted by signal {signum}")
        kill_all()
        os._exit(128 + signum)

    threading.Thread(target=watchdog, daemon=True, name="soak-watchdog").start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):
            signal.signal(sig, on_term)
    rc = 0
    try:
        asyncio.run(amain(a, ctx))
    except Exception as e:  # noqa: BLE001 - a bug here must still leave the partial results behind
        rf.doc["notes"].append(f"soak.py itself failed: {_err(e)}")
        log(f"[soak] INTERNAL ERROR: {_err(e)}")
        rc = 1
    finally:
        done.set()
        kill_all()
    finalize()
    log("[criteria] (issue #17)")
    for line in R.target_lines(rf.doc["targets"]):
        log("  " + line)
    log(f"[done] {rf.doc['total_wall_s']}s; results in {out_dir}/{a.stem}.{{json,md}}")
    return rc


if __name__ == "__main__":
    _rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_rc)
