//! Multi-head attention with separate query and key/value inputs: the self-attention of the
//! encoders, and a decoder's causal self-attention and cross-attention.
//!
//! Keys and values are projected once per source ([`Attention::keys_values`]) and attended to
//! by any number of queries ([`Attention::attend`]). That is what makes generation linear in
//! its length: a decoder projects the encoder output once per sentence for cross-attention,
//! and its self-attention appends each new token's keys and values to a cache
//! ([`Attention::forward_cached`]) instead of re-running the whole prefix every step.
//!
//! On the CPU in f32 the attention itself is one op ([`super::fused_attention`]) reading the
//! projections in their `[B, T, D]` layout, dropout on its weights included; elsewhere the
//! heads are split and attended by composed ops.

use candle_core::{Result, Tensor};

use super::{fused_attention, ops, Detach, Linear};

/// Multi-head attention with separate query, key, value and output projections.
#[derive(Clone, Debug)]
pub struct Attention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub output: Linear,
    pub num_heads: usize,
    /// Dropout on the attention weights during a training pass (BERT's
    /// `attention_probs_dropout_prob`; 0 for the vision backbones).
    pub probs_dropout: f64,
}

/// Projected keys and values, `[B, S, D]` each (heads side by side in the last dimension).
#[derive(Clone, Debug)]
pub struct KeyValues {
    pub keys: Tensor,
    pub values: Tensor,
}

impl KeyValues {
    /// Positions held (`S`).
    pub fn len(&self) -> usize {
        self.keys.dim(1).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// These positions followed by `next`'s.
    pub fn append(&self, next: &KeyValues) -> Result<Self> {
        Ok(Self {
            keys: Tensor::cat(&[&self.keys, &next.keys], 1)?,
            values: Tensor::cat(&[&self.values, &next.values], 1)?,
        })
    }

    /// The batch rows `rows` (u32 indices, repeats allowed), in that order: how a beam search
    /// carries each surviving hypothesis's cache forward.
    pub fn select(&self, rows: &Tensor) -> Result<Self> {
        Ok(Self {
            keys: self.keys.index_select(rows, 0)?,
            values: self.values.index_select(rows, 0)?,
        })
    }
}

impl Detach for Attention {
    fn detached(&self) -> Self {
        Self {
            query: self.query.detached(),
            key: self.key.detached(),
            value: self.value.detached(),
            output: self.output.detached(),
            num_heads: self.num_heads,
            probs_dropout: self.probs_dropout,
        }
    }
}

impl Attention {
    /// `[B, T, D]` to `[B, H, T, D/H]`.
    fn split_heads(&self, y: Tensor) -> Result<Tensor> {
        let (b, t, d) = y.dims3()?;
        let h = self.num_heads;
        y.reshape((b, t, h, d / h))?.transpose(1, 2)?.contiguous()
    }

    /// Keys and values of a source `[B, S, D]`.
    pub fn keys_values(&self, source: &Tensor) -> Result<KeyValues> {
        Ok(KeyValues {
            keys: self.key.forward(source)?,
            values: self.value.forward(source)?,
        })
    }

    /// Queries from `x` `[B, T, D]` attend to `kv`. `bias`, if any, is added to the scores
    /// `[B, H, T, S]` by broadcasting: a padding bias `[B, 1, 1, S]`, a causal one
    /// `[1, 1, T, S]`, or their combination ([`ops::combine_biases`]).
    pub fn attend(&self, x: &Tensor, kv: &KeyValues, bias: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let dh = d / self.num_heads;
        let q = self.query.forward(x)?;
        if ops::fusable(&q) {
            // The same draw, in the same order, as `ops::dropout` on the probabilities.
            let mask = if self.probs_dropout > 0.0 {
                let n = b * self.num_heads * t * kv.len();
                crate::train::rng::dropout_mask(self.probs_dropout, n)
                    .map_err(candle_core::Error::Msg)?
            } else {
                None
            };
            let ctx =
                fused_attention::attention(&q, &kv.keys, &kv.values, bias, self.num_heads, mask)?;
            return self.output.forward(&ctx);
        }
        let q = self.split_heads(q)?;
        let keys = self.split_heads(kv.keys.clone())?;
        let values = self.split_heads(kv.values.clone())?;
        let scores = (q.matmul(&keys.t()?)? * (1.0 / (dh as f64).sqrt()))?;
        let scores = match bias {
            Some(bias) => scores.broadcast_add(bias)?,
            None => scores,
        };
        let probs = ops::dropout(&ops::softmax_last_dim(&scores)?, self.probs_dropout)?;
        let ctx = probs.matmul(&values)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.output.forward(&ctx)
    }

    /// Self-attention over `x` `[B, T, D]`.
    pub fn forward(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.attend(x, &self.keys_values(x)?, bias)
    }

    /// Self-attention of new positions `x` over the cached ones and themselves; the cache then
    /// holds them too. With an empty cache this is [`Attention::forward`].
    pub fn forward_cached(
        &self,
        x: &Tensor,
        cache: &mut Option<KeyValues>,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let new = self.keys_values(x)?;
        let kv = match cache.take() {
            Some(past) => past.append(&new)?,
            None => new,
        };
        let out = self.attend(x, &kv, bias);
        *cache = Some(kv);
        out
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::super::test_util::max_diff;
    use super::super::{ops, Linear};
    use super::Attention;
    use crate::train::rng::{training_pass, Phase};

    /// Dropout on the attention weights inside a training pass: the fused op draws the same
    /// mask as the composed form and gives the same values and gradients.
    #[test]
    fn dropout_on_the_weights_is_the_same_draw_fused_and_composed() {
        let dev = Device::Cpu;
        let (b, t, d) = (2, 6, 16);
        let linear = |seed: f64| Linear {
            weight: (Tensor::randn(0f32, 0.3, (d, d), &dev).unwrap() + seed).unwrap(),
            bias: Some(Tensor::randn(0f32, 0.1, d, &dev).unwrap()),
        };
        let attention = Attention {
            query: linear(0.0),
            key: linear(0.01),
            value: linear(-0.01),
            output: linear(0.0),
            num_heads: 4,
            probs_dropout: 0.3,
        };
        let x0 = Tensor::randn(0f32, 1.0, (b, t, d), &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (b, t, d), &dev).unwrap();
        let mask = Tensor::new(
            &[[1f32, 1., 1., 1., 0., 0.], [1., 1., 1., 1., 1., 1.]],
            &dev,
        )
        .unwrap();
        let bias = ops::attention_bias(&mask).unwrap();
        let run = || {
            let x = Var::from_tensor(&x0).unwrap();
            let y = training_pass(7, 3, Phase::Head, &[(0, 0), (1, 0)], || {
                attention.forward(x.as_tensor(), Some(&bias)).unwrap()
            });
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            (y, grads.get(x.as_tensor()).unwrap().clone())
        };
        let (y1, g1) = run();
        let (y2, g2) = ops::composed_only(run);
        assert!(
            max_diff(&y1, &y2) < 1e-5,
            "values differ by {}",
            max_diff(&y1, &y2)
        );
        assert!(
            max_diff(&g1, &g2) < 1e-4,
            "gradients differ by {}",
            max_diff(&g1, &g2)
        );
        // The mask did act: outside a training pass the output differs.
        let plain = attention.forward(&x0, Some(&bias)).unwrap();
        assert!(max_diff(&y1, &plain) > 1e-3);
    }
}
