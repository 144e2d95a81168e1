//! Predictions back at each image's own resolution, batch by batch, and the metric over them.
//!
//! As mmsegmentation evaluates, the logits of the window an example shows are resized
//! bilinearly to that window's size in the original image before the class is taken, and the
//! result is compared with the stored mask at its own resolution. With sliding windows an
//! image is cut into several examples: their logits are summed where they overlap, and the
//! image is complete when its last window arrives (examples of one image come in a row, as
//! the engine evaluates in data-set order).

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use downstream_core::nn::interpolate::resize_bilinear;
use downstream_core::train::{Metric, Metrics};
use image::GrayImage;
use ndarray::{s, Array2, Array3, ArrayView2};

use super::confusion::{Confusion, LabelRules, SegStats};
use crate::dataset::Target;

/// One image's predicted classes at its own resolution, with its stored mask.
pub struct Assembled {
    /// Index of the pair in the data set.
    pub pair: usize,
    pub classes: Array2<u32>,
    pub truth: Option<Arc<GrayImage>>,
}

struct Pending {
    pair: usize,
    parts: usize,
    seen: usize,
    /// `[K, H, W]` summed logits.
    sum: Array3<f32>,
    truth: Option<Arc<GrayImage>>,
}

/// Gathers examples into whole-image predictions.
pub struct Assembler {
    size: usize,
    pending: Option<Pending>,
}

/// The class of the largest score at each pixel of `[K, H, W]` scores.
fn argmax(scores: &Array3<f32>) -> Array2<u32> {
    let (_, h, w) = scores.dim();
    Array2::from_shape_fn((h, w), |(y, x)| {
        let column = scores.slice(s![.., y, x]);
        let mut best = 0;
        for (k, &v) in column.iter().enumerate() {
            if v > column[best] {
                best = k;
            }
        }
        best as u32
    })
}

impl Assembler {
    /// For inputs of `size` pixels a side.
    pub fn new(size: usize) -> Self {
        Self {
            size,
            pending: None,
        }
    }

    /// Adds one example's logits `[K, size, size]`; returns its image when that is complete.
    pub fn add(&mut self, logits: &Tensor, target: &Target) -> Result<Option<Assembled>> {
        let sample = &target.sample;
        let [x0, y0, cw, ch] = sample.placement.crop.map(|v| v as usize);
        let (ew, eh) = sample.placement.extent(self.size as u32);
        let (k, _, _) = logits.dims3()?;
        // The part of the input the window fills, at the window's own size.
        let window = logits
            .narrow(1, 0, eh as usize)?
            .narrow(2, 0, ew as usize)?
            .unsqueeze(0)?;
        let window = resize_bilinear(&window.contiguous()?, ch, cw, false)?
            .squeeze(0)?
            .to_dtype(candle_core::DType::F32)?;
        let window = Array3::from_shape_vec((k, ch, cw), window.flatten_all()?.to_vec1::<f32>()?)?;
        if sample.parts == 1 {
            return Ok(Some(Assembled {
                pair: sample.pair,
                classes: argmax(&window),
                truth: target.truth.clone(),
            }));
        }
        let pending = match &mut self.pending {
            Some(p) if p.pair == sample.pair => p,
            Some(p) => bail!(
                "image {} has {} of {} windows when image {} begins: windows of an image must \
                 come in a row",
                p.pair,
                p.seen,
                p.parts,
                sample.pair
            ),
            None => {
                let (w, h) = target.image_size;
                self.pending.insert(Pending {
                    pair: sample.pair,
                    parts: sample.parts,
                    seen: 0,
                    sum: Array3::zeros((k, h as usize, w as usize)),
                    truth: target.truth.clone(),
                })
            }
        };
        // Summing suffices: every class of a pixel shares its count of windows, so the
        // average's largest class is the sum's.
        let mut part = pending.sum.slice_mut(s![.., y0..y0 + ch, x0..x0 + cw]);
        part += &window;
        pending.seen += 1;
        if pending.seen < pending.parts {
            return Ok(None);
        }
        let done = self.pending.take().expect("pending");
        Ok(Some(Assembled {
            pair: done.pair,
            classes: argmax(&done.sum),
            truth: done.truth,
        }))
    }

    /// Fails if an image is still missing windows.
    pub fn finish(self) -> Result<()> {
        if let Some(p) = self.pending {
            bail!(
                "image {} ended with {} of {} windows",
                p.pair,
                p.seen,
                p.parts
            );
        }
        Ok(())
    }
}

/// The stored mask as an array view.
pub fn mask_view(mask: &GrayImage) -> ArrayView2<'_, u8> {
    let (w, h) = mask.dimensions();
    ArrayView2::from_shape((h as usize, w as usize), mask.as_raw()).expect("a mask's own shape")
}

/// mIoU, aAcc and mAcc over a data set, fed batch by batch.
pub struct SegMetric {
    assembler: Assembler,
    confusion: Confusion,
}

impl SegMetric {
    pub fn new(rules: LabelRules, size: usize) -> Self {
        Self {
            assembler: Assembler::new(size),
            confusion: Confusion::new(rules),
        }
    }

    /// Every statistic, per class too.
    pub fn stats(self) -> Result<SegStats> {
        self.assembler.finish()?;
        Ok(self.confusion.stats())
    }
}

impl Metric for SegMetric {
    type Output = Tensor;
    type Target = Target;

    fn add(&mut self, outputs: Vec<Tensor>, targets: &[&Target]) -> Result<()> {
        for (logits, target) in outputs.iter().zip(targets) {
            if let Some(done) = self.assembler.add(logits, target)? {
                let truth = done
                    .truth
                    .context("an image without a mask cannot be evaluated")?;
                self.confusion.add(mask_view(&truth), done.classes.view())?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Metrics> {
        let stats = self.stats()?;
        Ok(Metrics::from([
            ("mIoU".to_string(), stats.miou),
            ("aAcc".to_string(), stats.a_acc),
            ("mAcc".to_string(), stats.m_acc),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_class_wins_at_each_pixel() {
        let scores = Array3::from_shape_vec(
            (3, 1, 2),
            vec![
                0.1, 5.0, /* class 1 */ 0.7, -1.0, /* class 2 */ 0.2, 4.9,
            ],
        )
        .unwrap();
        assert_eq!(argmax(&scores).into_raw_vec_and_offset().0, vec![1, 0]);
    }
}
