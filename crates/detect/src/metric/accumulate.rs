//! The detector's results and metric as the engine produces them, batch by batch.
//!
//! An image may be cut into overlapping tiles that arrive in different batches, and its
//! test-time flips add boxes of their own, so detections are gathered per image in original
//! pixels and merged (class-wise NMS, with box voting if asked, then the per-image limit) only
//! when every batch is in. The metric scores them with COCO evaluation against the
//! ground truth that each example's target carries: the engine hands the data set's truth to
//! the metric, the model keeps none.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use downstream_core::train::{Metric, Metrics};

use super::coco_eval::{self, CocoStats, STAT_NAMES};
use crate::data::coco::Detection;
use crate::data::{Category, DetectionSet};
use crate::dataset::{ImageTruth, Target};
use crate::model::postprocess::{suppress, BoxDet, PostProcess};

/// Detections of a whole data set, gathered per image.
pub struct Collector {
    postprocess: PostProcess,
    /// Class index to category id.
    category_ids: Vec<u64>,
    per_image: BTreeMap<u64, Vec<BoxDet>>,
}

impl Collector {
    pub fn new(postprocess: PostProcess, categories: &[Category]) -> Self {
        Self {
            postprocess,
            category_ids: categories.iter().map(|c| c.id).collect(),
            per_image: BTreeMap::new(),
        }
    }

    /// Adds one batch: each output's boxes, in input pixels, are mapped back to its image.
    pub fn add(&mut self, outputs: Vec<Vec<BoxDet>>, targets: &[&Target]) {
        for (dets, t) in outputs.into_iter().zip(targets) {
            let entry = self.per_image.entry(t.sample.image_id).or_default();
            for d in dets {
                let [x, y, w, h] = t.sample.placement.to_original(d.xyxy);
                if w > 0.0 && h > 0.0 {
                    entry.push(BoxDet {
                        xyxy: [x as f32, y as f32, (x + w) as f32, (y + h) as f32],
                        ..d
                    });
                }
            }
        }
    }

    /// COCO results: per image, tiles' duplicates suppressed and the best kept.
    pub fn finish(self) -> Vec<Detection> {
        let pp = &self.postprocess;
        let mut out = Vec::new();
        for (image_id, dets) in self.per_image {
            for d in suppress(dets, pp) {
                let [x0, y0, x1, y1] = d.xyxy.map(|v| v as f64);
                out.push(Detection {
                    image_id,
                    category_id: self.category_ids[d.class],
                    bbox: [x0, y0, x1 - x0, y1 - y0],
                    score: d.score as f64,
                });
            }
        }
        out
    }
}

/// COCO bbox evaluation, fed batch by batch.
pub struct CocoMetric {
    collector: Collector,
    categories: Vec<Category>,
    truths: BTreeMap<u64, Arc<ImageTruth>>,
}

impl CocoMetric {
    pub fn new(postprocess: PostProcess, categories: Vec<Category>) -> Self {
        Self {
            collector: Collector::new(postprocess, &categories),
            categories,
            truths: BTreeMap::new(),
        }
    }

    /// The ground truth of every image seen, and the merged detections on them.
    pub fn into_parts(self) -> (DetectionSet, Vec<Detection>) {
        let mut images = Vec::with_capacity(self.truths.len());
        let mut annotations = Vec::new();
        for truth in self.truths.values() {
            images.push(truth.record.clone());
            annotations.extend(truth.annotations.iter().cloned());
        }
        let gt = DetectionSet {
            root: Default::default(),
            source: "evaluation".into(),
            images,
            annotations,
            categories: self.categories,
            clipped: 0,
            image_sources: Default::default(),
        };
        (gt, self.collector.finish())
    }

    /// The twelve COCO statistics.
    pub fn stats(self) -> Result<CocoStats> {
        let (gt, results) = self.into_parts();
        coco_eval::evaluate(&gt, &results)
    }
}

impl Metric for CocoMetric {
    type Output = Vec<BoxDet>;
    type Target = Target;

    fn add(&mut self, outputs: Vec<Vec<BoxDet>>, targets: &[&Target]) -> Result<()> {
        for t in targets {
            self.truths
                .entry(t.sample.image_id)
                .or_insert_with(|| t.truth.clone());
        }
        self.collector.add(outputs, targets);
        Ok(())
    }

    fn finish(self) -> Result<Metrics> {
        let stats = self.stats()?;
        Ok(STAT_NAMES
            .iter()
            .zip(stats.values)
            .map(|(n, v)| (n.to_string(), v))
            .collect())
    }
}
