//! The fine-tuning engine on a small classification task over the tiny ViT fixture
//! (`common/classify.rs`): resume equivalence, frozen-feature caching, gradient accumulation,
//! parameter groups, early stopping, non-finite losses, crash-safe checkpoints, gradient
//! coverage, evaluation every few steps with a validation loss, and inference without a
//! backward graph.

mod common;

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
use downstream_core::train::{evaluate, predict_all, Dataset, Features, Metrics, Task};
use downstream_core::{Freeze, ParamStore};

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

/// `fit` of `task` with the same configuration as run settings and as the saved one.
fn fit_with(
    task: &Classify,
    data: &Images,
    val: &Images,
    cfg: &TrainConfig,
    opts: &RunOptions,
) -> Result<downstream_core::train::FitReport> {
    fit(task, data, Some(val), cfg, cfg, opts)
}

#[test]
fn a_finished_run_resumed_with_a_longer_budget_goes_on_and_as_it_was_stays_done() {
    let cfg = config(Freeze::Full);
    let data = Images::new(8);
    let dir = tempfile::tempdir().unwrap();
    let task = Classify::new(Freeze::Full);
    let done = fit(
        &task,
        &data,
        None::<&Images>,
        &cfg,
        &cfg,
        &options(dir.path()),
    )
    .unwrap();
    assert_eq!(
        (done.steps, done.finished),
        (6, true),
        "3 epochs of 2 steps"
    );
    let resume = RunOptions {
        resume: true,
        ..options(dir.path())
    };
    // As it was: nothing more to do.
    let same = fit(&task, &data, None::<&Images>, &cfg, &cfg, &resume).unwrap();
    assert_eq!(same.steps, 6);
    // Two more epochs asked for: it trains them, and the old result no longer stands.
    std::fs::write(dir.path().join("result.json"), "{}").unwrap();
    let longer = TrainConfig {
        epochs: 5,
        ..cfg.clone()
    };
    let more = fit(&task, &data, None::<&Images>, &longer, &longer, &resume).unwrap();
    assert_eq!((more.steps, more.finished), (10, true));
    assert!(
        !dir.path().join("result.json").exists(),
        "a stale result survived"
    );

    // A step budget that ended inside an epoch, extended: it goes on from the next batch
    // (3 steps = one epoch and a half; 4 completes the second epoch).
    let steps_dir = tempfile::tempdir().unwrap();
    let budget = |n| TrainConfig {
        steps: Some(n),
        ..cfg.clone()
    };
    let three = budget(3);
    let opts = options(steps_dir.path());
    assert_eq!(
        fit(&task, &data, None::<&Images>, &three, &three, &opts)
            .unwrap()
            .steps,
        3
    );
    let resume = RunOptions {
        resume: true,
        ..options(steps_dir.path())
    };
    let four = budget(4);
    let on = fit(&task, &data, None::<&Images>, &four, &four, &resume).unwrap();
    assert_eq!((on.steps, on.finished), (4, true));
    let last = checkpoint::load(&on.last_checkpoint, &Device::Cpu)
        .unwrap()
        .state;
    assert_eq!((last.epoch, last.batch), (2, 0), "{last:?}");
}

#[test]
fn a_run_saving_every_few_steps_instead_of_every_epoch_still_resumes_exactly() {
    // Three examples in batches of four: every epoch is one step, the case the step interval
    // is for (a small data set whose epoch-end checkpoints would cost more than its steps).
    let cfg = TrainConfig {
        epochs: 6,
        checkpoint_every: Some(4),
        ..config(Freeze::Full)
    };
    let data = Images::new(3);
    let straight_dir = tempfile::tempdir().unwrap();
    let straight = Classify::new(Freeze::Full);
    let opts = options(straight_dir.path());
    let report = fit(&straight, &data, None::<&Images>, &cfg, &cfg, &opts).unwrap();
    assert_eq!((report.steps, report.finished), (6, true));
    // The end of the run is saved even off the interval.
    let last = checkpoint::load(&report.last_checkpoint, &Device::Cpu).unwrap();
    assert!(
        last.state.finished && last.state.step == 6,
        "{:?}",
        last.state
    );

    let split_dir = tempfile::tempdir().unwrap();
    let first = Classify::new(Freeze::Full);
    let opts = RunOptions {
        stop_after: Some(2),
        ..options(split_dir.path())
    };
    assert!(
        !fit(&first, &data, None::<&Images>, &cfg, &cfg, &opts)
            .unwrap()
            .finished
    );
    let resumed = Classify::new(Freeze::Full);
    let opts = RunOptions {
        resume: true,
        ..options(split_dir.path())
    };
    let again = fit(&resumed, &data, None::<&Images>, &cfg, &cfg, &opts).unwrap();
    assert_eq!((again.steps, again.finished), (6, true));
    assert_eq!(snapshot(&straight.params), snapshot(&resumed.params));
}

