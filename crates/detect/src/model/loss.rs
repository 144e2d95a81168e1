//! The FCOS loss, summed over a batch (the engine divides by the batch's positive count):
//! sigmoid focal loss on every location and class, generalised IoU on the box of each
//! positive location (times a box weight, 1 in FCOS: more makes the head trade recall for
//! tighter boxes), binary cross-entropy on its localisation quality, and, when the sides are
//! coded as distributions, their distribution focal loss
//! ([`BoxCoding`](super::coding::BoxCoding)).
//!
//! The quality branch learns FCOS's centre-ness of the location by default, or, with
//! [`Quality::Iou`], the overlap its own predicted box reaches with the true one (a constant
//! target each step): a score that ranks well-placed boxes first, not central locations, which
//! is what AP at strict overlaps rewards when objects span only a few locations.

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::assign::{Assigned, Geometry};
use super::head::HeadOutput;

const ALPHA: f64 = 0.25;

/// `log(1 + exp(x))` without overflow.
pub fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? + ((x.abs()?.neg()?.exp()? + 1.0)?.log()?)
}

/// Sigmoid focal loss (gamma 2), summed.
fn focal(logits: &Tensor, onehot: &Tensor) -> candle_core::Result<Tensor> {
    let log_p = softplus(&logits.neg()?)?.neg()?;
    let log_q = softplus(logits)?.neg()?;
    let p = log_p.exp()?;
    let q = log_q.exp()?;
    let pos = (onehot * ALPHA)?.mul(&q.sqr()?)?.mul(&log_p)?;
    let neg = ((onehot.neg()? + 1.0)? * (1.0 - ALPHA))?
        .mul(&p.sqr()?)?
        .mul(&log_q)?;
    (pos + neg)?.neg()?.sum_all()
}

/// What the quality branch (its score multiplies the class probability) learns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// FCOS centre-ness: how central the location sits in its box.
    #[default]
    Centerness,
    /// The IoU of the location's predicted box with its true box.
    Iou,
}

impl std::str::FromStr for Quality {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "centerness" => Ok(Quality::Centerness),
            "iou" => Ok(Quality::Iou),
            _ => Err(format!("unknown quality `{s}`: centerness or iou")),
        }
    }
}

/// `1 - GIoU` of boxes given as side distances from a common point, `[P, 4]` each, summed,
/// and the plain IoU of each pair `[P, 1]`.
fn giou_loss(pred: &Tensor, target: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let side = |t: &Tensor, i: usize| t.narrow(1, i, 1);
    let (pl, pt, pr, pb) = (
        side(pred, 0)?,
        side(pred, 1)?,
        side(pred, 2)?,
        side(pred, 3)?,
    );
    let (tl, tt, tr, tb) = (
        side(target, 0)?,
        side(target, 1)?,
        side(target, 2)?,
        side(target, 3)?,
    );
    let pred_area = ((&pl + &pr)? * (&pt + &pb)?)?;
    let target_area = ((&tl + &tr)? * (&tt + &tb)?)?;
    let iw = (pl.minimum(&tl)? + pr.minimum(&tr)?)?;
    let ih = (pt.minimum(&tt)? + pb.minimum(&tb)?)?;
    let inter = (iw * ih)?;
    let union = ((pred_area + target_area)? - &inter)?;
    let ew = (pl.maximum(&tl)? + pr.maximum(&tr)?)?;
    let eh = (pt.maximum(&tt)? + pb.maximum(&tb)?)?;
    let enclosing = (ew * eh)?;
    let iou = inter.div(&union)?;
    let giou = (&iou - (&enclosing - &union)?.div(&enclosing)?)?;
    Ok(((giou.neg()? + 1.0)?.sum_all()?, iou))
}

