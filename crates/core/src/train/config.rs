//! Run configuration: a TOML file, command-line overrides on top, and the resolved result
//! saved with the run; on `--resume`, the run's own saved configuration. The pieces every task
//! shares (the engine's settings, where the data is, the run folder) are defined here once.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::feature_cache::CacheKind;
use super::optimizer::AdamWConfig;
use crate::params::Freeze;

/// The settings every task's training shares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// A named backbone (`dinov2-s14`, `minilm-l6`) or a Hugging Face-layout folder.
    pub backbone: String,
    /// `frozen`, `full` or `partial:N`.
    pub mode: Freeze,
    pub epochs: usize,
    /// Train for exactly this many optimizer steps instead of `epochs` (the epochs follow; the
    /// last may be cut short): an equal budget across data-set sizes.
    pub steps: Option<u64>,
    /// Examples per optimizer step.
    pub batch: usize,
    /// Examples per forward/backward pass; gradients of `batch / micro_batch` passes are
    /// summed into one step. Equal to `batch` unless memory is short.
    pub micro_batch: Option<usize>,
    /// Peak learning rate (of the head and the top block).
    pub lr: f64,
    /// Warm-up steps; if absent, `warmup_fraction` of all steps.
    pub warmup_steps: Option<u64>,
    pub warmup_fraction: f64,
    /// Final rate as a fraction of `lr`.
    pub min_lr_ratio: f64,
    pub optimizer: AdamWConfig,
    /// Clip gradients to this global L2 norm.
    pub clip_norm: Option<f64>,
    /// Evaluate and keep an exponential moving average of the weights with this decay
    /// ([`super::ema`]); none by default.
    pub ema: Option<f64>,
    pub seed: u64,
    /// Evaluate every this many epochs (and after the last).
    pub eval_every: usize,
    /// Also evaluate every this many optimizer steps.
    pub eval_every_steps: Option<u64>,
    /// Examples per evaluation batch (default: `batch`).
    pub eval_batch: Option<usize>,
    /// Evaluate during training on this many validation examples, spread evenly over the set
    /// and the same every time (default: all of them).
    pub eval_subset: Option<usize>,
    /// Report the loss on the validation set with each evaluation (`val_loss`).
    pub val_loss: bool,
    /// Stop after this many evaluations without improvement.
    pub patience: Option<usize>,
    /// Save the last checkpoint every this many steps instead of at every epoch's end (an
    /// epoch's end is still saved when it evaluated, and the run's end always): for data sets
    /// whose epochs are a few steps long.
    pub checkpoint_every: Option<u64>,
    pub feature_cache: CacheKind,
    /// Batch examples of similar length together where the data set knows lengths (text), so
    /// that little of a batch is padding.
    pub group_by_length: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            backbone: crate::backbone::DEFAULT_VISION.into(),
            mode: Freeze::Frozen,
            epochs: 10,
            steps: None,
            batch: 16,
            micro_batch: None,
            lr: 1e-3,
            warmup_steps: None,
            warmup_fraction: 0.05,
            min_lr_ratio: 0.01,
            optimizer: AdamWConfig::default(),
            clip_norm: Some(1.0),
            ema: None,
            seed: 0,
            eval_every: 1,
            eval_every_steps: None,
            eval_batch: None,
            eval_subset: None,
            val_loss: true,
            patience: None,
            checkpoint_every: None,
            feature_cache: CacheKind::Memory,
            group_by_length: true,
        }
    }
}

impl TrainConfig {
    pub fn micro(&self) -> usize {
        self.micro_batch
            .unwrap_or(self.batch)
            .clamp(1, self.batch.max(1))
    }

    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(self.batch > 0, "batch must be at least 1");
        anyhow::ensure!(self.epochs > 0, "epochs must be at least 1");
        anyhow::ensure!(self.steps != Some(0), "steps must be at least 1");
        anyhow::ensure!(
            self.lr > 0.0 && self.lr.is_finite(),
            "lr must be a positive number"
        );
        anyhow::ensure!(self.eval_every > 0, "eval_every must be at least 1");
        anyhow::ensure!(
            self.eval_every_steps != Some(0),
            "eval_every_steps must be at least 1"
        );
        anyhow::ensure!(self.eval_batch != Some(0), "eval_batch must be at least 1");
        anyhow::ensure!(
            self.eval_subset != Some(0),
            "eval_subset must be at least 1"
        );
        anyhow::ensure!(
            self.ema.is_none_or(|d| d > 0.0 && d < 1.0),
            "ema must be a decay in (0, 1)"
        );
        anyhow::ensure!(
            self.optimizer.layer_decay > 0.0 && self.optimizer.layer_decay <= 1.0,
            "layer_decay must be in (0, 1]"
        );
        anyhow::ensure!(
            self.optimizer.backbone_lr_scale > 0.0 && self.optimizer.backbone_lr_scale.is_finite(),
            "backbone_lr_scale must be positive"
        );
        Ok(())
    }
}

