#!/usr/bin/env python3
"""Checks a `translate export` folder against transformers: greedy `generate` must give our text.

Run from the repository root (needs torch, transformers, tokenizers and safetensors, pinned in
requirements.txt), after `translate export RUN_DIR OUT_DIR` and after translating the same
sources with the run (greedy, the default search):

    python3 scripts/reference/export_check.py --export OUT_DIR \\
        --sources sources.txt --ours ours.txt [--write-fixture fixture.json]

It
  1. loads `EncoderDecoderModel.from_pretrained(OUT_DIR)` (float32, CPU, eager attention, eval
     mode) and prints the load report: missing / unexpected / mismatched keys and every warning
     transformers logs or raises while loading (an export with transformers' names has none,
     except `encoder.pooler.*` when the export leaves the pooler out: reported, not failed,
     since `generate` never runs it);
     it also checks that each tensor of model.safetensors arrived unchanged under its own name
     and that the LM head's output matrix is the decoder's word-embedding matrix (tied);
  2. tokenizes each source line with OUT_DIR/tokenizer.json (the file's own padding disabled,
     truncation at 128 tokens, [CLS] ... [SEP] from its post-processor), attention mask ones,
     token types left to BertModel (zeros);
  3. runs greedy `model.generate` one sentence at a time: do_sample False, num_beams 1,
     decoder_start / eos / pad ids from config.json, max_new_tokens = the limit of
     crates/translate/src/search.rs, min(max_len, decoder max_position_embeddings - 1,
     2 * source tokens + 10) with source tokens counting [CLS] and [SEP]; every logits
     processor transformers could add (min_length, no_repeat_ngram_size, repetition_penalty,
     ...) is set neutral, and each step's processed scores are checked to equal the raw logits
     and each chosen token to be their argmax;
  4. decodes the generated ids (without decoder_start, cut before the first eos) with
     OUT_DIR/target_tokenizer/tokenizer.json, skipping special tokens, and compares the text
     with the same line of --ours. Each sentence prints `equal` or `DIFFER` with the smallest
     gap between the best and second-best logit over its steps; a difference also
     prints both token sequences (ours re-encoded from our text with the target tokenizer: the
     file holds text, not ids), the first differing position and transformers' top logits
     there (teacher-forced on the common prefix), so a near tie is told from a real bug.

max_len is 128 (SearchConfig's default) unless --max-len says otherwise; the export's
generation_config.json (max_length = max_len + 1) is printed next to it for comparison.

--write-fixture FILE writes JSON {sources, hf_token_ids, hf_texts} (sorted keys, indent 1,
UTF-8) for CI: transformers' ids (without decoder_start and eos) and texts, one per source.
--min-margin M leaves out of the fixture each sentence with a step whose top-2 logit margin is
below M (and says which): a fixture that CI compares on other processors must not hinge on a
near tie that other float reductions may flip. The check itself still covers every sentence.

Lines are split as Rust's `str::lines` does (on "\\n", one trailing "\\r" dropped). Exit status
0 when every sentence matches and the load report is clean, 1 otherwise.

Deterministic: float32, CPU, one thread, deterministic algorithms, greedy search.
"""

import argparse
import json
import logging
import os
import re
import sys
import warnings

import torch
import transformers
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import EncoderDecoderModel, GenerationConfig

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.utils.logging.disable_progress_bar()

MAX_SOURCE_LEN = 128
DEFAULT_MAX_LEN = 128
TOP = 5
# Missing pooler weights are reported but do not fail the check: `EncoderDecoderModel` builds its
# encoder as `BertModel(add_pooling_layer=True)`, but nothing in `generate` reads the pooler.
POOLER = "encoder.pooler."


