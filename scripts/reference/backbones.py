#!/usr/bin/env python3
"""Reference fixtures for the backbone parity tests (BERT, ViT, DINOv2).

Run from the repository root:

    python3 scripts/reference/backbones.py

It (re)writes crates/core/tests/fixtures/{bert,vit,dinov2}/ with
  config.json, model.safetensors      tiny random model (HF base-model names)
  reference.safetensors               inputs, outputs, hidden states, loss and
                                      d loss / d param for every parameter

Everything is deterministic: fixed seeds, float32, CPU, deterministic algorithms.
Pinned versions live in scripts/reference/requirements.txt.
"""

import math
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    BertConfig,
    BertModel,
    Dinov2Config,
    Dinov2Model,
    ViTConfig,
    ViTModel,
)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "crates", "core", "tests", "fixtures")

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
torch.set_default_dtype(torch.float32)
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

HIDDEN = 32
LAYERS = 3


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter away from its init value, deterministically.

    LayerNorm weights / layer-scale lambdas start at 1 (-> ~1 +- 0.1),
    biases / mask tokens start at 0 (-> ~ +-0.1), everything else gets noise too.
    """
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted(model.named_parameters()):
        p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def saved_name_map(model: torch.nn.Module, path: str) -> dict:
    """Map in-memory parameter names to the names written to model.safetensors.

    transformers>=5 renames some modules in memory (e.g. ViT `layers.0.attention.q_proj`)
    but save_pretrained writes the original hub names
    (`encoder.layer.0.attention.attention.query`). Match by exact value: every
    parameter is randomly perturbed, so values are unique.
    """
    with safe_open(path, "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    mapping = {}
    for name, p in model.named_parameters():
        hits = [k for k, t in saved.items() if t.shape == p.shape and torch.equal(t, p.detach())]
        assert len(hits) == 1, f"cannot map parameter {name}: {hits}"
        mapping[name] = hits[0]
    assert sorted(mapping.values()) == sorted(saved.keys()), "saved tensors != parameters"
    for k in saved:
        assert not k.startswith(("bert.", "vit.", "dinov2.")), f"unexpected prefix: {k}"
    return mapping


def save_model(model: torch.nn.Module, out_dir: str) -> dict:
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    for f in os.listdir(out_dir):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(out_dir, f))
    return saved_name_map(model, os.path.join(out_dir, "model.safetensors"))


def run_case(model, names, prefix, inputs, forward_kwargs, seed, out, skip_grad=()):
    """Forward + backward of loss = sum(last_hidden_state * R); store everything under `prefix.`."""
    model.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(seed)
    res = model(**inputs, **forward_kwargs, output_hidden_states=True, return_dict=True)
    last = res.last_hidden_state
    hs = res.hidden_states
    assert len(hs) == LAYERS + 1, len(hs)
    weight = torch.randn(last.shape, generator=g)
    loss = (last * weight).sum()
    loss.backward()

    for k, v in inputs.items():
        out[f"{prefix}.{k}"] = v
    out[f"{prefix}.loss_weight"] = weight
    out[f"{prefix}.last_hidden_state"] = last.detach()
    for k, h in enumerate(hs):
        out[f"{prefix}.hidden_states.{k}"] = h.detach()
    out[f"{prefix}.loss"] = loss.detach()
    for name, p in model.named_parameters():
        if name in skip_grad:
            assert p.grad is None, f"{name} unexpectedly got a gradient"
            print(f"  [{prefix}] no gradient for {names[name]} (unused), skipped")
            continue
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all()
        out[f"{prefix}.grad.{names[name]}"] = p.grad.detach().clone()
    return res


def write_reference(out_dir: str, tensors: dict) -> None:
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"))


# ---------------------------------------------------------------------------
# bicubic position-embedding interpolation: separable-matrix cross-check
# ---------------------------------------------------------------------------


def bicubic_weights(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
    """[out_size, in_size] matrix W so that F.interpolate(x, size=..., mode="bicubic",
    align_corners=False, antialias=False) == W_h @ x @ W_w^T per channel."""

    def c1(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def c2(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    w = np.zeros((out_size, in_size), dtype=np.float64)
    scale = in_size / out_size
    for i in range(out_size):
        src = scale * (i + 0.5) - 0.5  # half-pixel centres, NOT clamped at 0
        f = math.floor(src)
        t = src - f
        coeffs = (c2(t + 1), c1(t), c1(1 - t), c2(2 - t))
        for k, c in zip((-1, 0, 1, 2), coeffs):
            w[i, min(max(f + k, 0), in_size - 1)] += c  # clamp index, no renormalisation
    return w


def check_interpolation(model, pixel_values) -> torch.Tensor:
    """Return the position embeddings the model adds for `pixel_values`, and check
    the interpolated grid against the separable numpy bicubic matrices."""
    emb = model.embeddings
    _, _, H, W = pixel_values.shape
    n = emb.position_embeddings.shape[1] - 1
    s = int(round(n ** 0.5))
    dummy = torch.zeros(1, 1 + (H // 8) * (W // 8), HIDDEN)
    with torch.no_grad():
        pos = emb.interpolate_pos_encoding(dummy, H, W)
        grid = emb.position_embeddings[0, 1:].reshape(s, s, HIDDEN).double().numpy()
        h, w = H // 8, W // 8
        wh, ww = bicubic_weights(s, h), bicubic_weights(s, w)
        expect = np.einsum("ys,xt,std->yxd", wh, ww, grid).reshape(h * w, HIDDEN)
        err = np.abs(pos[0, 1:].double().numpy() - expect).max()
        assert err < 1e-5, f"bicubic mismatch {err}"
        assert torch.equal(pos[0, 0], emb.position_embeddings[0, 0])
    return pos.detach().clone()


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------


def build_bert():
    cfg = BertConfig(
        vocab_size=99,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    torch.manual_seed(1)
    model = BertModel(cfg, add_pooling_layer=False)
    perturb(model, 101)
    return model.eval()


def build_vit():
    cfg = ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=48,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    torch.manual_seed(2)
    model = ViTModel(cfg, add_pooling_layer=False)
    perturb(model, 202)
    return model.eval()


def build_dinov2():
    # Dinov2Config.mlp_ratio is typed `int` in transformers 5 (1.5 is rejected), so
    # the MLP is hidden * 2 = 64 wide.
    cfg = Dinov2Config(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        mlp_ratio=2,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        qkv_bias=True,
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    torch.manual_seed(3)
    model = Dinov2Model(cfg)
    perturb(model, 303)
    return model.eval()


def gen_bert():
    out_dir = os.path.join(FIXTURES, "bert")
    model = build_bert()
    names = save_model(model, out_dir)
    g = torch.Generator().manual_seed(11)
    B, T = 3, 7
    input_ids = torch.randint(0, 99, (B, T), generator=g, dtype=torch.int64)
    token_type_ids = torch.randint(0, 2, (B, T), generator=g, dtype=torch.int64)
    attention_mask = torch.ones(B, T, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    attention_mask[2, 3:] = 0
    out = {}
    res = run_case(
        model,
        names,
        "a",
        dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids),
        {},
        seed=12,
        out=out,
    )
    # sanity: no final norm in BERT, last hidden state is the last block output
    assert torch.equal(res.hidden_states[-1], res.last_hidden_state)
    write_reference(out_dir, out)


def gen_vision(kind: str):
    out_dir = os.path.join(FIXTURES, kind)
    model = build_vit() if kind == "vit" else build_dinov2()
    names = save_model(model, out_dir)
    skip = ("embeddings.mask_token",) if kind == "dinov2" else ()
    seed = {"vit": 21, "dinov2": 31}[kind]
    g = torch.Generator().manual_seed(seed)
    out = {}
    for case, (H, W) in (("a", (32, 32)), ("b", (48, 40))):
        pixel_values = torch.randn(2, 3, H, W, generator=g)
        kwargs = {"interpolate_pos_encoding": True} if (kind == "vit" and case == "b") else {}
        res = run_case(model, names, case, dict(pixel_values=pixel_values), kwargs, seed=seed + 100 + ord(case), out=out, skip_grad=skip)
        assert res.last_hidden_state.shape == (2, 1 + (H // 8) * (W // 8), HIDDEN)
        # hidden_states[-1] is the last block output BEFORE the final layernorm
        with torch.no_grad():
            assert torch.allclose(model.layernorm(res.hidden_states[-1]), res.last_hidden_state, atol=1e-6)
        # extra: the position embeddings actually added for this input size
        out[f"{case}.pos_embed"] = check_interpolation(model, pixel_values)
    write_reference(out_dir, out)


def main():
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    os.makedirs(FIXTURES, exist_ok=True)
    gen_bert()
    gen_vision("vit")
    gen_vision("dinov2")
    total = 0
    for kind in ("bert", "vit", "dinov2"):
        d = os.path.join(FIXTURES, kind)
        for f in sorted(os.listdir(d)):
            size = os.path.getsize(os.path.join(d, f))
            total += size
            print(f"  {kind}/{f}: {size} bytes")
    print(f"  total: {total} bytes")


if __name__ == "__main__":
    sys.exit(main())
