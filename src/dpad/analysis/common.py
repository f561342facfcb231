"""Shared helpers of the analysis commands: prompts, the config check, CSV/JSON output.

It imports nothing from the other analysis modules (they all import from it)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DecodeConfig
from ..engine import GenerationOutput
from ..errors import ConfigError, writable_dir
from ..models import LoadedModel


@dataclass
class Prompt:
    """One prompt to decode: token ids, the text shown in reports and (for problems) the gold answer."""

    ids: list[int]
    text: str
    solution: str | None = None  # GSM8K-style answer field (``... #### N``) when known


def problem_prompts(lm: LoadedModel, indices: Iterable[int], seed: int = 0) -> list[Prompt]:
    """Test-split word problems (``dpad.synthetic.arith``) by index, encoded with the model's tokenizer."""
    from ..api import encode_prompt
    from ..synthetic import arith

    idx = list(indices)
    if any(i < 0 for i in idx):
        raise ConfigError("problem indices must be >= 0")
    if lm.tokenizer is None:
        raise ConfigError("this checkpoint has no tokenizer: word problems need one (use --prompt-ids)")
    probs = arith.generate("test", max(idx) + 1, seed) if idx else []
    return [Prompt(encode_prompt(lm, probs[i].question), probs[i].question, probs[i].solution) for i in idx]


def resolve_prompt(lm: LoadedModel, text: str | None, ids: list[int] | None, problem_index: int | None,
                   problem_seed: int = 0) -> Prompt:
    """Exactly one of prompt text, prompt ids or a problem index (default: problem 0)."""
    from ..api import encode_prompt

    given = sum(x is not None for x in (text, ids, problem_index))
    if given > 1:
        raise ConfigError("give at most one of --prompt, --prompt-ids and --problem-index")
    if text is not None:
        return Prompt(encode_prompt(lm, text), text)
    if ids is not None:
        return Prompt(encode_prompt(lm, ids), ",".join(map(str, ids)))
    return problem_prompts(lm, [problem_index or 0], problem_seed)[0]


def check_analysis_config(cfg: DecodeConfig) -> None:
    if cfg.cfg_scale > 0:
        raise ConfigError("the analysis commands record one forward per step: use cfg_scale=0")


def response_text(lm: LoadedModel, out: GenerationOutput) -> str:
    resp = out.generated[: out.response_length]
    if lm.tokenizer is None:
        return ",".join(map(str, resp))
    return lm.tokenizer.decode(resp, skip_special_tokens=True)


def env_info(lm: LoadedModel | None = None) -> dict[str, Any]:
    """Where a result was made: torch version and threads, device, dtype."""
    import platform

    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "python": platform.python_version()}
    if lm is not None:
        info.update(device=str(lm.model.device), dtype=str(lm.model.dtype).removeprefix("torch."))
    return info


def out_dir(path: str | Path) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--out {str(p)!r} exists and is not a directory")
    return writable_dir(p)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([_fmt(v) for v in r])
    return path


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return path


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if v != v else f"{v:.6g}"
    return v


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
