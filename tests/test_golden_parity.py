"""Token-for-token parity with the reference implementations on the 53 golden cases.

Each reference function maps onto one :class:`DecodeConfig`:

- ``llada.generate`` / ``dpad_baseline.*`` / ``dpad.*``: LLaDA schedule, low-confidence, compat none;
- ``fastdllm.*``: the same with ``compat='fast-dllm'`` (a cached block always runs one cached step);
- ``dream.diffusion_generate``: one block, Dream timesteps schedule;
- ``dpad_dream.diffusion_generate``: ``compat='dpad-dream'`` (the cached refresh forward commits the
  block's first token and the reference does not count it: we count it, so its NFE is +1 per block).

Random-window DPad cases (scale 2.0) replay the recorded kept sets with ``suffix.Explicit``.

``cases_llada_eos.json``: LLaDA's ``logits_eos_inf`` / ``confidence_eos_eot_inf`` options.
``cases_sampled.json``: the reference samplers off the greedy path (random remasking, Gumbel
temperature and CFG in ML-GSAI's ``generate``; Fast-dLLM at T > 0 with the threshold in each cache
mode; DPad's factor rule in each cache mode; DPad's dropout generator at T > 0, its kept sets drawn
from the same stream; Dream with ``alg_temp``), reproduced from the seed alone.
``cases_extra.json`` adds original-Dream cases with steps = gen/2 and gen/3 for every Dream
confidence rule, greedy and sampled (temperature, top-p/top-k, ``alg_temp``): the reference's own
random draws (``torch.manual_seed`` + ``Categorical``/``multinomial``/``rand``) are reproduced by the
row's seeded generator.
"""

from __future__ import annotations

import pytest
import torch
from conftest import MASK_ID, load_cases

from dpad.config import DecodeConfig
from dpad.engine import decode
from dpad.engine.suffix import Explicit, GaussianDecay
from dpad.engine.unmask import DrawSpan, Proposer, draw_rows

CASES = load_cases()
EXTRA = load_cases("cases_extra.json")
LLADA_EOS = load_cases("cases_llada_eos.json")
SAMPLED = load_cases("cases_sampled.json")
RANDOM_DPAD = [c for c in CASES if "kept_suffix_per_block" in c and c["args"].get("scale") == 2.0]
RANDOM_IDS = {c["id"] for c in RANDOM_DPAD}

# Dream's diffusion_generate builds its settings with GenerationConfig.from_model_config(model.config),
# so an argument the call did not pass takes transformers' legacy defaults (docs/quirks.md); e.g.
# public-31 passes no top_p/top_k and so ran with top-k 50.
DREAM_CALL_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "alg_temp": None}


def to_config(case: dict) -> DecodeConfig:
    a, fn = case["args"], case["function"]
    gen = a.get("gen_length", a.get("max_new_tokens"))
    kw: dict = dict(gen_length=gen, block_length=a.get("block_length", gen), steps=a["steps"],
                    seed=case["torch_seed"])
    if fn.startswith("dream"):  # both Dream samplers: Dream's sample_tokens knobs
        d = {**DREAM_CALL_DEFAULTS, **a}
        kw.update(temperature=d["temperature"], top_p=d["top_p"], top_k=d["top_k"], alg_temp=d["alg_temp"] or 0.0)
    if fn.startswith("dream."):
        kw.update(confidence=a["alg"], schedule="dream", eps=a["eps"], block_length=gen)
    elif fn.startswith("dpad_dream."):
        alg = a["alg"]
        kw.update(confidence="maskgit_plus" if alg == "confidence_threshold" else alg, schedule="dream",
                  eps=a["eps"], threshold=a["threshold"], compat="dpad-dream",
                  cache="dual" if a["dual_cache"] else ("prefix" if a["use_cache"] else "none"),
                  early_termination=a["early_termination"])
    else:
        kw.update(confidence=a["remasking"], threshold=a.get("threshold"), factor=a.get("factor"),
                  temperature=a.get("temperature", 0.0), cfg_scale=a.get("cfg_scale", 0.0),
                  early_termination=a.get("early_termination", False),
                  logits_eos_inf=a.get("logits_eos_inf", False),
                  confidence_eos_eot_inf=a.get("confidence_eos_eot_inf", False))
        if "prefix_cache" in fn:
            kw["cache"] = "prefix"
        elif "dual_cache" in fn:
            kw["cache"] = "dual"
        if fn.startswith("fastdllm."):
            kw["compat"] = "fast-dllm"
    if a.get("dropout") == "gaussian":
        kw.update(suffix="gaussian", window=a["window"], sigma=a["sigma"], scale=a["scale"])
    return DecodeConfig(**kw)


