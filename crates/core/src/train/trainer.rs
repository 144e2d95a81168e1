//! The training loop.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::Serialize;

use super::checkpoint::{self, TrainState};
use super::config::{save_toml, TrainConfig};
use super::data::{prefetched, Dataset};
use super::feature_cache::{CacheKind, FeatureCache, Key};
use super::optimizer::{AdamW, Grads};
use super::progress::{plot_run, EvalRecord, Progress, StepRecord};
use super::rng;
use super::scheduler::WarmupCosine;
use super::task::{Features, Metrics, Task};

/// Where a run lives and how it starts.
pub struct RunOptions {
    /// The run folder (`runs/<task>/<name>/`).
    pub dir: PathBuf,
    /// Continue from `dir/checkpoints/last.safetensors` instead of starting afresh.
    pub resume: bool,
    /// Draw progress bars (only where stderr is a terminal).
    pub show_progress: bool,
    pub device: Device,
    /// Stop after this many optimizer steps in this invocation (the run itself is not
    /// finished; `resume` continues it). For tests of interruption and resumption.
    pub stop_after: Option<u64>,
}

impl RunOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            resume: false,
            show_progress: true,
            device: Device::Cpu,
            stop_after: None,
        }
    }

    pub fn last_checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoints").join("last.safetensors")
    }

    pub fn best_checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoints").join("best.safetensors")
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct FitReport {
    pub steps: u64,
    pub finished: bool,
    pub stopped_early: bool,
    pub best_metric: Option<f64>,
    pub best_step: Option<u64>,
    /// Metrics of the last evaluation.
    pub last_metrics: Option<Metrics>,
    /// Training examples that went through the backbone in this invocation.
    pub backbone_forwards: usize,
    pub last_checkpoint: PathBuf,
    pub best_checkpoint: Option<PathBuf>,
    pub plots: Vec<PathBuf>,
}

/// Backbone features for `keys`: from the cache where present, otherwise by running the
/// backbone on the inputs (and caching them when the backbone is frozen).
fn features_for<T: Task>(
    task: &T,
    cache: Option<&FeatureCache>,
    keys: &[Key],
    inputs: &mut [Option<T::Input>],
) -> Result<Vec<Features>> {
    let mut out: Vec<Option<Features>> = Vec::with_capacity(keys.len());
    let mut missing = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let hit = match cache {
            Some(c) => c.get(*key)?,
            None => None,
        };
        if hit.is_none() {
            missing.push(i);
        }
        out.push(hit);
    }
    if !missing.is_empty() {
        let to_encode: Vec<T::Input> = missing
            .iter()
            .map(|&i| {
                inputs[i]
                    .take()
                    .context("internal error: input not loaded for an uncached example")
            })
            .collect::<Result<_>>()?;
        let encoded = task.encode(&to_encode)?;
        if encoded.len() != missing.len() {
            bail!(
                "the task encoded {} inputs into {} feature sets",
                missing.len(),
                encoded.len()
            );
        }
        if let Some(c) = cache {
            c.count_encoded(missing.len());
        }
        for (&i, f) in missing.iter().zip(encoded) {
            if let Some(c) = cache {
                c.put(keys[i], &f)?;
            }
            out[i] = Some(f);
        }
    }
    Ok(out.into_iter().map(|f| f.expect("filled")).collect())
}

/// The loss of one batch and the gradients of the trainable parameters, computed in passes
/// of `micro` examples whose gradients are summed. Each pass's summed loss is divided by the
/// whole batch's loss weight, so the result equals one pass over the whole batch.
pub fn batch_gradients<T: Task>(
    task: &T,
    cache: Option<&FeatureCache>,
    keys: &[Key],
    inputs: &mut [Option<T::Input>],
    targets: &[&T::Target],
    micro: usize,
    step: u64,
) -> Result<(f64, Grads)> {
    let total_weight = task.loss_weight(targets);
    if !(total_weight > 0.0 && total_weight.is_finite()) {
        bail!("step {step}: the batch has a loss weight of {total_weight}");
    }
    let params = task.params();
    let mut grads = Grads::default();
    let mut loss_value = 0f64;
    for start in (0..keys.len()).step_by(micro.max(1)) {
        let end = (start + micro.max(1)).min(keys.len());
        let feats = features_for(task, cache, &keys[start..end], &mut inputs[start..end])?;
        let loss =
            (task.loss(&feats.iter().collect::<Vec<_>>(), &targets[start..end])? / total_weight)?;
        let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            bail!("the loss is {value} at step {step}; stopping");
        }
        loss_value += value;
        grads.accumulate(params, &loss.backward()?)?;
    }
    Ok((loss_value, grads))
}

