//! How the head's box outputs become distances from a location to the four sides of its box,
//! and the loss that shapes them beyond the box overlap.
//!
//! FCOS predicts each side as `exp(x)` strides: one number, trained through the GIoU of the
//! whole box. With bins (GFL's distribution focal loss), each side is a distribution over
//! `bins + 1` evenly spaced distances, from 0 to the farthest a side can lie at the
//! location's level, and the side is that distribution's mean. The distribution focal loss
//! then puts the probability on the two distances around the true one. Where an edge is
//! ambiguous (a tree crown fades into its neighbours over a few pixels, and annotators
//! disagree), one regressed number is pulled between the choices; a distribution can hold
//! them, and its mean stays where the evidence is. GFL measured the gain at strict overlaps
//! (AP75), which is what AP over 0.5-0.95 rewards.
//!
//! The span of a level is the upper end of the size range FCOS's assigner gives it
//! ([`Geometry::size_range`]): every side of a box assigned there is at most that far, so no
//! target is clipped and no step is wasted. ATSS's assigner has no ranges and places boxes
//! of up to about 11 strides on a level, beyond these spans, so the detector refuses bins
//! with it rather than learn boxes too small. The coarsest level's range is open; the
//! input's side bounds it, loosely (a positive location lies near its box's centre, so its
//! sides reach a little over half the input at most), which costs that level's steps some
//! fineness and keeps the bound simple.

use candle_core::{Device, Tensor, D};
use downstream_core::nn::ops;

use super::assign::Geometry;

/// The weight of the distribution focal loss, per location and averaged over its four sides.
/// GFL's value, not tuned here: next to this head's GIoU weight of 1 (GFL's is 2) it has twice
/// GFL's share of the box loss, and `--box-weight` scales the GIoU alone.
const DISTRIBUTION_WEIGHT: f64 = 0.25;

/// How the head's raw box outputs encode the side distances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoxCoding {
    /// FCOS: `exp(x)` strides per side.
    Exp,
    /// GFL: a distribution over this many equal steps (this many plus one distances) per side.
    Bins(usize),
}

impl BoxCoding {
    /// `bins` steps per side; 0 for FCOS's exponential coding.
    pub fn from_bins(bins: usize) -> Self {
        match bins {
            0 => BoxCoding::Exp,
            n => BoxCoding::Bins(n),
        }
    }

    /// Raw outputs per location.
    pub fn channels(self) -> usize {
        match self {
            BoxCoding::Exp => 4,
            BoxCoding::Bins(n) => 4 * (n + 1),
        }
    }

    /// Per-location pixels that a decoded unit stands for, level by level: the stride for
    /// FCOS, the level's span for bins.
    pub fn scales(self, geometry: &Geometry) -> Vec<f32> {
        geometry
            .levels
            .iter()
            .enumerate()
            .flat_map(|(l, &(s, h, w))| {
                let scale = match self {
                    BoxCoding::Exp => s as f32,
                    BoxCoding::Bins(_) => span(geometry, l),
                };
                std::iter::repeat_n(scale, h * w)
            })
            .collect()
    }

    /// [`Self::scales`] as a column `[L, 1]`.
    pub fn scale_column(self, geometry: &Geometry, device: &Device) -> candle_core::Result<Tensor> {
        let v = self.scales(geometry);
        let n = v.len();
        Tensor::from_vec(v, (n, 1), device)
    }

