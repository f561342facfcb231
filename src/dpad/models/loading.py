"""Checkpoint loading: ``load(path)`` reads ``config.json``'s ``model_type`` and builds the matching
architecture from our own code (no remote code), then loads ``model.safetensors`` or a sharded
``model.safetensors.index.json`` with the official parameter names.

``path`` is a checkpoint directory or a Hugging Face Hub id ``ORG/NAME`` (optionally at a
``revision``): :func:`resolve_checkpoint` uses a directory that exists as it is, and looks an id up
in the hub cache first (``HF_HOME`` / ``HF_HUB_CACHE``), downloading it only when it is not cached
and ``HF_HUB_OFFLINE`` is not set."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from . import dream, llada, llada_moe
from .layers import ModelArgs, Transformer

ARCHITECTURES = {"llada": llada, "dream": dream, "llada-moe": llada_moe, "lladamoe": llada_moe}
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
    "float64": torch.float64, "fp64": torch.float64,
}

__all__ = ["ARCHITECTURES", "DTYPES", "LoadedModel", "download_command", "hub_cache_dir", "is_hub_id", "load",
           "parse_dtype", "read_args", "read_config", "resolve_checkpoint", "save"]


@dataclass
class LoadedModel:
    """A model plus what the decode loop needs to know about it."""

    model: Transformer
    tokenizer: Any | None
    path: Path | None
    config: dict

    @property
    def args(self) -> ModelArgs:
        return self.model.args

    @property
    def mask_token_id(self) -> int:
        return int(self.args.mask_token_id)

    @property
    def eos_token_id(self) -> int:
        return int(self.args.eos_token_id)

    @property
    def is_chat(self) -> bool:
        """An instruct checkpoint: prompts go through its chat template (see :mod:`dpad.models.chat`)."""
        from .chat import is_chat_checkpoint

        return self.tokenizer is not None and is_chat_checkpoint(self.path, self.config, self.tokenizer)

    @property
    def eot_token_id(self) -> int | None:
        """The end-of-turn token (``<|eot_id|>`` of LLaDA's chat format, ``<|im_end|>`` of
        Qwen-style ones), or None when the checkpoint has none."""
        return None if self.args.eot_token_id is None else int(self.args.eot_token_id)


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype {dtype!r} is not supported; use one of float32, bfloat16, float16, float64")
    return DTYPES[dtype]


def _arch_module(model_type: str):  # noqa: ANN202
    mod = ARCHITECTURES.get(str(model_type).lower())
    if mod is None:
        raise CheckpointError(
            f"unknown model_type {model_type!r} in config.json; dpad supports: llada (LLaDA, LLaDA-MoE), Dream")
    return mod


def _config_arch_module(cfg: dict):  # noqa: ANN202
    """The architecture a config describes; LLaDA-MoE shares ``model_type: llada`` with dense LLaDA."""
    mod = _arch_module(cfg["model_type"])
    if mod is llada and llada_moe.is_llada_moe(cfg):
        return llada_moe
    return mod


# files a checkpoint needs (configs, tokenizer, safetensors weights): a download skips the rest
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_TRUE = {"1", "on", "yes", "true"}


def is_hub_id(name: str) -> bool:
    """``ORG/NAME`` as the Hugging Face Hub spells model ids (letters, digits, ``-``, ``_``, ``.``)."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name and not name.endswith(".git")


