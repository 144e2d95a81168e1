//! Batching tokenizer over a Hugging Face `tokenizer.json`, and what generation needs of one:
//! decoding, special-token ids, the vocabulary size, and training a new vocabulary.
//!
//! Some shipped tokenizer files force their own padding and truncation (all-MiniLM-L6-v2 pads
//! and truncates every input to exactly 128 tokens). Both are replaced here: a batch is padded
//! to its longest member, and truncation happens at the length the caller asks for.
//!
//! A trained vocabulary ([`TextTokenizer::train_bpe`]) is byte-pair encoding over
//! SentencePiece-style pieces (a space becomes part of the next piece), so decoding gives back
//! the text exactly, spacing and punctuation included: a translation is read by people and
//! scored by BLEU on its detokenised form.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::backbone::bert::TextBatch;

/// The special tokens of a trained vocabulary, at ids 0 to 3.
pub const SPECIAL_TOKENS: [&str; 4] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"];

pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; sequences longer than `max_len` tokens (special tokens included)
    /// are truncated.
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Self::new(inner, max_len).with_context(|| path.display().to_string())
    }

    /// Wraps a tokenizer, replacing its padding and truncation.
    pub fn new(mut inner: Tokenizer, max_len: usize) -> Result<Self> {
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
            .map_err(|e| anyhow!("{e}"))?;
        Ok(Self { inner, max_len })
    }

    /// Trains a byte-pair vocabulary of at most `vocab_size` entries on `texts`: NFC
    /// normalisation, SentencePiece-style pieces, and the special tokens `[PAD]` (0), `[UNK]`
    /// (1), `[CLS]` (2, begins a sequence) and `[SEP]` (3, ends it), which encoding adds around
    /// every text. Deterministic for the same texts in the same order.
    pub fn train_bpe<S: AsRef<str> + Send>(
        texts: impl Iterator<Item = S> + Send,
        vocab_size: usize,
        max_len: usize,
    ) -> Result<Self> {
        anyhow::ensure!(
            vocab_size > SPECIAL_TOKENS.len(),
            "a vocabulary of {vocab_size} cannot hold the special tokens and any text"
        );
        let bpe = BPE::builder()
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| anyhow!("building the BPE model: {e}"))?;
        let mut inner = Tokenizer::new(bpe);
        inner
            .with_normalizer(Some(NFC))
            .map_err(|e| anyhow!("{e}"))?;
        let metaspace = Metaspace::new('\u{2581}', PrependScheme::Always, true);
        inner.with_pre_tokenizer(Some(metaspace.clone()));
        inner.with_decoder(Some(metaspace));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(
                SPECIAL_TOKENS
                    .iter()
                    .map(|t| AddedToken::from(*t, true))
                    .collect(),
            )
            .build()
            .into();
        inner
            .train(&mut trainer, texts)
            .map_err(|e| anyhow!("training the vocabulary: {e}"))?;
        let template = TemplateProcessing::builder()
            .try_single("[CLS] $A [SEP]")
            .map_err(|e| anyhow!("{e}"))?
            .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
            .build()
            .map_err(|e| anyhow!("{e}"))?;
        inner.with_post_processor(Some(template));
        for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
            anyhow::ensure!(
                inner.token_to_id(token) == Some(id as u32),
                "the trained vocabulary put {token} at {:?}, not {id}",
                inner.token_to_id(token)
            );
        }
        Self::new(inner, max_len)
    }

    /// Writes `tokenizer.json` (atomically), in the format transformers' fast tokenizers read.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.inner.to_string(true).map_err(|e| anyhow!("{e}"))?;
        crate::atomic::write(path, json.as_bytes())
    }

    /// Entries in the vocabulary, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of `token`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The id of `token`, or an error saying the vocabulary lacks it.
    pub fn require_id(&self, token: &str) -> Result<u32> {
        self.token_id(token)
            .ok_or_else(|| anyhow!("the vocabulary has no {token} token"))
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow!("decoding {} ids: {e}", ids.len()))
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

    /// [`TextTokenizer::ids`], and whether the text was cut to fit [`TextTokenizer::max_len`].
    pub fn ids_truncated(&self, text: &str) -> Result<(Vec<u32>, bool)> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        Ok((enc.get_ids().to_vec(), !enc.get_overflowing().is_empty()))
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
