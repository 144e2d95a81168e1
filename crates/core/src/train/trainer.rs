//! The training loop: batches in a seeded order (of similar-length examples where the data set
//! knows lengths), gradients (accumulated over micro-batches),
//! clipping, the scheduled AdamW step, the weight average if asked, checkpoints, and
//! evaluation every few epochs or steps (of the average, where there is one) with the best
//! checkpoint kept and early stopping on the task's main metric. It holds the
//! run folder's lock while it runs. A checkpoint saved at a step comes after that step's
//! evaluation and records how much of the log it covers, so that a run killed anywhere and
//! resumed ends exactly where an uninterrupted one does; a finished run resumed with a longer
//! budget goes on from the batch after its last step.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::Serialize;

use super::checkpoint::{self, TrainState};
use super::config::{save_toml, TrainConfig};
use super::data::{prefetched, Dataset, Subset};
use super::ema::Ema;
use super::feature_cache::{features_for, CacheKind, FeatureCache, Key};
use super::inference::evaluate;
use super::metrics_log::{EvalRecord, ResumeAt, StepRecord};
use super::optimizer::{AdamW, Grads};
use super::plot::plot_run;
use super::progress::Progress;
use super::rng::{self, Phase};
use super::scheduler::WarmupCosine;
use super::task::{Metrics, Task};

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
        checkpoint::last_path(&self.dir)
    }

    pub fn best_checkpoint(&self) -> PathBuf {
        checkpoint::best_path(&self.dir)
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

/// The loss of one batch and the gradients of the trainable parameters, computed in passes
/// of `micro` examples whose gradients are summed. Each pass's summed loss is divided by the
/// whole batch's loss weight, so the result equals one pass over the whole batch. Dropout
/// draws from `seed` and `step` per example, so the split does not change it either.
#[allow(clippy::too_many_arguments)]
pub fn batch_gradients<T: Task>(
    task: &T,
    cache: Option<&FeatureCache>,
    keys: &[Key],
    inputs: &mut [Option<T::Input>],
    targets: &[&T::Target],
    micro: usize,
    seed: u64,
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
        let micro_keys = &keys[start..end];
        let feats = features_for(
            task,
            cache,
            micro_keys,
            &mut inputs[start..end],
            Some((seed, step)),
        )?;
        let loss = rng::training_pass(seed, step, Phase::Head, micro_keys, || {
            task.loss(&feats.iter().collect::<Vec<_>>(), &targets[start..end])
        })?;
        let loss = (loss / total_weight)?;
        let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            bail!("the loss is {value} at step {step}; stopping");
        }
        loss_value += value;
        grads.accumulate(params, &loss.backward()?)?;
    }
    Ok((loss_value, grads))
}

/// The validation side of a run: which examples, in which batches, with their own cache.
struct Validation<'a, V> {
    data: Subset<'a, V>,
    cache: FeatureCache,
    batch: usize,
    with_loss: bool,
}

/// What one evaluation decided.
enum Verdict {
    Continue,
    /// Patience ran out.
    Stop,
}

/// Why the loop over an epoch's batches ended before the epoch did.
#[derive(Debug)]
enum Halt {
    /// `RunOptions::stop_after` was reached.
    Interrupted,
    /// Early stopping after a mid-epoch evaluation.
    Stopped,
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for Halt {}

/// Everything a step or an evaluation updates, in one place for both.
struct Run<'a, T: Task> {
    task: &'a T,
    cfg: &'a TrainConfig,
    options: &'a RunOptions,
    config_json: serde_json::Value,
    optimizer: AdamW,
    ema: Option<Ema>,
    state: TrainState,
    progress: Progress,
    last_metrics: Option<Metrics>,
}

