//! BERT in the Hugging Face layout, trainable end to end: the encoder (`BertModel`) and the
//! pieces a decoder is built from (`BertLMHeadModel`, in [`super::bert_decoder`]).
//!
//! A layer optionally carries cross-attention over an encoder's output; embeddings take a
//! position offset so that incremental decoding embeds token `t` at position `t`. Dropout
//! follows BERT's places (embeddings, attention weights, each sub-layer's output), acts only
//! in the engine's training passes, and only in parts that train: a frozen part is a fixed
//! function, as at inference, so that its outputs can be cached.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::nn::{ops, Attention, Detach, KeyValues, LayerNorm, Linear, Loader};
use crate::params::{Depth, Freeze, ParamStore, WeightFile};

/// A Hugging Face `BertConfig`: what is read from `config.json`, and written back by an
/// export. Fields a file leaves out take transformers' defaults; fields this project does not
/// use are ignored on reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<u32>,
    pub position_embedding_type: String,
    /// Causal self-attention (a decoder).
    pub is_decoder: bool,
    /// Each layer attends to an encoder's output after its self-attention.
    pub add_cross_attention: bool,
    /// The LM head's output matrix is the word-embedding matrix.
    pub tie_word_embeddings: bool,
    pub model_type: String,
}

impl Default for BertConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            bos_token_id: None,
            eos_token_id: None,
            position_embedding_type: "absolute".into(),
            is_decoder: false,
            add_cross_attention: false,
            tie_word_embeddings: true,
            model_type: "bert".into(),
        }
    }
}

impl BertConfig {
    /// Refuses what this implementation does not compute as transformers does.
    pub fn check(&self) -> Result<()> {
        if self.hidden_act != "gelu" {
            bail!(
                "hidden_act `{}` is not supported (only exact gelu)",
                self.hidden_act
            );
        }
        if self.position_embedding_type != "absolute" {
            bail!(
                "position_embedding_type `{}` is not supported (only absolute)",
                self.position_embedding_type
            );
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            bail!(
                "hidden_size {} is not divisible by {} heads",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("{name} must be in [0, 1), not {p}");
            }
        }
        Ok(())
    }
}

/// Word, position and token-type embeddings, summed and normalised.
///
/// As in transformers (`padding_idx`), the padding token's row of the word embeddings gets no
/// gradient from its lookups: padding must not learn.
pub struct BertEmbeddings {
    word: Tensor,
    pad_id: u32,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
    dropout: f64,
}

impl Detach for BertEmbeddings {
    fn detached(&self) -> Self {
        Self {
            word: self.word.detached(),
            pad_id: self.pad_id,
            position: self.position.detached(),
            token_type: self.token_type.detached(),
            norm: self.norm.detached(),
            dropout: self.dropout,
        }
    }
}

impl BertEmbeddings {
    /// `{prefix}.word_embeddings.weight` and the rest (an encoder's are at depth 0).
    pub fn load(ld: &mut Loader, prefix: &str, config: &BertConfig, depth: Depth) -> Result<Self> {
        let d = config.hidden_size;
        let trains = ld.freeze.trains(depth, ld.num_blocks);
        Ok(Self {
            word: ld.param(
                &format!("{prefix}.word_embeddings.weight"),
                &[config.vocab_size, d],
                depth,
            )?,
            pad_id: config.pad_token_id,
            position: ld.param(
                &format!("{prefix}.position_embeddings.weight"),
                &[config.max_position_embeddings, d],
                depth,
            )?,
            token_type: ld.param(
                &format!("{prefix}.token_type_embeddings.weight"),
                &[config.type_vocab_size, d],
                depth,
            )?,
            norm: ld.layer_norm(
                &format!("{prefix}.LayerNorm"),
                d,
                config.layer_norm_eps,
                depth,
            )?,
            dropout: if trains {
                config.hidden_dropout_prob
            } else {
                0.0
            },
        })
    }

    /// The word-embedding matrix `[V, D]` (a tied LM head's output matrix).
    pub fn word_matrix(&self) -> &Tensor {
        &self.word
    }

