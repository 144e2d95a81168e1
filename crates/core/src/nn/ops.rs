//! Differentiable building blocks.
//!
//! candle-nn's fused `ops::layer_norm` and `ops::softmax_last_dim` have no backward pass, so a
//! model built on them silently trains only what sits after them. Models call these functions
//! and nothing else for normalisation, activation, attention weights and linear maps. On the
//! CPU in f32 they run the kernels of [`super::fused`] and [`super::fused_linear`], which carry
//! their own backward; elsewhere they fall back to compositions of primitives that candle
//! differentiates. Tests hold the two to each other, and the backbone parity tests hold both
//! to PyTorch ([`composed_only`] switches a thread to the composed forms, so that the path
//! another device takes is checked on the CPU).

use candle_core::{DType, Result, Tensor, D};

use super::fused;

thread_local! {
    static COMPOSED_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every op of this module in its composed form, the path a device other than
/// the CPU takes, so that tests can hold that path to the references on the CPU too.
pub fn composed_only<R>(f: impl FnOnce() -> R) -> R {
    let outer = COMPOSED_ONLY.with(|c| c.replace(true));
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPOSED_ONLY.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(outer);
    f()
}

/// Whether `x` goes through the CPU kernels (f32 on the CPU, outside [`composed_only`]).
pub(crate) fn fusable(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && !COMPOSED_ONLY.with(|c| c.get())
}

/// Layer normalisation over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`,
/// with the biased variance, as PyTorch computes it.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if fusable(x) {
        return fused::layer_norm(x, weight, bias, eps);
    }
    layer_norm_composed(x, weight, bias, eps)
}

pub(crate) fn layer_norm_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Softmax over the last dimension.
///
/// The row maximum is subtracted for stability; it is detached because the result does not
/// depend on it mathematically, which keeps the backward graph small.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fusable(x) {
        return fused::softmax_last_dim(x);
    }
    softmax_composed(x)
}

pub(crate) fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    exp.broadcast_div(&sum)
}

/// `x @ weight^T + bias` for `x` of any rank, weight `[out, in]` as PyTorch stores it.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if fusable(x) {
        return super::fused_linear::linear(x, weight, bias);
    }
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows = x.elem_count() / in_dim.max(1);
    let y = x.reshape((rows, in_dim))?.matmul(&weight.t()?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = weight.dim(0)?;
    y.reshape(out_dims)
}

/// `x + a * scale` (a residual branch `a` scaled per channel by `scale`, a vector of the last
/// dimension's size, as DINOv2's layer scale), or `x + a` without a scale.
pub fn residual(x: &Tensor, a: &Tensor, scale: Option<&Tensor>) -> Result<Tensor> {
    match scale {
        Some(s) if fusable(x) => fused::scaled_residual(x, a, s),
        Some(s) => x + a.broadcast_mul(s)?,
        None => x + a,
    }
}

/// The exact (erf) GELU, which is what Hugging Face means by `"gelu"`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fusable(x) {
        return fused::gelu(x);
    }
    x.gelu_erf()
}

/// Additive attention bias from a `[B, T]` mask of ones (attend) and zeros (padding):
/// `[B, 1, 1, T]` holding 0 or the most negative finite value, as transformers' eager attention does.
pub fn attention_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let mask = mask.to_dtype(DType::F32)?;
    let bias = ((mask.ones_like()? - mask)? * f32::MIN as f64)?;
    bias.reshape((b, 1, 1, t))
}

/// The causal bias `[1, 1, T, T]` of a decoder: position `i` attends to positions `0..=i`.
pub fn causal_bias(t: usize, device: &candle_core::Device) -> Result<Tensor> {
    causal_bias_after(t, 0, device)
}

/// The causal bias `[1, 1, T, P + T]` of `T` new positions after `P` cached ones: new position
/// `i` (position `P + i` of the sequence) attends to positions `0..=P + i`.
pub fn causal_bias_after(t: usize, past: usize, device: &candle_core::Device) -> Result<Tensor> {
    let s = past + t;
    let values: Vec<f32> = (0..t * s)
        .map(|k| if k % s > past + k / s { f32::MIN } else { 0.0 })
        .collect();
    Tensor::from_vec(values, (1, 1, t, s), device)
}

/// Two attention biases as one, broadcast: their minimum, not their sum. Two `f32::MIN`
/// entries add up to `-inf`, and a row of `-inf` turns softmax into NaN; the minimum keeps a
/// masked entry at `f32::MIN`, and a fully masked row stays finite.
pub fn combine_biases(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.broadcast_minimum(b)
}

/// Inverted dropout with rate `p` during a training pass of the engine
/// ([`crate::train::rng::training_pass`]), the identity otherwise. Masks are drawn per example
/// from the run's seed, the step and the call's position in the pass, so a resumed run and a
/// batch split into micro-batches drop exactly the same values. `x` must hold its batch on
/// the leading dimension (any shape whose values split evenly over the examples).
pub fn dropout(x: &Tensor, p: f64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout rate must be in [0, 1), not {p}");
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    match crate::train::rng::dropout_mask(p, x.elem_count()).map_err(candle_core::Error::Msg)? {
        None => Ok(x.clone()),
        Some(mask) => {
            let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
            x.contiguous()?.mul(&mask)
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn composed_only_switches_this_thread_to_the_composed_forms_and_back() {
        let x = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        assert!(super::fusable(&x));
        let inner = super::composed_only(|| {
            let nested = super::composed_only(|| super::fusable(&x));
            (nested, super::fusable(&x))
        });
        assert_eq!(inner, (false, false));
        assert!(super::fusable(&x), "restored after the scope");
        let other = std::thread::spawn({
            let x = x.clone();
            move || super::fusable(&x)
        });
        super::composed_only(|| assert!(other.join().unwrap(), "other threads are unaffected"));
        assert!(!super::fusable(&x.to_dtype(DType::F64).unwrap()));
    }
}