def read_lines(path):
    """Lines as Rust's `str::lines` gives them."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [l[:-1] if l.endswith("\r") else l for l in lines]


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def load(export):
    """The model, and whether its load report was clean."""
    capture = Capture()
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(capture)
    transformers.utils.logging.disable_default_handler()  # printed below instead
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, info = EncoderDecoderModel.from_pretrained(
            export,
            dtype=torch.float32,
            attn_implementation="eager",
            output_loading_info=True,
        )
    hf_logger.removeHandler(capture)
    transformers.utils.logging.enable_default_handler()
    model.to("cpu").eval()

    clean = True
    print(f"== load report ({export})")
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        values = sorted(info.get(key) or [], key=str)
        print(f"{key}: {len(values)}")
        for v in values:
            if key == "missing_keys" and str(v).startswith(POOLER):
                print(f"    {v}  (the encoder's pooler: BertModel builds one, generate never runs it)")
            else:
                print(f"    {v}")
                clean = False
    for k, v in sorted(info.items()):
        if k not in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs") and v:
            print(f"{k}: {v}")
    messages = capture.records + [
        f"{w.category.__name__} ({os.path.basename(w.filename)}:{w.lineno}): {w.message}" for w in caught
    ]
    print(f"warnings while loading: {len(messages)}")
    for m in messages:
        print("    " + m.replace("\n", "\n    "))

    # Every stored tensor must have arrived unchanged under its own name.
    stored = load_file(os.path.join(export, "model.safetensors"))
    state = model.state_dict()
    absent = sorted(k for k in stored if k not in state)
    changed = sorted(k for k in stored if k in state and not torch.equal(stored[k].to(state[k].dtype), state[k]))
    not_stored = sorted(k for k in state if k not in stored)
    print(f"stored tensors: {len(stored)}; not in the model: {len(absent)}; loaded with other values: {len(changed)}")
    for k in absent + changed:
        print(f"    {k}")
    print(f"model tensors not stored (tied or missing): {not_stored}")
    clean &= not absent and not changed

    dec = model.decoder
    head = dec.get_output_embeddings().weight
    emb = dec.get_input_embeddings().weight
    tied = head.data_ptr() == emb.data_ptr()
    print(f"LM head weight tied to decoder word embeddings: {tied}")
    clean &= tied
    bias_tied = getattr(dec.cls.predictions.decoder, "bias", None) is dec.cls.predictions.bias
    print(f"LM head bias is cls.predictions.bias: {bias_tied}")
    c = model.config
    print(
        "config: decoder_start_token_id={} eos_token_id={} pad_token_id={} bos_token_id={}; decoder "
        "is_decoder={} add_cross_attention={} tie_word_embeddings={} max_position_embeddings={} "
        "attn={}; encoder attn={}; enc hidden {} dec hidden {}".format(
            c.decoder_start_token_id,
            getattr(c, "eos_token_id", None),
            c.pad_token_id,
            getattr(c, "bos_token_id", None),
            c.decoder.is_decoder,
            c.decoder.add_cross_attention,
            getattr(c.decoder, "tie_word_embeddings", None),
            c.decoder.max_position_embeddings,
            c.decoder._attn_implementation,
            c.encoder._attn_implementation,
            c.encoder.hidden_size,
            c.decoder.hidden_size,
        )
    )
    print(f"generation_config.json as loaded: {model.generation_config.to_diff_dict()}")
    if not (c.decoder.is_decoder and c.decoder.add_cross_attention):
        clean = False
    return model, clean


def greedy_config(limit, start, eos, pad):
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        num_beam_groups=1,
        num_return_sequences=1,
        max_new_tokens=limit,
        min_length=0,
        no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0,
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        length_penalty=1.0,
        exponential_decay_length_penalty=None,
        bad_words_ids=None,
        sequence_bias=None,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        remove_invalid_values=False,
        renormalize_logits=False,
        guidance_scale=None,
        early_stopping=False,
        decoder_start_token_id=start,
        bos_token_id=start,
        eos_token_id=eos,
        pad_token_id=pad,
        use_cache=True,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
    )


def top_logits(model, input_ids, prefix, target_tok):
    """transformers' logits for the token after `prefix` (decoder_start first)."""
    with torch.no_grad():
        out = model(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            decoder_input_ids=torch.tensor([prefix]),
            decoder_attention_mask=torch.ones(1, len(prefix), dtype=torch.long),
            use_cache=False,
        )
    row = out.logits[0, -1]
    values, ids = row.topk(min(TOP, row.numel()))
    return row, [(int(i), target_tok.id_to_token(int(i)), float(v)) for v, i in zip(values, ids)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="the folder `translate export` wrote")
    parser.add_argument("--sources", required=True, help="English sources, one per line")
    parser.add_argument("--ours", required=True, help="our translations, one per line, same order")
    parser.add_argument("--write-fixture", metavar="FILE", help="write {sources, hf_token_ids, hf_texts} JSON")
    parser.add_argument("--min-margin", type=float, default=0.0, help="keep only clearer sentences in the fixture")
    parser.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN, help="SearchConfig.max_len (128)")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    sources = read_lines(args.sources)
    ours = read_lines(args.ours)
    if len(sources) != len(ours):
        sys.exit(f"{args.sources} has {len(sources)} lines but {args.ours} has {len(ours)}")

    model, clean = load(args.export)
    c = model.config
    start, eos, pad = c.decoder_start_token_id, c.eos_token_id, c.pad_token_id
    if None in (start, eos, pad):
        sys.exit(f"config.json lacks an id: decoder_start_token_id={start} eos_token_id={eos} pad_token_id={pad}")
    cap = min(args.max_len, c.decoder.max_position_embeddings - 1)
    gen_file = os.path.join(args.export, "generation_config.json")
    if os.path.exists(gen_file):
        with open(gen_file, encoding="utf-8") as f:
            stored_max = json.load(f).get("max_length")
        print(f"max_len {args.max_len} (generation_config.json max_length {stored_max}); limit cap {cap}")

    source_tok = Tokenizer.from_file(os.path.join(args.export, "tokenizer.json"))
    source_tok.no_padding()
    source_tok.enable_truncation(max_length=MAX_SOURCE_LEN)
    target_tok = Tokenizer.from_file(os.path.join(args.export, "target_tokenizer", "tokenizer.json"))
    target_tok.no_padding()
    target_tok.no_truncation()
    print(
        "target specials: "
        + ", ".join(f"{t}={target_tok.token_to_id(t)}" for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"))
    )

    # transformers' messages during generate, printed once each at the end.
    gen_capture = Capture()
    logging.getLogger("transformers").addHandler(gen_capture)
    transformers.utils.logging.disable_default_handler()
    hf_ids_all, hf_texts, equal, kept = [], [], 0, []
    print(f"== {len(sources)} sentences")
    for n, (src, our_text) in enumerate(zip(sources, ours)):
        ids = source_tok.encode(src).ids
        limit = min(cap, 2 * len(ids) + 10)
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=greedy_config(limit, start, eos, pad),
            )
        seq = out.sequences[0].tolist()
        assert seq[0] == start, seq
        gen = seq[1:]
        # No processor may have touched the logits, and each token is their argmax.
        for step, (raw, scored) in enumerate(zip(out.logits, out.scores)):
            if not torch.equal(raw, scored):
                print(f"  [{n}] step {step}: transformers processed the logits (scores != logits)")
                clean = False
            if int(raw[0].argmax()) != gen[step]:
                print(f"  [{n}] step {step}: token {gen[step]} is not the argmax {int(raw[0].argmax())}")
                clean = False
        hf_ids = gen[: gen.index(eos)] if eos in gen else gen
        # The smallest gap between the best and second-best logit over the steps taken: how far
        # from a tie each choice was (a tiny gap may flip under other float reductions).
        top2 = [raw[0].topk(2).values for raw in out.logits]
        margin = min(float(v[0] - v[1]) for v in top2)
        assert len(hf_ids) <= limit
        text = target_tok.decode(hf_ids, skip_special_tokens=True)
        if margin >= args.min_margin:
            kept.append(n)
        else:
            print(f"  [{n}] left out of the fixture: top-2 logit margin {margin:.4f} < {args.min_margin}")
        hf_ids_all.append(hf_ids)
        hf_texts.append(text)
        if text == our_text:
            equal += 1
            print(
                f"[{n}] equal ({len(hf_ids)} tokens, limit {limit}, eos {'yes' if eos in gen else 'no'}, "
                f"min top-2 logit margin {margin:.4f})"
            )
            continue
        our_ids = target_tok.encode(our_text, add_special_tokens=False).ids
        print(
            f"[{n}] DIFFER (source {len(ids)} tokens, limit {limit}, eos {'yes' if eos in gen else 'no'}, "
            f"min top-2 logit margin {margin:.4f})"
        )
        print(f"    source: {src!r}")
        print(f"    source ids: {ids}")
        print(f"    hf  : {text!r}")
        print(f"    ours: {our_text!r}")
        print(f"    hf   ids ({len(hf_ids)}): {hf_ids}")
        roundtrip = target_tok.decode(our_ids, skip_special_tokens=True) == our_text
        print(f"    ours ids ({len(our_ids)}, re-encoded, decode round-trips: {roundtrip}): {our_ids}")
        p = next((i for i, (a, b) in enumerate(zip(hf_ids, our_ids)) if a != b), min(len(hf_ids), len(our_ids)))
        hf_at = hf_ids[p] if p < len(hf_ids) else (eos if eos in gen else "limit")
        our_at = our_ids[p] if p < len(our_ids) else "end"
        print(f"    first differing token position: {p} (hf {hf_at}, ours {our_at})")
        row, top = top_logits(model, input_ids, [start] + hf_ids[:p], target_tok)
        print(f"    hf top logits at {p}: " + ", ".join(f"{i} {t!r} {v:.5f}" for i, t, v in top))
        if isinstance(our_at, int):
            print(f"    hf logit of our token {our_at}: {float(row[our_at]):.5f}")
        else:
            print(f"    hf logit of eos {eos}: {float(row[eos]):.5f}")

    logging.getLogger("transformers").removeHandler(gen_capture)
    transformers.utils.logging.enable_default_handler()
    said = {}
    for m in gen_capture.records:
        said.setdefault(re.sub(r"[0-9]+", "#", m), []).append(m)
    print(f"transformers messages during generate: {len(gen_capture.records)}")
    for kind in said.values():
        # e.g. "Both `max_new_tokens` and `max_length` set": generation_config.json's max_length
        # (max_len + 1) yields to max_new_tokens, as it should.
        print(f"    {len(kind)}x, first: {kind[0]}")
    print(f"== equal: {equal} / {len(sources)}; load report clean: {clean}")
    if args.write_fixture:
        fixture = {
            "sources": [sources[n] for n in kept],
            "hf_token_ids": [hf_ids_all[n] for n in kept],
            "hf_texts": [hf_texts[n] for n in kept],
        }
        with open(args.write_fixture, "w", encoding="utf-8") as f:
            json.dump(fixture, f, sort_keys=True, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"wrote {args.write_fixture}: {len(kept)} of {len(sources)} sentences")
    sys.exit(0 if equal == len(sources) and clean else 1)


if __name__ == "__main__":
    main()
