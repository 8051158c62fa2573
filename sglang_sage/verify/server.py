"""The runtime flag through the HTTP server: ``python -m sglang.launch_server --attention-backend sage_attn``.

The server runs on 127.0.0.1 in its own process group, is asked one OpenAI-compatible completion
(plain urllib), its ``/server_info`` is read, and it is killed at the end whatever happened. With
``--server-entry serve`` the same flags go through ``sglang serve`` (``sglang.cli.main:main``).
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .procs import Proc


def free_port(start: int = 30555) -> int:
    """A free TCP port on 127.0.0.1 (SGLang derives its internal ports from it, so leave room)."""
    for port in range(start, start + 400, 7):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, payload: dict | None = None, timeout: float = 30.0) -> tuple[int, Any]:
    """(status, parsed JSON or text); connection errors raise."""
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read().decode("utf-8", "replace")
            status = r.status
    except urllib.error.HTTPError as e:
        body, status = e.read().decode("utf-8", "replace"), e.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def kwargs_to_cli(kwargs: dict[str, Any]) -> list[str]:
    """Engine kwargs → server flags (``foo_bar=True`` → ``--foo-bar``; False/None dropped)."""
    out: list[str] = []
    for k, v in kwargs.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            out.append(flag)
        elif v is False or v is None:
            continue
        else:
            out += [flag, str(v)]
    return out


def server_command(entry: str, engine_kwargs: dict[str, Any], port: int) -> list[str]:
    kw = dict(engine_kwargs)
    kw.pop("log_level", None)
    kw.update(host="127.0.0.1", port=port, skip_server_warmup=True, log_level="warning")
    if entry == "serve":  # the `sglang` console script; sglang/cli/main.py has no __main__ guard, so call main()
        return [sys.executable, "-c", "from sglang.cli.main import main; main()", "serve", "--model-type", "llm",
                *kwargs_to_cli(kw)]
    return [sys.executable, "-m", "sglang.launch_server", *kwargs_to_cli(kw)]


def run_server_check(engine_kwargs: dict[str, Any], env: dict[str, str], log_path: Path, timeout_s: float,
                     entry: str = "launch_server", prompt: str = "The capital of France is",
                     input_ids: list[int] | None = None, stats_dir: str | None = None,
                     echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Start, wait for health, one completion, read server_info and counters, kill. Never raises."""
    port = free_port()
    cmd = server_command(entry, engine_kwargs, port)
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"cmd": " ".join(cmd), "port": port, "ok": False}
    deadline = time.time() + timeout_s
    proc = None
    try:
        proc = Proc("server", cmd, env, log_path, echo=echo)
        t0 = time.time()
        ready = False
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.poll()} before it was ready; log tail:\n"
                                   + "\n".join(list(proc.tail)[-25:]))
            try:
                status, _ = http("GET", base + "/health", timeout=5)
                if status == 200:
                    ready = True
                    break
            except (urllib.error.URLError, OSError, TimeoutError):
                pass
            time.sleep(1.0)
        if not ready:
            raise TimeoutError(f"server not healthy within {timeout_s:.0f}s")
        out["start_s"] = round(time.time() - t0, 1)
        if echo:
            echo(f"[verify] [server] healthy after {out['start_s']}s on port {port}")
        left = max(5.0, deadline - time.time())
        if input_ids is None:
            _, models = http("GET", base + "/v1/models", timeout=min(30, left))
            model_id = (models.get("data") or [{}])[0].get("id") if isinstance(models, dict) else None
            status, body = http("POST", base + "/v1/completions",
                                {"model": model_id or engine_kwargs.get("model_path"), "prompt": prompt,
                                 "max_tokens": 8, "temperature": 0}, timeout=min(60, left))
            text = body["choices"][0]["text"] if status == 200 and isinstance(body, dict) else None
            out.update(status_code=status, text=text, endpoint="/v1/completions")
        else:  # no tokenizer (dummy weights): the native endpoint with token ids
            status, body = http("POST", base + "/generate",
                                {"input_ids": input_ids, "sampling_params": {"max_new_tokens": 8, "temperature": 0}},
                                timeout=min(60, left))
            ids = body.get("output_ids") if status == 200 and isinstance(body, dict) else None
            out.update(status_code=status, text=str(ids) if ids else None, endpoint="/generate")
        if status != 200:
            out["body"] = str(body)[:1000]
        out["ok"] = status == 200 and bool(out.get("text"))
        status, info = http("GET", base + "/server_info", timeout=min(30, max(5.0, deadline - time.time())))
        if status == 200 and isinstance(info, dict):
            out["attention_backend"] = info.get("attention_backend")
            out["max_total_num_tokens"] = info.get("max_total_num_tokens")
        if stats_dir:
            from sglang_sage.counters import read_counters_detail

            out["stats"] = read_counters_detail(stats_dir)
    except Exception as e:  # noqa: BLE001 - a failed server is a failed criterion, not a crash
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        if proc is not None:
            t1 = time.time()
            proc.kill()
            out["kill_s"] = round(time.time() - t1, 1)
            out["log_tail"] = list(proc.tail)[-15:]
    return out
