//! Training in every mode: a data set the project has never seen, the backbone trained as the
//! mode says, and every model setting reaching the saved run.

use super::*;

#[test]
fn an_unseen_coco_data_set_trains_evaluates_and_predicts_without_code_change() {
    let data = tempfile::tempdir().unwrap();
    let ann = rectangles(data.path(), 8, 64, 64);
    let runs = tempfile::tempdir().unwrap();
    let run_dir = runs.path().join("detect").join("unseen");
    let outcome = pipeline::train(&config(ann, Freeze::Frozen), &quiet(&run_dir)).unwrap();
    assert!(outcome.report.finished);
    assert_eq!(
        outcome.report.steps,
        2 * 2,
        "6 training images in batches of 4, 2 epochs"
    );
    assert!(outcome
        .stats
        .values
        .iter()
        .all(|v| (-1.0..=1.0).contains(v)));
    let names: Vec<_> = outcome.per_category.keys().cloned().collect();
    assert_eq!(names, ["dent", "scratch"]);
    // The machine-readable result holds what was printed, for scripts and studies.
    let result = downstream_core::train::result::read(&run_dir).unwrap();
    assert_eq!(result.main(), Some(outcome.stats.values[0]));
    assert_eq!(result.metrics["AP50"], outcome.stats.values[1]);
    assert_eq!(result.steps, 4);
    assert!(result.val_examples > 0);
    for f in [
        "config.toml",
        "categories.json",
        "metrics.jsonl",
        "val_results.json",
        "loss.png",
        "checkpoints/best.safetensors",
    ] {
        assert!(run_dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        outcome.predictions.len(),
        2,
        "the two validation images are drawn"
    );
    // The results file uses the data set's own category ids.
    let results = coco::load_results(&run_dir.join("val_results.json")).unwrap();
    assert!(results
        .iter()
        .all(|d| d.category_id == 17 || d.category_id == 90));

    // A trained run predicts on a folder of images and on single files.
    let (cfg, detector) = pipeline::load_run(&run_dir, &candle_core::Device::Cpu).unwrap();
    let files = downstream_core::vision::io::image_files(&[data.path().to_path_buf()]).unwrap();
    assert_eq!(files.len(), 8);
    let out = runs.path().join("pred");
    pipeline::predict_files(&cfg, &detector, &files[..3], &out).unwrap();
    assert!(out.join("predictions.json").is_file());
    assert!(out.join("img000.png").is_file() && out.join("img002.png").is_file());
}

#[test]
fn full_and_partial_fine_tuning_train_the_backbone() {
    for (mode, block) in [
        (Freeze::Full, None),
        (Freeze::Partial(1), None),
        (Freeze::Partial(1), Some(1)),
    ] {
        let data = tempfile::tempdir().unwrap();
        let ann = rectangles(data.path(), 4, 64, 64);
        let runs = tempfile::tempdir().unwrap();
        let mut cfg = config(ann, mode);
        cfg.model.feature_block = block;
        cfg.train.epochs = 1;
        let outcome = pipeline::train(&cfg, &quiet(runs.path())).unwrap();
        assert!(outcome.report.finished);
        let ck = downstream_core::train::checkpoint::load(
            &outcome.report.last_checkpoint,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let early_saved = ck
            .tensors
            .keys()
            .any(|k| k.starts_with("param.encoder.layer.0."));
        // The block the head reads is the top: with block 1 read, partial:1 trains block 1
        // and nothing above it exists.
        let top = block.unwrap_or(2);
        let saved = |b: usize| {
            ck.tensors
                .keys()
                .any(|k| k.starts_with(&format!("param.encoder.layer.{b}.")))
        };
        assert!(saved(top), "{mode}: the top block trains");
        assert_eq!(
            early_saved,
            mode == Freeze::Full,
            "{mode}: block 0 trains only in full mode"
        );
        if block.is_some() {
            assert!(!saved(2), "{mode}: block 2 is above the block read");
            assert!(!ck.tensors.keys().any(|k| k.contains("layernorm.")));
        }
    }
}

#[test]
fn every_mode_reaches_every_parameter_it_trains() {
    let data = tempfile::tempdir().unwrap();
    let ann = rectangles(data.path(), 4, 64, 64);
    let set = detect::data::load(&ann).unwrap();
    // (mode, one block read, several blocks read, tower depth)
    for (mode, block, blocks, tower) in [
        (Freeze::Frozen, None, vec![], 1),
        (Freeze::Full, None, vec![], 1),
        (Freeze::Partial(2), None, vec![], 1),
        (Freeze::Full, Some(1), vec![], 1),
        (Freeze::Partial(1), Some(1), vec![], 1),
        (Freeze::Partial(2), Some(1), vec![], 1),
        (Freeze::Full, None, vec![1, 0], 2),
        (Freeze::Frozen, None, vec![0, 2], 3),
    ] {
        let mut cfg = config(ann.clone(), mode);
        cfg.model.feature_block = block;
        cfg.model.feature_blocks = blocks.clone();
        cfg.model.tower = tower;
        let detector = detect::detector::Detector::new(
            &cfg.train,
            &cfg.model,
            cfg.input.size,
            set.categories.clone(),
            cfg.postprocess.clone(),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let examples = detector.examples(set.clone(), &cfg.input).unwrap();
        let c = downstream_core::grad::check_task(&detector, &examples, 4)
            .unwrap_or_else(|e| panic!("{mode}, block {block:?}, blocks {blocks:?}: {e:#}"));
        assert_eq!(c.ok.len(), detector.params.trainable().count());
        let names: Vec<&str> = detector.params.iter().map(|p| p.name.as_str()).collect();
        // Nothing above the deepest block read is loaded.
        if block == Some(1) || blocks == [1, 0] {
            assert!(names
                .iter()
                .all(|n| !n.starts_with("encoder.layer.2.") && !n.starts_with("layernorm.")));
        }
        // Each block read gets a norm of its own, and the tower is as deep as asked.
        let norms = names.iter().filter(|n| n.starts_with("head.in")).count();
        assert_eq!(
            norms,
            if blocks.len() > 1 {
                2 * blocks.len()
            } else {
                0
            }
        );
        let convs = names
            .iter()
            .filter(|n| {
                n.starts_with("head.tower") && n.ends_with(".weight") && !n.contains("norm")
            })
            .count();
        assert_eq!(convs, tower);
    }
    let both = detect::detector::ModelConfig {
        feature_block: Some(1),
        feature_blocks: vec![0, 1],
        ..Default::default()
    };
    let err = both.blocks().unwrap_err().to_string();
    assert!(err.contains("feature_block"), "{err}");
}

#[test]
fn the_atss_assigner_reaches_the_run_and_refuses_box_distributions() {
    use detect::model::assign::Assigner;
    let data = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    let ann = rectangles(data.path(), 8, 64, 64);
    let mut cmd = train_command(&ann, runs.path(), "both", "1");
    let out = cmd
        .args(["--assign", "atss", "--box-bins", "4"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model.assign") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!runs.path().join("detect/both/config.toml").exists());
    succeeded(train_command(&ann, runs.path(), "atss", "1").args(["--assign", "atss"]));
    let run = runs.path().join("detect/atss");
    let cfg = DetectConfig::load(&run.join("config.toml")).unwrap();
    assert_eq!(cfg.model.assign, Assigner::Atss);
    let (_, detector) = pipeline::load_run(&run, &candle_core::Device::Cpu).unwrap();
    assert_eq!(detector.assigner, Assigner::Atss);
}

#[test]
fn model_and_augmentation_flags_reach_the_saved_configuration() {
    let data = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    let ann = rectangles(data.path(), 8, 64, 64);
    let mut cmd = train_command(&ann, runs.path(), "flags", "1");
    cmd.args([
        "--mode",
        "frozen",
        "--feature-blocks",
        "2,0",
        "--width",
        "16",
    ])
    .args([
        "--tower",
        "2",
        "--flip-vertical",
        "--rotate90",
        "--colour",
        "0.2",
    ])
    .args([
        "--views",
        "5",
        "--quality",
        "iou",
        "--tta",
        "v",
        "--box-voting",
    ])
    .args(["--tile", "48", "--tile-overlap", "16", "--random-crop"])
    .args(["--box-weight", "2.5", "--nms-iou", "0.45", "--pixel-skip"])
    .args(["--split-tower", "--box-bins", "4"])
    .args(["--tile-edge-score", "0.5", "--inference-overlap", "24"]);
    succeeded(&mut cmd);
    let cfg = DetectConfig::load(&runs.path().join("detect/flags/config.toml")).unwrap();
    assert_eq!(cfg.model.feature_blocks, vec![2, 0]);
    assert_eq!((cfg.model.width, cfg.model.tower), (16, 2));
    let a = &cfg.input.augment;
    assert!(a.flip_horizontal && a.flip_vertical && a.rotate90);
    assert_eq!((a.colour, cfg.input.views), (0.2, 5));
    assert_eq!((cfg.input.tile, cfg.input.tile_overlap), (Some(48), 16));
    assert_eq!(cfg.input.inference_overlap, Some(24));
    assert_eq!(cfg.postprocess.tile_edge_score, 0.5);
    assert!(cfg.input.random_crop);
    assert_eq!(cfg.model.quality, detect::model::loss::Quality::Iou);
    assert_eq!((cfg.model.box_weight, cfg.postprocess.nms_iou), (2.5, 0.45));
    assert!(cfg.model.pixel_skip && cfg.model.split_tower);
    assert_eq!(cfg.model.box_bins, 4);
    assert_eq!(cfg.postprocess.tta, [Flip::Vertical]);
    assert!(cfg.postprocess.box_voting);
    let (_, detector) =
        pipeline::load_run(&runs.path().join("detect/flags"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(detector.blocks, vec![0, 2]);
    assert!(detector.pixel_skip && detector.params.get("head.p3.pixels.weight").is_some());
    assert!(detector.params.get("head.box_tower1.weight").is_some());
    // Four sides of five distances each, from the 16 channels of the head.
    let reg = detector.params.get("head.reg.weight").unwrap();
    assert_eq!(reg.tensor().dims(), &[20, 16]);
}