def hub_cache_dir() -> Path:
    """The hub cache, read when called: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def download_command(repo_id: str, revision: str | None = None) -> str:
    """The shell command that puts ``repo_id`` into the hub cache."""
    import huggingface_hub

    major, minor = (int(x) for x in re.findall(r"\d+", huggingface_hub.__version__)[:2])
    cli = "hf" if (major, minor) >= (0, 34) else "huggingface-cli"
    return f"{cli} download {repo_id}" + (f" --revision {revision}" if revision else "")


def resolve_checkpoint(model: str | Path, revision: str | None = None) -> Path:
    """The checkpoint directory for ``model``: a path that exists is used as given; otherwise a hub id
    ``ORG/NAME`` (at ``revision``, default ``main``) is looked up in the Hugging Face cache first
    and downloaded only when it is not cached and ``HF_HUB_OFFLINE`` is not set."""
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise CheckpointError(f"revision={revision!r} is invalid: give a branch, tag or commit hash")
    if not isinstance(model, (str, Path)):
        raise CheckpointError(f"model={model!r} is invalid: give a checkpoint directory or a hub id ORG/NAME")
    if isinstance(model, str) and not model.strip():
        raise CheckpointError("the model name is empty: give a checkpoint directory or a hub id ORG/NAME")
    p = Path(model)
    if isinstance(model, Path) or p.exists() or p.is_absolute() or model.startswith(("./", "../", "~")):
        if revision is not None:
            raise CheckpointError(f"revision {revision!r} applies to hub ids, but {str(p)!r} is a local path "
                                  "(a directory that exists is always used as it is): drop the revision")
        return p
    if not is_hub_id(model):
        raise CheckpointError(f"model {model!r} is neither an existing directory nor a hub id ORG/NAME "
                              "(e.g. GSAI-ML/LLaDA-8B-Instruct)")
    return _hub_snapshot(model, revision)


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = hub_cache_dir()
    at = f" at revision {revision!r}" if revision else ""
    get = f"download it with `{download_command(repo_id, revision)}`"
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
    except LocalEntryNotFoundError as e:
        state = "incomplete in" if type(e).__name__ == "IncompleteSnapshotError" else "not in"
    if hub_offline():
        raise CheckpointError(f"model {repo_id}{at} is {state} the Hugging Face cache ({cache}) and HF_HUB_OFFLINE "
                              f"forbids downloading it: run `HF_HUB_OFFLINE=0 {download_command(repo_id, revision)}` "
                              "first, or pass a checkpoint directory")
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, allow_patterns=HUB_FILES))
    except GatedRepoError as e:
        raise CheckpointError(f"model {repo_id} is gated: accept its terms on huggingface.co, log in with "
                              f"a Hugging Face token, then {get}") from e
    except RepositoryNotFoundError as e:
        raise CheckpointError(f"model {repo_id} was not found on the Hugging Face Hub (check the id; a private "
                              "model needs a login)") from e
    except RevisionNotFoundError as e:
        raise CheckpointError(f"model {repo_id} has no revision {revision!r} on the Hugging Face Hub") from e
    except Exception as e:  # noqa: BLE001 - connection, proxy or hub errors: one clear line
        raise CheckpointError(f"model {repo_id}{at} is {state} the Hugging Face cache ({cache}) and the hub "
                              f"cannot be reached ({_first_line(e)}): {get}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def read_config(path: str | Path, revision: str | None = None) -> dict:
    """``config.json`` of a checkpoint directory or hub id (see :func:`resolve_checkpoint`)."""
    p = resolve_checkpoint(path, revision)
    if not p.exists():
        raise CheckpointError(f"model directory {str(p)!r} does not exist")
    if not p.is_dir():
        raise CheckpointError(f"{str(p)!r} is not a directory; pass a checkpoint directory holding config.json")
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{str(cfg_path)!r} is missing: a checkpoint directory needs config.json")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{str(cfg_path)!r} is not valid JSON ({e})") from e
    if "model_type" not in cfg:
        raise CheckpointError(f"{str(cfg_path)!r} has no model_type field (expected 'llada' or 'Dream')")
    return cfg


def _args(p: Path, cfg: dict) -> ModelArgs:
    try:
        return _config_arch_module(cfg).args_from_config(cfg)
    except KeyError as e:
        raise CheckpointError(f"config.json of {str(p)!r} lacks the field {e.args[0]!r}") from e
    except ValueError as e:
        raise CheckpointError(str(e)) from e


def read_args(path: str | Path, revision: str | None = None) -> ModelArgs:
    """The architecture of a checkpoint (directory or hub id) from its ``config.json`` alone (no
    weights): cheap enough to check a request against the model's limits before loading it."""
    return _args(Path(path), read_config(path, revision))


