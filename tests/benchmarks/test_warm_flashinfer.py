"""scripts/warm_flashinfer.py with a stand-in `sglang` module: the engine settings verify's engines use, a cold and
a radix-hit prefill with log-probs, and a shutdown even when a request fails."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "warm_flashinfer.py"


def _load():
    spec = importlib.util.spec_from_file_location("warm_flashinfer", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Engine:
    instances: list[_Engine] = []
    fail_on: int | None = None

    def __init__(self, **kw) -> None:
        self.kw, self.calls, self.shut = kw, [], False
        _Engine.instances.append(self)

    def generate(self, **kw) -> dict:
        self.calls.append(kw)
        if _Engine.fail_on is not None and len(self.calls) == _Engine.fail_on:
            raise RuntimeError("scheduler died")
        return {"text": ""}

    def shutdown(self) -> None:
        self.shut = True


@pytest.fixture
def fake_sglang(monkeypatch: pytest.MonkeyPatch):
    _Engine.instances, _Engine.fail_on = [], None
    monkeypatch.setitem(sys.modules, "sglang", types.SimpleNamespace(Engine=_Engine))
    return _Engine


def test_warms_prefill_radix_hit_and_decode_like_verify(
    fake_sglang, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _load().main(["/tmp/model"]) == 0
    (eng,) = fake_sglang.instances
    assert (
        eng.kw["model_path"] == "/tmp/model"
        and eng.kw["attention_backend"] == "flashinfer"
    )
    assert (
        eng.kw["disable_cuda_graph"] is True and eng.kw["sampling_backend"] == "pytorch"
    )
    first, second = (c["input_ids"] for c in eng.calls)
    assert (
        len(first) == 300 and second[:300] == first and len(second) == 600
    )  # radix hit on the first prompt
    assert all(c["return_logprob"] and c["logprob_start_len"] == 0 for c in eng.calls)
    assert all(c["sampling_params"]["max_new_tokens"] > 0 for c in eng.calls)
    assert eng.shut and "kernels compiled and cached" in capsys.readouterr().out


def test_engine_is_shut_down_when_a_request_fails(fake_sglang) -> None:
    fake_sglang.fail_on = 1
    with pytest.raises(RuntimeError, match="scheduler died"):
        _load().main(["/tmp/model", "--backend", "fa3"])
    (eng,) = fake_sglang.instances
    assert eng.kw["attention_backend"] == "fa3" and eng.shut and len(eng.calls) == 1
