"""PyTorch side of `cargo xtask bench`: one row per process, the same work as the Rust side
(xtask/src/bench/cases.rs) at the same shapes (xtask/src/bench/rows.rs), the same thread
count, random weights (timing does not depend on the values) and torch.optim.AdamW.

    python torch_side.py --row "dinov2-s14 train step" --runs 7 --threads 2

Prints one JSON object on its last line: id, shape (compared with the Rust side's by the
report), runs, median/min/max milliseconds, the process's peak resident memory, versions.
"""
import argparse
import json
import resource
import statistics
import time

import torch
import transformers
from transformers import (BertConfig, BertLMHeadModel, BertModel, Dinov2Config,
                          Dinov2Model)

CEILING_N = 2048
N, T, D, HEADS = 8, 257, 384, 6
VB, VS = 8, 224
TB, TL = 16, 128
FROZEN_IMAGES, FROZEN_CLASSES = 64, 10
DB, DT, DS, DL, DV = 16, 32, 32, 2, 4000


def vit_s_shapes():
    d = 384
    shapes = [(d, 3, 14, 14), (d,), (1, 1, d), (1, 1370, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (d,),
                   (4 * d, d), (4 * d,), (d, 4 * d), (d,), (d,)]
    return shapes + [(d,), (d,)]


def dinov2():
    # DINOv2 ViT-S/14 as the default backbone is configured (hidden 384, 12 blocks, 6 heads).
    cfg = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                       intermediate_size=1536, patch_size=14, image_size=518,
                       layerscale_value=1.0, attn_implementation="eager")
    return Dinov2Model(cfg)


def minilm():
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                     num_attention_heads=12, intermediate_size=1536,
                     attn_implementation="eager")
    return BertModel(cfg, add_pooling_layer=False)


def adamw(params):
    # The engine's defaults (betas, eps, weight decay 0.05).
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)


def case(row):
    """(shape, the function to time) of a row."""
    if row == "matmul ceiling":
        c = CEILING_N
        a, b = torch.randn(c, c), torch.randn(c, c)
        return f"{c}x{c} @ {c}x{c}", lambda: torch.matmul(a, b)
    if row == "op matmul (linear)":
        a, w = torch.randn(N * T, D), torch.randn(4 * D, D)
        return f"{N * T}x{D} @ {D}x{4 * D}", lambda: torch.nn.functional.linear(a, w)

    def fwd_bwd(shape, f):
        x = torch.randn(*shape, requires_grad=True)
        g = torch.randn(*shape)

        def step():
            x.grad = None
            (f(x) * g).sum().backward()
            assert x.grad is not None
        return "x".join(map(str, shape)), step

    if row == "op layer_norm fwd+bwd":
        w, b = torch.randn(D) * 0.1 + 1, torch.randn(D) * 0.1
        return fwd_bwd((N, T, D), lambda x: torch.nn.functional.layer_norm(x, (D,), w, b, 1e-6))
    if row == "op gelu fwd+bwd":
        return fwd_bwd((N, T, 4 * D), torch.nn.functional.gelu)
    if row == "op softmax fwd+bwd":
        return fwd_bwd((N, HEADS, T, T), lambda x: torch.softmax(x, -1))

    vit_shape = f"{VB}x3x{VS}x{VS}"
    if row == "dinov2-s14 forward":
        model, px = dinov2().eval(), torch.randn(VB, 3, VS, VS)

        def fwd():
            with torch.no_grad():
                model(pixel_values=px)
        return vit_shape, fwd
    if row == "dinov2-s14 train step":
        model, px = dinov2().train(), torch.randn(VB, 3, VS, VS)
        opt = adamw(model.parameters())

        def step():
            opt.zero_grad(set_to_none=True)
            model(pixel_values=px).last_hidden_state.pow(2).mean().backward()
            opt.step()
        return vit_shape, step
    if row == "dinov2-s14 frozen epoch":
        # Without a feature cache, every epoch runs the frozen backbone again.
        model = dinov2().eval()
        head = torch.nn.Linear(D, FROZEN_CLASSES)
        opt = adamw(head.parameters())
        images = [torch.randn(VB, 3, VS, VS) for _ in range(FROZEN_IMAGES // VB)]
        labels = torch.arange(VB) % FROZEN_CLASSES

        def epoch():
            for px in images:
                with torch.no_grad():
                    h = model(pixel_values=px).last_hidden_state
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(head(h.mean(1)), labels).backward()
                opt.step()
        return (f"{FROZEN_IMAGES} images of {VS}, batches of {VB}, linear head"), epoch

    text_shape = f"{TB}x{TL} tokens"
    ids = (1000 + (torch.arange(TB * TL) * 7919) % 20000).reshape(TB, TL)
    mask = torch.ones_like(ids)
    if row == "minilm-l6 forward":
        model = minilm().eval()

        def fwd():
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
        return text_shape, fwd
    if row == "minilm-l6 train step":
        model = minilm().train()
        # The engine's BERT runs without dropout in this bench (no training pass is open).
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        opt = adamw(model.parameters())

        def step():
            opt.zero_grad(set_to_none=True)
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
            h.pow(2).mean().backward()
            opt.step()
        return text_shape, step
    if row == "adamw update":
        shapes = vit_s_shapes()
        params = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opt = adamw(params)
        count = sum(p.numel() for p in params)
        return f"{count} params in {len(params)} tensors", opt.step
    if row == "translate decoder step":
        cfg = BertConfig(vocab_size=DV, hidden_size=384, num_hidden_layers=DL,
                         num_attention_heads=12, intermediate_size=1536, is_decoder=True,
                         add_cross_attention=True, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, attn_implementation="eager")
        model = BertLMHeadModel(cfg).train()
        opt = adamw(model.parameters())
        tgt = (5 + (torch.arange(DB * DT) * 7919) % (DV - 5)).reshape(DB, DT)
        states = torch.randn(DB, DS, 384)

        def step():
            opt.zero_grad(set_to_none=True)
            logits = model(input_ids=tgt, encoder_hidden_states=states).logits
            torch.nn.functional.cross_entropy(logits.reshape(-1, DV), tgt.reshape(-1)).backward()
            opt.step()
        return (f"{DB}x{DT} targets over {DB}x{DS} sources, {DL} layers, vocab {DV}"), step
    raise SystemExit(f"no PyTorch side for bench row `{row}`")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--row", required=True)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape, fn = case(args.row)
    fn()
    ms = []
    for _ in range(args.runs):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1e3)
    ms.sort()
    print(json.dumps(dict(
        id=args.row, shape=shape, runs=args.runs, median_ms=statistics.median(ms),
        min_ms=ms[0], max_ms=ms[-1],
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        torch=torch.__version__, transformers=transformers.__version__,
        threads=torch.get_num_threads())))


if __name__ == "__main__":
    main()
