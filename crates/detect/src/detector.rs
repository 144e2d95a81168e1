//! The detector as an engine task: backbone, head, loss, prediction and COCO metrics.

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
use crate::model::assign::Geometry;
use crate::model::head::DetectionHead;
use crate::model::loss::fcos_loss;
use crate::model::postprocess::{decode, BoxDet, PostProcess};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Channels of the pyramid and head.
    pub width: usize,
    /// Read the raw output of this backbone block instead of the final-norm output.
    pub feature_block: Option<usize>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            width: 96,
            feature_block: None,
        }
    }
}

pub struct Detector {
    pub backbone: Vit,
    pub head: DetectionHead,
    pub params: ParamStore,
    pub frozen: bool,
    pub geometry: Geometry,
    pub postprocess: PostProcess,
    /// Class index to category.
    pub categories: Vec<Category>,
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
        // Blocks above the one the head reads are not loaded: nothing to compute or train.
        let readout = match model.feature_block {
            Some(b) => Readout::UpTo(b),
            None => Readout::Final,
        };
        let (backbone, mut params) = backbone::load_vision(spec, mode, readout, device)
            .with_context(|| format!("backbone `{spec}` in mode {mode}"))?;
        let head = DetectionHead::new(
            &mut params,
            backbone.hidden_size(),
            model.width,
            categories.len(),
            seed,
            device,
        )?;
        let geometry = Geometry::new(input_size, backbone.patch_size());
        Ok(Self {
            backbone,
            head,
            params,
            frozen: mode == Freeze::Frozen,
            geometry,
            postprocess,
            categories,
        })
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
            &self.params.device(),
        )
    }

    fn head_input(features: &[&Features]) -> Result<Tensor> {
        let maps: Vec<Tensor> = features.iter().map(|f| f[0].clone()).collect();
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
        // The backbone ends at the block read, so its output is that block's.
        let map = self.backbone.forward(&x, &[])?.feature_map()?;
        // Channels-last, as the head's matrix-product convolutions want it.
        let map = map.permute((0, 2, 3, 1))?;
        (0..inputs.len())
            .map(|i| Ok(vec![map.get(i)?.contiguous()?]))
            .collect()
    }

    fn loss(&self, features: &[&Features], targets: &[&Target]) -> Result<Tensor> {
        let out = self.head.forward(&Self::head_input(features)?)?;
        let assigned: Vec<&[_]> = targets.iter().map(|t| t.assigned.as_slice()).collect();
        fcos_loss(&out, &assigned, &self.geometry)
    }

    fn loss_weight(&self, targets: &[&Target]) -> f64 {
        // FCOS normalises by the positive locations of the batch.
        targets.iter().map(|t| t.positives).sum::<usize>().max(1) as f64
    }

    fn predict(&self, features: &[&Features]) -> Result<Vec<Vec<BoxDet>>> {
        let out = self.head.forward(&Self::head_input(features)?)?;
        decode(&out, &self.geometry, &self.postprocess)
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
            head: self.head.detached(),
            params: self.params.clone(),
            frozen: self.frozen,
            geometry: self.geometry.clone(),
            postprocess: self.postprocess.clone(),
            categories: self.categories.clone(),
        })
    }
}
