//! Convolutions on channels-last (`[B, H, W, C]`) feature maps, as matrix products.
//!
//! A 3x3 convolution is a linear map of each pixel's 3x3 neighbourhood: the nine shifted
//! copies of the padded map are concatenated along channels and multiplied by one
//! `[out, 9 * in]` matrix. Everything is a pad, a slice, a concatenation or a matrix product,
//! all of which candle differentiates quickly; candle's own conv2d backward goes through a
//! much slower transposed convolution on the CPU. Channels-last keeps the matrix product free
//! of transposes.

use anyhow::Result;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rand::Rng;

use super::ops;
use crate::params::{Depth, ParamStore};

/// The nine 3x3 neighbours of every pixel, zero-padded: `[B, H, W, C]` to `[B, H, W, 9C]`,
/// ordered by row offset, then column offset, then channel.
///
/// A custom op with its own backward (the matching fold) rather than a pad, nine slices and a
/// concatenation: candle copies strided slices element by element, which made that graph ten
/// times slower than the matrix product it feeds, forward and backward.
pub fn unfold3x3(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Unfold3x3)
}

/// Sums each `[B, H, W, 9C]` neighbourhood entry back onto the pixel it came from: the
/// adjoint of [`unfold3x3`], hence its gradient.
pub fn fold3x3(cols: &Tensor) -> candle_core::Result<Tensor> {
    cols.contiguous()?.apply_op1(Fold3x3)
}

struct Unfold3x3;
struct Fold3x3;

fn f32_input<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<(&'a [f32], [usize; 4])> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: only f32 is supported")
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: the input must be contiguous")))?;
    let dims: [usize; 4] = layout.dims().try_into().map_err(|_| {
        candle_core::Error::Msg(format!(
            "{op}: expected a 4-d tensor, got {:?}",
            layout.dims()
        ))
    })?;
    Ok((&data[start..end], dims))
}

/// Calls `f(pixel, tap, neighbour)` for every in-bounds neighbour of every pixel of a
/// `b x h x w` grid, with flat pixel indices.
fn for_each_tap(b: usize, h: usize, w: usize, mut f: impl FnMut(usize, usize, usize)) {
    for n in 0..b {
        for y in 0..h {
            for x in 0..w {
                let pixel = (n * h + y) * w + x;
                for dy in 0..3 {
                    let yy = y as isize + dy as isize - 1;
                    if yy < 0 || yy >= h as isize {
                        continue;
                    }
                    for dx in 0..3 {
                        let xx = x as isize + dx as isize - 1;
                        if xx < 0 || xx >= w as isize {
                            continue;
                        }
                        f(pixel, dy * 3 + dx, (n * h + yy as usize) * w + xx as usize);
                    }
                }
            }
        }
    }
}

impl CustomOp1 for Unfold3x3 {
    fn name(&self) -> &'static str {
        "unfold3x3"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (src, [b, h, w, c]) = f32_input(storage, layout, "unfold3x3")?;
        let mut out = vec![0f32; b * h * w * 9 * c];
        for_each_tap(b, h, w, |pixel, tap, from| {
            out[(pixel * 9 + tap) * c..(pixel * 9 + tap + 1) * c]
                .copy_from_slice(&src[from * c..(from + 1) * c]);
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h, w, 9 * c))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(fold3x3(grad)?))
    }
}

impl CustomOp1 for Fold3x3 {
    fn name(&self) -> &'static str {
        "fold3x3"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (src, [b, h, w, c9]) = f32_input(storage, layout, "fold3x3")?;
        let c = c9 / 9;
        let mut out = vec![0f32; b * h * w * c];
        for_each_tap(b, h, w, |pixel, tap, to| {
            let from = &src[(pixel * 9 + tap) * c..(pixel * 9 + tap + 1) * c];
            for (o, v) in out[to * c..(to + 1) * c].iter_mut().zip(from) {
                *o += v;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h, w, c))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(unfold3x3(grad)?))
    }
}

/// A 3x3, stride-1, same-padding convolution.
#[derive(Clone, Debug)]
pub struct Conv3x3 {
    /// `[out, 9 * in]`, in [`unfold3x3`] order.
    pub weight: Tensor,
    pub bias: Tensor,
}

impl super::Detach for Conv3x3 {
    fn detached(&self) -> Self {
        Self {
            weight: self.weight.detach(),
            bias: self.bias.detach(),
        }
    }
}

impl Conv3x3 {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::linear(&unfold3x3(x)?, &self.weight, Some(&self.bias))
    }
}

/// Rearranges `[B, H, W, 4C]` into `[B, 2H, 2W, C]` (each pixel's channels become a 2x2 block).
/// After a linear map this is a stride-2, kernel-2 transposed convolution.
pub fn pixel_shuffle2(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, w, c4) = x.dims4()?;
    let c = c4 / 4;
    x.reshape((b, h, w, 2, 2, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b, 2 * h, 2 * w, c))
}

/// Rearranges `[B, H, W, C]` (even H and W) into `[B, H/2, W/2, 4C]` (each 2x2 block becomes
/// one pixel). After a linear map this is a stride-2, kernel-2 convolution.
pub fn pixel_unshuffle2(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    x.reshape((b, h / 2, 2, w / 2, 2, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b, h / 2, w / 2, 4 * c))
}

/// New trainable parameters, initialised as PyTorch initialises its layers, from a seeded
/// generator so that runs repeat.
pub struct Init<'a, R: Rng> {
    pub store: &'a mut ParamStore,
    pub rng: &'a mut R,
    pub depth: Depth,
    pub device: candle_core::Device,
}

