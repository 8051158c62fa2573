"""Teacher-forced top-1 agreement between attention backends on the same text (noise floor of the
"≥ 99 % agreement with triton" criterion): triton vs flashinfer (two exact 16-bit kernels) and
sage_attn vs both. Needs a GPU with SGLang + the patch set applied.

    python scripts/agreement_floor.py MODEL_DIR [--out FILE.json]
"""

import argparse
import importlib.util
import json
import os
import sys

import sglang
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


def _engine_test_module():
    """The registered engine test: its text and its teacher-forced measurement, reused as they are."""
    path = os.path.join(HERE, "../overlay/test/registered/attention/test_sage_attn_engine.py")
    spec = importlib.util.spec_from_file_location("sage_engine_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _texts(tok, test_mod) -> dict:
    shakespeare = open(os.path.join(HERE, "../sglang_sage/verify/data/shakespeare.txt")).read()
    return {
        "stdlib_docs (registered test)": tok.encode(test_mod._real_text())[:2100],
        "shakespeare (verify corpus)": tok.encode(shakespeare[100000:130000])[:2100],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--out")
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.model)
    test_mod = _engine_test_module()
    texts = _texts(tok, test_mod)
    res: dict = {}
    for backend in ("triton", "flashinfer", "sage_attn"):
        eng = sglang.Engine(
            model_path=a.model,
            attention_backend=backend,
            sampling_backend="pytorch",
            grammar_backend="none",
            mem_fraction_static=0.3,
            log_level="error",
            disable_cuda_graph=True,
        )
        try:
            res[backend] = {name: test_mod.teacher_top1(eng, ids) for name, ids in texts.items()}
        finally:
            eng.shutdown()
    table = {}
    for name in texts:
        for x, y in (("flashinfer", "triton"), ("sage_attn", "triton"), ("sage_attn", "flashinfer")):
            pairs = [(p, q) for p, q in zip(res[x][name], res[y][name]) if p is not None and q is not None]
            agree = sum(p == q for p, q in pairs) / len(pairs)
            table[f"{name}: {x} vs {y}"] = {"agreement": agree, "positions": len(pairs)}
            print(f"{name:32s} {x:>10s} vs {y:<10s} top-1 agreement {agree:.4%} over {len(pairs)} positions")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(table, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
