#!/usr/bin/env bash
# Regenerates crates/translate/tests/fixtures/export: a toy translator trained in Rust, its
# export checked by transformers (export_check.py must report every sentence equal and a clean
# load), and transformers' greedy token ids written as hf_greedy.json for tests/export.rs.
# Needs torch, transformers, tokenizers and safetensors (scripts/reference/requirements.txt).
# Run from the repository root.
set -euo pipefail
fixture=crates/translate/tests/fixtures/export
work=target/export-fixture
cargo run --release -p translate --example export_fixture -- "$fixture" "$work"
python3 scripts/reference/export_check.py --export "$work/export" \
    --sources "$work/sources.txt" --ours "$work/ours.txt" \
    --write-fixture "$fixture/hf_greedy.json" --min-margin 0.05