    /// Side distances in pixels `[..., 4]` from raw outputs `[..., channels]` and the scale
    /// of each location, broadcastable to `[..., 1]`.
    pub fn decode(self, raw: &Tensor, scale: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            // `x` is bounded so that a wild early prediction cannot overflow.
            BoxCoding::Exp => raw.clamp(-8f32, 8f32)?.exp()?.broadcast_mul(scale),
            BoxCoding::Bins(n) => {
                let p = ops::softmax_last_dim(&split_sides(raw, n)?)?;
                let mean = p
                    .broadcast_mul(&positions(n, raw.device())?)?
                    .sum(D::Minus1)?;
                mean.broadcast_mul(scale)
            }
        }
    }

    /// The distribution focal loss of positive locations, summed: raw outputs `[P, channels]`,
    /// true sides `[P, 4]` in pixels as a flat list, and each location's scale. `None` for
    /// FCOS's coding, which has no such term.
    pub fn distribution_loss(
        self,
        raw: &Tensor,
        sides: &[f32],
        scale: &[f32],
    ) -> candle_core::Result<Option<Tensor>> {
        let BoxCoding::Bins(n) = self else {
            return Ok(None);
        };
        let p = scale.len();
        // Cross-entropy against the two distances around the true one, weighted by nearness
        // (a true side at 2.3 steps: 0.7 on step 2, 0.3 on step 3). Just below the last step
        // so that its upper neighbour exists.
        let mut weights = vec![0f32; p * 4 * (n + 1)];
        for (i, side) in sides.chunks_exact(4).enumerate() {
            for (k, &d) in side.iter().enumerate() {
                let t = (d / scale[i] * n as f32).clamp(0.0, n as f32 - 1e-3);
                // The bound again on the index: for a very large `n` the clamp rounds to `n`.
                let lo = (t.floor() as usize).min(n - 1);
                let at = (i * 4 + k) * (n + 1) + lo;
                weights[at] = (lo + 1) as f32 - t;
                weights[at + 1] = t - lo as f32;
            }
        }
        let weights = Tensor::from_vec(weights, (p, 4, n + 1), raw.device())?;
        let loss = weights
            .mul(&log_softmax(&split_sides(raw, n)?)?)?
            .sum_all()?
            .neg()?;
        Ok(Some((loss * (DISTRIBUTION_WEIGHT / 4.0))?))
    }
}

/// The farthest a side can lie from a location of level `l`, in pixels.
fn span(geometry: &Geometry, l: usize) -> f32 {
    geometry.size_range(l).1.min(geometry.size as f32)
}

/// `[..., 4 (n + 1)]` to `[..., 4, n + 1]`.
fn split_sides(raw: &Tensor, n: usize) -> candle_core::Result<Tensor> {
    let mut shape = raw.dims().to_vec();
    shape.pop();
    shape.extend([4, n + 1]);
    raw.reshape(shape)
}

/// The distances of the steps as fractions of the span: `0, 1/n, ..., 1`.
fn positions(n: usize, device: &Device) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = (0..=n).map(|i| i as f32 / n as f32).collect();
    Tensor::from_vec(v, n + 1, device)
}

