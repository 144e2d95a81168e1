//! Evaluation and prediction: every few steps on a fixed subset with a validation loss,
//! without a backward graph in full mode, and without dropout.

use super::*;

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
