"""Decode a few test problems with a freshly trained checkpoint on the current device (bf16 on CUDA)."""
import sys
import time

import torch

from dpad.config import DecodeConfig
from dpad.engine import decode
from dpad.models import load
from dpad.synthetic import arith
from dpad.train.trainer import Encoder, score_outputs

ckpt, tok_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
dev = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if dev == "cuda" else "float32"
lm = load(ckpt, device=dev, dtype=dtype, tokenizer=False)
from pathlib import Path
enc = Encoder(Path(tok_dir))
probs = [(p.question, p.solution, p.answer) for p in arith.generate("test", n, seed=2)]
P, _ = enc.encode_pairs(probs)
for name, cfg in [
    ("vanilla", DecodeConfig(gen_length=256)),
    ("parallel+prefix+dpad", DecodeConfig(gen_length=256, threshold=0.9, cache="prefix", suffix="gaussian",
                                          window=64, sigma=3.0, scale=2.0, early_termination=True)),
]:
    t0 = time.time()
    texts, nfe = [], 0
    for p in P:
        out = decode(lm.model, p.tolist(), cfg, mask_id=enc.mask_id, eos_id=enc.eos_id)
        g = out.generated[: out.response_length]
        texts.append(enc.decode(g))
        nfe += out.nfe
    dt = time.time() - t0
    print(f"[smoke] {dev} {dtype} {name}: {score_outputs(texts, probs)} nfe/sample={nfe / n:.1f} "
          f"s/sample={dt / n:.3f}", flush=True)
print("[smoke] sample:", repr(texts[0]))
