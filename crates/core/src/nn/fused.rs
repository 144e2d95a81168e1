//! CPU kernels, each with its own backward, for the ops of a transformer block other than its
//! matrix products and attention (those are [`super::fused_linear`] and
//! [`super::fused_attention`]): GELU, softmax, layer norm, the per-channel scaled residual of
//! DINOv2, and the column sums their gradients need.
//!
//! Composed from candle primitives, GELU's backward is ten element-wise passes, softmax's and
//! layer norm's are chains of broadcasts, and every broadcast (a norm's scale, a layer scale)
//! is differentiated by a strided reduction. Here each forward and each backward is one pass,
//! split over rows with rayon, its arithmetic vectorised ([`super::simd`]). History: the first
//! version of these kernels took a DINOv2 ViT-S/14 training step on 8 images of 224 from 6.1
//! to 4.7 s on the 2-core development machine; `cargo xtask bench` has today's figures.
//! [`super::ops`] calls these for f32 tensors on the CPU and keeps the composed forms
//! everywhere else; tests hold the two to each other.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::simd;

/// Element-wise work is split into chunks of this many values.
const CHUNK: usize = 1 << 14;

/// Exact GELU, `x * Phi(x)`.
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

/// Layer norm over the last dimension, `(x - mean) / sqrt(var + eps) * weight + bias` with the
/// biased variance; `weight` and `bias` are vectors of the last dimension's size.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps },
    )
}

/// `x + a * scale` with `scale` a vector of the last dimension's size: a residual branch
/// scaled per channel (DINOv2's layer scale) and added back, in one pass each way.
pub fn scaled_residual(x: &Tensor, a: &Tensor, scale: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3(&a.contiguous()?, &scale.contiguous()?, ScaledResidual)
}

/// The values of a contiguous f32 tensor's storage; `op` names the caller in the error.
pub(crate) fn slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: only f32 is supported")
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: the input must be contiguous")))?;
    Ok(&data[start..end])
}

fn row_len(layout: &Layout, op: &str) -> candle_core::Result<usize> {
    match layout.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => candle_core::bail!(
            "{op}: needs a non-empty last dimension, got {:?}",
            layout.dims()
        ),
    }
}

fn same_shape(a: &Layout, b: &Layout, op: &str) -> candle_core::Result<()> {
    if a.dims() != b.dims() {
        candle_core::bail!("{op}: shapes differ, {:?} and {:?}", a.dims(), b.dims());
    }
    Ok(())
}

/// Two inputs of one shape, as contiguous slices.
fn pair<'a>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
    op: &str,
) -> candle_core::Result<(&'a [f32], &'a [f32])> {
    same_shape(l1, l2, op)?;
    Ok((slice(s1, l1, op)?, slice(s2, l2, op)?))
}

/// A new buffer filled by `f` on matching pieces of `len` values of it and `x`, in parallel.
fn map1(x: &[f32], len: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(len)
        .zip(x.par_chunks(len))
        .for_each(|(o, x)| f(o, x));
    out
}

/// As [`map1`], with two inputs of the same length.
fn map2(
    a: &[f32],
    b: &[f32],
    len: usize,
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(len)
        .zip(a.par_chunks(len).zip(b.par_chunks(len)))
        .for_each(|(o, (a, b))| f(o, a, b));
    out
}

/// Values per parallel task for a kernel over rows of `n`: whole rows, about [`CHUNK`].
fn rows_chunk(n: usize) -> usize {
    n * (CHUNK / n).max(1)
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let out = map1(x, CHUNK, simd::gelu);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2(&grad.contiguous()?, GeluGrad)?))
    }
}

/// `grad * (Phi(x) + x * phi(x))`, the derivative of `x * Phi(x)`.
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = pair(s1, l1, s2, l2, self.name())?;
        let out = map2(x, g, CHUNK, simd::gelu_grad);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let n = row_len(l, self.name())?;
        let out = map1(x, rows_chunk(n), |o, x| simd::softmax(o, x, n));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.apply_op2(&grad.contiguous()?, SoftmaxGrad)?))
    }
}

/// From the softmax output `y` and the output gradient `g`: `y * (g - sum(g * y))` per row.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, g) = pair(s1, l1, s2, l2, self.name())?;
        let n = row_len(l1, self.name())?;
        let out = map2(y, g, rows_chunk(n), |o, y, g| {
            simd::softmax_grad(o, y, g, n)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

fn vector<'a>(s: &'a CpuStorage, l: &Layout, n: usize, op: &str) -> candle_core::Result<&'a [f32]> {
    if l.dims() != [n] {
        candle_core::bail!("{op}: expected a vector of {n}, got {:?}", l.dims());
    }
    slice(s, l, op)
}

