//! The engine's settings: the `[train]` section every task's configuration holds, and the
//! `train` command's flags that override it.

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::params::Freeze;
use crate::train::feature_cache::CacheKind;
use crate::train::optimizer::AdamWConfig;

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
    /// ([`crate::train::ema`]); none by default.
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

#[cfg(test)]
mod tests {
    use super::super::{load_toml, save_toml};
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
}
