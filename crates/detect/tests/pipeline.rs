//! Training, evaluation and prediction end to end, on small generated data sets and the tiny
//! DINOv2 test checkpoint (so that the tests run in seconds): a data set the project has
//! never seen, every fine-tuning mode, tiling, and the command line on bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use detect::data::coco;
use detect::model::postprocess::Flip;
use detect::pipeline::{self, DetectConfig};
use downstream_core::train::config::TrainConfig;
use downstream_core::train::config::{DataConfig, RunConfig};
use downstream_core::train::trainer::RunOptions;
use downstream_core::Freeze;
use serde_json::json;

fn tiny_backbone() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../core/tests/fixtures/dinov2")
        .display()
        .to_string()
}

/// `n` images of `w x h` with one or two coloured rectangles of two classes with unusual
/// ids and names, written as COCO JSON.
fn rectangles(dir: &Path, n: usize, w: u32, h: u32) -> PathBuf {
    let mut images = Vec::new();
    let mut anns = Vec::new();
    for i in 0..n {
        let mut img = image::RgbImage::from_pixel(w, h, image::Rgb([90, 90, 90]));
        let objects = [
            (17u64, [4 + (i as u32 * 3) % 20, 6, 18, 14]),
            (90u64, [w / 2, h / 2, 16, 20]),
        ];
        for (k, &(cat, [x, y, bw, bh])) in objects.iter().enumerate().take(1 + i % 2) {
            let colour = if cat == 17 {
                [220, 40, 40]
            } else {
                [40, 40, 220]
            };
            for yy in y..(y + bh).min(h) {
                for xx in x..(x + bw).min(w) {
                    img.put_pixel(xx, yy, image::Rgb(colour));
                }
            }
            anns.push(
                json!({"id": anns.len() + 1, "image_id": i + 1, "category_id": cat,
                "bbox": [x, y, bw, bh], "iscrowd": 0, "area": bw * bh, "k": k}),
            );
        }
        let name = format!("img{i:03}.png");
        img.save(dir.join(&name)).unwrap();
        images.push(json!({"id": i + 1, "file_name": name, "width": w, "height": h}));
    }
    let file = json!({"images": images, "annotations": anns,
        "categories": [{"id": 17, "name": "scratch"}, {"id": 90, "name": "dent"}]});
    let path = dir.join("annotations.json");
    std::fs::write(&path, serde_json::to_string(&file).unwrap()).unwrap();
    path
}

fn config(train: PathBuf, mode: Freeze) -> DetectConfig {
    let mut cfg = DetectConfig {
        data: DataConfig {
            train: Some(train),
            val: None,
            val_fraction: Some(0.25),
            ..DataConfig::default()
        },
        train: TrainConfig {
            backbone: tiny_backbone(),
            mode,
            epochs: 2,
            batch: 4,
            lr: 5e-3,
            ..TrainConfig::default()
        },
        ..DetectConfig::default()
    };
    cfg.input.size = 64;
    cfg.model.width = 16;
    cfg
}

fn quiet(dir: &Path) -> RunOptions {
    RunOptions {
        show_progress: false,
        ..RunOptions::new(dir)
    }
}

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

/// One epoch, frozen, on four 150x110 rectangle images cut into 64-pixel tiles overlapping
/// by 16, every candidate box kept.
fn tiled_config(data: &Path) -> DetectConfig {
    let mut cfg = config(rectangles(data, 4, 150, 110), Freeze::Frozen);
    cfg.input.tile = Some(64);
    cfg.input.tile_overlap = 16;
    cfg.train.epochs = 1;
    cfg.postprocess.score_threshold = 0.0;
    cfg
}