/// Command-line overrides of [`TrainConfig`], shared by every task's `train` command.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TrainArgs {
    /// TOML configuration file; flags given on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Backbone (`--encoder` for a translator): a model name (dinov2-s14, minilm-l6) or a
    /// Hugging Face-layout folder; `scratch:NAME` for its architecture with random weights.
    #[arg(long, alias = "encoder")]
    pub backbone: Option<String>,
    /// Fine-tuning mode: frozen (head only; small data), full (everything; large data),
    /// partial:N (last N blocks and the head).
    #[arg(long)]
    pub mode: Option<Freeze>,
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Train for exactly N optimizer steps (instead of --epochs).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Examples per optimizer step.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Examples per forward pass (gradient accumulation when smaller than --batch).
    #[arg(long)]
    pub micro_batch: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// Layer-wise learning-rate decay: each block learns at this times the rate of the one
    /// above (default 0.8; 1 = none).
    #[arg(long)]
    pub layer_decay: Option<f64>,
    /// The backbone's learning rate as a multiple of the head's (default 0.05, which keeps a
    /// pretrained backbone intact; 0.25 to 1 for one trained from random weights).
    #[arg(long)]
    pub backbone_lr_scale: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Gradient clipping by global norm.
    #[arg(long)]
    pub clip_norm: Option<f64>,
    /// Evaluate and keep a moving average of the weights with this decay (e.g. 0.99).
    #[arg(long, value_name = "DECAY")]
    pub ema: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Early stopping: evaluations without improvement before stopping.
    #[arg(long)]
    pub patience: Option<usize>,
    /// Evaluate every N epochs (and after the last).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Also evaluate every N optimizer steps.
    #[arg(long)]
    pub eval_every_steps: Option<u64>,
    /// Examples per evaluation batch.
    #[arg(long)]
    pub eval_batch: Option<usize>,
    /// Evaluate during training on N validation examples spread over the set.
    #[arg(long)]
    pub eval_subset: Option<usize>,
    /// Save the last checkpoint every N steps instead of at every epoch's end.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Where frozen-backbone features are cached.
    #[arg(long, value_enum)]
    pub feature_cache: Option<CacheKind>,
}

/// Where training and validation data come from: the `[data]` section of every task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// The training data (a file, a folder or a named data set); the task's built-in set if
    /// absent.
    pub train: Option<PathBuf>,
    /// Validation data in the same forms; if absent, `val_fraction` of the training data.
    pub val: Option<PathBuf>,
    pub val_fraction: Option<f64>,
    /// Train on this many of the training examples: the first of a permutation fixed by
    /// `subset_seed`, so that growing limits give nested subsets (data-size studies).
    pub train_limit: Option<usize>,
    pub subset_seed: u64,
    /// Validate on this many of the validation examples, spread evenly over the set (the same
    /// ones every time): a quick check's budget, not a measurement. All of them if absent.
    pub val_limit: Option<usize>,
}

impl DataConfig {
    /// Which of `n` training items to keep under `train_limit`, in their original order
    /// (`None`: all of them).
    pub fn kept(&self, n: usize) -> Option<Vec<bool>> {
        let limit = self.train_limit?;
        let mut keep = vec![false; n];
        for i in super::rng::epoch_order(self.subset_seed, 0, n)
            .into_iter()
            .take(limit)
        {
            keep[i] = true;
        }
        Some(keep)
    }

    /// Which of `n` validation items to keep under `val_limit`: evenly spread, as the engine's
    /// evaluation subset, so that a limited set still covers the whole split (`None`: all).
    pub fn val_kept(&self, n: usize) -> Option<Vec<bool>> {
        let limit = self.val_limit?;
        let mut keep = vec![false; n];
        for i in spread(n, limit) {
            keep[i] = true;
        }
        Some(keep)
    }