impl<T: Task> Run<'_, T> {
    fn save_last(&self) -> Result<()> {
        // With the log's length, so that a resumed run keeps exactly the records this state
        // has seen (an evaluation logged after this save belongs to the part a kill loses).
        let state = TrainState {
            log_records: Some(self.progress.records()),
            ..self.state.clone()
        };
        checkpoint::save(
            &self.options.last_checkpoint(),
            self.task.params(),
            &self.optimizer,
            self.ema.as_ref(),
            &state,
            &self.config_json,
        )
    }

    /// Evaluates, logs, keeps the best checkpoint and counts towards early stopping; with a
    /// weight average, all of it on the average.
    fn evaluate<V>(&mut self, val: &Validation<V>) -> Result<Verdict>
    where
        V: Dataset<Input = T::Input, Target = T::Target>,
    {
        match self.ema.take() {
            Some(ema) => {
                let verdict = ema.with_averaged(self.task.params(), || self.evaluate_now(val));
                self.ema = Some(ema);
                verdict
            }
            None => self.evaluate_now(val),
        }
    }

    fn evaluate_now<V>(&mut self, val: &Validation<V>) -> Result<Verdict>
    where
        V: Dataset<Input = T::Input, Target = T::Target>,
    {
        let task = self.task;
        let metrics = evaluate(task, &val.data, val.batch, Some(&val.cache), val.with_loss)?;
        self.state.last_eval_step = Some(self.state.step);
        let main = *metrics
            .get(task.main_metric())
            .with_context(|| format!("the task reported no `{}` metric", task.main_metric()))?;
        // The epoch of the last step: at an epoch's end the state already points at the next.
        let epoch = match self.state.batch {
            0 => self.state.epoch.saturating_sub(1),
            _ => self.state.epoch,
        };
        self.progress.eval(EvalRecord {
            step: self.state.step,
            epoch,
            metrics: metrics.clone(),
        })?;
        self.last_metrics = Some(metrics);
        let state = &mut self.state;
        if state.best_metric.is_none_or(|b| main > b) {
            state.best_metric = Some(main);
            state.best_step = Some(state.step);
            state.evals_since_best = 0;
            checkpoint::save(
                &self.options.best_checkpoint(),
                task.params(),
                &self.optimizer,
                None,
                state,
                &self.config_json,
            )?;
            return Ok(Verdict::Continue);
        }
        state.evals_since_best += 1;
        if self
            .cfg
            .patience
            .is_some_and(|p| state.evals_since_best >= p)
        {
            self.progress.println(&format!(
                "early stop: no better {} in {} evaluations (best {:.4} at step {})",
                task.main_metric(),
                state.evals_since_best,
                state.best_metric.unwrap_or(main),
                state.best_step.unwrap_or(0)
            ));
            state.finished = true;
            return Ok(Verdict::Stop);
        }
        Ok(Verdict::Continue)
    }
}

