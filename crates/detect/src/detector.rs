//! The detector as an engine task: backbone, head, loss, prediction and COCO metrics.
//!
//! Test-time flips live here because they need the backbone: the engine's inference copy
//! ([`Task::detached`]) encodes each flipped view in the same batch as the image, and
//! prediction flips those views' boxes back; the training copy encodes the image alone.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use downstream_core::backbone::{self, Readout, Vit};
use downstream_core::nn::Detach;
use downstream_core::train::{Features, Task, TrainConfig};
use downstream_core::{Freeze, ParamStore};
use serde::{Deserialize, Serialize};

use crate::data::{Category, DetectionSet};
use crate::dataset::Target;
use crate::metric::accumulate::CocoMetric;
use crate::model::assign::{Assigner, Geometry};
use crate::model::coding::BoxCoding;
use crate::model::flip::Flip;
use crate::model::head::{patch_pixels, DetectionHead};
use crate::model::loss::{fcos_loss, Quality};
use crate::model::postprocess::{decode, BoxDet, PostProcess};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Channels of the pyramid and head.
    pub width: usize,
    /// 3x3 convolutions in the head's tower, shared by the pyramid levels.
    pub tower: usize,
    /// Read the raw output of this backbone block instead of the final-norm output.
    pub feature_block: Option<usize>,
    /// Read the raw outputs of several blocks (for example 5, 8 and 11), each layer-normed by
    /// the head and concatenated: shallower blocks keep more of the fine detail that small
    /// objects need. Replaces `feature_block`.
    pub feature_blocks: Vec<usize>,
    /// What the quality branch learns: FCOS centre-ness or the predicted box's IoU.
    pub quality: Quality,
    /// The weight of the GIoU box loss against the focal loss (1 in FCOS).
    pub box_weight: f64,
    /// The finest pyramid level also reads each patch's raw pixels (see `model::head`).
    pub pixel_skip: bool,
    /// The box and quality branches get a tower of their own, as deep as the classes' one.
    pub split_tower: bool,
    /// Each box side as a distribution over N + 1 distances N equal steps apart (GFL's
    /// distribution focal loss, see `model::coding`); 0 for FCOS's one exponential output.
    pub box_bins: usize,
    /// How training locations become positives for a box: FCOS's size ranges and centre
    /// sampling, or ATSS's statistics per box (see `model::assign`).
    pub assign: Assigner,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            width: 96,
            tower: 1,
            feature_block: None,
            feature_blocks: Vec::new(),
            quality: Quality::default(),
            box_weight: 1.0,
            pixel_skip: false,
            split_tower: false,
            box_bins: 0,
            assign: Assigner::Fcos,
        }
    }
}

impl ModelConfig {
    /// The blocks the head reads, in order (empty: the final-norm output), and the backbone's
    /// readout, which ends at the deepest of them.
    pub fn blocks(&self) -> Result<(Vec<usize>, Readout)> {
        let mut blocks = self.feature_blocks.clone();
        blocks.sort_unstable();
        blocks.dedup();
        match (self.feature_block, blocks.last()) {
            (Some(_), Some(_)) => anyhow::bail!(
                "model.feature_block and model.feature_blocks both set: give one of them"
            ),
            (Some(b), None) => Ok((vec![b], Readout::UpTo(b))),
            (None, Some(&top)) => Ok((blocks, Readout::UpTo(top))),
            (None, None) => Ok((Vec::new(), Readout::Final)),
        }
    }
}

pub struct Detector {
    pub backbone: Vit,
    /// The blocks whose outputs are concatenated for the head (empty: the final output).
    pub blocks: Vec<usize>,
    pub head: DetectionHead,
    /// Whether the head also reads each patch's pixels, appended to the features.
    pub pixel_skip: bool,
    pub params: ParamStore,
    pub frozen: bool,
    pub geometry: Geometry,
    /// How training examples' positive locations are chosen.
    pub assigner: Assigner,
    pub quality: Quality,
    pub box_weight: f64,
    pub postprocess: PostProcess,
    /// Class index to category.
    pub categories: Vec<Category>,
    /// Whether this is the engine's inference copy ([`Task::detached`]), which alone adds the
    /// test-time flips: training never pays for them.
    inference: bool,
}