impl<R: Rng> Init<'_, R> {
    /// Uniform in `[-bound, bound]`.
    pub fn uniform(&mut self, name: &str, shape: &[usize], bound: f64) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| self.rng.random_range(-bound..=bound) as f32)
            .collect();
        self.store.insert(
            name,
            Tensor::from_vec(v, shape, &self.device)?,
            self.depth,
            true,
        )
    }

    pub fn constant(&mut self, name: &str, shape: &[usize], value: f32) -> Result<Tensor> {
        let t = (Tensor::ones(shape, candle_core::DType::F32, &self.device)? * value as f64)?;
        self.store.insert(name, t, self.depth, true)
    }

    /// A linear layer with PyTorch's default initialisation (bound `1/sqrt(fan_in)`).
    pub fn linear(&mut self, name: &str, in_dim: usize, out_dim: usize) -> Result<super::Linear> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        Ok(super::Linear {
            weight: self.uniform(&format!("{name}.weight"), &[out_dim, in_dim], bound)?,
            bias: Some(self.uniform(&format!("{name}.bias"), &[out_dim], bound)?),
        })
    }

    /// A linear layer whose bias starts at `bias` everywhere.
    pub fn linear_with_bias(
        &mut self,
        name: &str,
        in_dim: usize,
        out_dim: usize,
        bias: f32,
    ) -> Result<super::Linear> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        Ok(super::Linear {
            weight: self.uniform(&format!("{name}.weight"), &[out_dim, in_dim], bound)?,
            bias: Some(self.constant(&format!("{name}.bias"), &[out_dim], bias)?),
        })
    }

    pub fn conv3x3(&mut self, name: &str, in_dim: usize, out_dim: usize) -> Result<Conv3x3> {
        let bound = 1.0 / ((9 * in_dim) as f64).sqrt();
        Ok(Conv3x3 {
            weight: self.uniform(&format!("{name}.weight"), &[out_dim, 9 * in_dim], bound)?,
            bias: self.uniform(&format!("{name}.bias"), &[out_dim], bound)?,
        })
    }

    /// A layer norm starting as the identity.
    pub fn layer_norm(&mut self, name: &str, dim: usize, eps: f64) -> Result<super::LayerNorm> {
        Ok(super::LayerNorm {
            weight: self.constant(&format!("{name}.weight"), &[dim], 1.0)?,
            bias: self.constant(&format!("{name}.bias"), &[dim], 0.0)?,
            eps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn conv3x3_matches_candle_conv2d_and_trains() {
        let dev = Device::Cpu;
        let (b, h, w, cin, cout) = (2, 5, 4, 3, 6);
        let x = Tensor::randn(0f32, 1.0, (b, h, w, cin), &dev).unwrap();
        // Kernel [out, in, 3, 3] as candle's conv2d wants it, and the same as [out, 9 * in].
        let k = Tensor::randn(0f32, 1.0, (cout, cin, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, cout, &dev).unwrap();
        let flat = k
            .permute((0, 2, 3, 1))
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((cout, 9 * cin))
            .unwrap();
        let wv = Var::from_tensor(&flat).unwrap();
        let conv = Conv3x3 {
            weight: wv.as_tensor().clone(),
            bias: bias.clone(),
        };
        let ours = conv.forward(&x).unwrap();
        let nchw = x.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap();
        let want = nchw
            .conv2d(&k, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap())
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap();
        let d = (ours.clone() - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-4, "max diff {d}");
        let grads = ours.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(wv.as_tensor()).is_some());
    }

    #[test]
    fn fold_is_the_gradient_of_unfold() {
        // <unfold(x), g> = <x, fold(g)> for every x and g, checked through backprop: the
        // gradient of sum(unfold(x) * g) with respect to x must be fold(g), and must equal
        // the gradient of the same sum computed with pads and slices.
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 4, 3, 5), &dev).unwrap()).unwrap();
        let g = Tensor::randn(0f32, 1.0, (2, 4, 3, 45), &dev).unwrap();
        let loss = (unfold3x3(x.as_tensor()).unwrap() * &g)
            .unwrap()
            .sum_all()
            .unwrap();
        let got = loss.backward().unwrap().get(x.as_tensor()).unwrap().clone();
        let padded = x
            .as_tensor()
            .pad_with_zeros(1, 1, 1)
            .unwrap()
            .pad_with_zeros(2, 1, 1)
            .unwrap();
        let mut taps = Vec::new();
        for dy in 0..3 {
            for dx in 0..3 {
                taps.push(padded.narrow(1, dy, 4).unwrap().narrow(2, dx, 3).unwrap());
            }
        }
        let reference = Tensor::cat(&taps, 3).unwrap();
        let d = (reference.clone() - unfold3x3(x.as_tensor()).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(
            d.to_scalar::<f32>().unwrap(),
            0.0,
            "forward differs from pads and slices"
        );
        let want = (reference * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
            .get(x.as_tensor())
            .unwrap()
            .clone();
        let d = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "gradient differs by {d}");
    }

    #[test]
    fn shuffles_are_inverse() {
        let x = Tensor::arange(0f32, 2.0 * 4.0 * 6.0 * 3.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 4, 6, 3))
            .unwrap();
        let y = pixel_shuffle2(&pixel_unshuffle2(&x).unwrap()).unwrap();
        let d = (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }
}
