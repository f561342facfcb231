"""Model forward parity with the reference goldens, save/load round trips and checkpoint errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dpad.errors import CheckpointError
from dpad.models import ModelArgs, Transformer, init_weights, load, save

MODELS = ["llada-tiny", "dream-tiny"]


@pytest.fixture(scope="module")
def goldens(golden_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {m: load_file(str(golden_dir / m / "logits.safetensors")) for m in MODELS}


@pytest.fixture(scope="module")
def f32_models(golden_dir: Path) -> dict:
    return {m: load(golden_dir / m, dtype="float32") for m in MODELS}


def _model(name: str, tiny_models: dict):  # noqa: ANN202
    return tiny_models[name].model


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.double() - b.double()).abs().max())


# ---------------------------------------------------------------------------- logit goldens
@pytest.mark.parametrize("name", MODELS)
def test_logits_f64(name: str, tiny_models: dict, goldens: dict) -> None:
    g = goldens[name]
    model = _model(name, tiny_models)
    assert model.dtype == torch.float64
    with torch.no_grad():
        out = model(g["input_ids"])
    assert out.dtype == torch.float64
    assert _max_diff(out, g["logits_f64"]) <= 1e-9


@pytest.mark.parametrize("name", MODELS)
def test_logits_row0_alone(name: str, tiny_models: dict, goldens: dict) -> None:
    """Batching does not change a row: row 0 alone gives the batched row 0 logits."""
    g = goldens[name]
    with torch.no_grad():
        out = _model(name, tiny_models)(g["input_ids"][:1])
    assert _max_diff(out, g["logits_f64_row0_alone"]) <= 1e-9
    assert _max_diff(out[0], g["logits_f64"][0]) <= 1e-9


@pytest.mark.parametrize("name", MODELS)
def test_pruned_forward_f64(name: str, tiny_models: dict, goldens: dict) -> None:
    """DPad pruned forward = an ordinary forward whose RoPE positions are the kept positions."""
    g = goldens[name]
    ids = g["pruned_input_ids"]
    assert torch.equal(ids, g["input_ids"][:, g["pruned_positions"]])
    pos = g["pruned_positions"].expand(ids.shape[0], -1)
    with torch.no_grad():
        out = _model(name, tiny_models)(ids, pos)
    assert _max_diff(out, g["pruned_logits_f64"]) <= 1e-9


@pytest.mark.parametrize("name", MODELS)
def test_forward_f32(name: str, f32_models: dict, goldens: dict) -> None:
    g = goldens[name]
    model = f32_models[name].model
    assert model.dtype == torch.float32
    pos = g["pruned_positions"].expand(2, -1)
    with torch.no_grad():
        full = model(g["input_ids"])
        pruned = model(g["pruned_input_ids"], pos)
    assert full.dtype == torch.float32
    assert _max_diff(full, g["logits_f32"]) <= 1e-4
    assert _max_diff(pruned, g["pruned_logits_f32"]) <= 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_logits_range_and_cache_match_plain_forward(name: str, tiny_models: dict, goldens: dict) -> None:
    """``logits_range`` slices rows; a cached forward of a suffix reproduces the full forward's rows."""
    g = goldens[name]
    model = _model(name, tiny_models)
    ids = g["input_ids"][:1]
    with torch.no_grad():
        ref = model(ids)
        sliced = model(ids, logits_range=(10, 20))
        cache = model.new_cache(1, ids.shape[1])
        model(ids, cache=cache)  # fill every slot
        tail = model(ids[:, 24:], torch.arange(24, 40)[None], cache=cache, cache_start=24)
    assert _max_diff(sliced, ref[:, 10:20]) <= 1e-12
    assert _max_diff(tail, ref[:, 24:]) <= 1e-9


def test_loaded_metadata(llada_tiny, dream_tiny) -> None:  # noqa: ANN001
    for lm in (llada_tiny, dream_tiny):
        assert lm.mask_token_id == 250
        assert lm.eos_token_id == 251
        assert lm.tokenizer is None  # the tiny checkpoints have no tokenizer files
    assert llada_tiny.args.arch == "llada" and llada_tiny.args.logits_shift == 0
    assert dream_tiny.args.arch == "Dream" and dream_tiny.args.logits_shift == 1
    assert dream_tiny.args.n_kv_heads == 2 and dream_tiny.args.qkv_bias


