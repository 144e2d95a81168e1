#!/usr/bin/env python3
"""Reference fixture for the BERT *decoder* parity tests.

Run from the repository root:

    python3 scripts/reference/decoder.py

It (re)writes crates/core/tests/fixtures/bert_decoder/ with
  config.json, model.safetensors      tiny random `BertLMHeadModel` with
                                      is_decoder=True, add_cross_attention=True
                                      (the decoder half of an `EncoderDecoderModel`)
  reference.safetensors               case a: full forward on a padded batch with
                                      cross-attention to (padded) encoder states:
                                      logits, hidden states, loss = sum(logits * R),
                                      d loss / d param for every stored tensor and
                                      d loss / d encoder_hidden_states;
                                      case b: row 0 of case a decoded token by token
                                      with the key/value cache (step logits).

Tensors (f32 unless noted; ids / masks i64):
  a.input_ids [2,7] i64            row 1: positions 5,6 are pad (id 0 = pad_token_id)
  a.attention_mask [2,7] i64       row 1 padded after 5 tokens (the model adds causality)
  a.encoder_hidden_states [2,5,32] randn
  a.encoder_attention_mask [2,5]   row 1 padded after 3 encoder positions
  a.logits [2,7,61]
  a.hidden_states.{0..3} [2,7,32]  0 = embeddings output, k = output of layer k-1
  a.loss_weight [2,7,61]           R (randn)
  a.loss []                        sum(logits * R)
  a.grad.{name}                    d loss / d param, name as stored in model.safetensors
  a.grad.encoder_hidden_states [2,5,32]
  a.lm_head_weight_grad [61,32]    the LM head's share of the tied word-embedding
                                   gradient (R^T . transform(h)); the lookup's share is
                                   a.grad.bert.embeddings.word_embeddings.weight minus this
  b.input_ids [1,7] i64            = a.input_ids[0:1]
  b.encoder_hidden_states [1,5,32] = a.encoder_hidden_states[0:1]
  b.step_logits [7,61]             logits of step t (one token in, cache of t tokens)

Deterministic: fixed seeds, float32, CPU, deterministic algorithms, eager attention.
Pinned versions live in scripts/reference/requirements.txt.
"""

import os
import shutil
import sys

import torch
import transformers
from safetensors import safe_open
from transformers import BertConfig, BertLMHeadModel, EncoderDecoderCache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backbones import FIXTURES, perturb, write_reference  # noqa: E402  (also sets the torch flags)

VOCAB = 61
HIDDEN = 32
LAYERS = 3
ENC_LEN = 5
TGT_LEN = 7


def build_decoder():
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        is_decoder=True,
        add_cross_attention=True,
        attn_implementation="eager",
    )
    assert cfg.tie_word_embeddings and cfg.pad_token_id == 0
    torch.manual_seed(4)
    model = BertLMHeadModel(cfg)
    # transformers' default: the LM head's decoder is the word-embedding matrix, and
    # its bias is `cls.predictions.bias` (same Parameter objects, not copies).
    pred = model.cls.predictions
    assert pred.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert pred.decoder.bias is pred.bias
    perturb(model, 404)
    return model.eval()


