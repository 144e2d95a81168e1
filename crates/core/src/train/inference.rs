//! Inference through the engine: predictions over a whole data set with the same prefetching
//! and feature cache as training, and evaluation (metrics and a validation loss) built on it.
//!
//! Both run on the task's detached copy ([`Task::detached`]): in `full` mode a forward pass
//! through trainable weights would record a backward graph and keep every activation alive.
//! Evaluation streams: each batch's outputs go into the task's [`Metric`] and are dropped.

use anyhow::{Context, Result};
use candle_core::DType;

use super::data::{prefetched, Dataset};
use super::feature_cache::{features_for, FeatureCache, Key};
use super::task::{Features, Metric, Metrics, Task};

/// One batch of predictions: which examples (index, view 0), their outputs and targets.
pub struct Predicted<O, T> {
    pub keys: Vec<Key>,
    pub outputs: Vec<O>,
    pub targets: Vec<T>,
}

/// Runs `model` (already detached) over `data` in batches of `batch`, handing each batch's
/// features and targets to `each`.
fn run_batches<T, D>(
    model: &T,
    data: &D,
    batch: usize,
    cache: Option<&FeatureCache>,
    mut each: impl FnMut(Vec<Key>, Vec<Features>, Vec<T::Target>) -> Result<()>,
) -> Result<()>
where
    T: Task,
    D: Dataset<Input = T::Input, Target = T::Target>,
{
    let mut keys: Vec<Key> = (0..data.len()).map(|i| (i, 0)).collect();
    // Examples of similar size share a batch (keys say which output is which).
    if let Some(lengths) = (0..data.len())
        .map(|i| data.length(i))
        .collect::<Option<Vec<usize>>>()
    {
        keys.sort_by_key(|&(i, _)| lengths[i]);
    }
    let batches: Vec<Vec<Key>> = keys.chunks(batch.max(1)).map(|c| c.to_vec()).collect();
    let need = |k: &Key| cache.is_none_or(|c| !c.contains(*k));
    prefetched(data, batches, &need, |_, mut b| {
        let feats = features_for(model, cache, &b.keys, &mut b.inputs, None)?;
        each(b.keys, feats, b.targets)
    })
}

/// Predictions of `task` for every example of `data` (unaugmented; in order, or by size where the
/// data set knows sizes, with `keys` saying which is which), batch by batch
/// into `sink`; features come from `cache` where it holds them.
pub fn predict_all<T, D>(
    task: &T,
    data: &D,
    batch: usize,
    cache: Option<&FeatureCache>,
    mut sink: impl FnMut(Predicted<T::Output, T::Target>) -> Result<()>,
) -> Result<()>
where
    T: Task,
    D: Dataset<Input = T::Input, Target = T::Target>,
{
    let model = task.detached()?;
    run_batches(&model, data, batch, cache, |keys, feats, targets| {
        let outputs = model.predict(&feats.iter().collect::<Vec<_>>())?;
        sink(Predicted {
            keys,
            outputs,
            targets,
        })
    })
}

/// The name under which [`evaluate`] reports the validation loss.
pub const VAL_LOSS: &str = "val_loss";

/// The task's metrics on `data` and, if `with_loss`, the loss over it (summed losses over
/// summed loss weights, as one batch of the whole set would give) as [`VAL_LOSS`].
pub fn evaluate<T, D>(
    task: &T,
    data: &D,
    batch: usize,
    cache: Option<&FeatureCache>,
    with_loss: bool,
) -> Result<Metrics>
where
    T: Task,
    D: Dataset<Input = T::Input, Target = T::Target>,
{
    let model = task.detached()?;
    let mut metric = model.metric()?;
    let (mut loss_sum, mut weight_sum) = (0f64, 0f64);
    run_batches(&model, data, batch, cache, |_, feats, targets| {
        let feats: Vec<&Features> = feats.iter().collect();
        let targets: Vec<&T::Target> = targets.iter().collect();
        if with_loss {
            let loss = model.loss(&feats, &targets)?;
            loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            weight_sum += model.loss_weight(&targets);
        }
        metric.add(model.predict(&feats)?, &targets)
    })?;
    let mut metrics = metric
        .finish()
        .context("computing the evaluation metrics")?;
    if with_loss && weight_sum > 0.0 {
        metrics.insert(VAL_LOSS.to_string(), loss_sum / weight_sum);
    }
    Ok(metrics)
}
