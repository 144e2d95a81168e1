#!/usr/bin/env python3
"""Reference fixtures for core's own differentiable ops: the cross-entropy kernel and the
batched bilinear resize.

Run from the repository root:

    python3 scripts/reference/ops.py

It (re)writes crates/core/tests/fixtures/ops/reference.safetensors. For every case `c`:

  cross-entropy (torch.nn.functional.cross_entropy, reduction="sum"):
    c.logits            [N, C] or [B, C, H, W], float32
    c.target            [N] or [B, H, W], int64 (may hold the ignore index)
    c.ignore_index      [1] int64
    c.label_smoothing   [1] float32
    c.loss              [] the summed loss
    c.grad_logits       d (loss * 0.7) / d logits

  bilinear resize (torch.nn.functional.interpolate, mode="bilinear", antialias=False):
    c.x                 [B, C, H, W]
    c.align_corners     [1] int64 (0 or 1)
    c.out               [B, C, H', W']
    c.weight            randn of out's shape
    c.grad_x            d sum(out * weight) / d x

Deterministic: fixed seeds, float32, CPU, deterministic algorithms. Versions pinned in
scripts/reference/requirements.txt.
"""

import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "crates", "core", "tests", "fixtures", "ops")

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def cross_entropy_case(out, name, logits, target, ignore_index, smoothing):
    logits = logits.clone().requires_grad_(True)
    loss = F.cross_entropy(
        logits,
        target,
        ignore_index=ignore_index,
        label_smoothing=smoothing,
        reduction="sum",
    )
    (loss * 0.7).backward()
    out[f"{name}.logits"] = logits.detach().clone()
    out[f"{name}.target"] = target.clone()
    out[f"{name}.ignore_index"] = torch.tensor([ignore_index], dtype=torch.int64)
    out[f"{name}.label_smoothing"] = torch.tensor([smoothing], dtype=torch.float32)
    out[f"{name}.loss"] = loss.detach().clone().reshape(())
    out[f"{name}.grad_logits"] = logits.grad.clone()


def bilinear_case(out, name, x, size, align_corners, seed):
    x = x.clone().requires_grad_(True)
    y = F.interpolate(
        x, size=size, mode="bilinear", align_corners=align_corners, antialias=False
    )
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(y.shape, generator=g)
    (y * weight).sum().backward()
    out[f"{name}.x"] = x.detach().clone()
    out[f"{name}.align_corners"] = torch.tensor([int(align_corners)], dtype=torch.int64)
    out[f"{name}.out"] = y.detach().clone()
    out[f"{name}.weight"] = weight
    out[f"{name}.grad_x"] = x.grad.clone()


def main():
    g = torch.Generator().manual_seed(20261129)
    out = {}

    # Rows of class scores, two of them ignored.
    logits = torch.randn(7, 5, generator=g) * 2.0
    target = torch.tensor([0, 4, 255, 2, 1, 255, 3])
    cross_entropy_case(out, "ce_rows", logits, target, 255, 0.0)
    cross_entropy_case(out, "ce_rows_smooth", logits, target, 255, 0.1)
    # Dense pixels, classes on axis 1, as a segmentation head produces them.
    logits = torch.randn(2, 4, 3, 5, generator=g) * 3.0
    target = torch.randint(0, 4, (2, 3, 5), generator=g)
    target[0, 1, 2] = 255
    target[1, 0, :] = 255
    cross_entropy_case(out, "ce_dense", logits, target, 255, 0.1)
    # A large vocabulary with large logits (stability of the log-sum-exp).
    logits = torch.randn(6, 1000, generator=g) * 20.0
    target = torch.randint(0, 1000, (6,), generator=g)
    target[3] = 0  # the padding id, ignored
    cross_entropy_case(out, "ce_vocab", logits, target, 0, 0.1)
    # Every row ignored: a zero loss with a zero gradient.
    logits = torch.randn(3, 4, generator=g)
    target = torch.full((3,), 255)
    cross_entropy_case(out, "ce_ignored", logits, target, 255, 0.1)

    x = torch.randn(2, 3, 5, 7, generator=g)
    bilinear_case(out, "bl_mixed", x, (9, 4), False, 1)
    bilinear_case(out, "bl_mixed_ac", x, (9, 4), True, 2)
    x = torch.randn(1, 2, 4, 4, generator=g)
    bilinear_case(out, "bl_up4", x, (16, 16), False, 3)
    bilinear_case(out, "bl_up4_ac", x, (16, 16), True, 4)
    x = torch.randn(2, 2, 12, 10, generator=g)
    bilinear_case(out, "bl_down", x, (5, 4), False, 5)
    bilinear_case(out, "bl_one", x, (1, 1), True, 6)

    os.makedirs(OUT, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "reference.safetensors"))
    print(f"wrote {len(out)} tensors to {OUT}")


if __name__ == "__main__":
    main()
