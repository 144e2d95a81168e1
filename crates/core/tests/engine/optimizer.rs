//! What a step computes: micro-batches summed to the large batch, learning-rate and weight
//! decay per parameter group, and the weight average.

use super::*;

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
