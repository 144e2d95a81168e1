//! Summed cross-entropy with an ignore index and label smoothing, as PyTorch's
//! `cross_entropy(..., reduction="sum")` computes it, with its own backward.
//!
//! The logits of dense pixels (`[B, C, H, W]`) and of large vocabularies (`[tokens, V]`) are
//! the largest tensors of a segmentation or translation step. Composed from candle ops the
//! loss is a log-softmax, a gather, a mask and their backward chains, each a pass over the
//! logits that also keeps its result alive for the backward; on the CPU in f32 this kernel
//! makes one pass forward and one backward and keeps nothing between them. Elsewhere the
//! composed form runs; tests hold the two to each other and both to PyTorch.
//!
//! Classes sit on axis 1, as in PyTorch: `[N, C]` with targets `[N]`, or `[B, C, d1, ...]`
//! with targets `[B, d1, ...]`. Targets are `u32` class indices; a target equal to the ignore
//! index adds nothing to the loss or the gradient. With smoothing `e`, a row's loss is
//! `(1 - e) * -log p[y] + e / C * sum_c -log p[c]`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

/// What a cross-entropy ignores and how much it smooths.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossEntropy {
    /// Targets equal to this are skipped (padding tokens, unlabelled pixels).
    pub ignore_index: Option<u32>,
    /// Label smoothing `e` in `[0, 1)`.
    pub label_smoothing: f64,
}

impl Default for CrossEntropy {
    fn default() -> Self {
        Self {
            ignore_index: None,
            label_smoothing: 0.0,
        }
    }
}

impl CrossEntropy {
    /// The summed loss over every target that is not ignored, a scalar.
    pub fn sum(&self, logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
        let shape = self.check(logits, targets)?;
        if logits.device().is_cpu() && logits.dtype() == DType::F32 {
            return logits
                .contiguous()?
                .apply_op2(&targets.contiguous()?, Fused { ce: *self, shape });
        }
        self.composed(logits, targets, shape)
    }

    /// How many targets count (are not the ignore index).
    pub fn count(&self, targets: &[u32]) -> usize {
        match self.ignore_index {
            Some(ignore) => targets.iter().filter(|&&t| t != ignore).count(),
            None => targets.len(),
        }
    }

    fn check(&self, logits: &Tensor, targets: &Tensor) -> candle_core::Result<Classes> {
        if !(0.0..1.0).contains(&self.label_smoothing) {
            candle_core::bail!(
                "label smoothing must be in [0, 1), not {}",
                self.label_smoothing
            );
        }
        if targets.dtype() != DType::U32 {
            candle_core::bail!(
                "cross-entropy targets must be u32, not {:?}",
                targets.dtype()
            );
        }
        let dims = logits.dims();
        let mut want = dims.to_vec();
        if dims.len() < 2 || dims[1] == 0 {
            candle_core::bail!("cross-entropy logits need a class axis 1, got {dims:?}");
        }
        want.remove(1);
        if targets.dims() != want.as_slice() {
            candle_core::bail!(
                "cross-entropy targets have shape {:?}, logits {dims:?} need {want:?}",
                targets.dims()
            );
        }
        Ok(Classes {
            outer: dims[0],
            classes: dims[1],
            inner: dims[2..].iter().product(),
        })
    }

    /// The same loss from candle primitives, for devices and types the kernel does not cover.
    fn composed(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        shape: Classes,
    ) -> candle_core::Result<Tensor> {
        let Classes {
            outer,
            classes,
            inner,
        } = shape;
        // Rows of classes: [outer * inner, C].
        let rows = logits
            .reshape((outer, classes, inner))?
            .transpose(1, 2)?
            .reshape((outer * inner, classes))?;
        let max = rows.max_keepdim(D::Minus1)?.detach();
        let shifted = rows.broadcast_sub(&max)?;
        let logp = shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)?;
        let t = targets.flatten_all()?;
        let keep = match self.ignore_index {
            Some(ignore) => t.ne(ignore)?,
            None => t.ones_like()?.to_dtype(DType::U8)?,
        };
        // Ignored targets may be out of range; gather at class 0 and mask the row.
        let safe = keep.where_cond(&t, &t.zeros_like()?)?;
        let picked = logp.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?;
        let e = self.label_smoothing;
        let mut row_loss = (picked * -(1.0 - e))?;
        if e > 0.0 {
            row_loss = (row_loss - (logp.sum(D::Minus1)? * (e / classes as f64))?)?;
        }
        let keep = keep.to_dtype(row_loss.dtype())?;
        (row_loss * keep)?.sum_all()
    }
}