#[test]
fn large_images_are_tiled_and_detections_map_back() {
    let data = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = tiled_config(data.path());
    let outcome = pipeline::train(&cfg, &quiet(runs.path())).unwrap();
    assert!(outcome.report.finished);
    let results = coco::load_results(&runs.path().join("val_results.json")).unwrap();
    assert!(!results.is_empty());
    for d in &results {
        let [x, y, w, h] = d.bbox;
        assert!(
            x >= 0.0 && y >= 0.0 && x + w <= 150.0 + 1e-6 && y + h <= 110.0 + 1e-6,
            "{d:?}"
        );
    }
    let set = coco::load(&data.path().join("annotations.json"), None).unwrap();
    let classes = set.class_index();
    let tiles = detect::dataset::DetectionData::new(
        set,
        cfg.input.clone(),
        8,
        classes,
        Default::default(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        tiles.samples.len(),
        4 * 3 * 2,
        "150x110 in 64-pixel tiles overlapping by 16: 3 x 2 each"
    );
    // Inference may cut a denser grid than training: validation, eval and predict take it.
    cfg.input.inference_overlap = Some(40);
    let denser = detect::dataset::DetectionData::new(
        tiles.set.clone(),
        cfg.input.for_inference(),
        8,
        tiles.classes.clone(),
        Default::default(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        denser.samples.len(),
        4 * 5 * 3,
        "overlapping by 40: 5 x 3 each"
    );
    assert_eq!(
        cfg.input.tile_overlap, 16,
        "training's grid is left as it was"
    );
    // An overlap as wide as the tile is refused before anything is written.
    cfg.input.inference_overlap = Some(64);
    let again = tempfile::tempdir().unwrap();
    let err = pipeline::train(&cfg, &quiet(again.path()))
        .err()
        .expect("an overlap as wide as the tile was taken")
        .to_string();
    assert!(err.contains("input.inference_overlap = 64"), "{err}");
    assert_eq!(std::fs::read_dir(again.path()).unwrap().count(), 0);
}

#[test]
fn random_crops_move_a_tile_anywhere_in_its_image_with_its_boxes() {
    use downstream_core::train::Dataset;
    use downstream_core::vision::input::to_tensor;
    let data = tempfile::tempdir().unwrap();
    let ann = rectangles(data.path(), 2, 150, 110);
    let set = coco::load(&ann, None).unwrap();
    let classes = set.class_index();
    let mut input = detect::dataset::InputConfig {
        size: 64,
        tile: Some(64),
        tile_overlap: 16,
        random_crop: true,
        ..Default::default()
    };
    // No flips: each view differs from the grid only by where its window lies.
    input.augment.flip_horizontal = false;
    let tiles = detect::dataset::DetectionData::new(
        set.clone(),
        input.clone(),
        8,
        classes.clone(),
        Default::default(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let index = 4; // the second row's middle tile of the first image
    let grid = tiles.samples[index].placement.clone();
    let original = image::open(data.path().join("img000.png"))
        .unwrap()
        .to_rgb8();
    let pixels = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(tiles.target(index, 0).unwrap().sample.placement, grid);
    let mut corners = std::collections::BTreeSet::new();
    for view in 1..=24u64 {
        let target = tiles.target(index, view).unwrap();
        let p = &target.sample.placement;
        let [x, y, w, h] = p.crop;
        assert_eq!(
            (w, h, p.scale),
            (64, 64, grid.scale),
            "view {view}: same size and scale"
        );
        assert!(
            x + w <= 150 && y + h <= 110,
            "view {view}: {:?} leaves the image",
            p.crop
        );
        corners.insert((x, y));
        // The input shows the window's pixels, and the boxes are the image's boxes in it.
        let rendered = to_tensor(&p.render(&original, 64), &candle_core::Device::Cpu).unwrap();
        assert_eq!(
            pixels(&tiles.input(index, view).unwrap()),
            pixels(&rendered)
        );
        let expected: Vec<[f32; 4]> = set
            .annotations
            .iter()
            .filter(|a| a.image_id == 1)
            .filter_map(|a| p.box_to_input(a.bbox, input.min_visible))
            .collect();
        let got: Vec<[f32; 4]> = target.boxes.iter().map(|b| b.1).collect();
        assert_eq!(got, expected, "view {view}");
    }
    assert!(corners.len() >= 20, "windows barely move: {corners:?}");
    // Without the option, every view keeps the tile's place in the grid.
    input.random_crop = false;
    let fixed = detect::dataset::DetectionData::new(
        set,
        input,
        8,
        classes,
        Default::default(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(fixed.target(index, 7).unwrap().sample.placement, grid);
}

#[test]
fn train_on_bad_data_fails_cleanly_naming_the_file() {
    let data = tempfile::tempdir().unwrap();
    let ann = rectangles(data.path(), 4, 64, 64);
    std::fs::remove_file(data.path().join("img002.png")).unwrap();
    let runs = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_detect"))
        .args([
            "train",
            "--epochs",
            "1",
            "--backbone",
            &tiny_backbone(),
            "--runs-dir",
        ])
        .arg(runs.path())
        .arg("--data")
        .arg(&ann)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("img002.png") && err.contains("image id 3") && !err.contains("panicked"),
        "{err}"
    );
    assert!(
        !runs.path().join("detect/default/checkpoints").exists(),
        "nothing half-written"
    );
}

#[test]
fn loss_and_suppression_settings_out_of_range_fail_before_training() {
    let data = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    let ann = rectangles(data.path(), 8, 64, 64);
    for (flag, value, says) in [
        ("--box-weight", "0", "model.box_weight"),
        ("--box-weight", "NaN", "model.box_weight"),
        ("--nms-iou", "1.5", "--nms-iou"),
        ("--nms-iou", "0", "--nms-iou"),
        ("--tile-edge-score", "1.5", "--tile-edge-score"),
    ] {
        let mut cmd = train_command(&ann, runs.path(), "range", "1");
        let out = cmd.args([flag, value]).output().unwrap();
        assert!(!out.status.success(), "{flag} {value} was taken");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says) && !err.contains("panicked"), "{err}");
        let run = runs.path().join("detect/range");
        assert!(!run.join("checkpoints").exists() && !run.join("config.toml").exists());
    }
}

#[test]
fn a_second_process_training_into_a_run_folder_is_refused_at_once() {
    let data = tempfile::tempdir().unwrap();
    let ann = rectangles(data.path(), 8, 64, 64);
    let runs = tempfile::tempdir().unwrap();
    let run_dir = runs.path().join("detect").join("shared");
    // This process holds the folder, as a training run would.
    let lock = downstream_core::train::lock::acquire(&run_dir).unwrap();
    let out = train_command(&ann, runs.path(), "shared", "1")
        .output()
        .unwrap();
    drop(lock);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is in use")
            && err.contains(&std::process::id().to_string())
            && !err.contains("panicked"),
        "{err}"
    );
    assert!(
        !run_dir.join("checkpoints").exists(),
        "the second run wrote into the folder"
    );
    assert!(!run_dir.join("config.toml").exists());
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

/// The `detect train` command on the rectangles set with the tiny backbone, into `runs/NAME`.
fn train_command(ann: &Path, runs: &Path, name: &str, epochs: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_detect"));
    cmd.args(["train", "--epochs", epochs, "--backbone", &tiny_backbone()])
        .args(["--size", "64", "--name", name, "--runs-dir"])
        .arg(runs)
        .arg("--data")
        .arg(ann);
    cmd
}

/// A run of one epoch on the rectangles set, trained by the binary into `runs/detect/NAME`:
/// the annotations and the run folder.
fn one_epoch_run(data: &Path, runs: &Path, name: &str) -> (PathBuf, PathBuf) {
    let ann = rectangles(data, 8, 64, 64);
    succeeded(&mut train_command(&ann, runs, name, "1"));
    (ann, runs.join("detect").join(name))
}

/// Runs `cmd`, asserting that it succeeds (showing its errors if not); its output.
fn succeeded(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_during_a_checkpoint_stops_the_run_and_keeps_the_last_one_loadable() {
    use std::os::unix::process::CommandExt;
    let (data, runs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ann, dir) = one_epoch_run(data.path(), runs.path(), "disk");
    let last = downstream_core::train::checkpoint::last_path(&dir);
    let before = downstream_core::train::checkpoint::load(&last, &candle_core::Device::Cpu)
        .unwrap()
        .state;

    // Resumed for two more epochs where no file may grow past half a checkpoint, as on a
    // disk that fills up: the next checkpoint cannot be written.
    let limit = std::fs::metadata(&last).unwrap().len() / 2;
    let mut resumed = train_command(&ann, runs.path(), "disk", "3");
    resumed.arg("--resume");
    // SAFETY: setrlimit and signal are async-signal-safe; they change only the child.
    unsafe {
        resumed.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            // Without this the kernel kills the writer (SIGXFSZ) instead of failing the write.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = resumed.output().unwrap();
    assert!(
        !out.status.success(),
        "the run went on without its checkpoint"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(".safetensors") && err.contains("writing") && !err.contains("panicked"),
        "{err}"
    );
    // What was there is intact: the checkpoint loads as it was, the log parses, and no
    // temporary file is left behind.
    let after = downstream_core::train::checkpoint::load(&last, &candle_core::Device::Cpu)
        .unwrap()
        .state;
    assert_eq!(before, after);
    let log = dir.join(downstream_core::train::metrics_log::METRICS_FILE);
    assert!(!downstream_core::train::metrics_log::read_records(&log)
        .unwrap()
        .is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[cfg(target_os = "linux")]
#[test]
fn a_read_only_run_folder_stops_the_run_with_an_error_and_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    let data = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    // Readable by the unprivileged user the resumed run may become.
    mode(data.path(), 0o755);
    mode(runs.path(), 0o755);
    let (ann, dir) = one_epoch_run(data.path(), runs.path(), "ro");
    let last = downstream_core::train::checkpoint::last_path(&dir);
    let log = dir.join(downstream_core::train::metrics_log::METRICS_FILE);
    let (ck_before, log_before) = (std::fs::read(&last).unwrap(), std::fs::read(&log).unwrap());
    for d in [dir.clone(), dir.join("checkpoints")] {
        mode(&d, 0o555);
    }
    let mut resumed = train_command(&ann, runs.path(), "ro", "3");
    resumed.arg("--resume");
    // SAFETY: geteuid and the set*id calls are async-signal-safe and change only the child.
    unsafe {
        resumed.pre_exec(|| {
            // Root writes through any permission: a root run becomes `nobody`, for whom the
            // folder is what it is to any user, read-only.
            if libc::geteuid() == 0
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = resumed.output().unwrap();
    for d in [dir.clone(), dir.join("checkpoints")] {
        mode(&d, 0o755);
    }
    assert!(
        !out.status.success(),
        "the run went on in a read-only folder"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&dir.display().to_string()) && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&last).unwrap(),
        ck_before,
        "the checkpoint changed"
    );
    assert_eq!(std::fs::read(&log).unwrap(), log_before, "the log changed");
    downstream_core::train::checkpoint::load(&last, &candle_core::Device::Cpu).unwrap();
}

#[test]
fn a_run_killed_at_random_moments_resumes_to_the_same_bits() {
    let data = tempfile::tempdir().unwrap();
    let ann = rectangles(data.path(), 12, 64, 64);
    // Full fine-tuning (backbone moments in the checkpoint), a checkpoint after every step and
    // an evaluation every other one, so that kills also land in writes and evaluations.
    let command = |runs: &Path, name: &str| {
        let mut cmd = train_command(&ann, runs, name, "6");
        cmd.args(["--mode", "full", "--batch", "4"]).args([
            "--checkpoint-every",
            "1",
            "--eval-every-steps",
            "2",
        ]);
        cmd
    };
    let drill = downstream_core::faults::Drill {
        task: "detect",
        command: &command,
        kills: 5,
        seeds: &[11, 12],
    };
    downstream_core::faults::drill(&drill).unwrap();
}

#[test]
fn the_inference_grid_and_edge_score_reach_validation_eval_and_predict() {
    let data = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = tiled_config(data.path());
    let plain = runs.path().join("detect/plain");
    pipeline::train(&cfg, &quiet(&plain)).unwrap();
    // The same training, validated on a denser grid: only the validation results change.
    cfg.input.inference_overlap = Some(40);
    let denser = runs.path().join("detect/denser");
    pipeline::train(&cfg, &quiet(&denser)).unwrap();
    let results = |dir: &Path| std::fs::read(dir.join("val_results.json")).unwrap();
    assert_ne!(results(&plain), results(&denser));

    // A barely trained model scores zero whatever the grid, so `eval` shows the flag only by
    // refusing a bad value; `predict` shows the boxes.
    let out = Command::new(env!("CARGO_BIN_EXE_detect"))
        .args(["eval", "--inference-overlap", "64", "--run"])
        .arg(&plain)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("input.inference_overlap = 64"),
        "{err}"
    );

    let predict = |name: &str, args: &[&str]| {
        let out = runs.path().join(name);
        succeeded(
            Command::new(env!("CARGO_BIN_EXE_detect"))
                .args(["predict", "--run"])
                .arg(&plain)
                .arg("--out")
                .arg(&out)
                .args(args)
                .arg(data.path().join("img001.png")),
        );
        std::fs::read(out.join("predictions.json")).unwrap()
    };
    let base = predict("p1", &[]);
    assert_ne!(base, predict("p2", &["--inference-overlap", "40"]));
    assert_ne!(base, predict("p3", &["--tile-edge-score", "0"]));
    assert_eq!(base, predict("p4", &["--tile-edge-score", "1"]));
}

#[test]
fn the_eval_and_predict_commands_use_a_trained_run() {
    let data = tempfile::tempdir().unwrap();
    let ann = rectangles(data.path(), 8, 64, 64);
    let runs = tempfile::tempdir().unwrap();
    let run_dir = runs.path().join("detect").join("cli");
    let mut cfg = config(ann, Freeze::Frozen);
    cfg.train.epochs = 1;
    pipeline::train(&cfg, &quiet(&run_dir)).unwrap();

    let out = succeeded(
        Command::new(env!("CARGO_BIN_EXE_detect"))
            .args(["eval", "--json", "--run"])
            .arg(&run_dir),
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        stats["AP"].as_f64().is_some() && stats["ARl"].as_f64().is_some(),
        "{stats}"
    );
    // Inference options on the command line; a misspelt flip is refused by name.
    let out = succeeded(
        Command::new(env!("CARGO_BIN_EXE_detect"))
            .args([
                "eval",
                "--json",
                "--tta",
                "h,vertical",
                "--box-voting",
                "--run",
            ])
            .arg(&run_dir),
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(stats["AP50"].as_f64().is_some(), "{stats}");
    let out = Command::new(env!("CARGO_BIN_EXE_detect"))
        .args(["eval", "--tta", "diagonal", "--run"])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown flip `diagonal`"));

    let pred = runs.path().join("pred");
    succeeded(
        Command::new(env!("CARGO_BIN_EXE_detect"))
            .args(["predict", "--run"])
            .arg(&run_dir)
            .arg("--out")
            .arg(&pred)
            .arg(data.path().join("img001.png"))
            .arg(data.path().join("img004.png")),
    );
    assert!(pred.join("img001.png").is_file() && pred.join("img004.png").is_file());
    let results = coco::load_results(&pred.join("predictions.json")).unwrap();
    assert!(results.iter().all(|d| d.image_id == 1 || d.image_id == 2));

    let out = Command::new(env!("CARGO_BIN_EXE_detect"))
        .args(["predict", "--run"])
        .arg(runs.path().join("no-such-run"))
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-run"));
}

#[test]
fn test_time_flips_add_the_flipped_images_boxes_at_inference_only() {
    use candle_core::{Device, Tensor};
    use detect::data::Category;
    use detect::detector::Detector;
    use detect::model::postprocess::{BoxDet, PostProcess};
    use downstream_core::train::Task;

    let cfg = config(PathBuf::from("unused.json"), Freeze::Frozen);
    let categories = vec![Category {
        id: 1,
        name: "thing".into(),
    }];
    // Every candidate kept, so that the comparison sees the whole output.
    let plain_pp = PostProcess {
        score_threshold: 0.0,
        nms_iou: 1.0,
        max_detections: 10_000,
        ..PostProcess::default()
    };
    let new = |pp: PostProcess| {
        Detector::new(
            &cfg.train,
            &cfg.model,
            64,
            categories.clone(),
            pp,
            &Device::Cpu,
        )
        .unwrap()
    };
    let plain = new(plain_pp.clone());
    let tta = new(PostProcess {
        tta: vec![Flip::Horizontal],
        ..plain_pp
    });
    let x = Tensor::randn(0f32, 1.0, (3, 64, 64), &Device::Cpu).unwrap();
    let flipped = Flip::Horizontal
        .apply(&x.unsqueeze(0).unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap();

    // Training encodes one view; inference one more per flip.
    assert_eq!(tta.encode(std::slice::from_ref(&x)).unwrap()[0].len(), 1);
    let inference = tta.detached().unwrap();
    let feats = inference.encode(std::slice::from_ref(&x)).unwrap();
    assert_eq!(feats[0].len(), 2);

    // The flipped view's boxes are the plain detector's on the flipped image, flipped back.
    let plain = plain.detached().unwrap();
    let on = |image: &Tensor| -> Vec<BoxDet> {
        let f = plain.encode(std::slice::from_ref(image)).unwrap();
        plain.predict(&[&f[0]]).unwrap().remove(0)
    };
    let mut expected = on(&x);
    expected.extend(on(&flipped).into_iter().map(|d| BoxDet {
        xyxy: Flip::Horizontal.undo(d.xyxy, 64.0),
        ..d
    }));
    let got = inference.predict(&[&feats[0]]).unwrap().remove(0);
    assert!(!expected.is_empty());
    assert_eq!(got.len(), expected.len());
    // Each expected box is matched by one of the outputs (the batched pass differs in the
    // last bits).
    let mut unmatched = got;
    for e in &expected {
        let at = unmatched.iter().position(|g| {
            (g.score - e.score).abs() < 1e-4
                && g.xyxy.iter().zip(e.xyxy).all(|(a, b)| (a - b).abs() < 1e-2)
        });
        let at = at.unwrap_or_else(|| panic!("{e:?} is not among the test-time outputs"));
        unmatched.swap_remove(at);
    }
}
