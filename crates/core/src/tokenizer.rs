//! Batching tokenizer over a Hugging Face `tokenizer.json`.
//!
//! Some shipped tokenizer files force their own padding and truncation (all-MiniLM-L6-v2 pads
//! and truncates every input to exactly 128 tokens). Both are replaced here: a batch is padded
//! to its longest member, and truncation happens at the length the caller asks for.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::backbone::bert::TextBatch;

pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; sequences longer than `max_len` tokens (special tokens included)
    /// are truncated.
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        let mut inner =
            Tokenizer::from_file(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let pad_id = inner.get_padding().map(|p| p.pad_id).unwrap_or(0);
        let pad_token = inner
            .get_padding()
            .map(|p| p.pad_token.clone())
            .unwrap_or_else(|| "[PAD]".into());
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token,
            ..Default::default()
        }));
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(Self { inner, max_len })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Token ids of one text, special tokens included, truncated but not padded.
    pub fn ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokenises a batch, padded to its longest member.
    pub fn batch(&self, texts: &[&str], device: &Device) -> Result<TextBatch> {
        if texts.is_empty() {
            return Err(anyhow!("cannot tokenise an empty batch"));
        }
        let encs = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow!("tokenizing a batch of {}: {e}", texts.len()))?;
        let t = encs.iter().map(|e| e.len()).max().unwrap_or(0);
        let b = encs.len();
        let mut ids = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        let mut types = Vec::with_capacity(b * t);
        for e in &encs {
            ids.extend_from_slice(e.get_ids());
            mask.extend(e.get_attention_mask().iter().map(|&m| m as f32));
            types.extend_from_slice(e.get_type_ids());
        }
        let mk =
            |v: Vec<u32>| Tensor::from_vec(v, (b, t), device).context("building the id tensor");
        Ok(TextBatch {
            input_ids: mk(ids)?,
            attention_mask: Tensor::from_vec(mask, (b, t), device)?,
            token_type_ids: mk(types)?,
        })
    }
}
