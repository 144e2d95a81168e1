//! Resizing grids as PyTorch's `interpolate` does, differentiably: bicubic (learned position
//! embeddings, `align_corners=False`) and bilinear (feature maps and logits, either
//! `align_corners`), both without antialiasing.
//!
//! Both are separable: each output row mixes input rows with fixed weights, and so do columns.
//! With `Wh` (`[out_h, in_h]`) and `Ww` (`[out_w, in_w]`) built on the host, the resize is
//! `Wh · X · Wwᵀ` per channel: two matrix products, which candle differentiates (its own
//! `upsample_bilinear2d` has no backward), and a backward that is two more. Both HF ViT and HF
//! DINOv2 (and the DINOv2 ONNX export's `Resize`, cubic, half-pixel, a = -0.75) resize position
//! embeddings this way.

use candle_core::{Result, Tensor};

/// Keys' cubic convolution kernel with PyTorch's a = -0.75.
fn keys_kernel(x: f64) -> f64 {
    const A: f64 = -0.75;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// The `[out, in]` matrix that resizes one axis from `in_size` to `out_size`: four taps around
/// the half-pixel source coordinate, indices past the border clamped onto the edge sample.
pub fn bicubic_weights(in_size: usize, out_size: usize) -> Vec<f32> {
    let scale = in_size as f64 / out_size as f64;
    let mut w = vec![0f64; out_size * in_size];
    for o in 0..out_size {
        let row = &mut w[o * in_size..(o + 1) * in_size];
        // Not clamped at 0, unlike linear modes: the reference does the same for cubic.
        let src = scale * (o as f64 + 0.5) - 0.5;
        let base = src.floor();
        let t = src - base;
        for k in 0..4 {
            let idx = (base as i64 - 1 + k as i64).clamp(0, in_size as i64 - 1) as usize;
            row[idx] += keys_kernel(t + 1.0 - k as f64);
        }
    }
    w.into_iter().map(|v| v as f32).collect()
}

/// Resizes `x` of shape `[C, in_h, in_w]` to `[C, out_h, out_w]`.
pub fn resize_bicubic(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, in_h, in_w) = x.dims3()?;
    if (in_h, in_w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    let dev = x.device();
    let wh = Tensor::from_vec(bicubic_weights(in_h, out_h), (1, out_h, in_h), dev)?;
    let ww_t = Tensor::from_vec(bicubic_weights(in_w, out_w), (out_w, in_w), dev)?
        .t()?
        .unsqueeze(0)?;
    wh.broadcast_matmul(x)?.broadcast_matmul(&ww_t)
}

/// The `[out, in]` matrix that resizes one axis linearly, as PyTorch's bilinear mode does: with
/// `align_corners` the end samples map onto each other; without, pixel centres do
/// (half-pixel), and sources left of the first centre are clamped to it.
pub fn bilinear_weights(in_size: usize, out_size: usize, align_corners: bool) -> Vec<f32> {
    let mut w = vec![0f64; out_size * in_size];
    for o in 0..out_size {
        let src = if align_corners {
            if out_size > 1 {
                o as f64 * (in_size as f64 - 1.0) / (out_size as f64 - 1.0)
            } else {
                0.0
            }
        } else {
            (in_size as f64 / out_size as f64 * (o as f64 + 0.5) - 0.5).max(0.0)
        };
        let i0 = (src.floor() as usize).min(in_size - 1);
        let i1 = (i0 + 1).min(in_size - 1);
        let t = src - i0 as f64;
        w[o * in_size + i0] += 1.0 - t;
        w[o * in_size + i1] += t;
    }
    w.into_iter().map(|v| v as f32).collect()
}

/// Resizes a batch `[B, C, in_h, in_w]` to `[B, C, out_h, out_w]` bilinearly.
pub fn resize_bilinear(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (b, c, in_h, in_w) = x.dims4()?;
    if in_h == 0 || in_w == 0 || out_h == 0 || out_w == 0 {
        candle_core::bail!("cannot resize {in_h}x{in_w} to {out_h}x{out_w}");
    }
    if (in_h, in_w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    let dev = x.device();
    let dtype = x.dtype();
    let ww_t = Tensor::from_vec(
        bilinear_weights(in_w, out_w, align_corners),
        (out_w, in_w),
        dev,
    )?
    .to_dtype(dtype)?
    .t()?;
    // Columns first, as one plain product over every row of every map.
    let cols = x
        .reshape((b * c * in_h, in_w))?
        .matmul(&ww_t)?
        .reshape((b * c, in_h, out_w))?;
    let wh = Tensor::from_vec(
        bilinear_weights(in_h, out_h, align_corners),
        (1, out_h, in_h),
        dev,
    )?
    .to_dtype(dtype)?;
    wh.broadcast_matmul(&cols)?.reshape((b, c, out_h, out_w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let w = bicubic_weights(5, 5);
        for o in 0..5 {
            for i in 0..5 {
                let want = if o == i { 1.0 } else { 0.0 };
                assert!(
                    (w[o * 5 + i] - want).abs() < 1e-6,
                    "{o} {i}: {}",
                    w[o * 5 + i]
                );
            }
        }
    }

    #[test]
    fn matches_reference_rows() {
        // Rows of torch's 4 -> 6 bicubic matrix, read off F.interpolate.
        let w = bicubic_weights(4, 6);
        let want0 = [1.086806, -0.086806, 0.0, 0.0];
        let want1 = [0.5, 0.59375, -0.09375, 0.0];
        for i in 0..4 {
            assert!((w[i] - want0[i]).abs() < 1e-6, "row 0: {:?}", &w[..4]);
            assert!((w[4 + i] - want1[i]).abs() < 1e-6, "row 1: {:?}", &w[4..8]);
        }
    }

    #[test]
    fn rows_sum_to_one() {
        for (i, o) in [(4, 7), (7, 4), (37, 16), (3, 9)] {
            let w = bicubic_weights(i, o);
            for r in 0..o {
                let s: f32 = w[r * i..(r + 1) * i].iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{i}->{o} row {r}: {s}");
            }
        }
    }
}
