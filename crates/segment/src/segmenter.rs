//! The segmenter as an engine task: backbone, decoder, per-pixel cross-entropy, predictions
//! and mIoU.

use anyhow::Result;
use candle_core::{Device, Tensor};
use downstream_core::backbone::{self, Readout, Vit};
use downstream_core::nn::loss::CrossEntropy;
use downstream_core::nn::Detach;
use downstream_core::train::{Features, Task, TrainConfig};
use downstream_core::{Freeze, ParamStore};
use serde::{Deserialize, Serialize};

use crate::dataset::{Target, IGNORED};
use crate::metric::accumulate::SegMetric;
use crate::metric::confusion::LabelRules;
use crate::model::{Decoder, DecoderKind};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub decoder: DecoderKind,
    /// Channels of the progressive decoder's stages.
    pub width: usize,
    /// Read the raw output of this backbone block instead of the final-norm output (the
    /// backbone then ends there).
    pub feature_block: Option<usize>,
}

/// The defaults are the best of the measured choices (README, `segment`): the progressive
/// decoder on the output of block 8, the ninth of DINOv2-S's twelve (on brain-mri, frozen,
/// mIoU 65.0 against 51.2 for the linear decoder there and 51.3 for the progressive decoder on
/// the final output). A backbone of fewer blocks needs `feature_block` set.
impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            decoder: DecoderKind::Progressive,
            width: 64,
            feature_block: Some(8),
        }
    }
}

pub struct Segmenter {
    pub backbone: Vit,
    pub decoder: Decoder,
    pub params: ParamStore,
    pub frozen: bool,
    /// Class names in id order.
    pub classes: Vec<String>,
    pub rules: LabelRules,
    /// Side of the square input.
    pub size: usize,
}

impl Segmenter {
    /// The backbone and mode `train` names, with a new decoder (seeded by `train.seed`).
    pub fn new(
        train: &TrainConfig,
        model: &ModelConfig,
        size: usize,
        classes: Vec<String>,
        rules: LabelRules,
        device: &Device,
    ) -> Result<Self> {
        let (spec, mode) = (train.backbone.as_str(), train.mode);
        let readout = match model.feature_block {
            Some(b) => Readout::UpTo(b),
            None => Readout::Final,
        };
        let (backbone, mut params) = backbone::load_vision(spec, mode, readout, device)
            .map_err(|e| e.context(format!("backbone `{spec}` in mode {mode}")))?;
        let decoder = Decoder::new(
            model.decoder,
            &mut params,
            backbone.hidden_size(),
            model.width,
            classes.len(),
            train.seed,
            device,
        )?;
        Ok(Self {
            backbone,
            decoder,
            params,
            frozen: mode == Freeze::Frozen,
            classes,
            rules,
            size,
        })
    }

    pub fn patch_size(&self) -> usize {
        self.backbone.patch_size()
    }

    fn logits(&self, features: &[&Features]) -> Result<Tensor> {
        let maps: Vec<Tensor> = features.iter().map(|f| f[0].clone()).collect();
        Ok(self.decoder.forward(&Tensor::stack(&maps, 0)?, self.size)?)
    }

    fn cross_entropy() -> CrossEntropy {
        CrossEntropy {
            ignore_index: Some(IGNORED),
            label_smoothing: 0.0,
        }
    }
}

impl Task for Segmenter {
    type Input = Tensor;
    type Target = Target;
    /// Class logits `[K, size, size]`.
    type Output = Tensor;
    type Metric = SegMetric;

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn backbone_frozen(&self) -> bool {
        self.frozen
    }

    fn encode(&self, inputs: &[Tensor]) -> Result<Vec<Features>> {
        let x = Tensor::stack(inputs, 0)?;
        // Channels-last, as the decoder's linear maps and convolutions want it.
        let map = self
            .backbone
            .forward(&x, &[])?
            .feature_map()?
            .permute((0, 2, 3, 1))?;
        (0..inputs.len())
            .map(|i| Ok(vec![map.get(i)?.contiguous()?]))
            .collect()
    }

    fn loss(&self, features: &[&Features], targets: &[&Target]) -> Result<Tensor> {
        let logits = self.logits(features)?;
        let labels: Vec<u32> = targets
            .iter()
            .flat_map(|t| t.labels.iter().copied())
            .collect();
        let labels = Tensor::from_vec(
            labels,
            (targets.len(), self.size, self.size),
            logits.device(),
        )?;
        Ok(Self::cross_entropy().sum(&logits, &labels)?)
    }

    /// The mean is over labelled pixels.
    fn loss_weight(&self, targets: &[&Target]) -> f64 {
        targets.iter().map(|t| t.labelled).sum::<usize>() as f64
    }

    fn predict(&self, features: &[&Features]) -> Result<Vec<Tensor>> {
        let logits = self.logits(features)?;
        (0..features.len()).map(|i| Ok(logits.get(i)?)).collect()
    }

    fn metric(&self) -> Result<SegMetric> {
        Ok(SegMetric::new(self.rules, self.size))
    }

    fn main_metric(&self) -> &str {
        "mIoU"
    }

    fn plotted_metrics(&self) -> Vec<String> {
        ["mIoU", "mAcc", "aAcc"].map(String::from).to_vec()
    }

    fn detached(&self) -> Result<Self> {
        Ok(Self {
            backbone: self.backbone.detached(),
            decoder: self.decoder.detached(),
            params: self.params.clone(),
            frozen: self.frozen,
            classes: self.classes.clone(),
            rules: self.rules,
            size: self.size,
        })
    }
}
