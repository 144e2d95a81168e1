//! A small classification task over the tiny ViT fixture, for the engine's tests: CLS token,
//! linear head, cross-entropy, accuracy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use downstream_core::backbone::{Readout, Vit};
use downstream_core::nn::{ops, Detach};
use downstream_core::train::{Dataset, Features, Metric, Metrics, Task};
use downstream_core::{Freeze, ParamStore};

use super::fixtures;

pub const CLASSES: usize = 3;

/// CLS token -> linear head -> cross-entropy.
pub struct Classify {
    pub vit: Vit,
    pub params: ParamStore,
    pub w: Tensor,
    pub b: Tensor,
    pub frozen: bool,
    /// Set when `predict` sees features that carry a backward graph.
    pub graph_seen: Arc<AtomicBool>,
    /// Dropout on the CLS token before the head (0: none).
    pub dropout: f64,
}

impl Classify {
    pub fn new(mode: Freeze) -> Self {
        Self::reading(mode, Readout::Final)
    }

    /// A classifier whose head reads `readout` of the backbone.
    pub fn reading(mode: Freeze, readout: Readout) -> Self {
        let (vit, mut params) =
            Vit::load_with(&fixtures().join("vit"), mode, readout, None, &Device::Cpu).unwrap();
        let top = params.top_depth;
        let init: Vec<f32> = (0..CLASSES * 32)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 40.0)
            .collect();
        let w = params
            .insert(
                "head.weight",
                Tensor::from_vec(init, (CLASSES, 32), &Device::Cpu).unwrap(),
                top,
                true,
            )
            .unwrap();
        let b = params
            .insert(
                "head.bias",
                Tensor::zeros(CLASSES, DType::F32, &Device::Cpu).unwrap(),
                top,
                true,
            )
            .unwrap();
        Self {
            vit,
            params,
            w,
            b,
            frozen: mode == Freeze::Frozen,
            graph_seen: Arc::default(),
            dropout: 0.0,
        }
    }

    pub fn logits(&self, features: &[&Features]) -> Result<Tensor> {
        let cls: Vec<Tensor> = features.iter().map(|f| f[0].clone()).collect();
        let x = ops::dropout(&Tensor::stack(&cls, 0)?, self.dropout)?;
        Ok(x.matmul(&self.w.t()?)?.broadcast_add(&self.b)?)
    }
}

/// Accuracy, accumulated batch by batch.
#[derive(Default)]
pub struct Accuracy {
    right: usize,
    seen: usize,
}

impl Metric for Accuracy {
    type Output = u32;
    type Target = (u32, f32);
    fn add(&mut self, outputs: Vec<u32>, targets: &[&(u32, f32)]) -> Result<()> {
        self.seen += outputs.len();
        self.right += outputs
            .iter()
            .zip(targets)
            .filter(|(o, t)| **o == t.0)
            .count();
        Ok(())
    }
    fn finish(self) -> Result<Metrics> {
        Ok(Metrics::from([(
            "accuracy".to_string(),
            self.right as f64 / self.seen.max(1) as f64,
        )]))
    }
}

impl Task for Classify {
    type Input = Tensor;
    type Target = (u32, f32);
    type Output = u32;
    type Metric = Accuracy;

    fn params(&self) -> &ParamStore {
        &self.params
    }
    fn backbone_frozen(&self) -> bool {
        self.frozen
    }
    fn encode(&self, inputs: &[Tensor]) -> Result<Vec<Features>> {
        let x = Tensor::stack(inputs, 0)?;
        let cls = self.vit.forward(&x, &[])?.cls()?;
        Ok((0..inputs.len())
            .map(|i| vec![cls.get(i).unwrap()])
            .collect())
    }
    fn loss(&self, features: &[&Features], targets: &[&(u32, f32)]) -> Result<Tensor> {
        let logits = self.logits(features)?;
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let shifted = logits.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let logp = shifted.broadcast_sub(&lse)?;
        let labels: Vec<u32> = targets.iter().map(|t| t.0).collect();
        let idx = Tensor::new(labels.as_slice(), &Device::Cpu)?.unsqueeze(1)?;
        // The second target field scales the loss; a NaN there poisons it on purpose.
        let scale: Vec<f32> = targets.iter().map(|t| t.1).collect();
        let scale = Tensor::new(scale.as_slice(), &Device::Cpu)?;
        Ok((logp.gather(&idx, 1)?.squeeze(1)? * scale)?
            .neg()?
            .sum_all()?)
    }
    fn predict(&self, features: &[&Features]) -> Result<Vec<u32>> {
        if features.iter().flat_map(|f| f.iter()).any(|t| t.track_op()) {
            self.graph_seen.store(true, Ordering::Relaxed);
        }
        Ok(self.logits(features)?.argmax(D::Minus1)?.to_vec1()?)
    }
    fn metric(&self) -> Result<Accuracy> {
        Ok(Accuracy::default())
    }
    fn main_metric(&self) -> &str {
        "accuracy"
    }
    fn detached(&self) -> Result<Self> {
        Ok(Self {
            vit: self.vit.detached(),
            params: self.params.clone(),
            w: self.w.detach(),
            b: self.b.detach(),
            frozen: self.frozen,
            graph_seen: self.graph_seen.clone(),
            dropout: self.dropout,
        })
    }
}

/// Deterministic 32x32 images whose mean colour depends on the class; view != 0 flips them.
pub struct Images {
    pub n: usize,
    pub views: u64,
    pub nan_at: Option<usize>,
    pub decoded: Mutex<Vec<(usize, u64)>>,
}

impl Images {
    pub fn new(n: usize) -> Self {
        Self {
            n,
            views: 2,
            nan_at: None,
            decoded: Mutex::new(Vec::new()),
        }
    }
}

impl Dataset for Images {
    type Input = Tensor;
    type Target = (u32, f32);
    fn len(&self) -> usize {
        self.n
    }
    fn input(&self, index: usize, view: u64) -> Result<Tensor> {
        self.decoded.lock().unwrap().push((index, view));
        let class = (index % CLASSES) as f32;
        let v: Vec<f32> = (0..3 * 32 * 32)
            .map(|j| {
                ((j * (index + 3) * 7919 % 1013) as f32 / 1013.0 - 0.5)
                    + 0.3 * (class - 1.0) * ((j / 1024) as f32 - 1.0)
            })
            .collect();
        let x = Tensor::from_vec(v, (3, 32, 32), &Device::Cpu)?;
        Ok(if view % 2 == 1 { x.flip(&[2])? } else { x })
    }
    fn target(&self, index: usize, _view: u64) -> Result<(u32, f32)> {
        let scale = if self.nan_at == Some(index) {
            f32::NAN
        } else {
            1.0
        };
        Ok(((index % CLASSES) as u32, scale))
    }
    fn cached_views(&self) -> u64 {
        self.views
    }
}
