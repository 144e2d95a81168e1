//! Layers built from [`ops`], loaded from Hugging Face-named weights into a [`ParamStore`].

pub mod attention;
pub mod conv;
pub(crate) mod fused;
mod fused_attention;
mod fused_linear;
pub mod interpolate;
pub mod loss;
pub mod ops;
pub(crate) mod simd;
#[cfg(test)]
pub(crate) mod test_util;

use anyhow::Result;
use candle_core::Tensor;

use crate::params::{Depth, Freeze, ParamStore, WeightFile};

pub use attention::{Attention, KeyValues};

/// Reads named weights and registers them as trainable or frozen parameters.
pub struct Loader<'a> {
    pub file: &'a mut WeightFile,
    pub store: &'a mut ParamStore,
    pub freeze: Freeze,
    pub num_blocks: usize,
    /// Put before each name in the store (not in the file): `decoder.` keeps a decoder's
    /// `bert.encoder.layer.0...` apart from an encoder's `encoder.layer.0...` in one store.
    pub prefix: &'a str,
}

impl<'a> Loader<'a> {
    pub fn new(
        file: &'a mut WeightFile,
        store: &'a mut ParamStore,
        freeze: Freeze,
        num_blocks: usize,
    ) -> Self {
        Self {
            file,
            store,
            freeze,
            num_blocks,
            prefix: "",
        }
    }

    pub fn param(&mut self, name: &str, shape: &[usize], depth: Depth) -> Result<Tensor> {
        let t = self.file.take(name, shape)?;
        let trains = self.freeze.trains(depth, self.num_blocks);
        self.store
            .insert(&format!("{}{name}", self.prefix), t, depth, trains)
    }

    /// A norm's scale and shift, accepting the old `gamma`/`beta` names.
    pub fn layer_norm(
        &mut self,
        prefix: &str,
        dim: usize,
        eps: f64,
        depth: Depth,
    ) -> Result<LayerNorm> {
        let trains = self.freeze.trains(depth, self.num_blocks);
        let mut take = |new: &str, old: &str| -> Result<Tensor> {
            let (_, t) = self.file.take_any(
                &[format!("{prefix}.{new}"), format!("{prefix}.{old}")],
                &[dim],
            )?;
            self.store
                .insert(&format!("{}{prefix}.{new}", self.prefix), t, depth, trains)
        };
        let weight = take("weight", "gamma")?;
        let bias = take("bias", "beta")?;
        Ok(LayerNorm { weight, bias, eps })
    }

    pub fn linear(
        &mut self,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        depth: Depth,
    ) -> Result<Linear> {
        let weight = self.param(&format!("{prefix}.weight"), &[out_dim, in_dim], depth)?;
        let bias = self.param(&format!("{prefix}.bias"), &[out_dim], depth)?;
        Ok(Linear {
            weight,
            bias: Some(bias),
        })
    }

    /// Attention from four projections named `{query,key,value,output}` under the prefixes
    /// given. The key bias is marked as having an identically zero gradient: it adds the same
    /// `q . b` to every score of a row, which softmax ignores.
    pub fn attention(
        &mut self,
        [query, key, value, output]: [&str; 4],
        dim: usize,
        num_heads: usize,
        depth: Depth,
    ) -> Result<Attention> {
        let attention = Attention {
            query: self.linear(query, dim, dim, depth)?,
            key: self.linear(key, dim, dim, depth)?,
            value: self.linear(value, dim, dim, depth)?,
            output: self.linear(output, dim, dim, depth)?,
            num_heads,
            probs_dropout: 0.0,
        };
        self.store
            .mark_zero_grad(&format!("{}{key}.bias", self.prefix))?;
        Ok(attention)
    }
}

/// A copy of a layer on weights detached from the backward graph, for inference.
///
/// candle has no no-grad mode: a forward pass through trainable weights records the graph of
/// every op and keeps each activation alive for a backward that never comes. The copy shares
/// the weights' storage, so it sees every optimizer update, but nothing it computes is
/// recorded.
pub trait Detach {
    fn detached(&self) -> Self;
}

impl Detach for Tensor {
    fn detached(&self) -> Self {
        self.detach()
    }
}

impl<T: Detach> Detach for Option<T> {
    fn detached(&self) -> Self {
        self.as_ref().map(Detach::detached)
    }
}

impl<T: Detach> Detach for Vec<T> {
    fn detached(&self) -> Self {
        self.iter().map(Detach::detached).collect()
    }
}

impl<T: Detach, const N: usize> Detach for [T; N] {
    fn detached(&self) -> Self {
        std::array::from_fn(|i| self[i].detached())
    }
}

impl Detach for LayerNorm {
    fn detached(&self) -> Self {
        Self {
            weight: self.weight.detached(),
            bias: self.bias.detached(),
            eps: self.eps,
        }
    }
}

impl Detach for Linear {
    fn detached(&self) -> Self {
        Self {
            weight: self.weight.detached(),
            bias: self.bias.detached(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out, in]`, as PyTorch stores it.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::linear(x, &self.weight, self.bias.as_ref())
    }
}