# ---------------------------------------------------------------------------- save / load
def _tiny_args(**kw) -> ModelArgs:  # noqa: ANN003
    base = dict(arch="llada", vocab_size=96, dim=32, n_layers=3, n_heads=4, n_kv_heads=4, hidden_dim=64,
                rope_theta=10000.0, norm_eps=1e-5, max_seq_len=256, mask_token_id=90, eos_token_id=91)
    base.update(kw)
    return ModelArgs(**base)


def _random_model(seed: int = 0) -> Transformer:
    model = Transformer(_tiny_args())
    init_weights(model, seed=seed, std=0.2)
    return model.eval()


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Transformer, Path]:
    model = _random_model()
    path = save(model, tmp_path_factory.mktemp("ckpt") / "single")
    return model, path


def test_save_load_single_file(saved_tiny) -> None:  # noqa: ANN001
    model, path = saved_tiny
    assert (path / "model.safetensors").is_file()
    assert not (path / "model.safetensors.index.json").exists()
    loaded = load(path, dtype="float32").model
    ids = torch.randint(0, 90, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_save_load_sharded(tmp_path: Path) -> None:
    model = _random_model(seed=3)
    total_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    path = save(model, tmp_path / "sharded", max_shard_mb=total_mb / 4)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3
    assert not (path / "model.safetensors").exists()
    assert all((path / s).is_file() for s in shards)
    assert set(index["weight_map"]) == {k for s in shards for k in load_file(str(path / s))}
    assert json.loads((path / "config.json").read_text())["model_type"] == "llada"

    lm = load(path, dtype="float64")
    assert lm.model.dtype == torch.float64
    ref = model.double()
    ids = torch.randint(0, 90, (1, 33), generator=torch.Generator().manual_seed(2))
    pos = torch.tensor([[*range(20), 25, 30, 31, 40, 41, 42, 50, 60, 61, 70, 80, 90, 100]])
    with torch.no_grad():
        assert torch.equal(lm.model(ids), ref(ids))
        assert torch.equal(lm.model(ids, pos), ref(ids, pos))


# ---------------------------------------------------------------------------- checkpoint errors
def _err(path: Path, **kw) -> str:  # noqa: ANN003
    with pytest.raises(CheckpointError) as exc:
        load(path, **kw)
    msg = str(exc.value)
    assert msg and "\n" not in msg, f"message should be one readable line: {msg!r}"
    return msg


def _copy_ckpt(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)  # the fixture files are read-only
    dst.chmod(0o755)
    return dst


def test_error_missing_dir(tmp_path: Path) -> None:
    msg = _err(tmp_path / "nope")
    assert "does not exist" in msg and "nope" in msg


def test_error_not_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    assert "not a directory" in _err(f)


def test_error_no_config(tmp_path: Path) -> None:
    msg = _err(tmp_path)
    assert "config.json" in msg and "missing" in msg


def test_error_invalid_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llada", ')
    msg = _err(tmp_path)
    assert "config.json" in msg and "JSON" in msg


def test_error_no_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 8}))
    assert "model_type" in _err(tmp_path)


def test_error_unknown_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    msg = _err(tmp_path)
    assert "unknown model_type" in msg and "gpt2" in msg and "llada" in msg


def test_error_missing_weights(tmp_path: Path, golden_dir: Path) -> None:
    shutil.copy(golden_dir / "llada-tiny" / "config.json", tmp_path / "config.json")
    msg = _err(tmp_path)
    assert "no weights" in msg and "model.safetensors" in msg


def test_error_missing_shard(tmp_path: Path) -> None:
    model = _random_model()
    path = save(model, tmp_path / "sharded", max_shard_mb=0.01)
    victim = sorted(path.glob("model-*.safetensors"))[1]
    victim.unlink()
    msg = _err(path)
    assert "missing" in msg and victim.name in msg