#[test]
fn a_resumed_run_ends_exactly_where_an_uninterrupted_one_does() {
    let cfg = config(Freeze::Full);
    let data = Images::new(10);
    let val = Images::new(6);
    // Dropout on, so that its masks must be reproduced after the resume too.
    let model = || Classify {
        dropout: 0.2,
        ..Classify::new(Freeze::Full)
    };

    let straight_dir = tempfile::tempdir().unwrap();
    let straight = model();
    let report = fit_with(&straight, &data, &val, &cfg, &options(straight_dir.path())).unwrap();
    assert!(report.finished);
    assert_eq!(report.steps, 9, "3 epochs of ceil(10 / 4) steps");

    // Stopped after 4 steps (inside epoch 2), then resumed by a fresh process-like model.
    let split_dir = tempfile::tempdir().unwrap();
    let first = model();
    let opts = RunOptions {
        stop_after: Some(4),
        ..options(split_dir.path())
    };
    let partial = fit(&first, &data, Some(&val), &cfg, &cfg, &opts).unwrap();
    assert!(!partial.finished);
    assert_eq!(partial.steps, 4);
    let resumed = model();
    let opts = RunOptions {
        resume: true,
        ..options(split_dir.path())
    };
    let report2 = fit(&resumed, &data, Some(&val), &cfg, &cfg, &opts).unwrap();
    assert!(report2.finished);
    assert_eq!(report2.steps, 9);

    assert_eq!(
        snapshot(&straight.params),
        snapshot(&resumed.params),
        "weights differ after resume"
    );
    let a = checkpoint::load(&report.last_checkpoint, &Device::Cpu).unwrap();
    let b = checkpoint::load(&report2.last_checkpoint, &Device::Cpu).unwrap();
    assert_eq!(a.state, b.state);
    let mut names: Vec<_> = a.tensors.keys().collect();
    names.sort();
    assert!(names.iter().any(|n| n.starts_with("adamw.m.")));
    for n in names {
        assert_eq!(
            values(&a.tensors[n]),
            values(&b.tensors[n]),
            "{n} differs after resume"
        );
    }
    // The metrics log holds each step once, even though the first invocation logged steps
    // past its last checkpoint... and the plots were written.
    let log = std::fs::read_to_string(split_dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"step\"") && l.contains("\"loss\""))
            .count(),
        9
    );
    assert!(split_dir.path().join("loss.png").is_file());
    assert!(split_dir.path().join("config.toml").is_file());
}

#[test]
fn frozen_training_runs_the_backbone_once_per_distinct_view_and_never_changes_it() {
    for (kind, views) in [
        (CacheKind::Memory, 1u64),
        (CacheKind::Memory, 2),
        (CacheKind::Disk, 2),
    ] {
        let cfg = TrainConfig {
            feature_cache: kind,
            epochs: 4,
            ..config(Freeze::Frozen)
        };
        let task = Classify::new(Freeze::Frozen);
        let before: Vec<_> = snapshot(&task.params)
            .into_iter()
            .filter(|(n, _)| !n.starts_with("head."))
            .collect();
        assert!(!before.is_empty());
        let data = Images {
            views,
            ..Images::new(10)
        };
        let dir = tempfile::tempdir().unwrap();
        let report = fit(
            &task,
            &data,
            None::<&Images>,
            &cfg,
            &cfg,
            &options(dir.path()),
        )
        .unwrap();
        let after: Vec<_> = snapshot(&task.params)
            .into_iter()
            .filter(|(n, _)| !n.starts_with("head."))
            .collect();
        assert_eq!(before, after, "a frozen backbone changed");
        let decoded = data.decoded.lock().unwrap().clone();
        let distinct: HashSet<_> = decoded.iter().copied().collect();
        assert_eq!(
            decoded.len(),
            distinct.len(),
            "{kind:?}: an input was decoded twice"
        );
        assert!(distinct.iter().all(|&(_, v)| v < views));
        assert_eq!(report.backbone_forwards, distinct.len(), "{kind:?}");
        if views == 1 {
            assert_eq!(
                report.backbone_forwards, 10,
                "once per example, not per epoch"
            );
        } else {
            assert!(report.backbone_forwards < 4 * 10 && report.backbone_forwards > 10);
        }
    }
}

