//! Scaled dot-product attention on the CPU as one op with its own backward.
//!
//! Composed from primitives, attention copies queries, keys and values into a per-head layout
//! and the context back, scales the scores in a pass of their own, and every one of its
//! nodes has its gradient accumulated by candle through a zero-filled buffer of the scores'
//! size. Here each (example, head) pair is one task: its scores are a product read straight
//! from the projections' `[B, T, D]` layout (head `h` is columns `h*dh..(h+1)*dh`), scaled
//! and biased by the product itself, soft-maxed in place and multiplied into the context's
//! own columns. The probabilities are kept for the backward pass, as the composed form
//! keeps them; the bias (padding, causal) gets no gradient.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::fused::slice;
use super::simd;

/// `dropout(softmax(q k^T * scale + bias)) v` per head, for `q` `[B, T, D]`, `k` and `v`
/// `[B, S, D]` with `heads` heads, and `bias` broadcastable to `[B, H, T, S]` with a leading
/// dimension of 1 or B, a second of 1, a third of 1 or T. `dropout`, if any, is the keep-mask
/// (scaled) of the probabilities `[B, H, T, S]` in order, as [`super::ops::dropout`] would
/// draw it for them. Returns `[B, T, D]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    heads: usize,
    dropout: Option<Vec<f32>>,
) -> candle_core::Result<Tensor> {
    let (b, t, d) = q.dims3()?;
    let (bk, s, dk) = k.dims3()?;
    if v.dims() != k.dims() || bk != b || dk != d || heads == 0 || d % heads != 0 {
        candle_core::bail!(
            "fused attention: q {:?}, k {:?}, v {:?} with {heads} heads",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let bias = match bias {
        None => None,
        Some(x) => {
            let (bb, bh, bt, bs) = x.dims4()?;
            if !(bb == 1 || bb == b) || bh != 1 || !(bt == 1 || bt == t) || bs != s {
                candle_core::bail!(
                    "fused attention: a bias of {:?} does not broadcast to [{b}, {heads}, {t}, {s}]",
                    x.dims()
                );
            }
            let values: Vec<f32> = x
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?;
            Some(Bias {
                values,
                per_example: bb == b,
                per_row: bt == t,
            })
        }
    };
    if let Some(m) = &dropout {
        if m.len() != b * heads * t * s {
            candle_core::bail!("fused attention: a dropout mask of {} values", m.len());
        }
    }
    let keep = q.track_op() || k.track_op() || v.track_op();
    let op = Attend {
        heads,
        bias,
        dropout,
        keep,
        probs: Arc::new(Mutex::new(None)),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

struct Bias {
    values: Vec<f32>,
    per_example: bool,
    per_row: bool,
}

impl Bias {
    /// The bias row of example `b`, query `t`, over `s` keys.
    fn row(&self, b: usize, t: usize, rows: usize, s: usize) -> &[f32] {
        let b = if self.per_example { b } else { 0 };
        let t = if self.per_row { t } else { 0 };
        let start = (b * if self.per_row { rows } else { 1 } + t) * s;
        &self.values[start..start + s]
    }
}

struct Attend {
    heads: usize,
    bias: Option<Bias>,
    /// The probabilities' keep-mask, `[B, H, T, S]`.
    dropout: Option<Vec<f32>>,
    /// Whether the backward pass will need the probabilities.
    keep: bool,
    /// `[B, H, T, S]`, filled by the forward pass when `keep`.
    probs: Arc<Mutex<Option<Vec<f32>>>>,
}

/// A raw pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task writes only its own (example, head) block; see the callers.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer, through a method so that a closure captures the whole (sendable) wrapper.
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the buffer the pointer came from.
        unsafe { self.0.add(offset) }
    }
}

fn tensor_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1()
}

/// `dst (m x n) = alpha * dst + beta * lhs (m x k) @ rhs (k x n)`, strides as (row, column).
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_s: (usize, usize),
    read_dst: bool,
    lhs: *const f32,
    lhs_s: (usize, usize),
    rhs: *const f32,
    rhs_s: (usize, usize),
    beta: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_s.1 as isize,
        dst_s.0 as isize,
        read_dst,
        lhs,
        lhs_s.1 as isize,
        lhs_s.0 as isize,
        rhs,
        rhs_s.1 as isize,
        rhs_s.0 as isize,
        1.0,
        beta,
        false,
        false,
        false,
        Parallelism::None,
    )
}

impl Attend {
    /// Task `task`'s probabilities `p` times their keep-mask, when dropout acts.
    fn dropped(&self, task: usize, p: &[f32], len: usize) -> Option<Vec<f32>> {
        let mask = &self.dropout.as_ref()?[task * len..(task + 1) * len];
        Some(p.iter().zip(mask).map(|(p, m)| p * m).collect())
    }
}

