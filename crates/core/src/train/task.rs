//! What a downstream task gives the engine: a model split at the backbone's output, its loss,
//! its predictions, and a metric that accumulates batch by batch.
//!
//! The split lets the engine cache frozen features ([`Task::encode`] runs the backbone, the
//! rest only the head). Metrics accumulate per batch ([`Metric`]) so that a confusion matrix or
//! BLEU statistics never need every output at once, and the ground truth reaches them through
//! the targets the engine loads, not through state kept in the model.

use std::collections::BTreeMap;

use anyhow::Result;
use candle_core::Tensor;

use crate::params::ParamStore;

/// The backbone's output for one example: one or more tensors (a feature map, several block
/// outputs, hidden states), without a batch dimension. In frozen mode these are cached.
pub type Features = Vec<Tensor>;

/// Named evaluation results.
pub type Metrics = BTreeMap<String, f64>;

/// An evaluation in progress: batches of outputs with their targets go in, metrics come out.
pub trait Metric: Send {
    type Output;
    type Target;

    /// Adds one batch; `outputs[i]` is the prediction for `targets[i]`.
    fn add(&mut self, outputs: Vec<Self::Output>, targets: &[&Self::Target]) -> Result<()>;

    /// The metrics over everything added.
    fn finish(self) -> Result<Metrics>;
}

/// A model (backbone plus task head) with its loss, prediction and metric.
pub trait Task: Sync + Sized {
    /// The model input of one example (pixels, token ids).
    type Input: Send;
    /// The label of one example, with whatever the metric needs of the ground truth.
    type Target: Send + Sync;
    /// The prediction for one example.
    type Output: Send;
    /// The task's evaluation.
    type Metric: Metric<Output = Self::Output, Target = Self::Target>;

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

    /// A fresh evaluation.
    fn metric(&self) -> Result<Self::Metric>;

    /// The metric that selects the best checkpoint and drives early stopping (higher is better).
    fn main_metric(&self) -> &str;

    /// The metrics drawn in the run's `metrics.png`: the few that tell how training goes.
    fn plotted_metrics(&self) -> Vec<String> {
        vec![self.main_metric().to_string()]
    }

    /// The same model on weights detached from the training graph (sharing their storage; see
    /// [`crate::nn::Detach`]), which the engine evaluates and predicts with, so that inference
    /// in `full` mode records no backward graph.
    fn detached(&self) -> Result<Self>;
}