def test_error_corrupt_safetensors(tmp_path: Path, golden_dir: Path) -> None:
    shutil.copy(golden_dir / "llada-tiny" / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                                               generator=torch.Generator().manual_seed(0))
                                                 .numpy().tobytes())
    msg = _err(tmp_path)
    assert "corrupt" in msg and "model.safetensors" in msg


def test_error_truncated_safetensors(tmp_path: Path, golden_dir: Path) -> None:
    path = _copy_ckpt(golden_dir / "llada-tiny", tmp_path / "ck")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "corrupt" in _err(path)


def _rewrite_weights(path: Path, edit) -> None:  # noqa: ANN001
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    (path / "model.safetensors").unlink()
    save_file(tensors, str(path / "model.safetensors"))


def test_error_missing_tensor(tmp_path: Path, golden_dir: Path) -> None:
    path = _copy_ckpt(golden_dir / "llada-tiny", tmp_path / "ck")
    _rewrite_weights(path, lambda t: t.pop("model.transformer.blocks.1.up_proj.weight"))
    msg = _err(path)
    assert "lacks 1 tensor" in msg
    # named by our module key or by the checkpoint's own key
    assert "layers.1.mlp.up_proj.weight" in msg or "blocks.1.up_proj.weight" in msg


def test_error_wrong_shape(tmp_path: Path, golden_dir: Path) -> None:
    path = _copy_ckpt(golden_dir / "dream-tiny", tmp_path / "ck")

    def edit(t: dict) -> None:
        t["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(64, 64)  # GQA: should be [32, 64]

    _rewrite_weights(path, edit)
    msg = _err(path)
    assert "shape" in msg and "(64, 64)" in msg and "(32, 64)" in msg and "k_proj" in msg


@pytest.mark.parametrize("dtype", ["float8", "double!", "int32"])
def test_error_invalid_dtype(golden_dir: Path, dtype: str) -> None:
    msg = _err(golden_dir / "llada-tiny", dtype=dtype)
    assert dtype in msg and "float32" in msg


def test_error_unsupported_llada_feature(tmp_path: Path, golden_dir: Path) -> None:
    path = _copy_ckpt(golden_dir / "llada-tiny", tmp_path / "ck")
    cfg = json.loads((path / "config.json").read_text())
    cfg["alibi"] = True
    (path / "config.json").write_text(json.dumps(cfg))
    assert "alibi" in _err(path)


def _rms_norm_three_ops(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 8), (2, 37, 256), (1, 8, 100, 32), (3, 130, 4096)])
def test_fused_rms_norm_is_bit_identical_to_the_formula(shape: tuple, dtype: torch.dtype) -> None:
    """The fused normalisation kernel gives exactly the reference's three-op float32 island."""
    from dpad.models.layers import rms_norm

    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    w = torch.randn(shape[-1], generator=g, dtype=torch.float64).to(dtype)
    for eps in (1e-5, 1e-6):
        assert torch.equal(rms_norm(x, w, eps), _rms_norm_three_ops(x, w, eps))


@pytest.mark.parametrize("full_precision", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rope_signed_sin_is_bit_identical_to_rotate_half(full_precision: bool, dtype: torch.dtype) -> None:
    """RoPE with the sign folded into the sin table equals ``t*cos + cat(-t2, t1)*sin`` exactly,
    from the table (gathered positions, with gaps) and without it."""
    from dpad.models.layers import Rotary

    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 8, 40, 32, generator=g, dtype=torch.float64).to(dtype)
    pos = torch.tensor([list(range(0, 80, 2)), list(range(100, 140))])
    for max_len in (0, 512):
        rot = Rotary(32, 10000.0, full_precision, max_len)
        cos, ssin = rot.cos_sin(pos)
        angle = pos.to(torch.float32)[..., None] * rot.inv_freq
        emb = torch.cat((angle, angle), dim=-1)[:, None]
        c, s = emb.cos(), emb.sin()
        tt = t.float() if full_precision else t
        if not full_precision:
            c, s = c.to(dtype), s.to(dtype)
        expect = (tt * c + torch.cat((-tt[..., 16:], tt[..., :16]), dim=-1) * s).to(dtype)
        assert torch.equal(rot.apply(t, cos, ssin), expect)