#[test]
fn without_a_cache_the_backbone_runs_every_epoch() {
    let cfg = TrainConfig {
        feature_cache: CacheKind::Off,
        epochs: 2,
        ..config(Freeze::Frozen)
    };
    let task = Classify::new(Freeze::Frozen);
    let dir = tempfile::tempdir().unwrap();
    let report = fit(
        &task,
        &Images::new(10),
        None::<&Images>,
        &cfg,
        &cfg,
        &options(dir.path()),
    )
    .unwrap();
    assert_eq!(report.backbone_forwards, 20);
}

#[test]
fn four_micro_batches_give_the_gradient_of_one_large_batch() {
    // With dropout on: masks are drawn per example, so the split changes nothing.
    let task = Classify {
        dropout: 0.3,
        ..Classify::new(Freeze::Full)
    };
    let data = Images::new(8);
    let keys: Vec<(usize, u64)> = (0..8).map(|i| (i, (i % 2) as u64)).collect();
    let load = || -> (Vec<Option<Tensor>>, Vec<(u32, f32)>) {
        (
            keys.iter()
                .map(|k| Some(data.input(k.0, k.1).unwrap()))
                .collect(),
            keys.iter()
                .map(|k| data.target(k.0, k.1).unwrap())
                .collect(),
        )
    };
    let (mut inputs, targets) = load();
    let (loss_big, big) = batch_gradients(
        &task,
        None,
        &keys,
        &mut inputs,
        &targets.iter().collect::<Vec<_>>(),
        8,
        11,
        3,
    )
    .unwrap();
    let (mut inputs, targets) = load();
    let (loss_small, small) = batch_gradients(
        &task,
        None,
        &keys,
        &mut inputs,
        &targets.iter().collect::<Vec<_>>(),
        2,
        11,
        3,
    )
    .unwrap();
    assert!(
        (loss_big - loss_small).abs() < 1e-5,
        "{loss_big} vs {loss_small}"
    );
    assert_eq!(big.len(), task.params.len());
    assert_eq!(small.len(), big.len());
    for p in task.params.iter() {
        let (a, b) = (big.get(&p.name).unwrap(), small.get(&p.name).unwrap());
        let scale = max_abs(a).max(1e-3);
        assert!(
            max_diff(a, b) <= 1e-5 * scale.max(1.0),
            "{}: {} vs scale {scale}",
            p.name,
            max_diff(a, b)
        );
    }
}

#[test]
fn layer_decay_and_weight_decay_go_to_the_right_parameters() {
    let task = Classify::new(Freeze::Full);
    let opt = AdamW::new(
        &task.params,
        AdamWConfig {
            layer_decay: 0.5,
            weight_decay: 0.1,
            backbone_lr_scale: 1.0,
            ..Default::default()
        },
    )
    .unwrap();
    let groups = opt.groups();
    let find = |n: &str| {
        groups
            .iter()
            .find(|g| g.name == n)
            .unwrap_or_else(|| panic!("no group {n}"))
    };
    // 3 blocks: embeddings depth 0, block i depth i + 1, final norm and head depth 4.
    assert_eq!(
        find("embeddings.patch_embeddings.projection.weight").lr_scale,
        0.5f64.powi(4)
    );
    assert_eq!(
        find("encoder.layer.0.attention.attention.query.weight").lr_scale,
        0.5f64.powi(3)
    );
    assert_eq!(find("encoder.layer.2.output.dense.weight").lr_scale, 0.5);
    assert_eq!(find("layernorm.weight").lr_scale, 1.0);
    assert_eq!(find("head.weight").lr_scale, 1.0);
    for (name, wd) in [
        ("encoder.layer.1.intermediate.dense.weight", 0.1),
        ("head.weight", 0.1),
        ("encoder.layer.1.intermediate.dense.bias", 0.0),
        ("encoder.layer.1.layernorm_before.weight", 0.0),
        ("embeddings.position_embeddings", 0.0),
        ("embeddings.cls_token", 0.0),
        ("head.bias", 0.0),
    ] {
        assert_eq!(find(name).weight_decay, wd, "{name}");
    }
    // A backbone multiplier scales everything below the top, and only that.
    let scaled = AdamW::new(
        &task.params,
        AdamWConfig {
            layer_decay: 0.5,
            backbone_lr_scale: 0.1,
            ..Default::default()
        },
    )
    .unwrap()
    .groups();
    let scale_of = |n: &str| scaled.iter().find(|g| g.name == n).unwrap().lr_scale;
    assert!((scale_of("encoder.layer.2.output.dense.weight") - 0.05).abs() < 1e-12);
    assert!(
        (scale_of("embeddings.patch_embeddings.projection.weight") - 0.1 * 0.5f64.powi(4)).abs()
            < 1e-12
    );
    assert_eq!(scale_of("layernorm.weight"), 1.0);
    assert_eq!(scale_of("head.weight"), 1.0);
    // Partial fine-tuning: only the last block, the final norm and the head are optimised.
    let partial = Classify::new(Freeze::Partial(1));
    let opt = AdamW::new(&partial.params, AdamWConfig::default()).unwrap();
    assert!(opt
        .groups()
        .iter()
        .all(|g| g.name.starts_with("encoder.layer.2.")
            || g.name.starts_with("layernorm.")
            || g.name.starts_with("head.")));
}

