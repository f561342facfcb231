"""The skeleton every benchmark run shares (the speed-up ladder, the accuracy-speed frontier).

A run writes ``PREFIX.records.jsonl`` (one JSON line per finished problem, appended as it
finishes), and rewrites ``PREFIX.json`` (results format) and ``PREFIX.md`` from all records after
each one, so an interrupted run leaves its data; ``PREFIX.png`` is drawn where the run says.
``resume`` continues the run recorded there (the settings named by ``RESUME_KEYS`` must match);
without it an existing records file is refused unless ``overwrite``. The model is loaded once from
the run's :class:`RunSettings` (model, revision, device, dtype, threads, compile), every decoding
configuration is resolved the same way (method, preset, model family, task, overrides), and every
configuration is warmed up, untimed, before the timed work.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from ..config import DecodeConfig
from ..errors import ConfigError, writable_dir

__all__ = ["BenchRun", "RunSettings", "check_resume", "fmt", "mean", "read_records"]

Record = dict[str, Any]


@dataclass
class RunSettings:
    """What every benchmark run takes: the problems (``task``, ``task_options``), the model
    (``model``, ``revision``, ``device``, ``dtype``, ``threads``, ``compile``) and the decoding
    (``preset``, explicit ``overrides``). Stored in the JSON; ``RESUME_KEYS`` must match for
    ``--resume`` (keys an older JSON lacks are not compared)."""

    task: str = "arith"
    task_options: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 2
    compile: bool = False
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    RESUME_KEYS: ClassVar[tuple[str, ...]] = ("task", "task_options", "model", "revision", "preset", "overrides",
                                              "dtype")

    def validate(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError("--threads must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean(xs: Sequence[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def fmt(x: Any, spec: str) -> str:
    """``x`` formatted with ``spec``; ``-`` for a missing or NaN value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def read_records(path: Path) -> list[Record]:
    """The records of a ``.records.jsonl`` file (none if it does not exist; a line cut by an
    interruption is skipped)."""
    recs: list[Record] = []
    if not path.exists():
        return recs
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return recs


def check_resume(settings: Any, json_path: Path) -> None:
    """Refuse to continue a run recorded with other ``settings.RESUME_KEYS``."""
    if not json_path.exists():
        return
    try:
        old = json.loads(json_path.read_text()).get("settings", {})
    except json.JSONDecodeError:
        return
    new = settings.to_dict()
    diff = [k for k in type(settings).RESUME_KEYS if k in old and old[k] != new[k]]
    if diff:
        raise ConfigError(f"--resume: {json_path} was made with different {', '.join(diff)} "
                          f"({', '.join(f'{k}={old[k]!r}' for k in diff)}); use another --out or --overwrite")


class BenchRun:
    """One run's files, records and model.

    ``key(record)`` identifies a finished unit of work (``done`` holds the keys of the records
    read back by ``resume`` and added since). ``build(records, env, command, complete)`` turns the
    records into the result dict, ``markdown(result)`` into its Markdown, ``plot(result, path)``
    draws the PNG. Use it as a context manager around the work (the records file stays open for
    appending)."""

    def __init__(self, settings: RunSettings, out_prefix: str | Path, *, key: Callable[[Record], Hashable],
                 build: Callable[[list[Record], dict[str, Any], str, bool], dict[str, Any]],
                 markdown: Callable[[dict[str, Any]], str],
                 plot: Callable[[dict[str, Any], Path], Any] | None = None, resume: bool = False,
                 overwrite: bool = False, command: str | None = None) -> None:
        settings.validate()
        self.settings = settings
        self.key, self._build, self._markdown, self._plot = key, build, markdown, plot
        prefix = Path(out_prefix)
        writable_dir(prefix.parent)
        self.paths = {k: prefix.with_name(prefix.name + ext) for k, ext in
                      (("json", ".json"), ("md", ".md"), ("png", ".png"), ("records", ".records.jsonl"))}
        if self.paths["records"].exists() and not resume:
            if not overwrite:
                raise ConfigError(f"{self.paths['records']} exists: pass --resume to continue that run or "
                                  "--overwrite to start over")
            for p in self.paths.values():
                p.unlink(missing_ok=True)
        if resume:
            check_resume(settings, self.paths["json"])
        self.records: list[Record] = read_records(self.paths["records"]) if resume else []
        self.done: set[Hashable] = {key(r) for r in self.records}
        self._command = command
        self._family: str | None = None
        self.lm: Any = None
        self.env: dict[str, Any] = {}
        self._fh: Any = None

    # ------------------------------------------------------------------ configs and model
    @property
    def family(self) -> str:
        """The model family (picks the method parameters); reads config.json only, no weights."""
        if self._family is None:
            from ..eval.methods import model_family
            from ..models import read_config

            s = self.settings
            self._family = model_family(s.model, read_config(s.model, s.revision) if s.model else None)
        return self._family

    def resolve(self, method: str, **overrides: Any) -> DecodeConfig:
        """``method``'s DecodeConfig for this run: the preset or the family's parameters for the task,
        then the run's overrides, then ``overrides``."""
        from ..eval.methods import resolve_config

        s = self.settings
        _, cfg = resolve_config(method, preset_name=s.preset, family=self.family, task=s.task,
                                overrides={**s.overrides, **overrides})
        return cfg

    def load(self) -> Any:
        """Load the model as the settings say (threads, revision, compile included) and note the
        environment."""
        import torch

        from ..api import load
        from ..eval.env import collect_env, command_line

        s = self.settings
        if s.threads:
            torch.set_num_threads(s.threads)
        self.lm = load(s.model, device=s.device, dtype=s.dtype, revision=s.revision, compile=s.compile)
        self.env = collect_env(self.lm.model.device, next(self.lm.model.parameters()).dtype)
        self.env["interop_threads"] = torch.get_num_interop_threads()
        self._command = self._command or command_line()
        return self.lm

    def warm_up(self, configs: Iterable[DecodeConfig], prompt: Any, chat: bool | None) -> None:
        """One untimed decode of one block per configuration: first-call overheads (and compilation)
        stay out of the timings."""
        from ..api import generate

        for cfg in configs:
            generate(self.lm, [prompt], cfg.replace(gen_length=cfg.block_length, steps=None), chat=chat)

    # ------------------------------------------------------------------ records and results
    def __enter__(self) -> BenchRun:
        self._fh = open(self.paths["records"], "a", encoding="utf-8")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._fh.close()
        self._fh = None

    def add(self, *records: Record) -> None:
        """Append finished records (to memory and to the records file, flushed)."""
        for rec in records:
            self.records.append(rec)
            self.done.add(self.key(rec))
            self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()

    def reread(self) -> None:
        """Take the records file as it is now (other processes may have appended to it)."""
        self.records[:] = read_records(self.paths["records"])
        self.done = {self.key(r) for r in self.records}

    def save(self, complete: bool = False, draw: bool = False, **extra: Any) -> dict[str, Any]:
        """Rebuild the result from every record and write the JSON and Markdown (and the PNG when
        ``draw``); ``extra`` entries are added to the result."""
        from ..eval.runner import dump_json

        result = self._build(self.records, self.env, self._command or "", complete)
        result.update(extra)
        result["files"] = {k: str(v) for k, v in self.paths.items()}
        dump_json(self.paths["json"], result)
        self.paths["md"].write_text(self._markdown(result))
        if draw and self._plot is not None:
            self._plot(result, self.paths["png"])
        return result