def save_decoder(model, out_dir: str) -> dict:
    """save_pretrained + map in-memory names to stored names (tied tensors are stored once)."""
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    for f in os.listdir(out_dir):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(out_dir, f))
    with safe_open(os.path.join(out_dir, "model.safetensors"), "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    assert "cls.predictions.decoder.weight" not in saved and "cls.predictions.decoder.bias" not in saved
    assert "bert.embeddings.word_embeddings.weight" in saved and "cls.predictions.bias" in saved
    names = {}
    for name, p in model.named_parameters():  # tied parameters are listed once
        assert name in saved and torch.equal(saved[name], p.detach()), name
        names[name] = name
    assert sorted(names) == sorted(saved), "saved tensors != parameters"
    return names


def case_a(model, names, out):
    g = torch.Generator().manual_seed(41)
    B = 2
    input_ids = torch.randint(1, VOCAB, (B, TGT_LEN), generator=g, dtype=torch.int64)
    attention_mask = torch.ones(B, TGT_LEN, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    input_ids[1, 5:] = model.config.pad_token_id  # padded positions carry the pad id
    encoder_hidden_states = torch.randn(B, ENC_LEN, HIDDEN, generator=g)
    encoder_attention_mask = torch.ones(B, ENC_LEN, dtype=torch.int64)
    encoder_attention_mask[1, 3:] = 0

    model.zero_grad(set_to_none=True)
    enc = encoder_hidden_states.clone().requires_grad_(True)
    res = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        encoder_hidden_states=enc,
        encoder_attention_mask=encoder_attention_mask,
        use_cache=False,
        output_hidden_states=True,
        return_dict=True,
    )
    logits, hs = res.logits, res.hidden_states
    assert logits.shape == (B, TGT_LEN, VOCAB) and len(hs) == LAYERS + 1, (logits.shape, len(hs))
    weight = torch.randn(logits.shape, generator=g)
    loss = (logits * weight).sum()
    loss.backward()

    with torch.no_grad():
        # hidden_states[0] is the embeddings output, logits = LM head(hidden_states[-1])
        assert torch.equal(hs[0], model.bert.embeddings(input_ids=input_ids))
        assert torch.allclose(model.cls(hs[-1]), logits, atol=1e-6)
        # the tied word-embedding gradient is the sum of both uses; rows of the pad id
        # get nothing from the lookup (nn.Embedding padding_idx), only from the LM head
        head = torch.einsum("btv,btd->vd", weight, model.cls.predictions.transform(hs[-1]))
        grad_we = model.bert.embeddings.word_embeddings.weight.grad
        assert torch.allclose(grad_we[0], head[0], atol=1e-5)
        used = torch.unique(input_ids[input_ids != 0])
        assert (grad_we[used] - head[used]).abs().amax() > 1e-3
        assert torch.allclose(model.cls.predictions.bias.grad, weight.sum((0, 1)), atol=1e-4)

    out["a.input_ids"] = input_ids
    out["a.attention_mask"] = attention_mask
    out["a.encoder_hidden_states"] = encoder_hidden_states
    out["a.encoder_attention_mask"] = encoder_attention_mask
    out["a.logits"] = logits.detach()
    for k, h in enumerate(hs):
        out[f"a.hidden_states.{k}"] = h.detach()
    out["a.loss_weight"] = weight
    out["a.loss"] = loss.detach()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all()
        out[f"a.grad.{names[name]}"] = p.grad.detach().clone()
    assert enc.grad is not None and torch.isfinite(enc.grad).all()
    out["a.grad.encoder_hidden_states"] = enc.grad.detach().clone()
    out["a.lm_head_weight_grad"] = head
    return logits.detach()


@torch.no_grad()
def case_b(model, a_logits, out, a_inputs):
    input_ids = a_inputs["a.input_ids"][0:1].clone()
    enc = a_inputs["a.encoder_hidden_states"][0:1].clone()
    enc_mask = torch.ones(1, ENC_LEN, dtype=torch.int64)

    full = model(input_ids=input_ids, encoder_hidden_states=enc, encoder_attention_mask=enc_mask, use_cache=False).logits[0]

    cache = None
    steps = []
    for t in range(TGT_LEN):
        res = model(
            input_ids=input_ids[:, t : t + 1],
            attention_mask=torch.ones(1, t + 1, dtype=torch.int64),  # past + current, as generate() passes it
            encoder_hidden_states=enc,  # must be passed every step, or cross-attention is skipped
            encoder_attention_mask=enc_mask,
            cache=cache,  # `past_key_values=` is a deprecated alias of `cache=` in transformers 5.24
            use_cache=True,
            return_dict=True,
        )
        cache = res.cache
        assert isinstance(cache, EncoderDecoderCache), type(cache)
        assert cache.get_seq_length() == t + 1
        assert cache.cross_attention_cache.get_seq_length() == ENC_LEN
        steps.append(res.logits[0, 0])
    step_logits = torch.stack(steps)
    err_full = (step_logits - full).abs().max().item()
    err_a = (step_logits - a_logits[0]).abs().max().item()
    print(f"  [b] |incremental - full| = {err_full:.3g}, |incremental - a.logits[0]| = {err_a:.3g}")
    assert err_full < 1e-5 and err_a < 1e-5

    out["b.input_ids"] = input_ids
    out["b.encoder_hidden_states"] = enc
    out["b.step_logits"] = step_logits


def main():
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    out_dir = os.path.join(FIXTURES, "bert_decoder")
    model = build_decoder()
    names = save_decoder(model, out_dir)
    out = {}
    a_logits = case_a(model, names, out)
    case_b(model, a_logits, out, out)
    write_reference(out_dir, out)
    total = 0
    for f in sorted(os.listdir(out_dir)):
        size = os.path.getsize(os.path.join(out_dir, f))
        total += size
        print(f"  bert_decoder/{f}: {size} bytes")
    print(f"  total: {total} bytes")


if __name__ == "__main__":
    sys.exit(main())