#[test]
fn a_run_with_a_weight_average_evaluates_and_keeps_the_average_and_resumes_exactly() {
    let cfg = TrainConfig {
        ema: Some(0.6),
        ..config(Freeze::Full)
    };
    let (data, val) = (Images::new(10), Images::new(6));
    let straight_dir = tempfile::tempdir().unwrap();
    let straight = Classify::new(Freeze::Full);
    let report = fit_with(&straight, &data, &val, &cfg, &options(straight_dir.path())).unwrap();
    // The raw weights train as they would without the average.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = Classify::new(Freeze::Full);
    let plain_cfg = TrainConfig {
        ema: None,
        ..cfg.clone()
    };
    fit_with(&plain, &data, &val, &plain_cfg, &options(plain_dir.path())).unwrap();
    assert_eq!(snapshot(&straight.params), snapshot(&plain.params));

    // The last evaluation (step 9) was of the average: the last checkpoint's `ema.*` are what
    // a best checkpoint saved then holds, and they differ from the raw weights.
    let last = checkpoint::load(&report.last_checkpoint, &Device::Cpu).unwrap();
    let trainable: Vec<String> = straight
        .params
        .trainable()
        .map(|p| p.name.clone())
        .collect();
    let mut differs = false;
    for name in &trainable {
        let avg = values(&last.tensors[&format!("ema.{name}")]);
        differs |= avg != values(&last.tensors[&format!("param.{name}")]);
    }
    assert!(differs, "the average equals the raw weights");
    let evals = read_records(&straight_dir.path().join("metrics.jsonl")).unwrap();
    let last_eval = evals
        .iter()
        .rev()
        .find_map(|r| match r {
            Record::Eval(e) => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(last_eval.step, 9);
    let averaged = Classify::new(Freeze::Full);
    for name in &trainable {
        let var = averaged.params.get(name).unwrap().var().unwrap();
        var.set(&last.tensors[&format!("ema.{name}")]).unwrap();
    }
    let metrics = evaluate(
        &averaged,
        &downstream_core::train::Subset::spread(&val, usize::MAX),
        4,
        None,
        true,
    )
    .unwrap();
    assert_eq!(metrics, last_eval.metrics);

    // Stopped after 4 steps and resumed: the same weights and the same average.
    let split_dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        stop_after: Some(4),
        ..options(split_dir.path())
    };
    fit_with(&Classify::new(Freeze::Full), &data, &val, &cfg, &opts).unwrap();
    let resumed = Classify::new(Freeze::Full);
    let opts = RunOptions {
        resume: true,
        ..options(split_dir.path())
    };
    let report2 = fit_with(&resumed, &data, &val, &cfg, &opts).unwrap();
    assert_eq!(snapshot(&straight.params), snapshot(&resumed.params));
    let b = checkpoint::load(&report2.last_checkpoint, &Device::Cpu).unwrap();
    for name in &trainable {
        let key = format!("ema.{name}");
        assert_eq!(
            values(&last.tensors[&key]),
            values(&b.tensors[&key]),
            "{key} differs after resume"
        );
    }
    // A run started without the average cannot resume with one.
    let opts = RunOptions {
        resume: true,
        ..options(plain_dir.path())
    };
    let err = fit_with(&Classify::new(Freeze::Full), &data, &val, &cfg, &opts).unwrap_err();
    assert!(format!("{err:#}").contains("without `ema`"), "{err:#}");
}

#[test]
fn early_stopping_keeps_the_best_and_the_last_checkpoint() {
    // A rate of ~0 keeps accuracy flat, so patience 1 stops after the second evaluation.
    let cfg = TrainConfig {
        lr: 1e-12,
        patience: Some(1),
        epochs: 6,
        ..config(Freeze::Frozen)
    };
    let task = Classify::new(Freeze::Frozen);
    let dir = tempfile::tempdir().unwrap();
    let report = fit(
        &task,
        &Images::new(8),
        Some(&Images::new(6)),
        &cfg,
        &cfg,
        &options(dir.path()),
    )
    .unwrap();
    assert!(report.stopped_early && report.finished);
    assert_eq!(report.steps, 2 * 2, "stopped after two epochs of two steps");
    assert_eq!(report.best_step, Some(2));
    let best = checkpoint::load(report.best_checkpoint.as_ref().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(best.state.step, 2);
    let last = checkpoint::load(&report.last_checkpoint, &Device::Cpu).unwrap();
    assert_eq!(last.state.step, 4);
    assert!(dir.path().join("metrics.png").is_file());
}

#[test]
fn a_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint() {
    let cfg = TrainConfig {
        epochs: 2,
        ..config(Freeze::Frozen)
    };
    let dir = tempfile::tempdir().unwrap();
    // First a clean epoch, to have a checkpoint; then the same run continued on poisoned data.
    let clean = Classify::new(Freeze::Frozen);
    let opts = RunOptions {
        stop_after: Some(3),
        ..options(dir.path())
    };
    fit(&clean, &Images::new(12), None::<&Images>, &cfg, &cfg, &opts).unwrap();
    let good = checkpoint::load(
        &dir.path().join("checkpoints/last.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let task = Classify::new(Freeze::Frozen);
    let poisoned = Images {
        nan_at: Some(5),
        ..Images::new(12)
    };
    let opts = RunOptions {
        resume: true,
        ..options(dir.path())
    };
    let err = format!(
        "{:#}",
        fit(&task, &poisoned, None::<&Images>, &cfg, &cfg, &opts).unwrap_err()
    );
    assert!(err.contains("loss is NaN at step"), "{err}");
    // The epoch boundary after step 3 was saved again before the failure; no update was.
    let after = checkpoint::load(
        &dir.path().join("checkpoints/last.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        after.state.step, good.state.step,
        "a checkpoint was written after the failure"
    );
    for (name, t) in &good.tensors {
        assert_eq!(values(t), values(&after.tensors[name]), "{name} changed");
    }
}

#[test]
fn a_crash_while_writing_a_checkpoint_leaves_the_previous_one_loadable() {
    let cfg = TrainConfig {
        epochs: 1,
        ..config(Freeze::Frozen)
    };
    let task = Classify::new(Freeze::Frozen);
    let dir = tempfile::tempdir().unwrap();
    let report = fit(
        &task,
        &Images::new(8),
        None::<&Images>,
        &cfg,
        &cfg,
        &options(dir.path()),
    )
    .unwrap();
    let before = checkpoint::load(&report.last_checkpoint, &Device::Cpu).unwrap();
    // A crash mid-save leaves a partial temporary beside the checkpoint; the next write
    // also fails half-way.
    let ck_dir = report.last_checkpoint.parent().unwrap();
    std::fs::write(
        ck_dir.join(".last.safetensors.tmp-99999"),
        b"partial garbage",
    )
    .unwrap();
    let err = downstream_core::atomic::write_with(&report.last_checkpoint, |w| {
        use std::io::Write;
        w.write_all(b"half a checkpoint")?;
        anyhow::bail!("power cut")
    });
    assert!(err.is_err());
    let after = checkpoint::load(&report.last_checkpoint, &Device::Cpu).unwrap();
    assert_eq!(before.state, after.state);
    assert_eq!(before.tensors.len(), after.tensors.len());
}

#[test]
fn resuming_without_a_usable_checkpoint_is_a_clear_error() {
    let cfg = config(Freeze::Frozen);
    let task = Classify::new(Freeze::Frozen);
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        resume: true,
        ..options(dir.path())
    };
    let err = format!(
        "{:#}",
        fit(&task, &Images::new(8), None::<&Images>, &cfg, &cfg, &opts).unwrap_err()
    );
    assert!(
        err.contains("cannot resume from") && err.contains("last.safetensors"),
        "{err}"
    );

    // A checkpoint damaged on disk: refused, naming it and what the user can do.
    let stopped = RunOptions {
        stop_after: Some(2),
        ..options(dir.path())
    };
    fit(
        &task,
        &Images::new(8),
        None::<&Images>,
        &cfg,
        &cfg,
        &stopped,
    )
    .unwrap();
    let last = checkpoint::last_path(dir.path());
    let mut bytes = std::fs::read(&last).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&last, bytes).unwrap();
    let err = format!(
        "{:#}",
        fit(&task, &Images::new(8), None::<&Images>, &cfg, &cfg, &opts).unwrap_err()
    );
    for want in ["last.safetensors", "damaged", "without --resume"] {
        assert!(err.contains(want), "`{want}` not in: {err}");
    }
}

/// The names of the trainable parameters, sorted.
fn trainable_names(params: &ParamStore) -> Vec<String> {
    params.trainable().map(|p| p.name.clone()).collect()
}

#[test]
fn a_head_reading_an_intermediate_block_trains_exactly_the_blocks_below_it() {
    // The fixture has blocks 0-2; the head reads block 1, so block 2 and the final norm are
    // neither loaded nor trained, and partial:1 means block 1.
    let task = Classify::reading(Freeze::Partial(1), Readout::UpTo(1));
    assert!(task
        .params
        .iter()
        .all(|p| !p.name.starts_with("encoder.layer.2.") && !p.name.starts_with("layernorm.")));
    let trainable = trainable_names(&task.params);
    assert!(!trainable.is_empty());
    for name in &trainable {
        assert!(
            name.starts_with("encoder.layer.1.") || name.starts_with("head."),
            "{name} trains"
        );
    }
    // Every parameter of block 1 trains, and nothing of block 0.
    let block1 = task
        .params
        .iter()
        .filter(|p| p.name.starts_with("encoder.layer.1."))
        .count();
    assert_eq!(
        trainable
            .iter()
            .filter(|n| n.starts_with("encoder.layer.1."))
            .count(),
        block1
    );
    // Layer decay counts from the block read: block 1 sits one below the head, block 0 two.
    assert_eq!(task.params.top_depth, 3);
    let full = Classify::reading(Freeze::Full, Readout::UpTo(1));
    let groups = AdamW::new(
        &full.params,
        AdamWConfig {
            layer_decay: 0.5,
            backbone_lr_scale: 1.0,
            ..Default::default()
        },
    )
    .unwrap()
    .groups();
    let scale = |n: &str| groups.iter().find(|g| g.name == n).unwrap().lr_scale;
    assert_eq!(scale("head.weight"), 1.0);
    assert_eq!(scale("encoder.layer.1.output.dense.weight"), 0.5);
    assert_eq!(scale("encoder.layer.0.output.dense.weight"), 0.25);
    assert_eq!(scale("embeddings.cls_token"), 0.125);
    // Every mode reaches every parameter it trains, in one step of the task.
    for mode in [
        Freeze::Frozen,
        Freeze::Full,
        Freeze::Partial(1),
        Freeze::Partial(2),
    ] {
        let task = Classify::reading(mode, Readout::UpTo(1));
        let c =
            grad::check_task(&task, &Images::new(6), 6).unwrap_or_else(|e| panic!("{mode}: {e:#}"));
        assert_eq!(c.ok.len(), task.params.trainable().count(), "{mode}");
    }
    // Trained end to end, the run's checkpoint holds nothing above the block read.
    let cfg = TrainConfig {
        epochs: 1,
        ..config(Freeze::Full)
    };
    let dir = tempfile::tempdir().unwrap();
    let report = fit(
        &full,
        &Images::new(8),
        None::<&Images>,
        &cfg,
        &cfg,
        &options(dir.path()),
    )
    .unwrap();
    let ck = checkpoint::load(&report.last_checkpoint, &Device::Cpu).unwrap();
    assert!(ck
        .tensors
        .keys()
        .any(|k| k == "param.encoder.layer.1.output.dense.weight"));
    assert!(ck
        .tensors
        .keys()
        .all(|k| !k.contains("encoder.layer.2.") && !k.contains("layernorm.")));
}

#[test]
fn partial_fine_tuning_that_cannot_train_what_it_says_is_refused() {
    let load = |mode, readout| {
        Vit::load_with(&fixtures().join("vit"), mode, readout, None, &Device::Cpu)
            .err()
            .map(|e| format!("{e:#}"))
    };
    let err = load(Freeze::Partial(3), Readout::UpTo(1)).expect("partial:3 of 2 blocks");
    assert!(
        err.contains("partial:3") && err.contains("partial:2"),
        "{err}"
    );
    let err = load(Freeze::Partial(0), Readout::Final).expect("partial:0");
    assert!(err.contains("frozen"), "{err}");
    let err = load(Freeze::Full, Readout::UpTo(3)).expect("block 3 of 3");
    assert!(err.contains("block 3"), "{err}");
    assert!(load(Freeze::Partial(3), Readout::Final).is_none());
}

/// [`Classify`] with one more trainable parameter that the loss never uses.
struct WithUnused {
    inner: Classify,
}

impl WithUnused {
    fn new() -> Self {
        let mut inner = Classify::new(Freeze::Frozen);
        let top = inner.params.top_depth;
        inner
            .params
            .insert(
                "head.forgotten.weight",
                Tensor::ones((2, 2), DType::F32, &Device::Cpu).unwrap(),
                top,
                true,
            )
            .unwrap();
        Self { inner }
    }
}

impl Task for WithUnused {
    type Input = Tensor;
    type Target = (u32, f32);
    type Output = u32;
    type Metric = Accuracy;
    fn params(&self) -> &ParamStore {
        &self.inner.params
    }
    fn backbone_frozen(&self) -> bool {
        true
    }
    fn encode(&self, inputs: &[Tensor]) -> Result<Vec<Features>> {
        self.inner.encode(inputs)
    }
    fn loss(&self, features: &[&Features], targets: &[&(u32, f32)]) -> Result<Tensor> {
        self.inner.loss(features, targets)
    }
    fn predict(&self, features: &[&Features]) -> Result<Vec<u32>> {
        self.inner.predict(features)
    }
    fn metric(&self) -> Result<Accuracy> {
        Ok(Accuracy::default())
    }
    fn main_metric(&self) -> &str {
        "accuracy"
    }
    fn detached(&self) -> Result<Self> {
        Ok(Self {
            inner: self.inner.detached()?,
        })
    }
}

#[test]
fn a_trainable_parameter_the_loss_does_not_reach_stops_the_run_naming_it() {
    let task = WithUnused::new();
    let cfg = config(Freeze::Frozen);
    let dir = tempfile::tempdir().unwrap();
    let err = format!(
        "{:#}",
        fit(
            &task,
            &Images::new(8),
            None::<&Images>,
            &cfg,
            &cfg,
            &options(dir.path())
        )
        .unwrap_err()
    );
    assert!(
        err.contains("head.forgotten.weight") && err.contains("step 1"),
        "{err}"
    );
    assert!(
        !dir.path().join("checkpoints/last.safetensors").exists(),
        "no update may be saved"
    );
    let err = format!(
        "{:#}",
        grad::check_task(&task, &Images::new(4), 4).unwrap_err()
    );
    assert!(err.contains("head.forgotten.weight"), "{err}");
    assert!(!err.contains("head.bias"), "{err}");
}

#[test]
fn a_key_bias_gradient_that_is_numerically_zero_counts_as_covered() {
    let task = Classify::new(Freeze::Full);
    let marked: Vec<String> = task
        .params
        .iter()
        .filter(|p| p.zero_grad)
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(marked.len(), 3, "one key bias per block: {marked:?}");
    assert!(marked
        .iter()
        .all(|n| n.ends_with("attention.attention.key.bias")));
    let c = grad::check_task(&task, &Images::new(4), 4).unwrap();
    assert!(marked.iter().all(|n| c.ok.contains(n)));
}

#[test]
fn evaluation_every_few_steps_on_a_fixed_subset_reports_a_validation_loss() {
    let cfg = TrainConfig {
        epochs: 2,
        eval_every_steps: Some(2),
        eval_subset: Some(4),
        eval_batch: Some(3),
        ..config(Freeze::Full)
    };
    let task = Classify::new(Freeze::Full);
    let dir = tempfile::tempdir().unwrap();
    let report = fit(
        &task,
        &Images::new(10),
        Some(&Images::new(9)),
        &cfg,
        &cfg,
        &options(dir.path()),
    )
    .unwrap();
    assert_eq!(report.steps, 6);
    let records = read_records(&dir.path().join("metrics.jsonl")).unwrap();
    let evals: Vec<(u64, Metrics)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Eval(e) => Some((e.step, e.metrics.clone())),
            Record::Step(_) => None,
        })
        .collect();
    // Steps 2, 4 and 6; the end of epoch 1 (step 3) too; step 6 ends the run and is not
    // evaluated twice. Each is logged with the epoch of its last step.
    let steps: Vec<(u64, usize)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Eval(e) => Some((e.step, e.epoch)),
            Record::Step(_) => None,
        })
        .collect();
    assert_eq!(steps, [(2, 0), (3, 0), (4, 1), (6, 1)]);
    for (_, m) in &evals {
        let loss = m["val_loss"];
        assert!(loss.is_finite() && loss > 0.0, "{m:?}");
        // Accuracy over 4 examples moves in quarters.
        let quarters = m["accuracy"] * 4.0;
        assert!((quarters - quarters.round()).abs() < 1e-9, "{m:?}");
    }
    // The validation loss is the summed loss over the summed weights of the subset: the
    // mean cross-entropy, which the engine's own evaluation reproduces on the same examples.
    let val = Images::new(9);
    let subset = downstream_core::train::Subset::spread(&val, 4);
    let again = evaluate(&task, &subset, 4, None, true).unwrap();
    assert!((again["val_loss"] - evals.last().unwrap().1["val_loss"]).abs() < 1e-5);
}