    /// Embeds `ids` `[B, T]` (u32) at positions `offset..offset + T`; token types default to 0.
    pub fn forward(
        &self,
        ids: &Tensor,
        token_types: Option<&Tensor>,
        offset: usize,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let limit = self.position.dim(0)?;
        if offset + t > limit {
            bail!(
                "a sequence of {} tokens exceeds the model's {limit} positions",
                offset + t
            );
        }
        let flat = ids.flatten_all()?;
        let mut words = self.word.index_select(&flat, 0)?;
        if self.word.is_variable() {
            let keep = flat
                .ne(self.pad_id)?
                .to_dtype(words.dtype())?
                .unsqueeze(1)?;
            let constant = self.word.detach().index_select(&flat, 0)?;
            words = (constant.broadcast_mul(&(1.0 - &keep)?)? + words.broadcast_mul(&keep)?)?;
        }
        let words = words.reshape((b, t, ()))?;
        let x = match token_types {
            Some(types) => words.add(
                &self
                    .token_type
                    .index_select(&types.flatten_all()?, 0)?
                    .reshape((b, t, ()))?,
            )?,
            None => words.broadcast_add(&self.token_type.narrow(0, 0, 1)?)?,
        };
        let positions = self.position.narrow(0, offset, t)?.unsqueeze(0)?;
        let x = self.norm.forward(&x.broadcast_add(&positions)?)?;
        Ok(ops::dropout(&x, self.dropout)?)
    }
}

/// One BERT layer: self-attention, optionally cross-attention, then the feed-forward block,
/// each followed by dropout, the residual sum and a layer norm (post-norm).
pub struct BertLayer {
    attention: Attention,
    attention_norm: LayerNorm,
    cross: Option<(Attention, LayerNorm)>,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    dropout: f64,
}

impl Detach for BertLayer {
    fn detached(&self) -> Self {
        Self {
            attention: self.attention.detached(),
            attention_norm: self.attention_norm.detached(),
            cross: self
                .cross
                .as_ref()
                .map(|(a, n)| (a.detached(), n.detached())),
            intermediate: self.intermediate.detached(),
            output: self.output.detached(),
            output_norm: self.output_norm.detached(),
            dropout: self.dropout,
        }
    }
}

/// What a decoder layer attends to besides itself: the encoder's keys and values, and the
/// encoder's padding bias.
pub struct CrossSource<'a> {
    pub kv: &'a KeyValues,
    pub bias: Option<&'a Tensor>,
}

impl BertLayer {
    /// Layer `prefix` (`encoder.layer.3`), with cross-attention if the configuration asks.
    pub fn load(ld: &mut Loader, prefix: &str, config: &BertConfig, depth: Depth) -> Result<Self> {
        let d = config.hidden_size;
        let eps = config.layer_norm_eps;
        let heads = config.num_attention_heads;
        let trains = ld.freeze.trains(depth, ld.num_blocks);
        let rate = |p: f64| if trains { p } else { 0.0 };
        let attention_at = |ld: &mut Loader, at: &str| -> Result<(Attention, LayerNorm)> {
            let mut a = ld.attention(
                [
                    &format!("{prefix}.{at}.self.query"),
                    &format!("{prefix}.{at}.self.key"),
                    &format!("{prefix}.{at}.self.value"),
                    &format!("{prefix}.{at}.output.dense"),
                ],
                d,
                heads,
                depth,
            )?;
            a.probs_dropout = rate(config.attention_probs_dropout_prob);
            let norm = ld.layer_norm(&format!("{prefix}.{at}.output.LayerNorm"), d, eps, depth)?;
            Ok((a, norm))
        };
        let (attention, attention_norm) = attention_at(ld, "attention")?;
        let cross = if config.add_cross_attention {
            Some(attention_at(ld, "crossattention")?)
        } else {
            None
        };
        Ok(Self {
            attention,
            attention_norm,
            cross,
            intermediate: ld.linear(
                &format!("{prefix}.intermediate.dense"),
                d,
                config.intermediate_size,
                depth,
            )?,
            output: ld.linear(
                &format!("{prefix}.output.dense"),
                config.intermediate_size,
                d,
                depth,
            )?,
            output_norm: ld.layer_norm(&format!("{prefix}.output.LayerNorm"), d, eps, depth)?,
            dropout: rate(config.hidden_dropout_prob),
        })
    }

    /// The cross-attention's keys and values of an encoder output `[B, S, D]`, computed once
    /// per source sentence.
    pub fn cross_keys_values(&self, encoder: &Tensor) -> Result<KeyValues> {
        match &self.cross {
            Some((a, _)) => Ok(a.keys_values(encoder)?),
            None => bail!("this layer has no cross-attention"),
        }
    }

    /// `x` `[B, T, D]` through the layer. With `cache`, the self-attention also attends to the
    /// positions cached before and adds `x`'s to them; `cross` is required exactly when the
    /// layer has cross-attention.
    pub fn forward(
        &self,
        x: &Tensor,
        self_bias: Option<&Tensor>,
        cache: Option<&mut Option<KeyValues>>,
        cross: Option<CrossSource>,
    ) -> Result<Tensor> {
        let attn = match cache {
            Some(cache) => self.attention.forward_cached(x, cache, self_bias)?,
            None => self.attention.forward(x, self_bias)?,
        };
        let mut x = self
            .attention_norm
            .forward(&(ops::dropout(&attn, self.dropout)? + x)?)?;
        match (&self.cross, cross) {
            (Some((attention, norm)), Some(source)) => {
                let c = attention.attend(&x, source.kv, source.bias)?;
                x = norm.forward(&(ops::dropout(&c, self.dropout)? + x)?)?;
            }
            (None, None) => {}
            (Some(_), None) => bail!("a layer with cross-attention needs the encoder's output"),
            (None, Some(_)) => bail!("this layer has no cross-attention"),
        }
        let h = ops::gelu(&self.intermediate.forward(&x)?)?;
        let out = ops::dropout(&self.output.forward(&h)?, self.dropout)?;
        Ok(self.output_norm.forward(&(out + x)?)?)
    }
}

