//! Segmentation metrics by mmsegmentation's convention, from a confusion matrix accumulated
//! over the whole data set (so that no prediction need be kept).
//!
//! Pixels whose label is the ignore index are left out. With `reduce_zero_label`, label 0
//! ("other") is ignored too and every other label drops by one; predictions are already in
//! that reduced space. A prediction outside the class range counts in no class. Per class,
//! IoU = TP / (TP + FP + FN) and accuracy = TP / (TP + FN); a class whose denominator is zero
//! has no value (NaN, `null` in JSON) and is left out of the means. aAcc is the share of all
//! counted pixels predicted right.

use ndarray::{Array1, Array2, ArrayView2, Axis, Zip};
use serde::Serialize;

/// How ground-truth labels are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelRules {
    pub num_classes: usize,
    pub ignore_index: u8,
    pub reduce_zero_label: bool,
}

impl LabelRules {
    /// The class a stored label stands for, `None` when it is ignored. As mmsegmentation does,
    /// the zero label is reduced first (0 and 255 become 255, the rest drop by one) and the
    /// result is then compared with the ignore index.
    #[inline]
    pub fn class_of(&self, label: u8) -> Option<usize> {
        let label = match (self.reduce_zero_label, label) {
            (false, l) => l,
            (true, 0 | 255) => 255,
            (true, l) => l - 1,
        };
        (label != self.ignore_index).then_some(label as usize)
    }
}

/// Counts of (true class, predicted class) pairs; predictions outside the class range are
/// counted in an extra column that no metric reads, so the label areas stay exact.
#[derive(Clone, Debug)]
pub struct Confusion {
    rules: LabelRules,
    /// `[true, predicted]`, `num_classes x (num_classes + 1)`.
    counts: Array2<u64>,
}

/// The metrics of a confusion matrix.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SegStats {
    #[serde(rename = "mIoU")]
    pub miou: f64,
    #[serde(rename = "aAcc")]
    pub a_acc: f64,
    #[serde(rename = "mAcc")]
    pub m_acc: f64,
    /// Per class, `None` where undefined.
    #[serde(rename = "IoU")]
    pub iou: Vec<Option<f64>>,
    #[serde(rename = "Acc")]
    pub acc: Vec<Option<f64>>,
}

impl Confusion {
    pub fn new(rules: LabelRules) -> Self {
        let k = rules.num_classes;
        Self {
            rules,
            counts: Array2::zeros((k, k + 1)),
        }
    }

    pub fn rules(&self) -> LabelRules {
        self.rules
    }

    /// Adds one image: stored labels and predicted classes of the same shape.
    pub fn add(
        &mut self,
        labels: ArrayView2<u8>,
        predicted: ArrayView2<u32>,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            labels.dim() == predicted.dim(),
            "a prediction of {:?} pixels for a mask of {:?}",
            predicted.dim(),
            labels.dim()
        );
        let k = self.rules.num_classes;
        let rules = self.rules;
        let counts = &mut self.counts;
        Zip::from(labels).and(predicted).for_each(|&l, &p| {
            if let Some(t) = rules.class_of(l) {
                if t < k {
                    counts[[t, (p as usize).min(k)]] += 1;
                }
            }
        });
        Ok(())
    }

    /// Stored labels at or above the class count that are not ignored: an error in the data.
    pub fn out_of_range(&self, labels: ArrayView2<u8>) -> Option<u8> {
        labels.iter().copied().find(|&l| {
            self.rules
                .class_of(l)
                .is_some_and(|c| c >= self.rules.num_classes)
        })
    }

    /// Adds another matrix of the same rules.
    pub fn merge(&mut self, other: &Confusion) {
        self.counts += &other.counts;
    }

    pub fn stats(&self) -> SegStats {
        let k = self.rules.num_classes;
        let c = self.counts.mapv(|v| v as f64);
        let tp: Array1<f64> = (0..k).map(|i| c[[i, i]]).collect();
        // Row sums: label areas; column sums over the first k columns: prediction areas.
        let label_area = c.sum_axis(Axis(1));
        let pred_area = c.slice(ndarray::s![.., ..k]).sum_axis(Axis(0));
        let ratio = |num: f64, den: f64| (den > 0.0).then(|| num / den);
        let iou: Vec<Option<f64>> = (0..k)
            .map(|i| ratio(tp[i], label_area[i] + pred_area[i] - tp[i]))
            .collect();
        let acc: Vec<Option<f64>> = (0..k).map(|i| ratio(tp[i], label_area[i])).collect();
        let mean = |v: &[Option<f64>]| {
            let defined: Vec<f64> = v.iter().flatten().copied().collect();
            if defined.is_empty() {
                f64::NAN
            } else {
                defined.iter().sum::<f64>() / defined.len() as f64
            }
        };
        SegStats {
            miou: mean(&iou),
            a_acc: ratio(tp.sum(), label_area.sum()).unwrap_or(f64::NAN),
            m_acc: mean(&acc),
            iou,
            acc,
        }
    }
}