    /// The share of the training data held out when no validation set is given (default 0.2).
    pub fn holdout_fraction(&self) -> Result<f64> {
        let f = self.val_fraction.unwrap_or(0.2);
        anyhow::ensure!(
            f > 0.0 && f < 1.0,
            "val_fraction must be between 0 and 1, not {f}"
        );
        Ok(f)
    }
}

/// `k` indices spread evenly over `0..n` (all of them when `k >= n`), in order.
pub fn spread(n: usize, k: usize) -> Vec<usize> {
    if k >= n {
        (0..n).collect()
    } else {
        (0..k).map(|i| i * n / k).collect()
    }
}

/// Every `k`-th of `n` items in a stable order, `k = round(1 / fraction)`: which items validate
/// when no validation set is given, deterministic and spread over the whole set.
pub fn holdout(n: usize, fraction: f64) -> Vec<bool> {
    let k = (1.0 / fraction).round().max(2.0) as usize;
    (0..n).map(|i| (i + 1) % k == 0).collect()
}

/// Command-line flags for the data, shared by every task's `train` command.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct DataArgs {
    /// Training data: a file, a folder, or a named data set (default: the built-in set).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation data (default: a share of the training data, `val_fraction`).
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Train on N of the training examples (a fixed selection; growing N gives nested sets).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Validate on N of the validation examples, spread over the set (a quick check).
    #[arg(long)]
    pub val_limit: Option<usize>,
}

impl DataArgs {
    pub fn apply(&self, cfg: &mut DataConfig) {
        if self.data.is_some() {
            cfg.train = self.data.clone();
        }
        if self.val.is_some() {
            cfg.val = self.val.clone();
        }
        if self.train_limit.is_some() {
            cfg.train_limit = self.train_limit;
        }
        if self.val_limit.is_some() {
            cfg.val_limit = self.val_limit;
        }
    }
}

/// A task's whole run configuration, as its `config.toml` holds it.
pub trait RunConfig: Serialize + DeserializeOwned + Default {
    fn train_mut(&mut self) -> &mut TrainConfig;

    /// A configuration file; the fields it leaves out keep the task's defaults.
    fn load(path: &Path) -> Result<Self> {
        load_toml_over(path, &Self::default())
    }
}

/// Fields a resumed run may change: how long it goes on (extended only, in the same unit),
/// when it evaluates, stops early and saves; none of them changes what a step computes. (Not
/// the feature cache: with it off, a frozen backbone sees fresh augmented views instead of
/// the cached ones.) (A longer budget stretches the rest of the learning-rate schedule: that is what
/// extending asks for.)
pub const RESUME_SAFE: &[&str] = &[
    "train.epochs",
    "train.steps",
    "train.patience",
    "train.eval_every",
    "train.eval_every_steps",
    "train.eval_batch",
    "train.checkpoint_every",
];

/// The configuration a `train` command runs with. A new run: the `--config` file (or the task's
/// defaults), the engine's flags on top, then the task's own (`apply`). A resumed run: the
/// configuration saved in its folder, with the flags given on top only where they leave the
/// result as it was ([`RESUME_SAFE`], the budget only extended); any other difference is an
/// error naming the fields, since the run would silently become one that nobody asked for.
pub fn resolve<C: RunConfig>(
    train: &TrainArgs,
    run: &RunArgs,
    dir: &Path,
    apply: impl FnOnce(&mut C),
) -> Result<C> {
    let given = |base: Option<&Path>| -> Result<C> {
        let mut cfg = match base {
            Some(path) => C::load(path)?,
            None => C::default(),
        };
        train.apply(cfg.train_mut());
        Ok(cfg)
    };
    if !run.resume {
        let mut cfg = given(train.config.as_deref())?;
        apply(&mut cfg);
        return Ok(cfg);
    }
    let path = dir.join("config.toml");
    let load_saved = || {
        C::load(&path)
            .with_context(|| format!("--resume needs the run's configuration, {}", path.display()))
    };
    let mut saved = load_saved()?;
    let mut asked = given(Some(train.config.as_deref().unwrap_or(&path)))?;
    apply(&mut asked);
    let changed = differences(&saved, &asked)?;
    let unsafe_changes: Vec<&String> = changed
        .iter()
        .filter(|f| !RESUME_SAFE.contains(&f.as_str()))
        .collect();
    if !unsafe_changes.is_empty() {
        bail!(
            "--resume with a changed configuration: {} differ from the run's ({}), and would \
             change its result. Resume without them, or start a new run (another --name). \
             Only these may change on --resume: {}",
            list(&unsafe_changes),
            path.display(),
            RESUME_SAFE.join(", ")
        );
    }
    let (was, now) = (saved.train_mut().clone(), asked.train_mut().clone());
    let shorter = match (was.steps, now.steps) {
        (Some(a), Some(b)) => b < a,
        (None, None) => now.epochs < was.epochs,
        // A budget in steps for one in epochs (or back) is no extension of it.
        _ => true,
    };
    if shorter {
        bail!(
            "--resume can extend a run's budget in the unit it was given, not shorten or \
             replace it ({}: epochs {}, steps {:?})",
            path.display(),
            was.epochs,
            was.steps
        );
    }
    if !changed.is_empty() {
        eprintln!(
            "resuming with {} changed",
            list(&changed.iter().collect::<Vec<_>>())
        );
    }
    Ok(asked)
}

