//! A BERT decoder in the layout of Hugging Face's `BertLMHeadModel` with `is_decoder` and
//! `add_cross_attention` (the decoder of an `EncoderDecoderModel`): causal self-attention,
//! cross-attention over an encoder's output, and an LM head whose output matrix is the word
//! embeddings unless the configuration unties them.
//!
//! Training runs a whole target at once under a causal mask ([`BertDecoder::forward`]).
//! Generation runs new tokens against a [`DecodeState`]: the encoder's keys and values are
//! projected once per sentence and each step's own keys and values are appended to a cache,
//! so a step costs one token's work, not a re-run of the prefix.
//!
//! One constructor serves a pretrained decoder, a new one and a warm start: the weights come
//! from a [`WeightFile`], which makes the tensors it does not hold with Hugging Face's
//! initialisation when it is [`WeightFile::fresh`]; [`warm_start`] fills one from an encoder
//! (BERT2BERT: self-attention, feed-forward and position embeddings copied, cross-attention
//! and the target vocabulary new).

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use super::bert::{BertConfig, BertEmbeddings, BertLayer, CrossSource};
use crate::nn::{ops, Detach, KeyValues, LayerNorm, Linear, Loader};
use crate::params::{Depth, Freeze, ParamStore, WeightFile};

pub struct BertDecoder {
    pub config: BertConfig,
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    transform: Linear,
    transform_norm: LayerNorm,
    /// The output matrix `[V, D]` when it is not the word embeddings.
    untied_output: Option<Tensor>,
    output_bias: Tensor,
}

impl Detach for BertDecoder {
    fn detached(&self) -> Self {
        Self {
            config: self.config.clone(),
            embeddings: self.embeddings.detached(),
            layers: self.layers.detached(),
            transform: self.transform.detached(),
            transform_norm: self.transform_norm.detached(),
            untied_output: self.untied_output.detached(),
            output_bias: self.output_bias.detached(),
        }
    }
}

/// Where a generation stands: the encoder's keys and values and padding bias for each layer's
/// cross-attention, the self-attention cache of each layer, and how many positions it holds.
pub struct DecodeState {
    cross: Vec<KeyValues>,
    cross_bias: Option<Tensor>,
    cache: Vec<Option<KeyValues>>,
    len: usize,
}

impl DecodeState {
    /// Positions decoded so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the batch rows `rows` (u32, repeats allowed) in that order, for every cached
    /// tensor: a beam search's reordering, or one sentence's expansion into its beams.
    pub fn select(&mut self, rows: &Tensor) -> Result<()> {
        for kv in &mut self.cross {
            *kv = kv.select(rows)?;
        }
        for kv in self.cache.iter_mut().flatten() {
            *kv = kv.select(rows)?;
        }
        if let Some(bias) = &self.cross_bias {
            self.cross_bias = Some(bias.index_select(rows, 0)?);
        }
        Ok(())
    }
}

