//! What a downstream task gives the engine.

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::Tensor;

use crate::params::ParamStore;

/// The backbone's output for one example: one or more tensors (a feature map, several block
/// outputs, hidden states), without a batch dimension. In frozen mode these are cached.
pub type Features = Vec<Tensor>;

/// Named evaluation results.
pub type Metrics = BTreeMap<String, f64>;

/// A model (backbone plus task head) with its loss, prediction and metric.
///
/// The forward pass is split at the backbone's output so that the engine can cache frozen
/// features: [`Task::encode`] runs the backbone, the other methods only the head.
pub trait Task: Sync {
    /// The model input of one example (pixels, token ids).
    type Input: Send;
    /// The label of one example.
    type Target: Send + Sync;
    /// The prediction for one example.
    type Output: Send;

    /// Every parameter, backbone and head; the trainable ones are optimised.
    fn params(&self) -> &ParamStore;

    /// Whether the backbone is frozen, so that its features may be cached.
    fn backbone_frozen(&self) -> bool;

    /// Runs the backbone over a batch; one [`Features`] per input, in order.
    fn encode(&self, inputs: &[Self::Input]) -> Result<Vec<Features>>;

    /// The loss summed over the examples (not averaged): the engine divides by the batch's
    /// total [`Task::loss_weight`], so that gradient accumulation over micro-batches equals
    /// one large batch exactly.
    fn loss(&self, features: &[&Features], targets: &[&Self::Target]) -> Result<Tensor>;

    /// What the summed loss is normalised by: by default the number of examples; a task whose
    /// loss is a mean over tokens, pixels or positive locations returns their count.
    fn loss_weight(&self, targets: &[&Self::Target]) -> f64 {
        targets.len() as f64
    }

    /// Predictions for a batch.
    fn predict(&self, features: &[&Features]) -> Result<Vec<Self::Output>>;

    /// Metrics over a whole evaluation set, predictions in data-set order.
    fn evaluate(&self, outputs: Vec<Self::Output>, targets: &[&Self::Target]) -> Result<Metrics>;

    /// The metric that selects the best checkpoint and drives early stopping (higher is better).
    fn main_metric(&self) -> &str;
}