/// Rows handled by one task of a column reduction: large enough to amortise the partial
/// vector, small enough to split a ViT batch over every core.
const ROWS_PER_TASK: usize = 64;

/// Column sums over the rows of a `[rows, n]` matrix, as `k` vectors of `n` laid end to end:
/// `f(first_row, end_row, acc)` adds rows `first_row..end_row` into `acc`.
///
/// Each task's partial sums are added in task order, in f64: a reduction in whatever order the
/// threads finish would make two identical runs differ in the last bits, and a resumed run
/// differ from an uninterrupted one.
fn column_sums<F>(rows: usize, n: usize, k: usize, f: F) -> Vec<f32>
where
    F: Fn(usize, usize, &mut [f32]) + Sync,
{
    let partials: Vec<Vec<f32>> = (0..rows.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|task| {
            let mut acc = vec![0f32; k * n];
            let start = task * ROWS_PER_TASK;
            f(start, ((task + 1) * ROWS_PER_TASK).min(rows), &mut acc);
            acc
        })
        .collect();
    let mut total = vec![0f64; k * n];
    for p in &partials {
        total.iter_mut().zip(p).for_each(|(t, &v)| *t += v as f64);
    }
    total.into_iter().map(|v| v as f32).collect()
}

struct LayerNorm {
    eps: f64,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let n = row_len(l1, self.name())?;
        let w = vector(s2, l2, n, self.name())?;
        let b = vector(s3, l3, n, self.name())?;
        let eps = self.eps as f32;
        let out = map1(x, rows_chunk(n), |o, x| simd::layer_norm(o, x, w, b, eps));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let n = w.elem_count();
        let dx = x.apply_op3(w, &grad, LayerNormGradInput { eps: self.eps })?;
        let dwb = x.apply_op2(&grad, LayerNormGradAffine { eps: self.eps })?;
        Ok((
            Some(dx),
            Some(dwb.narrow(0, 0, n)?),
            Some(dwb.narrow(0, n, n)?),
        ))
    }
}

/// The input gradient, per row with `h` the standardised `x` and `u = g * w`:
/// `rstd * (u - mean(u) - h * mean(u * h))`. The moments are recomputed rather than kept,
/// which costs one pass over `x` and no memory between forward and backward.
struct LayerNormGradInput {
    eps: f64,
}