def eos_of(case: dict) -> int:
    a = case["args"]
    return a.get("eos_id", a.get("eos", 251))


def expected_nfe(case: dict, cfg: DecodeConfig, blocks_decoded: int) -> int:
    # the original Dream sampler runs all its steps even once the canvas is complete (origin can
    # reveal everything early); the loop stops at the forward that completes it
    nfe = case.get("nfe_until_complete", case["nfe"])
    if nfe is None:
        # ML-GSAI's generate returns no count: it runs exactly one forward per step
        assert case["function"] == "llada.generate", f"{case['id']}: no recorded NFE"
        nfe = case["args"]["steps"]
        if cfg.cfg_scale > 0:
            nfe *= 2  # each step's unconditional rows: one batched forward there, counted as a forward here
    if cfg.compat == "dpad-dream" and cfg.cache != "none":
        nfe += blocks_decoded  # the refresh forward the reference does not count
    return nfe


def recorded_sets(case: dict) -> dict[int, list[int]]:
    return {d["block_end"]: d["kept_suffix_positions"] for d in case["kept_suffix_per_block"]}


def test_case_inventory() -> None:
    assert len(CASES) == 53
    assert len({c["id"] for c in CASES}) == 53
    assert {c["model"] for c in CASES} == {"llada-tiny", "dream-tiny"}
    assert all(c["dtype"] == "float64" for c in CASES)
    assert len(RANDOM_DPAD) == 3


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_golden_case(case: dict, tiny_models: dict) -> None:
    cfg = to_config(case)
    lm = tiny_models[case["model"]]
    policy = Explicit(recorded_sets(case)) if case["id"] in RANDOM_IDS else None
    out = decode(lm.model, case["prompt_ids"], cfg, mask_id=MASK_ID, eos_id=eos_of(case), suffix_policy=policy)

    assert out.prompt == case["prompt_ids"]
    assert out.generated == case["generated_ids"]
    assert out.ids == case["output_ids"]
    assert MASK_ID not in out.ids
    assert out.nfe == expected_nfe(case, cfg, out.blocks_decoded)
    assert out.nfe == sum(out.forwards_per_block)
    if "kept_suffix_per_block" in case:
        # every DPad case (deterministic scale-1e4 ones included) saw exactly the reference's kept sets
        rec = case["kept_suffix_per_block"]
        assert out.kept_per_block == [d["kept_suffix_positions"] for d in rec[: out.blocks_decoded]]
        assert len(rec) >= out.blocks_decoded


@pytest.mark.parametrize("case", RANDOM_DPAD, ids=[c["id"] for c in RANDOM_DPAD])
def test_seeded_gaussian_reproduces_reference_kept_sets(case: dict) -> None:
    """The reference draws u = torch.rand(L - block_end) from the global CPU stream right after
    torch.manual_seed(1234); GaussianDecay.reset(1234) starts a fresh generator with the same seed
    and draws the same way, so it reproduces the recorded kept sets exactly."""
    a = case["args"]
    length = len(case["prompt_ids"]) + a.get("gen_length", a.get("max_new_tokens"))
    policy = GaussianDecay(a["window"], a["sigma"], a["scale"])
    policy.reset(case["torch_seed"])
    got = {be: policy.kept(be, length).tolist() for be in recorded_sets(case)}
    assert got == recorded_sets(case)


@pytest.mark.parametrize("case", RANDOM_DPAD, ids=[c["id"] for c in RANDOM_DPAD])
def test_random_dpad_case_without_replay(case: dict, tiny_models: dict) -> None:
    """So the default config path (seed 1234, no injected kept sets) reproduces the reference too."""
    cfg = to_config(case)
    out = decode(tiny_models[case["model"]].model, case["prompt_ids"], cfg, mask_id=MASK_ID, eos_id=eos_of(case))
    assert out.ids == case["output_ids"]
    assert out.nfe == expected_nfe(case, cfg, out.blocks_decoded)


