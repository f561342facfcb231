"""Make ``tests/fixtures/golden/cases_sampled.json``: golden cases of the reference samplers off the
greedy path (random remasking, Gumbel temperature, CFG, the factor rule, DPad's dropout generator at
T > 0, Dream with ``alg_temp``), decoded by the public reference code on the tiny golden models.

This file holds no reference code: it imports the references from checkouts given on the command
line and calls them. Run it in a separate virtual environment with the references' transformers
(4.49) and ``einops``, never in the project's:

    python scripts/golden_sampled.py --refs REFS --golden tests/fixtures/golden --out cases_sampled.json

``REFS`` holds the checkouts (commits in tests/fixtures/golden/PATCHES.md):
``REFS/dpad`` (Crys-Chen/DPad, with PATCHES.md item 1 applied: the Gaussian sampler's two tensors on
the CPU), ``REFS/fastdllm`` (NVlabs/Fast-dLLM), ``REFS/llada`` (ML-GSAI/LLaDA: ``generate.py``) and
``REFS/d2f`` (zhijie-group/Discrete-Diffusion-Forcing: ``D2F-eval/model_cache/dream/`` as
``REFS/d2f/dream``, the original Dream ``generation_utils.py``).

Every call runs in float64 on the CPU with one thread, right after ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

MASK, EOS = 250, 251
PROMPT_SEED = 20261205
SOURCES = {
    "llada": "ML-GSAI/LLaDA generate.py",
    "fastdllm": "NVlabs/Fast-dLLM llada/generate.py",
    "dpad_baseline": "Crys-Chen/DPad llada/generate_baseline.py",
    "dpad": "Crys-Chen/DPad llada/generate_dropout.py",
    "dream": "Dream-org HF generation_utils.py (copy in zhijie-group/Discrete-Diffusion-Forcing D2F-eval/model_cache/dream)",
    "dpad_dream": "Crys-Chen/DPad dream/model/generation_utils_block.py",
}


def load_module(name: str, path: Path, package: bool = False):  # noqa: ANN201
    """Import ``path`` (a file, or with ``package`` a folder's ``__init__.py``) as module ``name``."""
    if package:
        spec = importlib.util.spec_from_file_location(name, path / "__init__.py", submodule_search_locations=[str(path)])
    else:
        spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


class References:
    def __init__(self, refs: Path, golden: Path) -> None:
        sys.path.insert(0, str(refs / "dpad" / "llada"))  # DPad's llada scripts import `model` and `sampler`
        import generate_baseline  # noqa: PLC0415
        import generate_dropout  # noqa: PLC0415
        from model.modeling_llada import LLaDAModelLM  # noqa: PLC0415

        self.baseline, self.dropout = generate_baseline, generate_dropout
        self.fastdllm = load_module("fastdllm_generate", refs / "fastdllm" / "llada" / "generate.py")
        fd_model = load_module("fastdllm_model", refs / "fastdllm" / "llada" / "model", package=True)
        self.mlgsai = load_module("mlgsai_generate", refs / "llada" / "generate.py")
        dream_pkg = load_module("dpad_dream_model", refs / "dpad" / "dream" / "model", package=True)
        orig = load_module("dream_generation_utils", refs / "d2f" / "dream" / "generation_utils.py")

        class OriginalDream(orig.DreamGenerationMixin, dream_pkg.DreamModel):
            """DPad's Dream modules with the original Dream sampler (PATCHES.md item 2)."""

        self.llada = LLaDAModelLM.from_pretrained(str(golden / "llada-tiny")).double().eval()
        self.llada_fd = fd_model.LLaDAModelLM.from_pretrained(str(golden / "llada-tiny")).double().eval()
        self.dream = OriginalDream.from_pretrained(str(golden / "dream-tiny")).double().eval()
        self.dpad_dream = dream_pkg.DreamModel.from_pretrained(str(golden / "dream-tiny")).double().eval()
        self.kept: list[dict] = []
        for mod in (self.dropout, sys.modules["dpad_dream_model.generation_utils_block"]):
            self._record_kept(mod)

    def _record_kept(self, mod) -> None:  # noqa: ANN001
        """PATCHES.md item 4: DPad's ``suffix_dropout`` wrapped to record each block's kept positions."""
        inner = mod.suffix_dropout

        def wrapped(x, sampler, block_end):  # noqa: ANN001, ANN202
            q, k = inner(x, sampler, block_end)
            self.kept.append({"block_end": int(block_end), "kept_suffix_positions": q[0, block_end:].tolist()})
            return q, k

        mod.suffix_dropout = wrapped

    def run(self, function: str, prompt: torch.Tensor, args: dict, seed: int) -> dict:
        self.kept = []
        kw = dict(args)
        torch.manual_seed(seed)
        nfe, extra = None, {}
        family, name = function.split(".")
        if family == "llada":
            if kw.get("attention_mask") == "ones":
                kw["attention_mask"] = torch.ones_like(prompt)
            out = self.mlgsai.generate(self.llada, prompt, **kw)
        elif family in ("fastdllm", "dpad_baseline", "dpad"):
            mod = {"fastdllm": self.fastdllm, "dpad_baseline": self.baseline, "dpad": self.dropout}[family]
            model = self.llada_fd if family == "fastdllm" else self.llada
            out, nfe = getattr(mod, name)(model, prompt, **kw)
        elif family == "dream":
            res = self.dream.diffusion_generate(prompt, **kw)
            out, nfe = res.sequences, kw["steps"]
            done = [i for i, h in enumerate(res.history) if not (h == MASK).any()]
            extra["nfe_until_complete"] = done[0] + 1 if done else None
        elif family == "dpad_dream":
            res, nfe = self.dpad_dream.diffusion_generate(prompt, **kw)
            out = res.sequences
        else:
            raise ValueError(function)
        ids = out[0].tolist()
        P = prompt.shape[1]
        case = {"function": function, "source": SOURCES[family], "args": args, "prompt_ids": prompt[0].tolist(), "output_ids": ids,
                "generated_ids": ids[P:], "nfe": nfe, "torch_seed": seed, "dtype": "float64", **extra}
        if self.kept:
            case["kept_suffix_per_block"] = self.kept
        return case


def plan() -> list[tuple[str, str, dict]]:
    """(label, function, args) of each case; the model follows from the function."""
    llada = dict(mask_id=MASK)
    g64 = dict(gen_length=64, block_length=16)
    dropout = dict(eos_id=EOS, dropout="gaussian", sigma=4.0, window=32, preserved_tokens=0)
    dream = dict(mask_token_id=MASK, eps=1e-3, output_history=True, return_dict_in_generate=True)
    p = [
        # ML-GSAI generate: random remasking, Gumbel temperature, CFG (an all-ones attention mask)
        ("random", "llada.generate", dict(**g64, steps=32, temperature=0.0, remasking="random")),
        ("random-temp", "llada.generate", dict(gen_length=64, block_length=32, steps=64, temperature=0.5,
                                               remasking="random")),
        ("temp", "llada.generate", dict(**g64, steps=64, temperature=0.7, remasking="low_confidence")),
        ("temp-one-block", "llada.generate", dict(gen_length=48, block_length=48, steps=24, temperature=1.0,
                                                  remasking="low_confidence")),
        ("cfg", "llada.generate", dict(**g64, steps=32, temperature=0.0, cfg_scale=1.0, remasking="low_confidence",
                                       attention_mask="ones")),
        ("cfg-temp", "llada.generate", dict(gen_length=64, block_length=32, steps=64, temperature=0.7, cfg_scale=2.0,
                                            remasking="low_confidence", attention_mask="ones")),
        ("cfg-random", "llada.generate", dict(**g64, steps=64, temperature=0.5, cfg_scale=1.0, remasking="random",
                                              attention_mask="ones")),
        # Fast-dLLM: temperature with the threshold rule and with the schedule, every cache mode
        ("temp-threshold", "fastdllm.generate", dict(**g64, steps=64, temperature=0.7, threshold=0.9)),
        ("temp-threshold", "fastdllm.generate_with_prefix_cache", dict(**g64, steps=64, temperature=0.7, threshold=0.9)),
        ("temp-threshold", "fastdllm.generate_with_dual_cache", dict(**g64, steps=64, temperature=0.7, threshold=0.9)),
        ("temp", "fastdllm.generate_with_prefix_cache", dict(**g64, steps=32, temperature=1.0)),
        ("random-temp", "fastdllm.generate_with_dual_cache", dict(**g64, steps=32, temperature=0.5, remasking="random")),
        # DPad's baseline: the factor rule in each cache mode, greedy and sampled
        ("factor1", "dpad_baseline.generate", dict(**g64, steps=64, factor=1.0)),
        ("factor1", "dpad_baseline.generate_with_prefix_cache", dict(**g64, steps=64, factor=1.0)),
        ("factor1", "dpad_baseline.generate_with_dual_cache", dict(**g64, steps=64, factor=1.0)),
        ("factor2-temp", "dpad_baseline.generate", dict(**g64, steps=64, factor=2.0, temperature=0.7)),
        ("factor2-temp", "dpad_baseline.generate_with_prefix_cache", dict(**g64, steps=64, factor=2.0, temperature=0.7)),
        ("factor2-temp-et", "dpad_baseline.generate_with_dual_cache", dict(**g64, steps=64, factor=2.0, temperature=0.7,
                                                                             eos_id=134, early_termination=True)),
        ("temp-threshold", "dpad_baseline.generate_with_prefix_cache", dict(**g64, steps=64, temperature=0.7,
                                                                              threshold=0.9)),
        # DPad's dropout generator at T > 0 (the suffix draws share the global stream), every cache mode
        ("temp-threshold", "dpad.generate", dict(**g64, steps=64, temperature=0.7, threshold=0.9, scale=2.0,
                                                 early_termination=False, **dropout)),
        ("temp-threshold", "dpad.generate_with_prefix_cache", dict(**g64, steps=64, temperature=0.7, threshold=0.9,
                                                                   scale=2.0, early_termination=False, **dropout)),
        ("temp", "dpad.generate_with_dual_cache", dict(**g64, steps=32, temperature=1.0, scale=2.0,
                                                       early_termination=False, **dropout)),
        ("random", "dpad.generate", dict(**g64, steps=32, temperature=0.0, remasking="random", scale=10000.0,
                                         early_termination=False, **dropout)),
        ("random-temp", "dpad.generate_with_prefix_cache", dict(**g64, steps=64, temperature=0.5, remasking="random",
                                                                threshold=0.9, scale=2.0, early_termination=False,
                                                                **dropout)),
        # the original Dream sampler with alg_temp > 0
        ("algtemp", "dream.diffusion_generate", dict(max_new_tokens=64, steps=32, temperature=0.0, top_p=None,
                                                     top_k=None, alg="entropy", alg_temp=0.3, **dream)),
        ("temp-algtemp", "dream.diffusion_generate", dict(max_new_tokens=48, steps=24, temperature=0.8, top_p=0.95,
                                                          top_k=None, alg="topk_margin", alg_temp=0.5, **dream)),
        ("temp-algtemp", "dream.diffusion_generate", dict(max_new_tokens=96, steps=32, temperature=0.5, top_p=None,
                                                          top_k=30, alg="maskgit_plus", alg_temp=1.0, **dream)),
    ]
    for _label, fn, args in p:
        if fn.startswith(("llada.", "fastdllm.", "dpad_baseline.", "dpad.")):
            args.update(llada)
            args.setdefault("remasking", "low_confidence")
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--refs", type=Path, required=True)
    ap.add_argument("--golden", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", default=None, help="run only the cases whose function contains this text")
    a = ap.parse_args()
    torch.set_num_threads(1)
    refs = References(a.refs, a.golden)
    g = torch.Generator().manual_seed(PROMPT_SEED)
    cases = []
    for i, (label, fn, args) in enumerate(plan()):
        n = int(torch.randint(6, 33, (1,), generator=g))
        prompt = torch.randint(0, 250, (1, n), generator=g)
        seed = int(torch.randint(0, 2**31, (1,), generator=g))
        if a.only and a.only not in fn:
            continue
        model = "dream-tiny" if fn.startswith("dream") else "llada-tiny"
        case = {"id": f"sampled-{i:02d}", "model": model, "variant": label, **refs.run(fn, prompt, args, seed)}
        cases.append(case)
        print(case["id"], fn, label, "nfe", case["nfe"], flush=True)
    a.out.write_text(json.dumps(cases, indent=1) + "\n")


if __name__ == "__main__":
    main()
