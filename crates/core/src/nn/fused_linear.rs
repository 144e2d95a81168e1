//! `x @ W^T + b` on the CPU as one op with its own backward.
//!
//! candle's backward pass accumulates every gradient that flows along an edge of the graph
//! into a fresh zero tensor (an allocation, a fill and an addition), and composed from
//! primitives a linear layer is four or five nodes: a reshape in, the transpose of `W`, the
//! product, the bias, a reshape out. As one node it is one edge per operand, the bias is
//! the product's starting value instead of a pass of its own, and the backward computes only
//! the gradients some variable needs: none for a frozen weight or bias (candle's product
//! computes both operands' gradients always), none for an input that is data.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::fused::slice;

/// `x` `[.., in]` times `weight^T` (`weight` `[out, in]`), plus `bias` `[out]` if given.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    match bias {
        Some(b) => x.apply_op3(&weight, &b.contiguous()?, Linear),
        None => x.apply_op2(&weight, Linear),
    }
}

struct Linear;

/// Rows, input width and output width, checked.
fn dims(x: &Layout, w: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (out, inp) = match w.dims() {
        &[o, i] => (o, i),
        d => candle_core::bail!("fused linear: the weight must be [out, in], got {d:?}"),
    };
    match x.dims().last() {
        Some(&n) if n == inp => Ok((x.shape().elem_count() / inp.max(1), inp, out)),
        _ => candle_core::bail!(
            "fused linear: input {:?} does not end in the weight's {inp} inputs",
            x.dims()
        ),
    }
}

fn out_shape(x: &Layout, out: usize) -> Shape {
    let mut d = x.dims().to_vec();
    *d.last_mut().expect("checked non-empty") = out;
    Shape::from(d)
}

fn parallelism() -> Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst = (read ? dst : 0) + x @ w^T` for row-major `x` `[rows, inp]` and `w` `[out, inp]`.
fn product(
    dst: &mut [f32],
    read: bool,
    x: &[f32],
    w: &[f32],
    (rows, inp, out): (usize, usize, usize),
) {
    if rows == 0 || out == 0 {
        return;
    }
    // SAFETY: the three buffers hold rows*out, rows*inp and out*inp values (checked by the
    // callers through `dims`), and the strides below stay inside them; dst does not alias.
    unsafe {
        gemm::gemm(
            rows,
            out,
            inp,
            dst.as_mut_ptr(),
            1,
            out as isize,
            read,
            x.as_ptr(),
            1,
            inp as isize,
            // Column j of w^T is row j of w.
            w.as_ptr(),
            inp as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        )
    }
}

fn forward(
    x: (&CpuStorage, &Layout),
    w: (&CpuStorage, &Layout),
    b: Option<(&CpuStorage, &Layout)>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let d @ (rows, _, out) = dims(x.1, w.1)?;
    let (xs, ws) = (
        slice(x.0, x.1, "fused linear")?,
        slice(w.0, w.1, "fused linear")?,
    );
    let mut dst = vec![0f32; rows * out];
    let read = match b {
        Some((s, l)) => {
            let b = slice(s, l, "fused linear")?;
            if b.len() != out {
                candle_core::bail!("fused linear: bias of {} for {out} outputs", b.len());
            }
            dst.par_chunks_mut(out * (4096 / out).max(1))
                .for_each(|rows| {
                    rows.chunks_exact_mut(out)
                        .for_each(|r| r.copy_from_slice(b))
                });
            true
        }
        None => false,
    };
    product(&mut dst, read, xs, ws, d);
    Ok((CpuStorage::F32(dst), out_shape(x.1, out)))
}

/// The input and weight gradients of `y = x @ w^T` from `grad` `[.., out]`, each only if
/// its operand takes part in training.
fn grads(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
    let (out, inp) = w.dims2()?;
    let rows = x.elem_count() / inp.max(1);
    let g = grad.contiguous()?.reshape((rows, out))?;
    let dx = if x.track_op() {
        Some(g.matmul(w)?.reshape(x.shape())?)
    } else {
        None
    };
    let dw = if w.track_op() {
        Some(g.t()?.matmul(&x.reshape((rows, inp))?)?)
    } else {
        None
    };
    Ok((dx, dw))
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        grads(x, w, grad)
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear-bias"
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
        forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = grads(x, w, grad)?;
        let db = if b.track_op() {
            Some(super::fused::column_sum(grad)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::super::test_util::max_diff;

    #[test]
    fn equals_the_composed_product_with_every_gradient_and_skips_frozen_ones() {
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f32, 1.0, (3, 5, 17), &dev).unwrap();
        let w0 = Tensor::randn(0f32, 1.0, (11, 17), &dev).unwrap();
        let b0 = Tensor::randn(0f32, 1.0, 11, &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (3, 5, 11), &dev).unwrap();
        let run = |fused: bool, bias: bool| {
            let (x, w, b) = (
                Var::from_tensor(&x0).unwrap(),
                Var::from_tensor(&w0).unwrap(),
                Var::from_tensor(&b0).unwrap(),
            );
            let bt = bias.then(|| b.as_tensor());
            let y = if fused {
                super::linear(x.as_tensor(), w.as_tensor(), bt).unwrap()
            } else {
                let y = x
                    .as_tensor()
                    .broadcast_matmul(&w.as_tensor().t().unwrap())
                    .unwrap();
                match bt {
                    Some(b) => y.broadcast_add(b).unwrap(),
                    None => y,
                }
            };
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let get = |v: &Var| grads.get(v.as_tensor()).cloned();
            (y, get(&x), get(&w), get(&b))
        };
        for bias in [false, true] {
            let (y1, dx1, dw1, db1) = run(true, bias);
            let (y2, dx2, dw2, db2) = run(false, bias);
            assert_eq!(y1.dims(), [3, 5, 11]);
            assert!(max_diff(&y1, &y2) < 1e-5);
            assert!(max_diff(&dx1.unwrap(), &dx2.unwrap()) < 1e-4);
            assert!(max_diff(&dw1.unwrap(), &dw2.unwrap()) < 1e-4);
            if bias {
                assert!(max_diff(&db1.unwrap(), &db2.unwrap()) < 1e-4);
            }
        }
        // A frozen weight and bias (plain tensors) get no gradient computed; the input does.
        let x = Var::from_tensor(&x0).unwrap();
        let y = super::linear(x.as_tensor(), &w0, Some(&b0)).unwrap();
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&w0).is_none() && grads.get(&b0).is_none());
        assert!(grads.get(x.as_tensor()).is_some());
        // Mismatched widths are an error, not a panic.
        assert!(super::linear(
            &w0,
            &x0.narrow(2, 0, 5).unwrap().contiguous().unwrap(),
            None
        )
        .is_err());
    }
}