impl CustomOp3 for LayerNormGradInput {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = pair(s1, l1, s3, l3, self.name())?;
        let n = row_len(l1, self.name())?;
        let w = vector(s2, l2, n, self.name())?;
        let eps = self.eps as f32;
        let out = map2(x, g, rows_chunk(n), |o, x, g| {
            simd::layer_norm_grad_input(o, x, g, w, eps)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The weight and bias gradients, `[sum(g * h); sum(g)]` over rows, as one vector of `2n`.
struct LayerNormGradAffine {
    eps: f64,
}

impl CustomOp2 for LayerNormGradAffine {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = pair(s1, l1, s2, l2, self.name())?;
        let n = row_len(l1, self.name())?;
        let eps = self.eps as f32;
        let sums = column_sums(x.len() / n, n, 2, |start, end, acc| {
            let (dw, db) = acc.split_at_mut(n);
            let rows = start * n..end * n;
            simd::layer_norm_grad_affine(dw, db, &x[rows.clone()], &g[rows], eps);
        });
        Ok((CpuStorage::F32(sums), Shape::from(2 * n)))
    }
}

struct ScaledResidual;

impl CustomOp3 for ScaledResidual {
    fn name(&self) -> &'static str {
        "fused-scaled-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, a) = pair(s1, l1, s2, l2, self.name())?;
        let n = row_len(l1, self.name())?;
        let scale = vector(s3, l3, n, self.name())?;
        let out = map2(x, a, rows_chunk(n), |o, x, a| {
            simd::scaled_add(o, x, a, scale)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = x.track_op().then(|| grad.clone());
        let da = if a.track_op() {
            Some(grad.broadcast_mul(scale)?)
        } else {
            None
        };
        let ds = if scale.track_op() {
            Some(grad.apply_op2(&a.contiguous()?, ColumnDot)?)
        } else {
            None
        };
        Ok((dx, da, ds))
    }
}

/// Column sums of `g * a` (a per-channel scale's gradient).
struct ColumnDot;

impl CustomOp2 for ColumnDot {
    fn name(&self) -> &'static str {
        "fused-column-dot"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, a) = pair(s1, l1, s2, l2, self.name())?;
        let n = row_len(l1, self.name())?;
        let sums = column_sums(g.len() / n, n, 1, |start, end, acc| {
            let rows = start * n..end * n;
            simd::sum_rows_product(acc, &g[rows.clone()], &a[rows]);
        });
        Ok((CpuStorage::F32(sums), Shape::from(n)))
    }
}

/// The sum of `g` over every dimension but the last (a bias's gradient).
pub(crate) fn column_sum(g: &Tensor) -> candle_core::Result<Tensor> {
    g.contiguous()?.apply_op1(ColumnSum)
}

/// Sum over every dimension but the last.
struct ColumnSum;

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "fused-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = slice(s, l, self.name())?;
        let n = row_len(l, self.name())?;
        let sums = column_sums(g.len() / n, n, 1, |start, end, acc| {
            simd::sum_rows(acc, &g[start * n..end * n]);
        });
        Ok((CpuStorage::F32(sums), Shape::from(n)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::super::ops;
    use super::super::test_util::max_diff;

    /// Value and input gradient of `sum(f(x) * g)`.
    fn value_and_grad(
        x: &Tensor,
        g: &Tensor,
        f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> (Tensor, Tensor) {
        let v = Var::from_tensor(x).unwrap();
        let y = f(v.as_tensor()).unwrap();
        let grads = (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
        (y, grads.get(v.as_tensor()).unwrap().clone())
    }

    /// A non-contiguous input (a transpose) far from zero, so that the kernels' contiguity
    /// handling, softmax's max subtraction and the moments' accumulation are exercised.
    fn input(shape: (usize, usize, usize), shift: f32) -> Tensor {
        let dev = Device::Cpu;
        let (a, b, c) = shape;
        let x = Tensor::randn(0f32, 3.0, (a, c, b), &dev).unwrap();
        let offset = Tensor::arange(0f32, c as f32, &dev)
            .unwrap()
            .reshape((1, c, 1))
            .unwrap();
        x.broadcast_add(&((offset * 0.05).unwrap() + shift as f64).unwrap())
            .unwrap()
            .transpose(1, 2)
            .unwrap()
    }

    fn check(
        x: Tensor,
        fused: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        composed: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
        tol_value: f32,
        tol_grad: f32,
    ) {
        let g = Tensor::randn(0f32, 1.0, x.dims(), x.device()).unwrap();
        let (y1, g1) = value_and_grad(&x, &g, fused);
        let (y2, g2) = value_and_grad(&x, &g, composed);
        assert_eq!(y1.dims(), y2.dims());
        let (dv, dg) = (max_diff(&y1, &y2), max_diff(&g1, &g2));
        assert!(dv < tol_value, "values differ by {dv}");
        assert!(dg < tol_grad, "gradients differ by {dg}");
        // Not trivially zero: the gradient carries signal.
        let norm: f32 = g1.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm > 1e-3, "gradient norm {norm}");
    }

    #[test]
    fn normal_distribution_matches_libm_erf() {
        let mut worst = 0f32;
        for i in -8000..=8000 {
            let x = i as f32 / 1000.0;
            let (cdf, density) = super::simd::normal(x);
            let want = 0.5 * (1.0 + candle_core::cpu::erf::erf_f32(x / 2f32.sqrt()));
            worst = worst.max((cdf - want).abs());
            let want_density = (-0.5 * x * x).exp() / (2.0 * std::f32::consts::PI).sqrt();
            assert!((density - want_density).abs() < 1e-7, "density at {x}");
        }
        // The formula's 1.5e-7 plus f32 rounding: 2.4e-7 measured.
        assert!(worst < 3e-7, "largest error {worst}");
    }

    #[test]
    fn gelu_matches_candle_with_its_gradient() {
        check(
            input((3, 5, 67), -1.0),
            super::gelu,
            |x| x.gelu_erf(),
            1e-5,
            1e-4,
        );
    }

    #[test]
    fn softmax_matches_the_composed_form_with_its_gradient() {
        check(
            input((3, 5, 67), 100.0),
            super::softmax_last_dim,
            ops::softmax_composed,
            1e-6,
            1e-5,
        );
    }

    #[test]
    fn layer_norm_matches_the_composed_form_with_every_gradient() {
        let dev = Device::Cpu;
        let x = input((2, 7, 48), 100.0);
        let g = Tensor::randn(0f32, 1.0, x.dims(), &dev).unwrap();
        let w0 = Tensor::randn(1f32, 0.3, 48, &dev).unwrap();
        let b0 = Tensor::randn(0f32, 0.3, 48, &dev).unwrap();
        let run = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>| {
            let (xv, wv, bv) = (
                Var::from_tensor(&x).unwrap(),
                Var::from_tensor(&w0).unwrap(),
                Var::from_tensor(&b0).unwrap(),
            );
            let y = f(xv.as_tensor(), wv.as_tensor(), bv.as_tensor()).unwrap();
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = grads.get(xv.as_tensor()).unwrap().clone();
            let gw = grads.get(wv.as_tensor()).unwrap().clone();
            let gb = grads.get(bv.as_tensor()).unwrap().clone();
            [y, gx, gw, gb]
        };
        let fused = run(&|x, w, b| super::layer_norm(x, w, b, 1e-6));
        let composed = run(&|x, w, b| ops::layer_norm_composed(x, w, b, 1e-6));
        for (what, (a, b)) in ["value", "x grad", "weight grad", "bias grad"]
            .iter()
            .zip(fused.iter().zip(&composed))
        {
            let d = max_diff(a, b);
            assert!(d < 1e-4, "{what} differs by {d}");
        }
        let gx: f32 = fused[1]
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(gx > 1e-3);
    }

    #[test]
    fn scaled_residual_matches_the_composed_form_with_every_gradient() {
        let dev = Device::Cpu;
        let x0 = input((3, 9, 40), 0.0);
        let a0 = input((3, 9, 40), 1.0);
        let s0 = Tensor::randn(0f32, 1.0, 40, &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, x0.dims(), &dev).unwrap();
        let run = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>| {
            let (x, a, s) = (
                Var::from_tensor(&x0).unwrap(),
                Var::from_tensor(&a0).unwrap(),
                Var::from_tensor(&s0).unwrap(),
            );
            let y = f(x.as_tensor(), a.as_tensor(), s.as_tensor()).unwrap();
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let get = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
            [y.clone(), get(&x), get(&a), get(&s)]
        };
        let fused = run(&|x, a, s| super::scaled_residual(x, a, s));
        let composed = run(&|x, a, s| x + a.broadcast_mul(s)?);
        for (what, (f, c)) in ["value", "x grad", "a grad", "scale grad"]
            .iter()
            .zip(fused.iter().zip(&composed))
        {
            assert_eq!(f.dims(), c.dims(), "{what}");
            let d = max_diff(f, c);
            assert!(d < 1e-4, "{what} differs by {d}");
        }
        let gs: f32 = fused[3]
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(gs > 1.0, "the scale's gradient is a real column sum");
    }

    #[test]
    fn masks_combine_without_overflow_and_a_row_of_minus_infinity_is_zero() {
        let dev = Device::Cpu;
        let v = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        // Example 0 attends to its first two tokens, example 1 to none.
        let pad = ops::attention_bias(&Tensor::new(&[[1f32, 1., 0.], [0., 0., 0.]], &dev).unwrap())
            .unwrap();
        let causal = ops::causal_bias(3, &dev).unwrap();
        let summed = pad.broadcast_add(&causal).unwrap();
        assert!(
            v(&summed).iter().any(|x| x.is_infinite()),
            "a sum overflows"
        );
        let both = ops::combine_biases(&pad, &causal).unwrap();
        assert_eq!(both.dims(), [2, 1, 3, 3]);
        let probs = super::softmax_last_dim(&both).unwrap();
        let p = v(&probs);
        assert!(p.iter().all(|x| x.is_finite()), "{p:?}");
        // Example 0: row 0 sees token 0, row 2 tokens 0 and 1.
        assert_eq!(&p[..3], &[1.0, 0.0, 0.0]);
        assert_eq!(&p[6..9], &[0.5, 0.5, 0.0]);
        // A row of -inf (biases added elsewhere) gives zeros and a zero gradient, not NaN.
        let x = Tensor::new(&[[f32::NEG_INFINITY; 4], [0.0, 1.0, 2.0, 3.0]], &dev).unwrap();
        let g = Tensor::ones((2, 4), candle_core::DType::F32, &dev).unwrap();
        let (y, gx) = value_and_grad(&x, &g, super::softmax_last_dim);
        assert_eq!(&v(&y)[..4], &[0.0; 4]);
        assert!(v(&gx).iter().all(|x| x.is_finite()));
    }

    #[test]
    fn fused_ops_reject_other_dtypes_and_empty_rows() {
        let x = Tensor::zeros((2, 3), candle_core::DType::F64, &Device::Cpu).unwrap();
        assert!(super::gelu(&x).is_err());
        let empty = Tensor::zeros((2, 0), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(super::softmax_last_dim(&empty).is_err());
        let x = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let wrong = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(super::layer_norm(&x, &wrong, &wrong, 1e-5).is_err());
    }
}