impl CustomOp3 for Attend {
    fn name(&self) -> &'static str {
        "fused-attention"
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
        let op = self.name();
        let (q, k, v) = (slice(s1, l1, op)?, slice(s2, l2, op)?, slice(s3, l3, op)?);
        let (b, t, d) = l1.shape().dims3()?;
        let s = l2.shape().dims3()?.1;
        let h = self.heads;
        let dh = d / h;
        let scale = 1.0 / (dh as f32).sqrt();
        let mut probs = vec![0f32; b * h * t * s];
        let mut out = vec![0f32; b * t * d];
        let out_ptr = Shared(out.as_mut_ptr());
        probs
            .par_chunks_mut(t * s)
            .enumerate()
            .for_each(|(task, p)| {
                let (bi, hi) = (task / h, task % h);
                if let Some(bias) = &self.bias {
                    for (row, chunk) in p.chunks_exact_mut(s).enumerate() {
                        chunk.copy_from_slice(bias.row(bi, row, t, s));
                    }
                }
                // SAFETY: q, k, v hold [B, *, D] values and the offsets and strides address
                // head `hi` of example `bi` inside them; `p` is this task's own block, and
                // the context columns written are this (example, head)'s alone.
                unsafe {
                    let qh = q.as_ptr().add(bi * t * d + hi * dh);
                    let kh = k.as_ptr().add(bi * s * d + hi * dh);
                    let vh = v.as_ptr().add(bi * s * d + hi * dh);
                    // scores = bias + scale * q k^T; k^T (dh x s) has strides (1, d).
                    product(
                        (t, s, dh),
                        p.as_mut_ptr(),
                        (s, 1),
                        self.bias.is_some(),
                        qh,
                        (d, 1),
                        kh,
                        (1, d),
                        scale,
                    );
                    simd::softmax_in_place(p, s);
                    // The kept probabilities stay undropped; the context uses the dropped.
                    let dropped = self.dropped(task, p, t * s);
                    let oh = out_ptr.at(bi * t * d + hi * dh);
                    product(
                        (t, dh, s),
                        oh,
                        (d, 1),
                        false,
                        dropped.as_deref().unwrap_or(p).as_ptr(),
                        (s, 1),
                        vh,
                        (d, 1),
                        1.0,
                    );
                }
            });
        if self.keep {
            *self.probs.lock().expect("not poisoned") = Some(probs);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self.probs.lock().expect("not poisoned");
        let probs = guard.as_deref().ok_or_else(|| {
            candle_core::Error::Msg("fused attention: no probabilities kept for backward".into())
        })?;
        let (b, t, d) = q.dims3()?;
        let s = k.dim(1)?;
        let h = self.heads;
        let dh = d / h;
        let scale = 1.0 / (dh as f32).sqrt();
        let (qv, kv, vv, g) = (
            tensor_f32(q)?,
            tensor_f32(k)?,
            tensor_f32(v)?,
            tensor_f32(grad)?,
        );
        let (want_q, want_k, want_v) = (q.track_op(), k.track_op(), v.track_op());
        let mut dq = vec![0f32; if want_q { b * t * d } else { 0 }];
        let mut dk = vec![0f32; if want_k { b * s * d } else { 0 }];
        let mut dv = vec![0f32; if want_v { b * s * d } else { 0 }];
        let (dq_ptr, dk_ptr, dv_ptr) = (
            Shared(dq.as_mut_ptr()),
            Shared(dk.as_mut_ptr()),
            Shared(dv.as_mut_ptr()),
        );
        probs.par_chunks(t * s).enumerate().for_each(|(task, p)| {
            let (bi, hi) = (task / h, task % h);
            let mut ds = vec![0f32; t * s];
            // SAFETY: as in the forward pass; each task writes the columns of its own
            // (example, head) in dq, dk and dv, and its own scratch `ds`.
            unsafe {
                let q_off = bi * t * d + hi * dh;
                let kv_off = bi * s * d + hi * dh;
                let gh = g.as_ptr().add(q_off);
                if want_v {
                    // dv = p^T g (p as dropped): p^T (s x t) has strides (1, s).
                    let dropped = self.dropped(task, p, t * s);
                    product(
                        (s, dh, t),
                        dv_ptr.at(kv_off),
                        (d, 1),
                        false,
                        dropped.as_deref().unwrap_or(p).as_ptr(),
                        (1, s),
                        gh,
                        (d, 1),
                        1.0,
                    );
                }
                if want_q || want_k {
                    // dp = g v^T, then the softmax's backward, then the scale.
                    let mut dp = vec![0f32; t * s];
                    product(
                        (t, s, dh),
                        dp.as_mut_ptr(),
                        (s, 1),
                        false,
                        gh,
                        (d, 1),
                        vv.as_ptr().add(kv_off),
                        (1, d),
                        1.0,
                    );
                    if let Some(mask) = &self.dropout {
                        let mask = &mask[task * t * s..(task + 1) * t * s];
                        dp.iter_mut().zip(mask).for_each(|(g, m)| *g *= m);
                    }
                    simd::softmax_grad(&mut ds, p, &dp, s);
                    if want_q {
                        product(
                            (t, dh, s),
                            dq_ptr.at(q_off),
                            (d, 1),
                            false,
                            ds.as_ptr(),
                            (s, 1),
                            kv.as_ptr().add(kv_off),
                            (d, 1),
                            scale,
                        );
                    }
                    if want_k {
                        product(
                            (s, dh, t),
                            dk_ptr.at(kv_off),
                            (d, 1),
                            false,
                            ds.as_ptr(),
                            (1, s),
                            qv.as_ptr().add(q_off),
                            (d, 1),
                            scale,
                        );
                    }
                }
            }
        });
        let dev = q.device();
        let make =
            |want: bool, data: Vec<f32>, shape: &Shape| -> candle_core::Result<Option<Tensor>> {
                if want {
                    Ok(Some(Tensor::from_vec(data, shape, dev)?))
                } else {
                    Ok(None)
                }
            };
        Ok((
            make(want_q, dq, q.shape())?,
            make(want_k, dk, k.shape())?,
            make(want_v, dv, v.shape())?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::super::ops;
    use super::super::test_util::max_diff;

    /// The composed form: heads split, products, softmax, heads merged.
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, h: usize) -> Tensor {
        let split = |x: &Tensor| {
            let (b, t, d) = x.dims3().unwrap();
            x.reshape((b, t, h, d / h))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (b, t, d) = q.dims3().unwrap();
        let scores = (split(q).matmul(&split(k).t().unwrap()).unwrap()
            * (1.0 / ((d / h) as f64).sqrt()))
        .unwrap();
        let scores = match bias {
            Some(bias) => scores.broadcast_add(bias).unwrap(),
            None => scores,
        };
        let probs = ops::softmax_composed(&scores).unwrap();
        probs
            .matmul(&split(v))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, d))
            .unwrap()
    }

    #[test]
    fn equals_the_composed_form_with_every_gradient_under_padding_and_causal_biases() {
        let dev = Device::Cpu;
        let (b, t, s, d, h) = (3, 5, 7, 24, 4);
        let q0 = Tensor::randn(0f32, 1.0, (b, t, d), &dev).unwrap();
        let k0 = Tensor::randn(0f32, 1.0, (b, s, d), &dev).unwrap();
        let v0 = Tensor::randn(0f32, 1.0, (b, s, d), &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (b, t, d), &dev).unwrap();
        // Example 2 sees only its first 3 keys; the causal bias lets query i see keys 0..=i+2.
        let mask: Vec<f32> = (0..b * s)
            .map(|i| if i / s == 2 && i % s >= 3 { 0.0 } else { 1.0 })
            .collect();
        let pad = ops::attention_bias(&Tensor::from_vec(mask, (b, s), &dev).unwrap()).unwrap();
        let causal = ops::causal_bias_after(t, s - t, &dev).unwrap();
        let both = ops::combine_biases(&pad, &causal).unwrap();
        for bias in [None, Some(&pad), Some(&causal), Some(&both)] {
            let run = |fused: bool| {
                let (q, k, v) = (
                    Var::from_tensor(&q0).unwrap(),
                    Var::from_tensor(&k0).unwrap(),
                    Var::from_tensor(&v0).unwrap(),
                );
                let y = if fused {
                    super::attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), bias, h, None)
                        .unwrap()
                } else {
                    composed(q.as_tensor(), k.as_tensor(), v.as_tensor(), bias, h)
                };
                let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                let get = |x: &Var| grads.get(x.as_tensor()).unwrap().clone();
                [y.clone(), get(&q), get(&k), get(&v)]
            };
            let (f, c) = (run(true), run(false));
            for (what, (a, b)) in ["value", "q grad", "k grad", "v grad"]
                .iter()
                .zip(f.iter().zip(&c))
            {
                assert_eq!(a.dims(), b.dims(), "{what}");
                let diff = max_diff(a, b);
                assert!(
                    diff < 1e-5,
                    "{what} differs by {diff} (bias {:?})",
                    bias.map(|b| b.dims().to_vec())
                );
            }
            let norm: f32 = f[2].sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(norm > 1e-4, "the key gradient carries signal");
        }
        // Frozen keys and values (plain tensors): only the queries get a gradient.
        let q = Var::from_tensor(&q0).unwrap();
        let y = super::attention(q.as_tensor(), &k0, &v0, Some(&pad), h, None).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&k0).is_none() && grads.get(&v0).is_none());
        assert!(grads.get(q.as_tensor()).is_some());
        // Outputs are convex combinations of value rows: no NaN on a fully masked example.
        let all_masked =
            ops::attention_bias(&Tensor::zeros((b, s), candle_core::DType::F32, &dev).unwrap())
                .unwrap();
        let y = super::attention(&q0, &k0, &v0, Some(&all_masked), h, None).unwrap();
        let finite = y
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| x.is_finite());
        assert!(finite);
        // Shapes that do not fit are errors.
        assert!(super::attention(&q0, &k0, &v0, None, 5, None).is_err());
        assert!(super::attention(&q0, &k0, &v0, Some(&g.unsqueeze(1).unwrap()), h, None).is_err());
    }
}
