//! The fine-tuning engine on a small classification task over the tiny ViT fixture
//! (`common/classify.rs`), a module per concern: runs that stop, fail and resume exactly
//! ([`resume`]), frozen-feature caching ([`cache`]), what an optimizer step computes
//! ([`optimizer`]), which parameters train ([`coverage`]), and evaluation and prediction
//! ([`inference`]). The shared set-up is here.

// The helpers every test binary shares: a folder's `main.rs` would otherwise look for them in
// `engine/common`.
#[path = "../common/mod.rs"]
mod common;

mod cache;
mod coverage;
mod inference;
mod optimizer;
mod resume;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use common::classify::*;
use common::*;
use downstream_core::backbone::{Readout, Vit};
use downstream_core::grad;
use downstream_core::train::checkpoint;
use downstream_core::train::config::TrainConfig;
use downstream_core::train::feature_cache::CacheKind;
use downstream_core::train::metrics_log::{read_records, Record};
use downstream_core::train::optimizer::{AdamW, AdamWConfig};
use downstream_core::train::trainer::{batch_gradients, fit, RunOptions};
use downstream_core::train::FitReport;
use downstream_core::train::{evaluate, predict_all, Dataset, Features, Metrics, Task};
use downstream_core::{Freeze, ParamStore};
use tempfile::TempDir;

fn config(mode: Freeze) -> TrainConfig {
    TrainConfig {
        backbone: "fixture".into(),
        mode,
        epochs: 3,
        batch: 4,
        micro_batch: Some(2),
        lr: 5e-3,
        warmup_steps: Some(2),
        optimizer: AdamWConfig {
            layer_decay: 0.8,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn options(dir: &Path) -> RunOptions {
    RunOptions {
        show_progress: false,
        ..RunOptions::new(dir)
    }
}

fn snapshot(params: &ParamStore) -> Vec<(String, Vec<f32>)> {
    params
        .iter()
        .map(|p| (p.name.clone(), values(p.tensor())))
        .collect()
}

/// `Classify` in `cfg`'s mode trained on `train` images, validated on `val` of them if given,
/// in a new folder: the report, and the folder, which lives as long as it is held.
fn fit_new(cfg: &TrainConfig, train: usize, val: Option<usize>) -> (FitReport, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let val = val.map(Images::new);
    let task = Classify::new(cfg.mode);
    let report = fit(
        &task,
        &Images::new(train),
        val.as_ref(),
        cfg,
        cfg,
        &options(dir.path()),
    );
    (report.unwrap(), dir)
}

/// `fit` of `task` with the same configuration as run settings and as the saved one.
fn fit_with(
    task: &Classify,
    data: &Images,
    val: &Images,
    cfg: &TrainConfig,
    opts: &RunOptions,
) -> Result<FitReport> {
    fit(task, data, Some(val), cfg, cfg, opts)
}
