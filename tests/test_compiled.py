"""The compiled fast path decodes the same tokens and NFE as eager (float64, CPU).

The padding/bucketing logic (masked key slots, scratch cache slots, rows gathered by index) is
checked with torch.compile's ``eager`` backend, which traces the graphs with dynamo but runs them
without inductor code generation (fast). The inductor path itself compiles for minutes on a small
CPU, so its test is marked slow.
"""

from __future__ import annotations

import pytest
import torch
from conftest import MASK_ID, load_cases
from test_golden_parity import eos_of, to_config

from dpad.config import DecodeConfig
from dpad.engine import decode
from dpad.models import load
from dpad.models.compiled import CompiledForward, compile_model, round_up

CASES = load_cases()
# LLaDA cases of every cache kind, with and without DPad, threshold and early termination
PICK = [c for c in CASES if c["model"] == "llada-tiny" and c["args"].get("scale") != 2.0][::4]


def _config(case: dict) -> DecodeConfig:
    return to_config(case)


@pytest.fixture(scope="module")
def eager_and_bucketed(golden_dir):  # noqa: ANN001, ANN201
    eager = load(golden_dir / "llada-tiny", dtype="float64")
    comp = load(golden_dir / "llada-tiny", dtype="float64")
    compile_model(comp.model, backend="eager", bucket=16, verbose=False)
    return eager, comp


@pytest.mark.parametrize("case", PICK, ids=[c["id"] for c in PICK])
def test_bucketed_compiled_equals_eager(case: dict, eager_and_bucketed) -> None:  # noqa: ANN001
    eager, comp = eager_and_bucketed
    cfg = _config(case)
    eos = eos_of(case)
    a = decode(eager.model, case["prompt_ids"], cfg, mask_id=MASK_ID, eos_id=eos)
    b = decode(comp.model, case["prompt_ids"], cfg, mask_id=MASK_ID, eos_id=eos)
    assert b.generated == a.generated == case["generated_ids"]
    assert b.nfe == a.nfe
    assert b.stats()["compile"]["graphs"] >= 1


def test_bucketed_logits_match_eager(eager_and_bucketed) -> None:  # noqa: ANN001
    """Padded tokens never change a real row: logits of a cached step agree to float64 rounding."""
    eager, comp = eager_and_bucketed
    ids = torch.randint(0, 240, (2, 27))
    pos = torch.arange(27).expand(2, 27)
    with torch.no_grad():
        ce, cc = eager.model.new_cache(2, 27), comp.model.new_cache(2, 27)
        assert cc.slots == round_up(27, 16) + 16
        full_e = eager.model(ids, pos, cache=ce, cache_start=0, logits_range=(3, 11))
        full_c = comp.model(ids, pos, cache=cc, cache_start=0, logits_range=(3, 11))
        step_e = eager.model(ids[:, 11:], pos[:, 11:], cache=ce, cache_start=11, logits_range=(0, 8))
        step_c = comp.model(ids[:, 11:], pos[:, 11:], cache=cc, cache_start=11, logits_range=(0, 8))
    assert (full_e - full_c).abs().max() < 1e-12
    assert (step_e - step_c).abs().max() < 1e-12


def test_compile_options_are_checked(golden_dir) -> None:  # noqa: ANN001
    lm = load(golden_dir / "llada-tiny", dtype="float64")
    with pytest.raises(ValueError, match="bucket"):
        CompiledForward(lm.model, bucket=0)
    with pytest.raises(ValueError, match="reduce-overhead"):
        CompiledForward(lm.model, mode="reduce-overhead")
    with pytest.raises(ValueError, match="compile mode"):
        CompiledForward(lm.model, mode="fastest")


def test_api_rejects_bad_compile_argument() -> None:
    import dpad
    from dpad.errors import ConfigError

    with pytest.raises(ConfigError, match="compile"):
        dpad.load(None, device="cpu", compile="yes")  # type: ignore[arg-type]


@pytest.mark.slow
def test_inductor_compiled_equals_eager(golden_dir) -> None:  # noqa: ANN001
    """torch.compile (inductor, dynamic shapes: the CPU default) on golden cases, float64."""
    eager = load(golden_dir / "llada-tiny", dtype="float64")
    comp = load(golden_dir / "llada-tiny", dtype="float64")
    compile_model(comp.model, verbose=False)
    for case in PICK[:3]:
        cfg = _config(case)
        eos = eos_of(case)
        a = decode(eager.model, case["prompt_ids"], cfg, mask_id=MASK_ID, eos_id=eos)
        b = decode(comp.model, case["prompt_ids"], cfg, mask_id=MASK_ID, eos_id=eos)
        assert (b.generated, b.nfe) == (a.generated, a.nfe)


@pytest.mark.slow
def test_inductor_compiled_embedded_prompts() -> None:
    """dpad.load(compile=True) on the embedded model (float32): the same tokens and NFE as eager on
    arith eval prompts, DPad and vanilla settings."""
    import dpad
    from dpad.eval.methods import resolve_config
    from dpad.eval.tasks import get_task

    task = get_task("arith")
    eager = dpad.load(None, device="cpu", dtype="float32")
    comp = dpad.load(None, device="cpu", dtype="float32", compile=True)
    for method, L in (("parallel+prefix+dpad", 256), ("vanilla", 64)):
        _, cfg = resolve_config(method, family="embedded", task="arith", overrides={"gen_length": L})
        for s in task.samples(2):
            a = dpad.generate(eager, s.prompt, cfg, chat=task.chat)
            b = dpad.generate(comp, s.prompt, cfg, chat=task.chat)
            assert (b.generated_ids, b.stats["nfe"]) == (a.generated_ids, a.stats["nfe"])
            assert b.stats["compile"]["graphs"] >= 1