/// Log-probabilities over the last dimension, from operations that all have a backward.
fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let norm = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};

    #[test]
    fn spans_follow_the_size_ranges_and_the_input() {
        // 224 at patch 14: strides 7, 14, 28; ranges up to 28, 56 and open.
        let g = Geometry::new(224, 14);
        let dev = Device::Cpu;
        let col = |c: BoxCoding| -> Vec<f32> {
            c.scale_column(&g, &dev)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (bins, exp) = (col(BoxCoding::Bins(16)), col(BoxCoding::Exp));
        for (at, span, stride) in [
            (0, 28.0, 7.0),
            (1024, 56.0, 14.0),
            (1024 + 256, 224.0, 28.0),
        ] {
            assert_eq!((bins[at], exp[at]), (span, stride), "location {at}");
        }
        assert_eq!(BoxCoding::from_bins(0).channels(), 4);
        assert_eq!(BoxCoding::from_bins(16).channels(), 68);
    }

    #[test]
    fn a_distribution_decodes_to_its_mean() {
        let dev = Device::Cpu;
        // Two steps (distances 0, 1/2 and 1 of the span), a different distribution per side:
        // all on the last, all on the first, 3:1 between the first and last, all on the
        // middle; the second location has them in reverse order and twice the scale.
        let big = 40f32;
        let sides = [
            [0.0, 0.0, big],
            [big, 0.0, 0.0],
            [3f32.ln(), -big, 0.0],
            [0.0, big, 0.0],
        ];
        let fractions = [1.0, 0.0, 0.25, 0.5];
        let first: Vec<f32> = sides.concat();
        let second: Vec<f32> = sides.iter().rev().flatten().copied().collect();
        let raw = Tensor::from_vec([first, second].concat(), (2, 12), &dev).unwrap();
        let scale = Tensor::new(&[[10f32], [20.0]], &dev).unwrap();
        let d: Vec<Vec<f32>> = BoxCoding::Bins(2)
            .decode(&raw, &scale)
            .unwrap()
            .to_vec2()
            .unwrap();
        for k in 0..4 {
            assert!((d[0][k] - 10.0 * fractions[k]).abs() < 1e-4, "{d:?}");
            assert!((d[1][k] - 20.0 * fractions[3 - k]).abs() < 1e-4, "{d:?}");
        }
        let raw = Tensor::new(&[[0f32, 1.0, -1.0, 8.5]], &dev).unwrap();
        let d: Vec<f32> = BoxCoding::Exp
            .decode(&raw, &Tensor::new(&[[7f32]], &dev).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want = [7.0, 7.0 * 1f32.exp(), 7.0 * (-1f32).exp(), 7.0 * 8f32.exp()];
        for (g, w) in d.iter().zip(want) {
            assert!((g - w).abs() / w < 1e-5, "{d:?}");
        }
    }

    #[test]
    fn the_distribution_loss_is_the_cross_entropy_of_the_two_nearest_steps_and_trains_them() {
        let dev = Device::Cpu;
        let n = 4;
        // Logits 0..4 on the steps of every side: log-probability `i - ln(sum e^j)`.
        let steps: Vec<f32> = (0..=n).map(|i| i as f32).collect();
        let raw =
            Var::from_tensor(&Tensor::from_vec(steps.repeat(4), (1, 4 * (n + 1)), &dev).unwrap())
                .unwrap();
        // Span 8, two units a step: sides at 1.3 steps, 0, 2.5 and at the span (clamped just
        // below the last step, last so that a missing clamp would reach past the row).
        let sides = [2.6f32, 0.0, 5.0, 8.0];
        let loss = BoxCoding::Bins(n)
            .distribution_loss(raw.as_tensor(), &sides, &[8.0])
            .unwrap()
            .unwrap();
        let norm = (0..=n).map(|j| (j as f64).exp()).sum::<f64>().ln();
        let log_p = |i: f64| i - norm;
        let near = |t: f64| {
            let lo = t.floor();
            -((lo + 1.0 - t) * log_p(lo) + (t - lo) * log_p(lo + 1.0))
        };
        let want =
            DISTRIBUTION_WEIGHT / 4.0 * (near(1.3) + near(0.0) + near(2.5) + near(n as f64 - 1e-3));
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-4, "{got} against {want}");
        let raw = Var::zeros((1, 4 * (n + 1)), DType::F32, &dev).unwrap();
        // Gradient descent on it brings the mean of every side to the true one.
        let scale = Tensor::new(&[[8f32]], &dev).unwrap();
        let decode = |r: &Tensor| -> Vec<f32> {
            BoxCoding::Bins(n)
                .decode(r, &scale)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let before = decode(raw.as_tensor());
        for _ in 0..300 {
            let loss = BoxCoding::Bins(n)
                .distribution_loss(raw.as_tensor(), &sides, &[8.0])
                .unwrap()
                .unwrap();
            let grad = loss.backward().unwrap();
            let grad = grad.get(raw.as_tensor()).unwrap();
            raw.set(&(raw.as_tensor() - (grad * 50.0).unwrap()).unwrap())
                .unwrap();
        }
        let after = decode(raw.as_tensor());
        for k in 0..4 {
            let target = sides[k].min(8.0 * (1.0 - 1e-3 / n as f32));
            assert!(
                (before[k] - target).abs() > 0.9 && (after[k] - target).abs() < 0.1,
                "side {k}: {} then {}, target {target}",
                before[k],
                after[k]
            );
        }
        assert!(BoxCoding::Exp
            .distribution_loss(raw.as_tensor(), &sides, &[8.0])
            .unwrap()
            .is_none());
    }
}