#[derive(Clone, Copy, Debug)]
struct Classes {
    outer: usize,
    classes: usize,
    inner: usize,
}

/// Positions handled by one task.
const POSITIONS_PER_TASK: usize = 256;

fn slices<'a>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
    op: &str,
) -> candle_core::Result<(&'a [f32], &'a [u32])> {
    let (CpuStorage::F32(x), CpuStorage::U32(t)) = (s1, s2) else {
        candle_core::bail!("{op}: needs f32 logits and u32 targets")
    };
    let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
    else {
        candle_core::bail!("{op}: inputs must be contiguous")
    };
    Ok((&x[a0..a1], &t[b0..b1]))
}

impl Classes {
    /// Logit of class `c` at position `p` (position = outer index * inner + inner index).
    #[inline]
    fn at(&self, p: usize, c: usize) -> usize {
        (p / self.inner * self.classes + c) * self.inner + p % self.inner
    }

    /// Max and log-sum-exp of the logits at position `p`.
    fn log_sum_exp(&self, x: &[f32], p: usize) -> (f32, f32) {
        if self.inner == 1 {
            // Classes contiguous: one vectorised pass over the row.
            return super::simd::log_sum_exp(&x[p * self.classes..(p + 1) * self.classes]);
        }
        let max = (0..self.classes)
            .map(|c| x[self.at(p, c)])
            .fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = (0..self.classes)
            .map(|c| (x[self.at(p, c)] - max).exp())
            .sum();
        (max, sum.ln())
    }

    /// Whether position `p`'s target counts, checked against the class count.
    fn target(&self, t: &[u32], p: usize, ce: &CrossEntropy) -> candle_core::Result<Option<usize>> {
        let y = t[p];
        if ce.ignore_index == Some(y) {
            return Ok(None);
        }
        if y as usize >= self.classes {
            candle_core::bail!(
                "cross-entropy target {y} at position {p} is not a class (0 to {}) nor the ignore index",
                self.classes - 1
            );
        }
        Ok(Some(y as usize))
    }
}

struct Fused {
    ce: CrossEntropy,
    shape: Classes,
}

impl CustomOp2 for Fused {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, t) = slices(s1, l1, s2, l2, self.name())?;
        let sh = self.shape;
        let e = self.ce.label_smoothing as f32;
        let positions = sh.outer * sh.inner;
        // Partial sums added in task order, so that identical runs agree to the bit.
        let partials: Vec<f64> = (0..positions.div_ceil(POSITIONS_PER_TASK))
            .into_par_iter()
            .map(|task| -> candle_core::Result<f64> {
                let mut acc = 0f64;
                let end = ((task + 1) * POSITIONS_PER_TASK).min(positions);
                for p in task * POSITIONS_PER_TASK..end {
                    let Some(y) = sh.target(t, p, &self.ce)? else {
                        continue;
                    };
                    let (max, lse) = sh.log_sum_exp(x, p);
                    let nll = lse - (x[sh.at(p, y)] - max);
                    let mut loss = (1.0 - e) * nll;
                    if e > 0.0 {
                        let sum_nll: f32 =
                            (0..sh.classes).map(|c| lse - (x[sh.at(p, c)] - max)).sum();
                        loss += e / sh.classes as f32 * sum_nll;
                    }
                    acc += loss as f64;
                }
                Ok(acc)
            })
            .collect::<candle_core::Result<_>>()?;
        let total: f64 = partials.iter().sum();
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = logits.apply_op3(
            targets,
            &grad.reshape(1)?.contiguous()?,
            FusedGrad {
                ce: self.ce,
                shape: self.shape,
            },
        )?;
        Ok((Some(g), None))
    }
}

/// `grad * (softmax - q)` at every counted position, with `q` the smoothed one-hot target;
/// zero at ignored positions.
struct FusedGrad {
    ce: CrossEntropy,
    shape: Classes,
}

