"""PyTorch side of `cargo xtask bench`: the same cases as crates/core/benches/backbone.rs.

Random weights with the default backbones' architectures (timing does not depend on the
values), the same shapes, the same number of threads; JSON lines on stdout or into --json.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import BertConfig, BertModel, Dinov2Config, Dinov2Model


def timed(name, shape, runs, fn, out):
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    rec = dict(name=name, shape=shape, runs=runs, median_s=statistics.median(times),
               min_s=times[0], max_s=times[-1])
    print(f"{name:<28} {shape:<22} median {rec['median_s']:9.4f} s  "
          f"(min {rec['min_s']:.4f}, max {rec['max_s']:.4f}, {runs} runs)", flush=True)
    out.append(rec)


def fwd_bwd(x, g, f):
    x = x.detach().requires_grad_(True)
    (f(x) * g).sum().backward()
    assert x.grad is not None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--only")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    runs = 3 if args.quick else 7
    out = []

    def want(name):
        return args.only is None or args.only in name

    print(f"torch {torch.__version__} bench: {torch.get_num_threads()} threads", flush=True)
    n, t, d = 8, 257, 384
    if want("op "):
        x = torch.randn(n, t, d)
        w, b = torch.randn(d) * 0.1 + 1, torch.randn(d) * 0.1
        g = torch.randn(n, t, d)
        ln = lambda x: torch.nn.functional.layer_norm(x, (d,), w, b, 1e-6)
        with torch.no_grad():
            timed("op layer_norm fwd", f"{n}x{t}x{d}", runs, lambda: ln(x), out)
        timed("op layer_norm fwd+bwd", f"{n}x{t}x{d}", runs, lambda: fwd_bwd(x, g, ln), out)
        x, g = torch.randn(n, t, 4 * d), torch.randn(n, t, 4 * d)
        gelu = torch.nn.functional.gelu
        with torch.no_grad():
            timed("op gelu fwd", f"{n}x{t}x{4 * d}", runs, lambda: gelu(x), out)
        timed("op gelu fwd+bwd", f"{n}x{t}x{4 * d}", runs, lambda: fwd_bwd(x, g, gelu), out)
        x, g = torch.randn(n, 6, t, t), torch.randn(n, 6, t, t)
        sm = lambda x: torch.softmax(x, -1)
        with torch.no_grad():
            timed("op softmax fwd", f"{n}x6x{t}x{t}", runs, lambda: sm(x), out)
        timed("op softmax fwd+bwd", f"{n}x6x{t}x{t}", runs, lambda: fwd_bwd(x, g, sm), out)
        a, wt = torch.randn(n * t, d), torch.randn(4 * d, d)
        with torch.no_grad():
            timed("op matmul (linear)", f"{n * t}x{d} @ {d}x{4 * d}", runs,
                  lambda: torch.nn.functional.linear(a, wt), out)

    if want("dinov2-s14 forward") or want("dinov2-s14 train step"):
        # DINOv2 ViT-S/14 as the default backbone is configured (hidden 384, 12 blocks, 6 heads).
        cfg = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                           intermediate_size=1536, patch_size=14, image_size=518,
                           layerscale_value=1.0, attn_implementation="eager")
        model = Dinov2Model(cfg).eval()
        px = torch.randn(8, 3, 224, 224)
        shape = "8x3x224x224"
        if want("dinov2-s14 forward"):
            with torch.no_grad():
                timed("dinov2-s14 forward", shape, runs, lambda: model(pixel_values=px), out)
        if want("dinov2-s14 train step"):
            def step():
                model.zero_grad(set_to_none=True)
                model(pixel_values=px).last_hidden_state.pow(2).mean().backward()
            timed("dinov2-s14 train step", shape, runs, step, out)

    if want("minilm-l6 forward") or want("minilm-l6 train step"):
        cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                         num_attention_heads=12, intermediate_size=1536,
                         attn_implementation="eager")
        model = BertModel(cfg, add_pooling_layer=False).eval()
        ids = (1000 + (torch.arange(16 * 128) * 7919) % 20000).reshape(16, 128)
        mask = torch.ones_like(ids)
        shape = "16x128 tokens"
        if want("minilm-l6 forward"):
            with torch.no_grad():
                timed("minilm-l6 forward", shape, runs,
                      lambda: model(input_ids=ids, attention_mask=mask), out)
        if want("minilm-l6 train step"):
            def step():
                model.zero_grad(set_to_none=True)
                h = model(input_ids=ids, attention_mask=mask).last_hidden_state
                h.pow(2).mean().backward()
            timed("minilm-l6 train step", shape, runs, step, out)

    if args.json:
        with open(args.json, "w") as f:
            for r in out:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