#[test]
fn evaluation_and_prediction_in_full_mode_record_no_backward_graph() {
    let task = Classify::new(Freeze::Full);
    let data = Images::new(7);
    evaluate(&task, &data, 3, None, true).unwrap();
    let mut seen = 0;
    predict_all(&task, &data, 4, None, |batch| {
        assert_eq!(batch.outputs.len(), batch.keys.len());
        assert_eq!(batch.targets.len(), batch.keys.len());
        seen += batch.outputs.len();
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, 7);
    assert!(
        !task.graph_seen.load(Ordering::Relaxed),
        "inference went through the trainable weights"
    );
    // The check itself can fail: the trainable model's own features carry a graph.
    let x = data.input(0, 0).unwrap();
    let feats = task.encode(&[x]).unwrap();
    task.predict(&[&feats[0]]).unwrap();
    assert!(task.graph_seen.load(Ordering::Relaxed));
}

#[test]
fn prediction_reuses_cached_frozen_features() {
    let task = Classify::new(Freeze::Frozen);
    let data = Images::new(6);
    let dir = tempfile::tempdir().unwrap();
    let cache = downstream_core::train::feature_cache::FeatureCache::new(
        CacheKind::Memory,
        dir.path().join("cache"),
        true,
        &Device::Cpu,
    )
    .unwrap();
    let mut first = Vec::new();
    predict_all(&task, &data, 4, Some(&cache), |b| {
        first.extend(b.outputs);
        Ok(())
    })
    .unwrap();
    let mut second = Vec::new();
    predict_all(&task, &data, 4, Some(&cache), |b| {
        second.extend(b.outputs);
        Ok(())
    })
    .unwrap();
    assert_eq!(first, second);
    assert_eq!(cache.encoded(), 6, "each example encoded once");
    assert_eq!(
        data.decoded.lock().unwrap().len(),
        6,
        "each input decoded once"
    );
}

#[test]
fn dropout_changes_training_but_not_evaluation() {
    let cfg = TrainConfig {
        epochs: 1,
        ..config(Freeze::Full)
    };
    let train = |dropout: f64, seed: u64| {
        let task = Classify {
            dropout,
            ..Classify::new(Freeze::Full)
        };
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            seed,
            ..cfg.clone()
        };
        fit(
            &task,
            &Images::new(8),
            None::<&Images>,
            &cfg,
            &cfg,
            &options(dir.path()),
        )
        .unwrap();
        task
    };
    let plain = snapshot(&train(0.0, 1).params);
    let dropped = snapshot(&train(0.5, 1).params);
    assert_ne!(plain, dropped, "dropout left training unchanged");
    assert_eq!(
        dropped,
        snapshot(&train(0.5, 1).params),
        "same seed, same masks"
    );
    assert_ne!(
        dropped,
        snapshot(&train(0.5, 2).params),
        "another seed, other masks"
    );
    // Evaluation runs outside any training pass: the same predictions with or without.
    let task = Classify::new(Freeze::Full);
    let with = Classify {
        dropout: 0.5,
        ..Classify::new(Freeze::Full)
    };
    let a = evaluate(&task, &Images::new(6), 3, None, true).unwrap();
    let b = evaluate(&with, &Images::new(6), 3, None, true).unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_step_budget_ends_the_run_mid_epoch_with_an_evaluation() {
    // 10 examples in batches of 4: 3 steps an epoch; 7 steps end one step into epoch 3.
    let cfg = TrainConfig {
        steps: Some(7),
        ..config(Freeze::Frozen)
    };
    let task = Classify::new(Freeze::Frozen);
    let dir = tempfile::tempdir().unwrap();
    let report = fit(
        &task,
        &Images::new(10),
        Some(&Images::new(4)),
        &cfg,
        &cfg,
        &options(dir.path()),
    )
    .unwrap();
    assert!(report.finished);
    assert_eq!(report.steps, 7);
    let evals: Vec<u64> = read_records(&dir.path().join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            Record::Eval(e) => Some(e.step),
            Record::Step(_) => None,
        })
        .collect();
    assert_eq!(evals, [3, 6, 7]);
}