fn list(fields: &[&String]) -> String {
    fields
        .iter()
        .map(|f| format!("`{f}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The dotted names of the fields whose values differ between two configurations (a field
/// absent on one side differs from any value on the other).
pub fn differences<C: Serialize>(a: &C, b: &C) -> Result<Vec<String>> {
    let a = toml::Table::try_from(a).context("serialising the configuration")?;
    let b = toml::Table::try_from(b).context("serialising the configuration")?;
    let mut out = Vec::new();
    diff_tables("", &a, &b, &mut out);
    out.sort();
    Ok(out)
}

fn diff_tables(prefix: &str, a: &toml::Table, b: &toml::Table, out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let name = format!("{prefix}{k}");
        match (a.get(k), b.get(k)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                diff_tables(&format!("{name}."), x, y, out)
            }
            (x, y) if x == y => {}
            _ => out.push(name),
        }
    }
}

/// Where a run's folder is and whether it continues an earlier one.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Run name: output goes to RUNS_DIR/<task>/<name>/.
    #[arg(long, default_value = "default")]
    pub name: String,
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Continue the run from its last checkpoint, with the configuration it was started with.
    #[arg(long)]
    pub resume: bool,
}

impl RunArgs {
    /// The run a task's binary makes when called without arguments: `runs/<task>/demo`.
    pub fn demo() -> Self {
        Self {
            name: "demo".into(),
            runs_dir: "runs".into(),
            resume: false,
        }
    }

    pub fn dir(&self, task: &str) -> PathBuf {
        self.runs_dir.join(task).join(&self.name)
    }
}

impl TrainArgs {
    /// Applies the flags that were given on top of `cfg`.
    pub fn apply(&self, cfg: &mut TrainConfig) {
        macro_rules! set {
            ($($field:ident),*) => {$(if let Some(v) = &self.$field { cfg.$field = v.clone().into(); })*};
        }
        macro_rules! set_some {
            ($($field:ident),*) => {$(if let Some(v) = self.$field { cfg.$field = Some(v); })*};
        }
        set!(
            backbone,
            mode,
            epochs,
            batch,
            lr,
            seed,
            feature_cache,
            eval_every
        );
        set_some!(
            steps,
            micro_batch,
            warmup_steps,
            clip_norm,
            ema,
            patience,
            checkpoint_every,
            eval_every_steps,
            eval_batch,
            eval_subset
        );
        if let Some(v) = self.layer_decay {
            cfg.optimizer.layer_decay = v;
        }
        if let Some(v) = self.weight_decay {
            cfg.optimizer.weight_decay = v;
        }
        if let Some(v) = self.backbone_lr_scale {
            cfg.optimizer.backbone_lr_scale = v;
        }
    }
}

