//! Pretrained encoders that every downstream task fine-tunes from.

pub mod bert;
pub mod bert_decoder;
pub mod vit;

pub use bert::{Bert, BertConfig, TextBatch};
pub use bert_decoder::{BertDecoder, DecodeState};
pub use vit::{Readout, Vit, VitConfig, VitLayout, VitOutput};

use anyhow::{Context, Result};
use candle_core::Device;

use crate::params::{Freeze, ParamStore};
use crate::tokenizer::TextTokenizer;

/// A Hugging Face `config.json` of the `kind` a loader expects.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    kind: &str,
) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a {kind} config", path.display()))
}

/// The default text backbone (all-MiniLM-L6-v2).
pub const DEFAULT_TEXT: &str = "minilm-l6";
/// The default vision backbone (DINOv2 ViT-S/14).
pub const DEFAULT_VISION: &str = "dinov2-s14";

/// A text backbone from a model name (fetched on first use) or an HF-layout folder, with its
/// tokenizer truncating at the model's position limit.
pub fn load_text(
    spec: &str,
    freeze: Freeze,
    device: &Device,
) -> Result<(Bert, TextTokenizer, ParamStore)> {
    load_text_limited(spec, freeze, None, None, device)
}

/// [`load_text`], with the tokenizer truncating at `max_len` tokens if that is below the
/// model's limit, and with `blocks` only the first that many blocks (a task reading an
/// intermediate block: the ones above are neither loaded, run, trained nor counted by freeze
/// modes and layer decay); `scratch:SPEC` gives the architecture with random weights (a
/// from-scratch baseline), and the tokenizer of SPEC.
pub fn load_text_limited(
    spec: &str,
    freeze: Freeze,
    max_len: Option<usize>,
    blocks: Option<usize>,
    device: &Device,
) -> Result<(Bert, TextTokenizer, ParamStore)> {
    let (dir, seed) = resolve(spec)?;
    let (model, params) = Bert::load_with(&dir, freeze, seed, blocks, device)?;
    let limit = model.config.max_position_embeddings;
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = TextTokenizer::from_file(&tok_path, max_len.map_or(limit, |m| m.min(limit)))
        .with_context(|| format!("backbone `{spec}` needs a tokenizer.json"))?;
    Ok((model, tokenizer, params))
}

/// The configuration of the text backbone `spec` names (`scratch:SPEC` included), without
/// loading its weights.
pub fn text_config(spec: &str) -> Result<BertConfig> {
    read_config(&resolve(spec)?.0.join("config.json"), "BERT")
}

/// Prefix of a backbone spec that asks for the architecture without its pretrained weights.
pub const SCRATCH: &str = "scratch:";

/// The folder a backbone spec names (fetched on first use), and the seed of fresh weights for
/// a `scratch:` spec.
pub fn resolve(spec: &str) -> Result<(std::path::PathBuf, Option<u64>)> {
    let (inner, seed) = match spec.strip_prefix(SCRATCH) {
        Some(inner) => (inner, Some(0)),
        None => (spec, None),
    };
    Ok((downstream_hub::resolve(inner)?, seed))
}

/// A vision backbone from a model name (fetched on first use) or an HF-layout folder, loaded up
/// to what the head reads; `scratch:SPEC` gives the same architecture randomly initialised (a
/// from-scratch baseline).
pub fn load_vision(
    spec: &str,
    freeze: Freeze,
    readout: Readout,
    device: &Device,
) -> Result<(Vit, ParamStore)> {
    let (dir, seed) = resolve(spec)?;
    Vit::load_with(&dir, freeze, readout, seed, device)
}

/// ImageNet mean and standard deviation per RGB channel, which both ViT and DINOv2
/// checkpoints were trained with.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