def test_extra_inventory() -> None:
    rules = {c["args"]["alg"] for c in EXTRA}
    assert rules == {"origin", "maskgit_plus", "topk_margin", "entropy"}
    for rule in rules:
        ratios = {c["args"]["max_new_tokens"] // c["args"]["steps"] for c in EXTRA if c["args"]["alg"] == rule}
        assert ratios == {2, 3}
        assert any(c["args"]["temperature"] > 0 for c in EXTRA if c["args"]["alg"] == rule)
        if rule != "origin":
            assert any(c["args"]["alg_temp"] > 0 for c in EXTRA if c["args"]["alg"] == rule)


@pytest.mark.parametrize("case", EXTRA, ids=[c["id"] for c in EXTRA])
def test_extra_dream_case(case: dict, tiny_models: dict) -> None:
    cfg = to_config(case)
    out = decode(tiny_models[case["model"]].model, case["prompt_ids"], cfg, mask_id=MASK_ID, eos_id=eos_of(case))
    assert out.generated == case["generated_ids"]
    assert out.ids == case["output_ids"]
    assert out.nfe == expected_nfe(case, cfg, out.blocks_decoded)


def test_llada_eos_inventory() -> None:
    flags = {(c["args"]["logits_eos_inf"], c["args"]["confidence_eos_eot_inf"]) for c in LLADA_EOS}
    assert flags == {(True, False), (False, True), (True, True)}
    assert all(c["tokens_changed_by_flags"] > 0 for c in LLADA_EOS)  # each case can tell the flags apart


@pytest.mark.parametrize("case", LLADA_EOS, ids=[c["id"] for c in LLADA_EOS])
def test_llada_eos_eot_case(case: dict, tiny_models: dict) -> None:
    cfg = to_config(case)
    out = decode(tiny_models[case["model"]].model, case["prompt_ids"], cfg, mask_id=MASK_ID,
                 eos_id=case["eos_id"], eot_id=case["eot_id"])
    assert out.generated == case["generated_ids"]
    assert out.ids == case["output_ids"]
    assert out.nfe == case["args"]["steps"]


def test_sampled_inventory() -> None:
    assert len(SAMPLED) >= 20 and len({c["id"] for c in SAMPLED}) == len(SAMPLED)
    assert all(c["dtype"] == "float64" for c in SAMPLED)
    fns = {c["function"] for c in SAMPLED}
    for mode in ("generate", "generate_with_prefix_cache", "generate_with_dual_cache"):
        assert f"fastdllm.{mode}" in fns and f"dpad.{mode}" in fns
        assert any(c["function"] == f"dpad_baseline.{mode}" and c["args"].get("factor") for c in SAMPLED)
        assert any(c["function"] == f"dpad.{mode}" and c["args"]["temperature"] > 0 for c in SAMPLED)
    ml = [c["args"] for c in SAMPLED if c["function"] == "llada.generate"]
    assert any(a["remasking"] == "random" for a in ml) and any(a["temperature"] > 0 for a in ml)
    assert any(a.get("cfg_scale", 0) > 0 for a in ml)
    assert any(c["function"].startswith("fastdllm.") and c["args"]["temperature"] > 0 and c["args"].get("threshold")
               for c in SAMPLED)
    assert any(c["function"] == "dream.diffusion_generate" and c["args"]["alg_temp"] > 0 for c in SAMPLED)
    # DPad's random kept sets (scale 2.0) come from the stream the sampler draws from
    assert sum(1 for c in SAMPLED if c["function"].startswith("dpad.") and c["args"]["scale"] == 2.0) >= 3


@pytest.mark.parametrize("case", SAMPLED, ids=[c["id"] for c in SAMPLED])
def test_sampled_case(case: dict, tiny_models: dict) -> None:
    """Token for token with the NFE, from the seed alone (DPad's kept sets included, no replay)."""
    cfg = to_config(case)
    out = decode(tiny_models[case["model"]].model, case["prompt_ids"], cfg, mask_id=MASK_ID, eos_id=eos_of(case))
    assert out.generated == case["generated_ids"]
    assert out.ids == case["output_ids"]
    assert out.nfe == expected_nfe(case, cfg, out.blocks_decoded)
    assert out.nfe == sum(out.forwards_per_block)
    if "kept_suffix_per_block" in case:
        rec = case["kept_suffix_per_block"]
        assert out.kept_per_block == [d["kept_suffix_positions"] for d in rec[: out.blocks_decoded]]


# ------------------------------------------------------------------ the reference's draws, LLaDA family
def test_draw_rows_is_the_block_of_one_global_draw() -> None:
    """The reference: torch.manual_seed(seed), then torch.rand_like over the whole [rows, V] logits
    in float64 (twice on Fast-dLLM's prefix-cache steps), then torch.rand((1, rows)) in float32
    for random remasking. The row's generator draws the same and keeps the block's rows."""
    rows, V, off, n = 37, 19, 11, 8
    for tensors in (1, 2):
        torch.manual_seed(4321)
        noise = [torch.rand((1, rows, V), dtype=torch.float64) for _ in range(tensors)][-1]
        rand = torch.rand((1, rows))
        after = torch.rand(5)
        g = torch.Generator().manual_seed(4321)
        span = DrawSpan(rows, off, tensors)
        assert torch.equal(draw_rows(g, span, n, V, torch.float64, tensors), noise[0, off:off + n])
        assert torch.equal(draw_rows(g, span, n, 0, torch.float32), rand[0, off:off + n])
        assert torch.equal(torch.rand(5, generator=g), after)  # the stream goes on where the reference's does
    with pytest.raises(ValueError, match="outside"):
        draw_rows(torch.Generator(), DrawSpan(10, 5), 8, 3, torch.float64)


def test_llada_proposer_draws_the_reference_tensors() -> None:
    """Gumbel-max over the block's logits with the block's rows of the whole noise tensor, then
    ``random`` confidences from the float32 draw that follows it."""
    rows, V, off, n = 30, 16, 9, 6
    logits = torch.randn(n, V, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.manual_seed(77)
    noise = torch.rand((rows, V), dtype=torch.float64)[off:off + n]
    rand = torch.rand(rows)[off:off + n].to(torch.float64)
    prop = Proposer("random", 0.7, None, None, torch.Generator().manual_seed(77))
    x0, conf = prop(logits, torch.ones(n, dtype=torch.bool), DrawSpan(rows, off))
    assert torch.equal(x0, torch.argmax(logits.exp() / (-torch.log(noise)) ** 0.7, dim=-1))
    assert torch.equal(conf, rand)


SPAN_CASES = {  # config -> the (rows, block offset, Gumbel tensors) each forward of block 1 draws over
    "none": (dict(), lambda P, G, B, kept: [(P + G, P + B, 1)] * 2),
    "prefix": (dict(cache="prefix"), lambda P, G, B, kept: [(P + G, P + B, 1), (G - B, 0, 2)]),
    "dual": (dict(cache="dual"), lambda P, G, B, kept: [(P + G, P + B, 1), (B, 0, 1)]),
    "dpad": (dict(suffix="gaussian", scale=2.0, window=32, sigma=4.0),
             lambda P, G, B, kept: [(P + 2 * B + kept, P + B, 1)] * 2),
    "dpad+prefix": (dict(cache="prefix", suffix="gaussian", scale=2.0, window=32, sigma=4.0),
                    lambda P, G, B, kept: [(P + 2 * B + kept, P + B, 1), (B + kept, 0, 1)]),
    "fast-dllm+prefix": (dict(cache="prefix", compat="fast-dllm"), lambda P, G, B, kept: [(P + G, P + B, 1),
                                                                                         (G - B, 0, 2)]),
}


@pytest.mark.parametrize("name", list(SPAN_CASES))
def test_sampled_llada_rows_draw_over_the_reference_forward(name: str, tiny_models: dict,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """What each forward of the second block draws over, per cache mode and with DPad: the rows of
    the logits the reference's forward returns there (full canvas or pruned view; from the block's
    start with the prefix cache; the block with the dual cache)."""
    kw, want = SPAN_CASES[name]
    P, G, B = 7, 64, 16
    cfg = DecodeConfig(gen_length=G, block_length=B, steps=G // 2, temperature=0.8, seed=3, **kw)
    seen: list = []
    call = Proposer.__call__

    def spy(self, logits, masked, span=None):  # noqa: ANN001, ANN202
        seen.append(span)
        return call(self, logits, masked, span)

    monkeypatch.setattr(Proposer, "__call__", spy)
    out = decode(tiny_models["llada-tiny"].model, list(range(1, P + 1)), cfg, mask_id=MASK_ID, eos_id=251)
    f0 = out.forwards_per_block[0]
    kept = len(out.kept_per_block[1])
    got = [(s.rows, s.offset, s.gumbel) for s in seen[f0:f0 + 2]]
    assert got == want(P, G, B, kept)