/// Predictions and metrics of `task` on `data` (view 0, in order).
pub fn evaluate<T, D>(
    task: &T,
    data: &D,
    batch: usize,
    cache: Option<&FeatureCache>,
) -> Result<Metrics>
where
    T: Task,
    D: Dataset<Input = T::Input, Target = T::Target>,
{
    let keys: Vec<Key> = (0..data.len()).map(|i| (i, 0)).collect();
    let batches: Vec<Vec<Key>> = keys.chunks(batch.max(1)).map(|c| c.to_vec()).collect();
    let need = |k: &Key| cache.is_none_or(|c| !c.contains(*k));
    let mut outputs = Vec::with_capacity(data.len());
    let mut targets = Vec::with_capacity(data.len());
    prefetched(data, batches, &need, |_, mut b| {
        let feats = features_for(task, cache, &b.keys, &mut b.inputs)?;
        outputs.extend(task.predict(&feats.iter().collect::<Vec<_>>())?);
        targets.extend(b.targets);
        Ok(())
    })?;
    task.evaluate(outputs, &targets.iter().collect::<Vec<_>>())
}

/// Trains `task` on `train`, evaluating on `val`, as `cfg` says; `resolved` is the whole
/// configuration of the run (task settings included), saved with it.
pub fn fit<T, D, V, C>(
    task: &T,
    train: &D,
    val: Option<&V>,
    cfg: &TrainConfig,
    resolved: &C,
    run: &RunOptions,
) -> Result<FitReport>
where
    T: Task,
    D: Dataset<Input = T::Input, Target = T::Target>,
    V: Dataset<Input = T::Input, Target = T::Target>,
    C: Serialize,
{
    cfg.validate()?;
    if train.is_empty() {
        bail!("the training set is empty");
    }
    std::fs::create_dir_all(&run.dir).with_context(|| format!("creating {}", run.dir.display()))?;
    let config_json = serde_json::to_value(resolved)?;
    let params = task.params();
    let mut optimizer = AdamW::new(params, cfg.optimizer.clone())?;
    let steps_per_epoch = train.len().div_ceil(cfg.batch) as u64;
    let total_steps = steps_per_epoch * cfg.epochs as u64;
    let schedule = WarmupCosine {
        base_lr: cfg.lr,
        warmup_steps: cfg
            .warmup_steps
            .unwrap_or((total_steps as f64 * cfg.warmup_fraction).round() as u64),
        total_steps,
        min_lr_ratio: cfg.min_lr_ratio,
    };

    let mut state = if run.resume {
        let path = run.last_checkpoint();
        let ck = checkpoint::load(&path, &run.device)
            .with_context(|| format!("resuming from {}: no usable checkpoint", path.display()))?;
        if ck.state.seed != cfg.seed {
            bail!(
                "{}: the run was started with seed {}, not {}",
                path.display(),
                ck.state.seed,
                cfg.seed
            );
        }
        ck.restore_params(params)?;
        optimizer.load_state(&ck.tensors, ck.state.step)?;
        ck.state
    } else {
        TrainState {
            step: 0,
            epoch: 0,
            batch: 0,
            seed: cfg.seed,
            best_metric: None,
            best_step: None,
            evals_since_best: 0,
            finished: false,
        }
    };
    save_toml(&run.dir.join("config.toml"), resolved)?;
    let mut progress = Progress::new(
        &run.dir,
        run.resume.then_some(state.step),
        run.show_progress,
    )?;

    // Only a frozen backbone's features can be reused; an `Off` cache still counts the
    // backbone passes for the report.
    let kind = if task.backbone_frozen() {
        cfg.feature_cache
    } else {
        CacheKind::Off
    };
    let cache_dir = run.dir.join("feature_cache");
    let train_cache = FeatureCache::new(kind, cache_dir.join("train"), !run.resume, &run.device)?;
    let val_cache = FeatureCache::new(kind, cache_dir.join("val"), !run.resume, &run.device)?;
    let frozen = kind != CacheKind::Off;
    let views = frozen.then(|| train.cached_views());
    let micro = cfg.micro();
    let mut stopped_early = false;
    let mut last_metrics = None;
    let mut steps_this_run = 0u64;
    let mut interrupted = false;
    let save_last = |state: &TrainState, optimizer: &AdamW| {
        checkpoint::save(
            &run.last_checkpoint(),
            params,
            optimizer,
            state,
            &config_json,
        )
    };

    while !state.finished && state.epoch < cfg.epochs {
        let epoch = state.epoch;
        let order = rng::epoch_order(cfg.seed, epoch, train.len());
        let batches: Vec<Vec<Key>> = order
            .chunks(cfg.batch)
            .skip(state.batch)
            .map(|b| {
                b.iter()
                    .map(|&i| (i, rng::view(cfg.seed, epoch, i, views)))
                    .collect()
            })
            .collect();
        progress.start_epoch(epoch, cfg.epochs, steps_per_epoch, state.batch as u64);
        let cache = Some(&train_cache);
        let need = |k: &Key| !train_cache.contains(*k);
        let first_batch = state.batch;
        let result = prefetched(train, batches, &need, |i, mut loaded| {
            let started = Instant::now();
            let targets: Vec<&T::Target> = loaded.targets.iter().collect();
            let step = state.step;
            let (loss_value, mut grads) = batch_gradients(
                task,
                cache,
                &loaded.keys,
                &mut loaded.inputs,
                &targets,
                micro,
                step,
            )
            .with_context(|| {
                format!(
                    "epoch {}, batch {}; the last good checkpoint is {}",
                    epoch + 1,
                    first_batch + i,
                    run.last_checkpoint().display()
                )
            })?;
            let grad_norm = match cfg.clip_norm {
                Some(max) => grads.clip(max)?,
                None => grads.global_norm()?,
            };
            let lr = schedule.lr(state.step);
            optimizer
                .step(&grads, lr)
                .with_context(|| format!("step {}", state.step + 1))?;
            state.step += 1;
            state.batch = first_batch + i + 1;
            steps_this_run += 1;
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            progress.step(StepRecord {
                step: state.step,
                epoch,
                loss: loss_value,
                lr,
                samples_per_s: loaded.keys.len() as f64 / secs,
                grad_norm,
            })?;
            if cfg.checkpoint_every.is_some_and(|k| state.step % k == 0) {
                save_last(&state, &optimizer)?;
            }
            if run.stop_after.is_some_and(|n| steps_this_run >= n) {
                interrupted = true;
                save_last(&state, &optimizer)?;
                bail!(Interrupted);
            }
            Ok(())
        });
        progress.finish_epoch();
        if let Err(e) = result {
            if interrupted {
                break;
            }
            return Err(e);
        }
        state.epoch += 1;
        state.batch = 0;
        let last_epoch = state.epoch == cfg.epochs;
        if let Some(val) = val.filter(|_| state.epoch % cfg.eval_every == 0 || last_epoch) {
            let metrics = evaluate(task, val, cfg.batch, Some(&val_cache))?;
            let main = *metrics
                .get(task.main_metric())
                .with_context(|| format!("the task reported no `{}` metric", task.main_metric()))?;
            progress.eval(EvalRecord {
                step: state.step,
                epoch: state.epoch - 1,
                metrics: metrics.clone(),
            })?;
            last_metrics = Some(metrics);
            if state.best_metric.is_none_or(|b| main > b) {
                state.best_metric = Some(main);
                state.best_step = Some(state.step);
                state.evals_since_best = 0;
                checkpoint::save(
                    &run.best_checkpoint(),
                    params,
                    &optimizer,
                    &state,
                    &config_json,
                )?;
            } else {
                state.evals_since_best += 1;
                if cfg.patience.is_some_and(|p| state.evals_since_best >= p) {
                    progress.println(&format!(
                        "early stop: no better {} in {} evaluations (best {main:.4} at step {})",
                        task.main_metric(),
                        state.evals_since_best,
                        state.best_step.unwrap_or(0)
                    ));
                    stopped_early = true;
                    state.finished = true;
                }
            }
        }
        if last_epoch {
            state.finished = true;
        }
        save_last(&state, &optimizer)?;
    }
    let plots = if state.finished {
        plot_run(&run.dir)?
    } else {
        Vec::new()
    };
    let best = run.best_checkpoint();
    Ok(FitReport {
        steps: state.step,
        finished: state.finished,
        stopped_early,
        best_metric: state.best_metric,
        best_step: state.best_step,
        last_metrics,
        backbone_forwards: train_cache.encoded(),
        last_checkpoint: run.last_checkpoint(),
        best_checkpoint: best.is_file().then_some(best),
        plots,
    })
}

/// The marker error that ends an invocation at `RunOptions::stop_after`.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted")
    }
}

impl std::error::Error for Interrupted {}