/// The summed loss of a batch and its number of positive locations.
pub fn fcos_loss(
    out: &HeadOutput,
    targets: &[&[Option<Assigned>]],
    geometry: &Geometry,
    quality: Quality,
    box_weight: f64,
) -> Result<Tensor> {
    let device = out.class_logits.device();
    let (b, l, k) = out.class_logits.dims3()?;
    let mut onehot = vec![0f32; b * l * k];
    let coding = out.coding;
    let scales = coding.scales(geometry);
    let mut pos_index = Vec::new();
    let mut pos_scale = Vec::new();
    let mut ltrb = Vec::new();
    let mut ctr = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        for (j, a) in t.iter().enumerate() {
            if let Some(a) = a {
                onehot[(i * l + j) * k + a.class] = 1.0;
                pos_index.push((i * l + j) as u32);
                pos_scale.push(scales[j]);
                ltrb.extend_from_slice(&a.ltrb);
                ctr.push(a.centerness);
            }
        }
    }
    let onehot = Tensor::from_vec(onehot, (b, l, k), device)?;
    let mut total = focal(&out.class_logits, &onehot)?;
    let p = pos_index.len();
    if p > 0 {
        let idx = Tensor::from_vec(pos_index, p, device)?;
        let scale = Tensor::from_vec(pos_scale.clone(), (p, 1), device)?;
        let raw = out
            .boxes
            .reshape((b * l, coding.channels()))?
            .index_select(&idx, 0)?;
        let pred = coding.decode(&raw, &scale)?;
        if let Some(dfl) = coding.distribution_loss(&raw, &ltrb, &pos_scale)? {
            total = (total + dfl)?;
        }
        let target = Tensor::from_vec(ltrb, (p, 4), device)?;
        let (giou, iou) = giou_loss(&pred, &target)?;
        total = (total + (giou * box_weight)?)?;
        let logits = out.centerness.reshape(b * l)?.index_select(&idx, 0)?;
        let t = match quality {
            Quality::Centerness => Tensor::from_vec(ctr, p, device)?,
            Quality::Iou => iou.detach().reshape(p)?.clamp(0f32, 1f32)?,
        };
        let bce = (softplus(&logits)? - logits.mul(&t)?)?.sum_all()?;
        total = (total + bce)?;
    } else {
        // No positive location in the batch: the box and centre-ness losses are zero, and so
        // are their true gradients. Adding their outputs times zero makes that gradient
        // present (as FCOS implementations do), instead of leaving those parameters out of
        // the step, which the engine refuses. (A product with the scalar 0.0 would not do:
        // candle's backward prunes it.)
        let unused = (out.boxes.sum_all()? + out.centerness.sum_all()?)?;
        total = (total + unused.mul(&unused.zeros_like()?)?)?;
    }
    Ok(total.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::super::assign::Assigned;
    use super::super::coding::BoxCoding;
    use super::*;
    use candle_core::Device;

    #[test]
    fn giou_is_zero_for_identical_boxes_and_grows_apart() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[3f32, 4.0, 5.0, 6.0]], &dev).unwrap();
        let (same, iou) = giou_loss(&a, &a).unwrap();
        assert!(same.to_scalar::<f32>().unwrap().abs() < 1e-6);
        assert!((iou.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] - 1.0).abs() < 1e-6);
        let b = Tensor::new(&[[1f32, 1.0, 1.0, 1.0]], &dev).unwrap();
        let (apart, iou) = giou_loss(&a, &b).unwrap();
        let apart = apart.to_scalar::<f32>().unwrap();
        // Nested boxes (8x10 around a 2x2): GIoU = IoU = 4 / 80.
        assert!((apart - (1.0 - 4.0 / 80.0)).abs() < 1e-5, "{apart}");
        let iou = iou.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((iou - 4.0 / 80.0).abs() < 1e-6, "{iou}");
    }

    #[test]
    fn quality_targets_and_the_box_weight_shape_the_loss() {
        let dev = Device::Cpu;
        // 28 pixels at patch 14: 16 + 4 + 1 locations; every predicted side is one stride.
        let geometry = Geometry::new(28, 14);
        let l = geometry.len();
        let x = 0.5f32;
        let out = HeadOutput {
            class_logits: Tensor::zeros((1, l, 1), DType::F32, &dev).unwrap(),
            boxes: Tensor::zeros((1, l, 4), DType::F32, &dev).unwrap(),
            coding: BoxCoding::Exp,
            centerness: Tensor::full(x, (1, l), &dev).unwrap(),
        };
        let mut targets = vec![None; l];
        // Level 0 (stride 7): the first box is predicted exactly (IoU 1), the second is twice
        // as wide and tall as predicted (IoU 1/4); both have centre-ness 1/4.
        for (j, side) in [(0, 7f32), (1, 14.0)] {
            targets[j] = Some(Assigned {
                class: 0,
                ltrb: [side; 4],
                centerness: 0.25,
            });
        }
        let loss = |q, w| {
            fcos_loss(&out, &[targets.as_slice()], &geometry, q, w)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        // Cross-entropy `softplus(x) - x t`: only the first target moves, from 1/4 to 1.
        let diff = loss(Quality::Iou, 1.0) - loss(Quality::Centerness, 1.0);
        assert!((diff - (-x * 0.75)).abs() < 1e-5, "{diff}");
        // The box weight scales the GIoU term alone: 0 for the exact box, 1 - 1/4 for the
        // other (nested boxes, so GIoU equals IoU).
        let diff = loss(Quality::Centerness, 3.0) - loss(Quality::Centerness, 1.0);
        assert!((diff - 2.0 * 0.75).abs() < 1e-5, "{diff}");
        assert_eq!("iou".parse::<Quality>(), Ok(Quality::Iou));
    }

    #[test]
    fn sides_coded_as_distributions_add_their_loss_to_the_box_overlap() {
        let dev = Device::Cpu;
        // 56 pixels at patch 14: 64 locations at stride 7 (span 28), then 16 at 14 (span 56).
        let geometry = Geometry::new(56, 14);
        let l = geometry.len();
        let mut targets = vec![None; l];
        // Sides at 1, 1.5 and 1.5 steps of two (half the span each).
        for (j, side) in [(0, 14f32), (1, 21.0), (64, 42.0)] {
            targets[j] = Some(Assigned {
                class: 0,
                ltrb: [side; 4],
                centerness: 0.5,
            });
        }
        let loss = |boxes: Tensor, coding| {
            let out = HeadOutput {
                class_logits: Tensor::zeros((1, l, 1), DType::F32, &dev).unwrap(),
                boxes,
                coding,
                centerness: Tensor::zeros((1, l), DType::F32, &dev).unwrap(),
            };
            fcos_loss(
                &out,
                &[targets.as_slice()],
                &geometry,
                Quality::Centerness,
                1.0,
            )
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
        };
        // Logits 0, 0, 1 on every side: probabilities 1, 1, e over 2 + e, mean m of the span
        // (4 strides at these levels), which `exp(ln 4m)` strides also decode to. The same
        // boxes, so the difference is the distribution loss alone: per side `ln(2 + e)` at 1
        // step, half a nat less at 1.5, a quarter of the four sides' sum per box.
        let e = 1f32.exp();
        let m = (0.5 + e) / (2.0 + e);
        let bins = loss(
            Tensor::new(&[0f32, 0.0, 1.0], &dev)
                .unwrap()
                .repeat((1, l, 4))
                .unwrap(),
            BoxCoding::Bins(2),
        );
        let exp = loss(
            Tensor::full((4.0 * m).ln(), (1, l, 4), &dev).unwrap(),
            BoxCoding::Exp,
        );
        let ce = (2.0 + e).ln();
        let want = 0.25 * (ce + 2.0 * (ce - 0.5));
        assert!(
            (bins - exp - want).abs() < 1e-4,
            "{} against {want}",
            bins - exp
        );
    }

    #[test]
    fn softplus_is_stable() {
        let x = Tensor::new(&[-200f32, -1.0, 0.0, 1.0, 200.0], &Device::Cpu).unwrap();
        let v: Vec<f32> = softplus(&x).unwrap().to_vec1().unwrap();
        let want = [
            0.0,
            (1.0 + (-1f32).exp()).ln(),
            2f32.ln(),
            1.0 + (1.0 + (-1f32).exp()).ln(),
            200.0,
        ];
        for (g, w) in v.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{v:?}");
        }
    }
}