impl CustomOp3 for FusedGrad {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-grad"
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
        let (x, t) = slices(s1, l1, s2, l2, self.name())?;
        let CpuStorage::F32(g) = s3 else {
            candle_core::bail!("{}: the output gradient must be f32", self.name())
        };
        let scale = g[l3.start_offset()];
        let sh = self.shape;
        let e = self.ce.label_smoothing as f32;
        let off = e / sh.classes as f32;
        let mut out = vec![0f32; x.len()];
        // Each outer index owns a contiguous [C, inner] block of the output.
        let block = sh.classes * sh.inner;
        out.par_chunks_mut(block).enumerate().try_for_each(
            |(o, dst)| -> candle_core::Result<()> {
                for i in 0..sh.inner {
                    let p = o * sh.inner + i;
                    let Some(y) = sh.target(t, p, &self.ce)? else {
                        continue;
                    };
                    let (max, lse) = sh.log_sum_exp(x, p);
                    if sh.inner == 1 {
                        let row = &x[p * sh.classes..(p + 1) * sh.classes];
                        super::simd::scaled_probs(dst, row, max + lse, scale, off);
                        dst[y] -= scale * (1.0 - e);
                        continue;
                    }
                    for c in 0..sh.classes {
                        let prob = (x[sh.at(p, c)] - max - lse).exp();
                        let q = off + if c == y { 1.0 - e } else { 0.0 };
                        dst[c * sh.inner + i] = scale * (prob - q);
                    }
                }
                Ok(())
            },
        )?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn loss_and_grad(ce: &CrossEntropy, fused: bool, x: &Tensor, t: &Tensor) -> (f32, Vec<f32>) {
        let v = Var::from_tensor(x).unwrap();
        let shape = ce.check(v.as_tensor(), t).unwrap();
        let loss = if fused {
            ce.sum(v.as_tensor(), t).unwrap()
        } else {
            ce.composed(v.as_tensor(), t, shape).unwrap()
        };
        let grads = (&loss * 0.7).unwrap().backward().unwrap();
        let g = grads.get(v.as_tensor()).unwrap();
        (
            loss.to_scalar().unwrap(),
            g.flatten_all().unwrap().to_vec1().unwrap(),
        )
    }

    #[test]
    fn the_kernel_matches_the_composed_form_on_rows_and_on_dense_maps() {
        let dev = Device::Cpu;
        for (dims, classes) in [(vec![9, 6], 6), (vec![2, 5, 3, 4], 5)] {
            let x = (Tensor::randn(0f32, 3.0, dims.as_slice(), &dev).unwrap() + 50.0).unwrap();
            let mut tdims = dims.clone();
            tdims.remove(1);
            let n: usize = tdims.iter().product();
            let t: Vec<u32> = (0..n as u32)
                .map(|i| if i % 5 == 3 { 255 } else { i * 7 % classes })
                .collect();
            let t = Tensor::from_vec(t, tdims.as_slice(), &dev).unwrap();
            for smoothing in [0.0, 0.2] {
                let ce = CrossEntropy {
                    ignore_index: Some(255),
                    label_smoothing: smoothing,
                };
                let (l1, g1) = loss_and_grad(&ce, true, &x, &t);
                let (l2, g2) = loss_and_grad(&ce, false, &x, &t);
                assert!((l1 - l2).abs() < 1e-3 * l2.abs().max(1.0), "{l1} vs {l2}");
                let d = g1
                    .iter()
                    .zip(&g2)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(d < 1e-5, "{dims:?}: gradients differ by {d}");
            }
        }
    }

    #[test]
    fn a_target_that_is_not_a_class_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let t = Tensor::new(&[1u32, 7], &dev).unwrap();
        let err = CrossEntropy::default().sum(&x, &t).unwrap_err().to_string();
        assert!(err.contains("target 7"), "{err}");
        let wrong = Tensor::new(&[1u32, 2, 0], &dev).unwrap();
        assert!(CrossEntropy::default().sum(&x, &wrong).is_err());
        let bad = CrossEntropy {
            label_smoothing: 1.0,
            ..Default::default()
        };
        assert!(bad
            .sum(&x, &Tensor::new(&[1u32, 2], &dev).unwrap())
            .is_err());
    }
}