/// A BERT encoder. Its parameters live in the [`ParamStore`] returned by [`Bert::load`].
pub struct Bert {
    pub config: BertConfig,
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
}

/// A tokenised batch: `[B, T]` ids (u32), mask (1 = token, 0 = padding) and segment ids.
#[derive(Clone, Debug)]
pub struct TextBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub token_type_ids: Tensor,
}

impl Detach for Bert {
    fn detached(&self) -> Self {
        Self {
            config: self.config.clone(),
            embeddings: self.embeddings.detached(),
            layers: self.layers.detached(),
        }
    }
}

impl Bert {
    /// Loads `config.json` and `model.safetensors` from an HF-layout directory.
    pub fn load(dir: &Path, freeze: Freeze, device: &Device) -> Result<(Self, ParamStore)> {
        Self::load_with(dir, freeze, None, None, device)
    }

    /// [`Bert::load`]; with a `seed`, the same architecture with fresh weights instead of the
    /// stored ones (a from-scratch baseline); with `blocks`, only the first that many blocks
    /// (the model then ends at that block's output).
    pub fn load_with(
        dir: &Path,
        freeze: Freeze,
        seed: Option<u64>,
        blocks: Option<usize>,
        device: &Device,
    ) -> Result<(Self, ParamStore)> {
        let config_path = dir.join("config.json");
        let mut config: BertConfig = super::read_config(&config_path, "BERT")?;
        if let Some(n) = blocks {
            let all = config.num_hidden_layers;
            if n == 0 || n > all {
                bail!(
                    "{}: cannot read block {n}: the model has blocks 1 to {all}",
                    dir.display()
                );
            }
            config.num_hidden_layers = n;
        }
        let mut file = WeightFile::load(&dir.join("model.safetensors"), &["bert."], device)?;
        if let Some(seed) = seed {
            file = file.randomized(seed)?;
        }
        let mut store = ParamStore::new();
        let model = Self::from_weights(config, &mut file, &mut store, freeze)
            .with_context(|| format!("loading BERT from {}", dir.display()))?;
        Ok((model, store))
    }

    pub fn from_weights(
        config: BertConfig,
        file: &mut WeightFile,
        store: &mut ParamStore,
        freeze: Freeze,
    ) -> Result<Self> {
        config.check()?;
        if config.is_decoder || config.add_cross_attention {
            bail!("this is a decoder's configuration (is_decoder or add_cross_attention)");
        }
        let n = config.num_hidden_layers;
        freeze.check(n)?;
        store.top_depth = n + 1;
        let mut ld = Loader::new(file, store, freeze, n);
        let embeddings = BertEmbeddings::load(&mut ld, "embeddings", &config, 0)?;
        let layers = (0..n)
            .map(|i| BertLayer::load(&mut ld, &format!("encoder.layer.{i}"), &config, i + 1))
            .collect::<Result<_>>()?;
        Ok(Self {
            config,
            embeddings,
            layers,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Last hidden states `[B, T, H]`.
    pub fn forward(&self, batch: &TextBatch) -> Result<Tensor> {
        Ok(self.forward_with_hidden(batch, false)?.0)
    }

    /// Last hidden states and, if asked, every hidden state (embeddings output, then each
    /// block's output), as `output_hidden_states=True` gives them.
    pub fn forward_with_hidden(
        &self,
        batch: &TextBatch,
        keep: bool,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut x = self
            .embeddings
            .forward(&batch.input_ids, Some(&batch.token_type_ids), 0)?;
        let bias = ops::attention_bias(&batch.attention_mask)?;
        let mut hidden = Vec::new();
        for layer in &self.layers {
            if keep {
                hidden.push(x.clone());
            }
            x = layer.forward(&x, Some(&bias), None, None)?;
        }
        if keep {
            hidden.push(x.clone());
        }
        Ok((x, hidden))
    }
}

/// Mean of the hidden states over real tokens, then L2-normalised: the sentence embedding of
/// sentence-transformers models such as all-MiniLM-L6-v2.
pub fn mean_pool_normalized(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    mean.broadcast_div(&norm)
}