impl BertDecoder {
    /// Builds the decoder from `file` (names as `BertLMHeadModel` saves them:
    /// `bert.embeddings...`, `bert.encoder.layer.N...`, `cls.predictions...`), registering
    /// every parameter in `store` under `prefix` (an `EncoderDecoderModel` says `decoder.`) at
    /// `depth`, trainable: a decoder is part of the task's head.
    pub fn from_weights(
        config: BertConfig,
        file: &mut WeightFile,
        store: &mut ParamStore,
        prefix: &str,
        depth: Depth,
    ) -> Result<Self> {
        config.check()?;
        if !config.is_decoder || !config.add_cross_attention {
            bail!("a decoder's configuration needs is_decoder and add_cross_attention");
        }
        let n = config.num_hidden_layers;
        let d = config.hidden_size;
        let mut ld = Loader::new(file, store, Freeze::Full, n);
        ld.prefix = prefix;
        let embeddings = BertEmbeddings::load(&mut ld, "bert.embeddings", &config, depth)?;
        let layers = (0..n)
            .map(|i| BertLayer::load(&mut ld, &format!("bert.encoder.layer.{i}"), &config, depth))
            .collect::<Result<_>>()?;
        let transform = ld.linear("cls.predictions.transform.dense", d, d, depth)?;
        let transform_norm = ld.layer_norm(
            "cls.predictions.transform.LayerNorm",
            d,
            config.layer_norm_eps,
            depth,
        )?;
        let untied_output = if config.tie_word_embeddings {
            None
        } else {
            Some(ld.param(
                "cls.predictions.decoder.weight",
                &[config.vocab_size, d],
                depth,
            )?)
        };
        let output_bias = ld.param("cls.predictions.bias", &[config.vocab_size], depth)?;
        Ok(Self {
            config,
            embeddings,
            layers,
            transform,
            transform_norm,
            untied_output,
            output_bias,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self
            .transform_norm
            .forward(&ops::gelu(&self.transform.forward(hidden)?)?)?;
        let output = self
            .untied_output
            .as_ref()
            .unwrap_or_else(|| self.embeddings.word_matrix());
        Ok(ops::linear(&h, output, Some(&self.output_bias))?)
    }

    /// Logits `[B, T, V]` of a whole target `ids` `[B, T]` (teacher forcing) with its padding
    /// `mask` `[B, T]` (1 = token), over an `encoder` output `[B, S, D]` with its padding mask.
    pub fn forward(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        encoder: &Tensor,
        encoder_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        Ok(self
            .forward_with_hidden(ids, mask, encoder, encoder_mask, false)?
            .0)
    }

    /// [`BertDecoder::forward`], with every hidden state if asked (the embeddings' output,
    /// then each layer's), as `output_hidden_states=True` gives them.
    pub fn forward_with_hidden(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        encoder: &Tensor,
        encoder_mask: Option<&Tensor>,
        keep: bool,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let t = ids.dim(1)?;
        let causal = ops::causal_bias(t, ids.device())?;
        let self_bias = match mask {
            Some(m) => ops::combine_biases(&causal, &ops::attention_bias(m)?)?,
            None => causal,
        };
        let cross_bias = encoder_mask.map(ops::attention_bias).transpose()?;
        let mut x = self.embeddings.forward(ids, None, 0)?;
        let mut hidden = Vec::new();
        for layer in &self.layers {
            if keep {
                hidden.push(x.clone());
            }
            let kv = layer.cross_keys_values(encoder)?;
            let source = CrossSource {
                kv: &kv,
                bias: cross_bias.as_ref(),
            };
            x = layer.forward(&x, Some(&self_bias), None, Some(source))?;
        }
        if keep {
            hidden.push(x.clone());
        }
        Ok((self.logits(&x)?, hidden))
    }

    /// A generation over `encoder` `[B, S, D]` (with its padding mask), nothing decoded yet.
    pub fn start(&self, encoder: &Tensor, encoder_mask: Option<&Tensor>) -> Result<DecodeState> {
        Ok(DecodeState {
            cross: self
                .layers
                .iter()
                .map(|l| l.cross_keys_values(encoder))
                .collect::<Result<_>>()?,
            cross_bias: encoder_mask.map(ops::attention_bias).transpose()?,
            cache: self.layers.iter().map(|_| None).collect(),
            len: 0,
        })
    }

    /// Logits `[B, T, V]` of the next tokens `ids` `[B, T]` (usually `T = 1`) after those
    /// `state` holds, which then holds these too.
    pub fn step(&self, state: &mut DecodeState, ids: &Tensor) -> Result<Tensor> {
        let t = ids.dim(1)?;
        let past = state.len;
        let self_bias = (t > 1)
            .then(|| ops::causal_bias_after(t, past, ids.device()))
            .transpose()?;
        let mut x = self.embeddings.forward(ids, None, past)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let source = CrossSource {
                kv: &state.cross[i],
                bias: state.cross_bias.as_ref(),
            };
            x = layer.forward(
                &x,
                self_bias.as_ref(),
                Some(&mut state.cache[i]),
                Some(source),
            )?;
        }
        state.len += t;
        self.logits(&x)
    }
}

/// A decoder configuration shaped like `encoder` (hidden size, heads, feed-forward width,
/// norms), with `layers` layers and a target vocabulary of `vocab_size`: the decoder's hidden
/// size must equal the encoder's for cross-attention to read it directly.
pub fn decoder_config(encoder: &BertConfig, layers: usize, vocab_size: usize) -> BertConfig {
    BertConfig {
        vocab_size,
        num_hidden_layers: layers,
        is_decoder: true,
        add_cross_attention: true,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_id: None,
        ..encoder.clone()
    }
}

/// A weight source for a decoder warm-started from an encoder (BERT2BERT, Rothe et al. 2020):
/// decoder layer `i` takes encoder layer `i`'s self-attention and feed-forward weights, the
/// embeddings take its position and token-type tables and norm; cross-attention, the word
/// embeddings (another vocabulary) and the LM head are new, seeded by `seed`. Copies, not
/// shared tensors: the two stacks train apart.
pub fn warm_start(
    encoder: &ParamStore,
    encoder_prefix: &str,
    decoder_layers: usize,
    seed: u64,
    device: &Device,
) -> Result<WeightFile> {
    let mut file = WeightFile::fresh(seed, device);
    for p in encoder.iter() {
        let Some(name) = p.name.strip_prefix(encoder_prefix) else {
            continue;
        };
        let target = if let Some(rest) = name.strip_prefix("encoder.layer.") {
            let (index, _) = rest.split_once('.').unwrap_or((rest, ""));
            match index.parse::<usize>() {
                Ok(i) if i < decoder_layers => format!("bert.{name}"),
                _ => continue,
            }
        } else if name.starts_with("embeddings.") && !name.contains("word_embeddings") {
            format!("bert.{name}")
        } else {
            continue;
        };
        file.insert(&target, p.tensor().detach().copy()?);
    }
    Ok(file)
}
