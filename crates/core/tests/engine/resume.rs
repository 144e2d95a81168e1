//! Runs that stop and go on: resuming to exactly the weights of an uninterrupted run, a longer
//! budget after the end, early stopping, a non-finite loss, a crash while saving, a missing
//! checkpoint, and a step budget that ends mid-epoch.

use super::*;

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
fn early_stopping_keeps_the_best_and_the_last_checkpoint() {
    // A rate of ~0 keeps accuracy flat, so patience 1 stops after the second evaluation.
    let cfg = TrainConfig {
        lr: 1e-12,
        patience: Some(1),
        epochs: 6,
        ..config(Freeze::Frozen)
    };
    let (report, dir) = fit_new(&cfg, 8, Some(6));
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
    let (report, _dir) = fit_new(&cfg, 8, None);
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

#[test]
fn a_step_budget_ends_the_run_mid_epoch_with_an_evaluation() {
    // 10 examples in batches of 4: 3 steps an epoch; 7 steps end one step into epoch 3.
    let cfg = TrainConfig {
        steps: Some(7),
        ..config(Freeze::Frozen)
    };
    let (report, dir) = fit_new(&cfg, 10, Some(4));
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
