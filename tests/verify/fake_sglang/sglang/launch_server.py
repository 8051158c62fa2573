"""Fake ``python -m sglang.launch_server``: the endpoints verify.py uses, over the fake Engine."""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sglang._fake_engine import Engine


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model-path", required=True)
    p.add_argument("--attention-backend")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--skip-tokenizer-init", action="store_true")
    a, _ = p.parse_known_args()
    engine = Engine(model_path=a.model_path, attention_backend=a.attention_backend,
                    skip_tokenizer_init=a.skip_tokenizer_init)

    class H(BaseHTTPRequestHandler):
        def _send(self, code: int, obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {})
            elif self.path == "/v1/models":
                self._send(200, {"data": [{"id": a.model_path}]})
            elif self.path == "/server_info":
                self._send(200, engine.get_server_info())
            else:
                self._send(404, {"error": self.path})

        def do_POST(self) -> None:
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/v1/completions":
                o = engine.generate(prompt=req["prompt"], sampling_params={"max_new_tokens": req["max_tokens"]})
                self._send(200, {"choices": [{"text": o["text"]}]})
            elif self.path == "/generate":
                o = engine.generate(input_ids=req["input_ids"], sampling_params=req["sampling_params"])
                self._send(200, {"output_ids": o["output_ids"], "meta_info": o["meta_info"]})
            else:
                self._send(404, {"error": self.path})

    print("fake server ready", flush=True)
    ThreadingHTTPServer((a.host, a.port), H).serve_forever()


if __name__ == "__main__":
    main()