/// Trains `task` on `train`, evaluating on `val`, as `cfg` says; `resolved` is the whole
/// configuration of the run (task settings included), saved with it.
pub fn fit<T, D, V, C>(
    task: &T,
    train: &D,
    val: Option<&V>,
    cfg: &TrainConfig,
    resolved: &C,
    options: &RunOptions,
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
    let dir = &options.dir;
    let _lock = super::lock::acquire(dir)?;
    // A run that trains has not finished until it writes its result again.
    match std::fs::remove_file(dir.join(super::result::RESULT_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}'s old result", dir.display()))
        }
        _ => {}
    }
    let params = task.params();
    let mut optimizer = AdamW::new(params, cfg.optimizer.clone())?;
    let mut ema = cfg.ema.map(|d| Ema::new(params, d)).transpose()?;
    let steps_per_epoch = train.len().div_ceil(cfg.batch) as u64;
    let lengths: Option<Vec<usize>> = if cfg.group_by_length {
        (0..train.len()).map(|i| train.length(i)).collect()
    } else {
        None
    };
    // A budget of steps sets the epochs; its last epoch may be cut short.
    let epochs = match cfg.steps {
        Some(s) => s.div_ceil(steps_per_epoch) as usize,
        None => cfg.epochs,
    };
    let total_steps = cfg.steps.unwrap_or(steps_per_epoch * epochs as u64);
    let schedule = WarmupCosine {
        base_lr: cfg.lr,
        warmup_steps: cfg
            .warmup_steps
            .unwrap_or((total_steps as f64 * cfg.warmup_fraction).round() as u64),
        total_steps,
        min_lr_ratio: cfg.min_lr_ratio,
    };

    let state = if options.resume {
        let path = options.last_checkpoint();
        let ck = checkpoint::load(&path, &options.device).with_context(|| {
            format!(
                "cannot resume from {}: put back an undamaged copy of that file, or start the \
                 run again without --resume (its best checkpoint, if any, still serves `eval` \
                 and `predict`)",
                path.display()
            )
        })?;
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
        if let Some(ema) = &mut ema {
            ema.load_state(&ck.tensors)
                .with_context(|| format!("resuming from {}", path.display()))?;
        }
        let mut state = ck.state;
        // A finished run resumed with a longer budget (or, if it stopped early, a larger
        // patience) goes on, from the batch after its last step: a step budget may have cut
        // its last epoch short, and the position then already points at the next epoch.
        // Resumed as it was, it stays finished.
        let stopped = cfg.patience.is_some_and(|p| state.evals_since_best >= p);
        if state.finished && state.step < total_steps && !stopped {
            state.finished = false;
            state.epoch = (state.step / steps_per_epoch) as usize;
            state.batch = (state.step % steps_per_epoch) as usize;
        }
        state
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
            last_eval_step: None,
            log_records: None,
        }
    };
    save_toml(&dir.join("config.toml"), resolved)?;
    let resume_at = options.resume.then_some(ResumeAt {
        step: state.step,
        records: state.log_records,
    });
    // Only the last checkpoint carries the count (set as it is saved): the state in memory,
    // and the best checkpoint written from it, must not keep a stale one.
    let state = TrainState {
        log_records: None,
        ..state
    };
    let progress = Progress::new(dir, resume_at, options.show_progress)?;

    // Only a frozen backbone's features can be reused; an `Off` cache still counts the
    // backbone passes for the report.
    let kind = if task.backbone_frozen() {
        cfg.feature_cache
    } else {
        CacheKind::Off
    };
    let cache_dir = dir.join("feature_cache");
    let fresh = !options.resume;
    let train_cache = FeatureCache::new(kind, cache_dir.join("train"), fresh, &options.device)?;
    let validation = match val {
        Some(v) => Some(Validation {
            data: Subset::spread(v, cfg.eval_subset.unwrap_or(usize::MAX)),
            cache: FeatureCache::new(kind, cache_dir.join("val"), fresh, &options.device)?,
            batch: cfg.eval_batch.unwrap_or(cfg.batch),
            with_loss: cfg.val_loss,
        }),
        None => None,
    };
    let views = (kind != CacheKind::Off).then(|| train.cached_views());
    let micro = cfg.micro();
    let mut run = Run {
        task,
        cfg,
        options,
        config_json: serde_json::to_value(resolved)?,
        optimizer,
        ema,
        state,
        progress,
        last_metrics: None,
    };
    let mut steps_this_run = 0u64;
    let mut stopped_early = false;

    while !run.state.finished && run.state.epoch < epochs {
        let epoch = run.state.epoch;
        let batches: Vec<Vec<Key>> =
            rng::epoch_batches(cfg.seed, epoch, train.len(), cfg.batch, lengths.as_deref())
                .into_iter()
                .skip(run.state.batch)
                .take(total_steps.saturating_sub(run.state.step) as usize)
                .map(|b| {
                    b.iter()
                        .map(|&i| (i, rng::view(cfg.seed, epoch, i, views)))
                        .collect()
                })
                .collect();
        run.progress
            .start_epoch(epoch, epochs, steps_per_epoch, run.state.batch as u64);
        let need = |k: &Key| !train_cache.contains(*k);
        let first_batch = run.state.batch;
        let result = prefetched(train, batches, &need, |i, mut loaded| {
            let started = Instant::now();
            let targets: Vec<&T::Target> = loaded.targets.iter().collect();
            let step = run.state.step;
            let (loss_value, mut grads) = batch_gradients(
                task,
                Some(&train_cache),
                &loaded.keys,
                &mut loaded.inputs,
                &targets,
                micro,
                cfg.seed,
                step,
            )
            .with_context(|| {
                format!(
                    "epoch {}, batch {}; the last good checkpoint is {}",
                    epoch + 1,
                    first_batch + i,
                    options.last_checkpoint().display()
                )
            })?;
            let grad_norm = match cfg.clip_norm {
                Some(max) => grads.clip(max)?,
                None => grads.global_norm()?,
            };
            let lr = schedule.lr(step);
            run.optimizer
                .step(&grads, lr)
                .with_context(|| format!("step {}", step + 1))?;
            if let Some(ema) = &mut run.ema {
                ema.update(task.params())?;
            }
            run.state.step += 1;
            run.state.batch = first_batch + i + 1;
            steps_this_run += 1;
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            run.progress.step(StepRecord {
                step: run.state.step,
                epoch,
                loss: loss_value,
                lr,
                samples_per_s: loaded.keys.len() as f64 / secs,
                grad_norm,
            })?;
            // Evaluated before the save of the same step, so that the checkpoint includes
            // what the evaluation changed (best metric, patience).
            if let Some(val) = &validation {
                if cfg
                    .eval_every_steps
                    .is_some_and(|k| run.state.step.is_multiple_of(k))
                {
                    if let Verdict::Stop = run.evaluate(val)? {
                        run.save_last()?;
                        bail!(Halt::Stopped);
                    }
                }
            }
            if cfg
                .checkpoint_every
                .is_some_and(|k| run.state.step.is_multiple_of(k))
            {
                run.save_last()?;
            }
            if options.stop_after.is_some_and(|n| steps_this_run >= n) {
                run.save_last()?;
                bail!(Halt::Interrupted);
            }
            Ok(())
        });
        run.progress.finish_epoch();
        if let Err(e) = result {
            match e.downcast_ref::<Halt>() {
                Some(Halt::Stopped) => {
                    stopped_early = true;
                    break;
                }
                Some(Halt::Interrupted) => break,
                None => return Err(e),
            }
        }
        run.state.epoch += 1;
        run.state.batch = 0;
        let last_epoch = run.state.epoch == epochs || run.state.step >= total_steps;
        let due = run.state.epoch.is_multiple_of(cfg.eval_every) || last_epoch;
        let already = run.state.last_eval_step == Some(run.state.step);
        let mut evaluated = false;
        if let Some(val) = validation.as_ref().filter(|_| due && !already) {
            evaluated = true;
            if let Verdict::Stop = run.evaluate(val)? {
                stopped_early = true;
            }
        }
        if last_epoch {
            run.state.finished = true;
        }
        // With a step interval an epoch's end is saved only when it evaluated (or the run
        // ends): on a small data set an epoch is a step or two, and a full-mode checkpoint
        // (weights and moments) costs more than one.
        if cfg.checkpoint_every.is_none() || evaluated || run.state.finished || stopped_early {
            run.save_last()?;
        }
    }
    let plots = if run.state.finished {
        plot_run(dir, &task.plotted_metrics())?
    } else {
        Vec::new()
    };
    let best = options.best_checkpoint();
    Ok(FitReport {
        steps: run.state.step,
        finished: run.state.finished,
        stopped_early,
        best_metric: run.state.best_metric,
        best_step: run.state.best_step,
        last_metrics: run.last_metrics,
        backbone_forwards: train_cache.encoded(),
        last_checkpoint: options.last_checkpoint(),
        best_checkpoint: best.is_file().then_some(best),
        plots,
    })
}