/// Reads a TOML configuration; errors name the file and the offending line.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Reads a TOML configuration whose missing fields, at any depth, keep their values in
/// `defaults`: a task's own defaults (a detector's learning rate, say) survive a file that sets
/// only some fields of a section, where plain deserialisation would fall back to the generic
/// defaults of that section's type.
pub fn load_toml_over<T: Serialize + DeserializeOwned>(path: &Path, defaults: &T) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let err = |e: toml::de::Error| anyhow::anyhow!("{}: {e}", path.display());
    // Parsed once as written, so that a mistake is reported with its line.
    toml::from_str::<T>(&text).map_err(err)?;
    let given: toml::Table = toml::from_str(&text).map_err(err)?;
    let mut merged = toml::Table::try_from(defaults).context("serialising the defaults")?;
    overlay(&mut merged, given);
    merged
        .try_into()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn overlay(base: &mut toml::Table, given: toml::Table) {
    for (key, value) in given {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(v)) => overlay(inner, v),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

/// Writes the resolved configuration as TOML, atomically.
pub fn save_toml<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = toml::to_string_pretty(value).context("serialising the configuration")?;
    crate::atomic::write(path, text.as_bytes())
}

#[cfg(test)]
mod tests {

    #[test]
    fn hostile_configurations_load_or_fail_never_panic() {
        let valid = toml::to_string_pretty(&TrainConfig::default()).unwrap();
        crate::faults::mutate::never_panics(
            "config",
            "config.toml",
            valid.as_bytes(),
            3,
            400,
            |p: &Path| load_toml_over(p, &TrainConfig::default()),
        );
    }
    use super::*;

