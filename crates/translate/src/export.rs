//! `translate export`: a trained run as a Hugging Face `EncoderDecoderModel` folder, which
//! transformers loads with `EncoderDecoderModel.from_pretrained` and runs with `generate`.
//!
//! - `config.json`: the encoder's and the decoder's `BertConfig`s as sub-configurations, with
//!   the generation ids (`decoder_start_token_id` `[CLS]`, `eos_token_id` `[SEP]`,
//!   `pad_token_id` `[PAD]` of the target vocabulary); `generation_config.json` the same ids
//!   for `generate`.
//! - `model.safetensors`: every weight under transformers' names: the encoder's as `encoder.`
//!   plus its `BertModel` name, the decoder's as `decoder.` plus its `BertLMHeadModel` name
//!   (the LM head's output matrix is the decoder's word embeddings, tied, and not stored);
//!   the encoder's pooler, which translation never uses but `BertModel` has, is copied from
//!   the pretrained checkpoint where it has one, so that transformers reports no missing keys.
//! - `tokenizer.json`: the encoder's tokenizer (sources go in through it);
//!   `target_tokenizer/tokenizer.json`: the run's target vocabulary (outputs decode with it).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Tensor;
use serde_json::json;

use crate::translator::Translator;

/// Writes the export of `translator` (loaded from `run_dir`) into `out`, whole or not at all.
pub fn export(
    translator: &Translator,
    encoder_dir: &Path,
    run_dir: &Path,
    out: &Path,
) -> Result<()> {
    let special = translator.special;
    let pad = translator
        .target_tokenizer
        .require_id("[PAD]")
        .context("the target vocabulary")?;
    let mut encoder = serde_json::to_value(&translator.encoder.config)?;
    encoder["architectures"] = json!(["BertModel"]);
    let mut decoder = serde_json::to_value(&translator.decoder.config)?;
    decoder["architectures"] = json!(["BertLMHeadModel"]);
    decoder["pad_token_id"] = json!(pad);
    decoder["bos_token_id"] = json!(special.bos);
    decoder["eos_token_id"] = json!(special.eos);
    decoder["decoder_start_token_id"] = json!(special.bos);
    let config = json!({
        "architectures": ["EncoderDecoderModel"],
        "model_type": "encoder-decoder",
        "is_encoder_decoder": true,
        "encoder": encoder,
        "decoder": decoder,
        "decoder_start_token_id": special.bos,
        "bos_token_id": special.bos,
        "eos_token_id": special.eos,
        "pad_token_id": pad,
        "tie_word_embeddings": false,
    });
    let generation = json!({
        "decoder_start_token_id": special.bos,
        "bos_token_id": special.bos,
        "eos_token_id": special.eos,
        "pad_token_id": pad,
        "num_beams": 1,
    });
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for p in translator.params.iter() {
        // Decoder parameters already carry `decoder.`; the encoder's are BertModel names.
        let name = if p.name.starts_with("decoder.") {
            p.name.clone()
        } else {
            format!("encoder.{}", p.name)
        };
        tensors.insert(name, p.tensor().detach().contiguous()?);
    }
    if let Ok(stored) = candle_core::safetensors::load(
        encoder_dir.join("model.safetensors"),
        &candle_core::Device::Cpu,
    ) {
        for (name, t) in stored {
            let name = name.strip_prefix("bert.").unwrap_or(&name);
            if name.starts_with("pooler.") {
                tensors.insert(format!("encoder.{name}"), t);
            }
        }
    }
    let source_tokenizer = encoder_dir.join("tokenizer.json");
    let target_tokenizer = run_dir.join("tokenizer.json");
    downstream_core::atomic::build_dir(out, "translate export", |dir| {
        downstream_core::atomic::write(
            &dir.join("config.json"),
            serde_json::to_string_pretty(&config)?.as_bytes(),
        )?;
        downstream_core::atomic::write(
            &dir.join("generation_config.json"),
            serde_json::to_string_pretty(&generation)?.as_bytes(),
        )?;
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))
            .context("writing model.safetensors")?;
        std::fs::copy(&source_tokenizer, dir.join("tokenizer.json"))
            .with_context(|| format!("copying {}", source_tokenizer.display()))?;
        std::fs::create_dir_all(dir.join("target_tokenizer"))?;
        std::fs::copy(
            &target_tokenizer,
            dir.join("target_tokenizer").join("tokenizer.json"),
        )
        .with_context(|| format!("copying {}", target_tokenizer.display()))?;
        Ok(())
    })
}