def _weight_files(p: Path) -> list[Path]:
    single = p / "model.safetensors"
    index = p / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{str(index)!r} is not a valid safetensors index ({e})") from e
        files = sorted({p / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"shard(s) listed in {index.name} are missing: {', '.join(missing)}")
        return files
    raise CheckpointError(f"no weights in {str(p)!r}: expected model.safetensors or model.safetensors.index.json")


END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>")
QWEN2_TOKENIZERS = ("DreamTokenizer",)
"""``tokenizer_class`` names that ship as remote code but are Qwen2's byte-level BPE unchanged
(Dream's ``tokenization_dream.py`` is ``Qwen2Tokenizer`` renamed): loaded with transformers' own
Qwen2 tokenizer."""


def end_of_turn_id(tok: Any) -> int | None:
    """The id of the tokenizer's end-of-turn token (the first of ``END_OF_TURN_TOKENS`` it has)."""
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    for t in END_OF_TURN_TOKENS:
        if t in vocab:
            return int(vocab[t])
    return None


def _load_tokenizer(p: Path) -> Any | None:
    if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    import transformers
    from transformers import AutoTokenizer, PretrainedConfig

    # AutoTokenizer reads config.json to pick a tokenizer class; transformers does not know the
    # llada/Dream model types, falls back to a bare config and warns that the types differ. The
    # class comes from tokenizer_config.json either way, so an empty config gives the same tokenizer.
    try:
        cls_name = json.loads((p / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, json.JSONDecodeError, AttributeError):
        cls_name = None
    try:
        if cls_name in QWEN2_TOKENIZERS:  # remote-code class, the same BPE as Qwen2's: no remote code
            qwen2 = getattr(transformers, "Qwen2TokenizerFast", None) or transformers.Qwen2Tokenizer
            from transformers.utils import logging as hf_logging

            level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # transformers 4.x notes that the class names differ
            try:
                return qwen2.from_pretrained(str(p), local_files_only=True)
            finally:
                hf_logging.set_verbosity(level)
        return AutoTokenizer.from_pretrained(str(p), config=PretrainedConfig(), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - surface as one clear line
        raise CheckpointError(f"could not load the tokenizer in {str(p)!r}: {e}") from e


def load(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
         tokenizer: bool = True, revision: str | None = None) -> LoadedModel:
    """Load a LLaDA or Dream checkpoint (config.json + safetensors [+ tokenizer]) from a directory
    or a hub id ``ORG/NAME`` at ``revision`` (see :func:`resolve_checkpoint`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = resolve_checkpoint(path, revision)
    cfg = read_config(p)
    mod = _config_arch_module(cfg)
    torch_dtype = parse_dtype(dtype)
    args = _args(p, cfg)
    tok = _load_tokenizer(p) if tokenizer else None
    if tok is not None:
        if args.mask_token_id is None and getattr(tok, "mask_token_id", None) is not None:
            args.mask_token_id = int(tok.mask_token_id)
        if args.eos_token_id is None and getattr(tok, "eos_token_id", None) is not None:
            args.eos_token_id = int(tok.eos_token_id)
        if args.eot_token_id is None:
            args.eot_token_id = end_of_turn_id(tok)
    if args.mask_token_id is None:
        raise CheckpointError(
            f"no mask token id for {str(p)!r}: set mask_token_id in config.json or give the tokenizer a mask_token")
    if args.eos_token_id is None:
        raise CheckpointError(f"no EOS token id for {str(p)!r}: set eos_token_id in config.json")

    with torch.device("meta"):
        model = Transformer(args)
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(p):
        try:
            tensors = load_file(str(f))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"weights file {str(f)!r} is corrupt or unreadable ({e})") from e
        for key, t in tensors.items():
            ours = mod.map_checkpoint_key(key, args)
            if ours is not None:
                state[ours] = t
    if args.extra.get("weight_tying") and "head.weight" not in state and "embed.weight" in state:
        state["head.weight"] = state["embed.weight"]
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    if missing:
        names = [mod.checkpoint_key(k, args) for k in missing[:3]]
        raise CheckpointError(f"checkpoint {str(p)!r} lacks {len(missing)} tensor(s), e.g. {names}; "
                              "re-download the checkpoint or check that config.json matches it")
    for k, shape in expected.items():
        if tuple(state[k].shape) != tuple(shape):
            raise CheckpointError(
                f"tensor {k!r} in {str(p)!r} has shape {tuple(state[k].shape)}, config implies {tuple(shape)}")
    model = model.to_empty(device=device).to(torch_dtype)
    model.load_state_dict({k: v.to(torch_dtype) for k, v in state.items()}, strict=True)
    model.rotary = type(model.rotary)(args.head_dim, args.rope_theta, args.rope_full_precision,
                                      args.max_seq_len).to(device)
    model.eval().requires_grad_(False)
    model.fuse_projections()
    return LoadedModel(model=model, tokenizer=tok, path=p, config=cfg)


def save(model: Transformer, path: str | Path, dtype: torch.dtype = torch.float32,
         max_shard_mb: float | None = None) -> Path:
    """Save in the official layout: config.json + model.safetensors with official key names,
    or ``model-0000i-of-0000n.safetensors`` shards plus ``model.safetensors.index.json`` when
    the weights exceed ``max_shard_mb``."""
    from safetensors.torch import save_file

    args = model.args
    mod = _arch_module(args.arch)
    if mod is not llada:
        raise NotImplementedError("saving is implemented for LLaDA-architecture models")
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    tensors = {mod.checkpoint_key(k, args): v.detach().to("cpu", dtype).contiguous()
               for k, v in model.state_dict().items()}
    for old in list(p.glob("model*.safetensors")) + [p / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)
    limit = None if max_shard_mb is None else max_shard_mb * 2**20
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if limit is None or total <= limit:
        save_file(tensors, str(p / "model.safetensors"), metadata={"format": "pt"})
    else:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for k in sorted(tensors):
            nbytes = tensors[k].numel() * tensors[k].element_size()
            if shards[-1] and size + nbytes > limit:
                shards.append({})
                size = 0
            shards[-1][k] = tensors[k]
            size += nbytes
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(p / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        (p / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1) + "\n")
    (p / "config.json").write_text(json.dumps(llada.config_from_args(args), indent=2) + "\n")
    return p