    #[test]
    fn file_values_are_overridden_by_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(
            &path,
            "epochs = 3\nlr = 0.01\nmode = \"partial:2\"\n[optimizer]\nlayer_decay = 0.7\n",
        )
        .unwrap();
        let mut cfg: TrainConfig = load_toml(&path).unwrap();
        assert_eq!(
            (cfg.epochs, cfg.lr, cfg.mode),
            (3, 0.01, Freeze::Partial(2))
        );
        assert_eq!(cfg.optimizer.layer_decay, 0.7);
        assert_eq!(
            cfg.optimizer.beta2, 0.999,
            "unset fields keep their defaults"
        );
        let args = TrainArgs {
            epochs: Some(5),
            mode: Some(Freeze::Full),
            ..Default::default()
        };
        args.apply(&mut cfg);
        assert_eq!((cfg.epochs, cfg.lr, cfg.mode), (5, 0.01, Freeze::Full));
        save_toml(&dir.path().join("resolved.toml"), &cfg).unwrap();
        let back: TrainConfig = load_toml(&dir.path().join("resolved.toml")).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "epochs = 3\nlearning_rate = 0.1\n").unwrap();
        let err = load_toml::<TrainConfig>(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.toml") && err.contains("learning_rate"),
            "{err}"
        );
    }

    #[test]
    fn a_partial_file_keeps_the_given_defaults_at_every_depth() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial.toml");
        std::fs::write(&path, "epochs = 3\n[optimizer]\nlayer_decay = 0.7\n").unwrap();
        let task_defaults = TrainConfig {
            lr: 0.02,
            batch: 5,
            optimizer: AdamWConfig {
                weight_decay: 0.3,
                ..Default::default()
            },
            ..Default::default()
        };
        let cfg = load_toml_over(&path, &task_defaults).unwrap();
        assert_eq!((cfg.epochs, cfg.lr, cfg.batch), (3, 0.02, 5));
        assert_eq!(
            (cfg.optimizer.layer_decay, cfg.optimizer.weight_decay),
            (0.7, 0.3)
        );
        // Mistakes are still reported with the file's name.
        std::fs::write(&path, "epochs = 3\n[optimizer]\nlayer_decai = 0.7\n").unwrap();
        let err = load_toml_over(&path, &task_defaults)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("partial.toml") && err.contains("layer_decai"),
            "{err}"
        );
    }

    #[derive(Default, Serialize, Deserialize, PartialEq, Debug)]
    #[serde(default)]
    struct Whole {
        data: DataConfig,
        train: TrainConfig,
        width: usize,
    }

    impl RunConfig for Whole {
        fn train_mut(&mut self) -> &mut TrainConfig {
            &mut self.train
        }
    }

    #[test]
    fn a_new_run_takes_file_and_flags_a_resumed_one_refuses_changes_to_its_result() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("given.toml");
        std::fs::write(&file, "width = 7\n[train]\nepochs = 3\n").unwrap();
        let args = TrainArgs {
            config: Some(file),
            lr: Some(0.5),
            ..Default::default()
        };
        let fresh = RunArgs {
            name: "x".into(),
            runs_dir: dir.path().into(),
            resume: false,
        };
        let data = DataArgs {
            data: Some("here".into()),
            val: None,
            train_limit: None,
            val_limit: None,
        };
        let cfg: Whole = resolve(&args, &fresh, dir.path(), |c: &mut Whole| {
            data.apply(&mut c.data)
        })
        .unwrap();
        assert_eq!((cfg.width, cfg.train.epochs, cfg.train.lr), (7, 3, 0.5));
        assert_eq!(cfg.data.train.as_deref(), Some(Path::new("here")));
        save_toml(&dir.path().join("config.toml"), &cfg).unwrap();
        // Resuming with no flags, or the same ones: the run as it was started.
        let resume = RunArgs {
            resume: true,
            ..fresh
        };
        let none = TrainArgs::default();
        let again: Whole = resolve(&none, &resume, dir.path(), |_: &mut Whole| {}).unwrap();
        assert_eq!(again, cfg);
        let same: Whole = resolve(&args, &resume, dir.path(), |c: &mut Whole| {
            data.apply(&mut c.data)
        })
        .unwrap();
        assert_eq!(same, cfg);
        // Flags that change the result are refused, each named.
        let other = TrainArgs {
            lr: Some(9.0),
            ..Default::default()
        };
        let err = resolve(&other, &resume, dir.path(), |c: &mut Whole| c.width = 1).unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("`train.lr`, `width`"), "{err}");
        // A longer budget and a patience are accepted, and used; a shorter one is not.
        let longer = TrainArgs {
            epochs: Some(5),
            patience: Some(2),
            ..Default::default()
        };
        let extended: Whole = resolve(&longer, &resume, dir.path(), |_: &mut Whole| {}).unwrap();
        assert_eq!(
            (extended.train.epochs, extended.train.patience),
            (5, Some(2))
        );
        assert_eq!(
            differences(&cfg, &extended).unwrap(),
            ["train.epochs", "train.patience"]
        );
        let shorter = TrainArgs {
            epochs: Some(2),
            ..Default::default()
        };
        let err = resolve::<Whole>(&shorter, &resume, dir.path(), |_| {}).unwrap_err();
        assert!(format!("{err:#}").contains("not shorten"), "{err:#}");
        // A budget in steps does not extend one in epochs.
        let in_steps = TrainArgs {
            steps: Some(1000),
            ..Default::default()
        };
        assert!(resolve::<Whole>(&in_steps, &resume, dir.path(), |_| {}).is_err());
        let err = resolve::<Whole>(&other, &resume, &dir.path().join("none"), |_| {}).unwrap_err();
        assert!(format!("{err:#}").contains("config.toml"), "{err:#}");
    }

    #[test]
    fn every_kth_item_is_held_out() {
        let held: Vec<usize> = holdout(10, 0.2)
            .into_iter()
            .enumerate()
            .filter_map(|(i, h)| h.then_some(i))
            .collect();
        assert_eq!(held, [4, 9]);
        assert_eq!(holdout(9, 0.34).iter().filter(|&&h| h).count(), 3);
        let bad = DataConfig {
            val_fraction: Some(1.0),
            ..Default::default()
        };
        assert!(bad.holdout_fraction().is_err());
        // Limits give nested subsets of the asked size.
        let limited = |k| DataConfig {
            train_limit: Some(k),
            subset_seed: 4,
            ..Default::default()
        };
        let small = limited(3).kept(20).unwrap();
        let large = limited(9).kept(20).unwrap();
        assert_eq!(small.iter().filter(|&&k| k).count(), 3);
        assert_eq!(large.iter().filter(|&&k| k).count(), 9);
        assert!(small.iter().zip(&large).all(|(s, l)| !s || *l));
        assert_eq!(DataConfig::default().kept(5), None);
        // A validation limit spreads over the whole set.
        let val = DataConfig {
            val_limit: Some(3),
            ..Default::default()
        };
        let kept: Vec<usize> = (val.val_kept(9).unwrap().into_iter().enumerate())
            .filter_map(|(i, k)| k.then_some(i))
            .collect();
        assert_eq!(kept, [0, 3, 6]);
        assert_eq!(DataConfig::default().val_kept(5), None);
    }
}