impl Detector {
    /// The backbone and mode `train` names, with a new head (seeded by `train.seed`) for
    /// `categories` in class-index order.
    pub fn new(
        train: &TrainConfig,
        model: &ModelConfig,
        input_size: usize,
        categories: Vec<Category>,
        postprocess: PostProcess,
        device: &Device,
    ) -> Result<Self> {
        let (spec, mode, seed) = (train.backbone.as_str(), train.mode, train.seed);
        anyhow::ensure!(
            model.box_weight.is_finite() && model.box_weight > 0.0,
            "model.box_weight must be a positive number, got {}",
            model.box_weight
        );
        anyhow::ensure!(
            postprocess.nms_iou > 0.0 && postprocess.nms_iou <= 1.0,
            "postprocess.nms_iou must lie in (0, 1], got {}",
            postprocess.nms_iou
        );
        anyhow::ensure!(
            postprocess.fusion_iou.is_none_or(|t| t > 0.0 && t <= 1.0),
            "postprocess.fusion_iou must lie in (0, 1], got {:?}",
            postprocess.fusion_iou
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&postprocess.tile_edge_score),
            "postprocess.tile_edge_score must lie in [0, 1], got {}",
            postprocess.tile_edge_score
        );
        anyhow::ensure!(
            model.box_bins == 0 || model.assign == Assigner::Fcos,
            "model.box_bins = {} with model.assign = \"atss\": the distributions span the \
             distances FCOS's size ranges allow at each level, and ATSS places boxes beyond \
             them; use one of the two",
            model.box_bins
        );
        // Blocks above the deepest one the head reads are not loaded: nothing to compute or
        // train.
        let (blocks, readout) = model.blocks()?;
        let (backbone, mut params) = backbone::load_vision(spec, mode, readout, device)
            .with_context(|| format!("backbone `{spec}` in mode {mode}"))?;
        let head = DetectionHead::new(
            &mut params,
            backbone.hidden_size(),
            blocks.len().max(1),
            if model.pixel_skip {
                3 * backbone.patch_size().pow(2)
            } else {
                0
            },
            model.width,
            model.tower,
            model.split_tower,
            BoxCoding::from_bins(model.box_bins),
            categories.len(),
            seed,
            device,
        )?;
        let geometry = Geometry::new(input_size, backbone.patch_size());
        Ok(Self {
            backbone,
            blocks,
            head,
            pixel_skip: model.pixel_skip,
            params,
            frozen: mode == Freeze::Frozen,
            geometry,
            assigner: model.assign,
            quality: model.quality,
            box_weight: model.box_weight,
            postprocess,
            categories,
            inference: false,
        })
    }

    /// The extra views encoded at inference, after the unflipped one.
    fn flips(&self) -> &[Flip] {
        if self.inference {
            &self.postprocess.tta
        } else {
            &[]
        }
    }

    /// Category id to class index.
    pub fn class_index(&self) -> BTreeMap<u64, usize> {
        self.categories
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id, i))
            .collect()
    }

    /// `set` as examples for this detector.
    pub fn examples(
        &self,
        set: DetectionSet,
        input: &crate::dataset::InputConfig,
    ) -> Result<crate::dataset::DetectionData> {
        crate::dataset::DetectionData::new(
            set,
            input.clone(),
            self.backbone.patch_size(),
            self.class_index(),
            self.assigner,
            &self.params.device(),
        )
    }

    /// The batch's maps of view `view` (0: unflipped).
    fn head_input(features: &[&Features], view: usize) -> Result<Tensor> {
        let maps: Vec<Tensor> = features.iter().map(|f| f[view].clone()).collect();
        Ok(Tensor::stack(&maps, 0)?)
    }
}

impl Task for Detector {
    type Input = Tensor;
    type Target = Target;
    type Output = Vec<BoxDet>;
    type Metric = CocoMetric;

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn backbone_frozen(&self) -> bool {
        self.frozen
    }

