//! BERT encoder in the Hugging Face `BertModel` layout, trainable end to end.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_transformers::models::bert::{Config, HiddenAct, PositionEmbeddingType};

use crate::nn::{ops, Detach, LayerNorm, Linear, Loader, SelfAttention};
use crate::params::{Freeze, ParamStore, WeightFile};

struct Layer {
    attention: SelfAttention,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

impl Detach for Layer {
    fn detached(&self) -> Self {
        Self {
            attention: self.attention.detached(),
            attention_norm: self.attention_norm.detached(),
            intermediate: self.intermediate.detached(),
            output: self.output.detached(),
            output_norm: self.output_norm.detached(),
        }
    }
}

impl Layer {
    fn forward(&self, x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
        let attn = self.attention.forward(x, Some(bias))?;
        let x = self.attention_norm.forward(&(attn + x)?)?;
        let h = ops::gelu(&self.intermediate.forward(&x)?)?;
        let out = self.output.forward(&h)?;
        self.output_norm.forward(&(out + x)?)
    }
}

/// A BERT encoder. Its parameters live in the [`ParamStore`] returned by [`Bert::load`].
pub struct Bert {
    pub config: Config,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
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
            word_embeddings: self.word_embeddings.detached(),
            position_embeddings: self.position_embeddings.detached(),
            token_type_embeddings: self.token_type_embeddings.detached(),
            embeddings_norm: self.embeddings_norm.detached(),
            layers: self.layers.detached(),
        }
    }
}

impl Bert {
    /// Loads `config.json` and `model.safetensors` from an HF-layout directory.
    pub fn load(dir: &Path, freeze: Freeze, device: &Device) -> Result<(Self, ParamStore)> {
        let config_path = dir.join("config.json");
        let config: Config = super::read_config(&config_path, "BERT")?;
        let mut file = WeightFile::load(&dir.join("model.safetensors"), &["bert."], device)?;
        let mut store = ParamStore::new();
        let model = Self::from_weights(config, &mut file, &mut store, freeze)
            .with_context(|| format!("loading BERT from {}", dir.display()))?;
        Ok((model, store))
    }

    pub fn from_weights(
        config: Config,
        file: &mut WeightFile,
        store: &mut ParamStore,
        freeze: Freeze,
    ) -> Result<Self> {
        if config.hidden_act != HiddenAct::Gelu {
            bail!(
                "hidden_act {:?} is not supported (only exact gelu)",
                config.hidden_act
            );
        }
        if config.position_embedding_type != PositionEmbeddingType::Absolute {
            bail!("only absolute position embeddings are supported");
        }
        if !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
        {
            bail!(
                "hidden_size {} is not divisible by {} heads",
                config.hidden_size,
                config.num_attention_heads
            );
        }
        let d = config.hidden_size;
        let n = config.num_hidden_layers;
        freeze.check(n)?;
        let eps = config.layer_norm_eps;
        store.top_depth = n + 1;
        let mut ld = Loader {
            file,
            store,
            freeze,
            num_blocks: n,
        };
        let word_embeddings = ld.param(
            "embeddings.word_embeddings.weight",
            &[config.vocab_size, d],
            0,
        )?;
        let position_embeddings = ld.param(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, d],
            0,
        )?;
        let token_type_embeddings = ld.param(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, d],
            0,
        )?;
        let embeddings_norm = ld.layer_norm("embeddings.LayerNorm", d, eps, 0)?;
        let mut layers = Vec::with_capacity(n);
        for i in 0..n {
            let p = format!("encoder.layer.{i}");
            let depth = i + 1;
            let attention = ld.attention(
                [
                    &format!("{p}.attention.self.query"),
                    &format!("{p}.attention.self.key"),
                    &format!("{p}.attention.self.value"),
                    &format!("{p}.attention.output.dense"),
                ],
                d,
                config.num_attention_heads,
                depth,
            )?;
            layers.push(Layer {
                attention,
                attention_norm: ld.layer_norm(
                    &format!("{p}.attention.output.LayerNorm"),
                    d,
                    eps,
                    depth,
                )?,
                intermediate: ld.linear(
                    &format!("{p}.intermediate.dense"),
                    d,
                    config.intermediate_size,
                    depth,
                )?,
                output: ld.linear(
                    &format!("{p}.output.dense"),
                    config.intermediate_size,
                    d,
                    depth,
                )?,
                output_norm: ld.layer_norm(&format!("{p}.output.LayerNorm"), d, eps, depth)?,
            });
        }
        Ok(Self {
            config,
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embeddings_norm,
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
        let (b, t) = batch.input_ids.dims2()?;
        if t > self.config.max_position_embeddings {
            bail!(
                "sequence of {t} tokens exceeds the model's {} positions",
                self.config.max_position_embeddings
            );
        }
        let ids = batch.input_ids.flatten_all()?;
        let words = self
            .word_embeddings
            .index_select(&ids, 0)?
            .reshape((b, t, ()))?;
        let types = self
            .token_type_embeddings
            .index_select(&batch.token_type_ids.flatten_all()?, 0)?
            .reshape((b, t, ()))?;
        let positions = self.position_embeddings.narrow(0, 0, t)?.unsqueeze(0)?;
        let x = words.add(&types)?.broadcast_add(&positions)?;
        let mut x = self.embeddings_norm.forward(&x)?;
        let bias = ops::attention_bias(&batch.attention_mask)?;
        let mut hidden = Vec::new();
        for layer in &self.layers {
            if keep {
                hidden.push(x.clone());
            }
            x = layer.forward(&x, &bias)?;
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