    fn encode(&self, inputs: &[Tensor]) -> Result<Vec<Features>> {
        let x = Tensor::stack(inputs, 0)?;
        // Every view in one backbone pass: view v of example i is row v x n + i.
        let n = inputs.len();
        let mut views = vec![x.clone()];
        for flip in self.flips() {
            views.push(flip.apply(&x)?);
        }
        let x = if views.len() == 1 {
            x
        } else {
            Tensor::cat(&views, 0)?
        };
        // The backbone ends at the deepest block read, so its output is that block's.
        let out = self.backbone.forward(&x, &self.blocks)?;
        let map = match self.blocks.len() {
            0 | 1 => out.feature_map()?,
            _ => {
                let maps = self
                    .blocks
                    .iter()
                    .map(|&b| out.block_map(b))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&maps, 1)?
            }
        };
        // Channels-last, as the head's matrix-product convolutions want it.
        let mut map = map.permute((0, 2, 3, 1))?;
        if self.pixel_skip {
            let pixels = patch_pixels(&x, self.backbone.patch_size())?;
            map = Tensor::cat(&[map, pixels], 3)?;
        }
        (0..n)
            .map(|i| {
                (0..views.len())
                    .map(|v| Ok(map.get(v * n + i)?.contiguous()?))
                    .collect()
            })
            .collect()
    }

    fn loss(&self, features: &[&Features], targets: &[&Target]) -> Result<Tensor> {
        let out = self.head.forward(&Self::head_input(features, 0)?)?;
        let assigned: Vec<&[_]> = targets.iter().map(|t| t.assigned.as_slice()).collect();
        fcos_loss(
            &out,
            &assigned,
            &self.geometry,
            self.quality,
            self.box_weight,
        )
    }

    fn loss_weight(&self, targets: &[&Target]) -> f64 {
        // FCOS normalises by the positive locations of the batch.
        targets.iter().map(|t| t.positives).sum::<usize>().max(1) as f64
    }

    fn predict(&self, features: &[&Features]) -> Result<Vec<Vec<BoxDet>>> {
        let out = self.head.forward(&Self::head_input(features, 0)?)?;
        let mut boxes = decode(&out, &self.geometry, &self.postprocess)?;
        // Each flipped view's boxes, flipped back, join the candidates; the metric's per-image
        // merge (suppression or fusion) joins them with the unflipped view's. The fusion
        // divides by the number of views, so features encoded with other flips (a stale
        // cache) must not pass for these.
        let views = features.first().map_or(1, |f| f.len());
        anyhow::ensure!(
            views == 1 + self.flips().len(),
            "features of {views} views for a detector with {} flips",
            self.flips().len()
        );
        let size = self.geometry.size as f32;
        for (v, flip) in self.flips().iter().enumerate() {
            let out = self.head.forward(&Self::head_input(features, v + 1)?)?;
            for (dets, more) in
                boxes
                    .iter_mut()
                    .zip(decode(&out, &self.geometry, &self.postprocess)?)
            {
                dets.extend(more.into_iter().map(|d| BoxDet {
                    xyxy: flip.undo(d.xyxy, size),
                    ..d
                }));
            }
        }
        Ok(boxes)
    }

    fn metric(&self) -> Result<CocoMetric> {
        Ok(CocoMetric::new(
            self.postprocess.clone(),
            self.categories.clone(),
        ))
    }

    fn main_metric(&self) -> &str {
        "AP"
    }

    fn plotted_metrics(&self) -> Vec<String> {
        ["AP", "AP50", "AP75"].map(String::from).to_vec()
    }

    fn detached(&self) -> Result<Self> {
        Ok(Self {
            backbone: self.backbone.detached(),
            blocks: self.blocks.clone(),
            head: self.head.detached(),
            pixel_skip: self.pixel_skip,
            params: self.params.clone(),
            frozen: self.frozen,
            geometry: self.geometry.clone(),
            assigner: self.assigner,
            quality: self.quality,
            box_weight: self.box_weight,
            postprocess: self.postprocess.clone(),
            categories: self.categories.clone(),
            inference: true,
        })
    }
}
