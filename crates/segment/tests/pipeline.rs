//! Training, evaluation and prediction end to end on small generated data and the tiny DINOv2
//! test checkpoint: every fine-tuning mode reaches what it trains, a data set the project has
//! never seen (another class count, image size and palette masks) trains and evaluates with
//! no code change, training raises mIoU, the commands work on a trained run, and bad data is
//! an error naming the file.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use downstream_core::train::config::{DataConfig, TrainConfig};
use downstream_core::train::trainer::RunOptions;
use downstream_core::vision::mask::save_mask;
use downstream_core::Freeze;
use image::{GrayImage, Luma, Rgb, RgbImage};
use segment::data::layout::{self, Split};
use segment::data::{LabelConfig, SegmentationSet};
use segment::dataset::SegmentationData;
use segment::pipeline::{self, SegmentConfig};
use segment::segmenter::Segmenter;

fn tiny_backbone() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../core/tests/fixtures/dinov2")
        .display()
        .to_string()
}

/// `n` images of `w x h`: a grey field (class 0) with a red rectangle (class 1) and a blue
/// disc (class 2) at places that vary; masks as palette PNGs with a palette of our own, and a
/// few border pixels at 255.
fn discs(dir: &Path, n: usize, w: u32, h: u32) -> PathBuf {
    let (images, masks) = (dir.join("images"), dir.join("masks"));
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&masks).unwrap();
    let palette: Vec<[u8; 3]> = vec![[10, 10, 10], [250, 0, 0], [0, 0, 250]];
    for i in 0..n as u32 {
        let (rx, ry) = (3 + (i * 7) % (w / 2), 4 + (i * 5) % (h / 3));
        let (cx, cy, r) = (
            w / 2 + (i * 3) % (w / 3),
            h / 2 + (i * 11) % (h / 3),
            6 + i % 5,
        );
        let class = |x: u32, y: u32| {
            let (dx, dy) = (x as i64 - cx as i64, y as i64 - cy as i64);
            if dx * dx + dy * dy <= (r * r) as i64 {
                2
            } else if x >= rx && x < rx + w / 4 && y >= ry && y < ry + h / 4 {
                1
            } else {
                0
            }
        };
        let img = RgbImage::from_fn(w, h, |x, y| match class(x, y) {
            2 => Rgb([40, 40, 220]),
            1 => Rgb([220, 40, 40]),
            _ => Rgb([120, 120, 120]),
        });
        let mask = GrayImage::from_fn(w, h, |x, y| {
            Luma([if x == 0 { 255 } else { class(x, y) as u8 }])
        });
        img.save(images.join(format!("s{i:03}.png"))).unwrap();
        save_mask(&masks.join(format!("s{i:03}.png")), &mask, Some(&palette)).unwrap();
    }
    dir.to_path_buf()
}

fn config(train: PathBuf, mode: Freeze) -> SegmentConfig {
    let mut cfg = SegmentConfig {
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
            lr: 1e-2,
            ..TrainConfig::default()
        },
        ..SegmentConfig::default()
    };
    cfg.input.size = 48;
    cfg.input.views = 2;
    // The tiny backbone has blocks 0 to 2.
    cfg.model.feature_block = Some(1);
    cfg
}

fn quiet(dir: &Path) -> RunOptions {
    RunOptions {
        show_progress: false,
        ..RunOptions::new(dir)
    }
}

#[test]
fn every_mode_and_decoder_reaches_every_parameter_it_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let root = discs(tmp.path(), 4, 40, 36);
    let set = SegmentationSet::validate(
        &root,
        layout::read(&root, Split::Train).unwrap(),
        &LabelConfig::default(),
    )
    .unwrap();
    for (mode, block) in [
        (Freeze::Frozen, None),
        (Freeze::Full, None),
        (Freeze::Partial(2), None),
        (Freeze::Partial(1), Some(1)),
    ] {
        for decoder in [
            segment::model::DecoderKind::Linear,
            segment::model::DecoderKind::Progressive,
        ] {
            let mut cfg = config(root.clone(), mode);
            cfg.model.feature_block = block;
            cfg.model.decoder = decoder;
            let seg = Segmenter::new(
                &cfg.train,
                &cfg.model,
                cfg.input.size,
                set.classes.clone(),
                set.rules,
                &Device::Cpu,
            )
            .unwrap();
            let data = SegmentationData::new(set.clone(), cfg.input.clone(), 8, true, &Device::Cpu)
                .unwrap();
            let c = downstream_core::grad::check_task(&seg, &data, 4)
                .unwrap_or_else(|e| panic!("{mode} {decoder:?} block {block:?}: {e:#}"));
            assert_eq!(c.ok.len(), seg.params.trainable().count());
        }
    }
}

#[test]
fn an_unseen_data_set_trains_evaluates_and_raises_miou() {
    let tmp = tempfile::tempdir().unwrap();
    let root = discs(tmp.path(), 16, 40, 36);
    let runs = tempfile::tempdir().unwrap();
    // No training: the decoder as initialised.
    let mut untrained = config(root.clone(), Freeze::Frozen);
    untrained.train.epochs = 1;
    untrained.train.lr = 1e-9;
    let before = pipeline::train(&untrained, &quiet(&runs.path().join("before"))).unwrap();
    let mut cfg = config(root, Freeze::Frozen);
    cfg.train.epochs = 12;
    let dir = runs.path().join("segment").join("unseen");
    let after = pipeline::train(&cfg, &quiet(&dir)).unwrap();
    assert!(after.report.finished);
    assert_eq!(after.classes, ["class 0", "class 1", "class 2"]);
    let result = downstream_core::train::result::read(&dir).unwrap();
    assert_eq!(result.main_metric, "mIoU");
    assert_eq!(result.main(), Some(after.stats.miou));
    eprintln!(
        "mIoU untrained {:.3}, trained {:.3}",
        before.stats.miou, after.stats.miou
    );
    assert!(
        after.stats.miou > before.stats.miou + 0.2,
        "mIoU {} -> {}",
        before.stats.miou,
        after.stats.miou
    );
    for f in [
        "config.toml",
        "labels.json",
        "metrics.jsonl",
        "loss.png",
        "metrics.png",
        "checkpoints/best.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    // 16 images, every fourth validates: 4 drawn, each a mask of its image's size and an
    // overlay wider than the image (the legend).
    assert_eq!(after.predictions.len(), 4);
    for p in &after.predictions {
        let overlay = image::open(p).unwrap();
        assert!(overlay.width() > 40 && overlay.height() >= 36);
        let mask = dir.join("predictions/masks").join(p.file_name().unwrap());
        let m = image::open(&mask).unwrap().to_luma8();
        assert_eq!(m.dimensions(), (40, 36));
        assert!(m.pixels().all(|p| p.0[0] < 3));
    }

    // The commands on the trained run: eval (JSON) and predict (masks and overlays).
    let out = Command::new(env!("CARGO_BIN_EXE_segment"))
        .args(["eval", "--json", "--run"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!((json["mIoU"].as_f64().unwrap() - after.stats.miou).abs() < 1e-9);
    let pred_dir = tmp.path().join("pred");
    let out = Command::new(env!("CARGO_BIN_EXE_segment"))
        .args(["predict", "--run"])
        .arg(&dir)
        .arg("--out")
        .arg(&pred_dir)
        .arg(tmp.path().join("images"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(pred_dir.join("masks")).unwrap().count(),
        16
    );
    assert_eq!(
        std::fs::read_dir(pred_dir.join("overlays"))
            .unwrap()
            .count(),
        16
    );
    // The predicted masks score as the run's own evaluation does on the same images.
    let out = Command::new(env!("CARGO_BIN_EXE_segment"))
        .args(["eval", "--json", "--num-classes", "3", "--gt"])
        .arg(tmp.path().join("masks"))
        .arg("--pred")
        .arg(pred_dir.join("masks"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sliding_windows_cover_large_images_and_score_like_whole_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let root = discs(tmp.path(), 8, 90, 70);
    let mut cfg = config(root, Freeze::Frozen);
    cfg.train.epochs = 1;
    cfg.input.slide = Some((48, 32));
    let outcome = pipeline::train(&cfg, &quiet(&tmp.path().join("run"))).unwrap();
    assert!(outcome.report.finished);
    // Every pixel of every validation image was predicted: the drawn masks are whole.
    for p in &outcome.predictions {
        let mask = tmp
            .path()
            .join("run/predictions/masks")
            .join(p.file_name().unwrap());
        assert_eq!(
            image::open(&mask).unwrap().to_luma8().dimensions(),
            (90, 70)
        );
    }
    assert!(outcome.stats.a_acc.is_finite());
}

fn train_err(root: PathBuf) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(root, Freeze::Frozen);
    format!(
        "{:#}",
        pipeline::train(&cfg, &quiet(tmp.path()))
            .err()
            .expect("bad data accepted")
    )
}

#[test]
fn bad_data_is_an_error_naming_the_file() {
    // A mask of another size than its image.
    let tmp = tempfile::tempdir().unwrap();
    let root = discs(tmp.path(), 4, 40, 36);
    save_mask(&root.join("masks/s001.png"), &GrayImage::new(40, 30), None).unwrap();
    let err = train_err(root);
    assert!(err.contains("s001.png") && err.contains("40x30"), "{err}");

    // A label beyond the classes the data declares.
    let tmp = tempfile::tempdir().unwrap();
    let root = discs(tmp.path(), 4, 40, 36);
    std::fs::write(root.join("classes.txt"), "sky\nroof\n").unwrap();
    let err = train_err(root);
    assert!(
        err.contains("label 2") && err.contains("masks/s000.png"),
        "{err}"
    );

    // An image without its mask.
    let tmp = tempfile::tempdir().unwrap();
    let root = discs(tmp.path(), 4, 40, 36);
    std::fs::remove_file(root.join("masks/s002.png")).unwrap();
    let err = train_err(root);
    assert!(err.contains("s002") && err.contains("no mask"), "{err}");

    // An unreadable mask.
    let tmp = tempfile::tempdir().unwrap();
    let root = discs(tmp.path(), 4, 40, 36);
    std::fs::write(root.join("masks/s003.png"), b"not a png").unwrap();
    let err = train_err(root);
    assert!(err.contains("s003.png"), "{err}");

    // A full-colour "mask".
    let tmp = tempfile::tempdir().unwrap();
    let root = discs(tmp.path(), 4, 40, 36);
    RgbImage::new(40, 36)
        .save(root.join("masks/s000.png"))
        .unwrap();
    let err = train_err(root);
    assert!(
        err.contains("s000.png") && err.contains("not a class mask"),
        "{err}"
    );

    // Not a data set at all, through the command line: a clean error, a failing exit.
    let out = Command::new(env!("CARGO_BIN_EXE_segment"))
        .args(["train", "--data"])
        .arg(tmp.path().join("nowhere"))
        .args(["--runs-dir"])
        .arg(tmp.path().join("runs"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nowhere") && err.starts_with("error:"),
        "{err}"
    );
}

#[test]
fn a_voc_layout_reads_its_splits_and_refuses_a_foreign_palette() {
    let tmp = tempfile::tempdir().unwrap();
    let voc = tmp.path().join("VOC2012");
    let (jpeg, seg, sets) = (
        voc.join("JPEGImages"),
        voc.join("SegmentationClass"),
        voc.join("ImageSets/Segmentation"),
    );
    for d in [&jpeg, &seg, &sets] {
        std::fs::create_dir_all(d).unwrap();
    }
    let palette = layout::voc_palette();
    for name in ["a", "b", "c"] {
        RgbImage::new(20, 10)
            .save(jpeg.join(format!("{name}.jpg")))
            .unwrap();
        let mask = GrayImage::from_fn(20, 10, |x, _| {
            Luma([if x < 2 { 255 } else { (x % 3) as u8 * 7 }])
        });
        save_mask(&seg.join(format!("{name}.png")), &mask, Some(&palette)).unwrap();
    }
    std::fs::write(sets.join("train.txt"), "a\nb\n").unwrap();
    std::fs::write(sets.join("val.txt"), "c\n").unwrap();
    let data = DataConfig {
        train: Some(voc.clone()),
        ..DataConfig::default()
    };
    let (train, val) = pipeline::load_data(&data, &LabelConfig::default()).unwrap();
    assert_eq!((train.pairs.len(), val.pairs.len()), (2, 1));
    assert_eq!(train.classes.len(), 21);
    assert_eq!(train.classes[15], "person");
    let mut other = palette.clone();
    other[1] = [1, 2, 3];
    save_mask(&seg.join("b.png"), &GrayImage::new(20, 10), Some(&other)).unwrap();
    let err = format!(
        "{:#}",
        pipeline::load_data(&data, &LabelConfig::default()).unwrap_err()
    );
    assert!(err.contains("b.png") && err.contains("palette"), "{err}");
}

#[test]
fn an_ade20k_layout_reads_its_splits_and_reduces_the_zero_label() {
    let tmp = tempfile::tempdir().unwrap();
    let ade = tmp.path().join("ADEChallengeData2016");
    for (split, names) in [("training", ["a", "b"]), ("validation", ["c", "d"])] {
        let (images, annotations) = (
            ade.join("images").join(split),
            ade.join("annotations").join(split),
        );
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&annotations).unwrap();
        for name in names {
            RgbImage::new(12, 8)
                .save(images.join(format!("{name}.jpg")))
                .unwrap();
            // Label 0 is "other"; 1 to 3 are the classes.
            let mask = GrayImage::from_fn(12, 8, |x, _| Luma([(x % 4) as u8]));
            save_mask(&annotations.join(format!("{name}.png")), &mask, None).unwrap();
        }
    }
    let data = DataConfig {
        train: Some(ade),
        ..DataConfig::default()
    };
    let (train, val) = pipeline::load_data(&data, &LabelConfig::default()).unwrap();
    assert_eq!((train.pairs.len(), val.pairs.len()), (2, 2));
    assert!(train.rules.reduce_zero_label && val.rules.reduce_zero_label);
    assert_eq!(
        train.classes.len(),
        3,
        "labels 1 to 3 become classes 0 to 2"
    );
    assert_eq!(train.rules.class_of(0), None);
    assert_eq!(train.rules.class_of(3), Some(2));
}

#[test]
fn a_run_killed_at_random_moments_resumes_to_the_same_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let root = discs(&tmp.path().join("data"), 12, 48, 48);
    // Full fine-tuning, a checkpoint after every step and an evaluation every other one, so
    // that kills also land in writes and evaluations.
    let mut cfg = config(root, Freeze::Full);
    cfg.train.epochs = 6;
    cfg.train.checkpoint_every = Some(1);
    cfg.train.eval_every_steps = Some(2);
    let file = tmp.path().join("drill.toml");
    downstream_core::train::config::save_toml(&file, &cfg).unwrap();
    let command = downstream_core::faults::config_command(env!("CARGO_BIN_EXE_segment"), &file);
    let drill = downstream_core::faults::Drill {
        task: "segment",
        command: &command,
        kills: 5,
        seeds: &[21, 22],
    };
    downstream_core::faults::drill(&drill).unwrap();
}

#[cfg(unix)]
#[test]
fn a_listed_file_linking_outside_the_data_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = discs(&tmp.path().join("data"), 3, 32, 32);
    let outside = tmp.path().join("elsewhere.png");
    std::fs::copy(root.join("images/s000.png"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("images/s900.png")).unwrap();
    std::fs::copy(root.join("masks/s000.png"), root.join("masks/s900.png")).unwrap();
    let err = format!(
        "{:#}",
        layout::read(&root, Split::Train).err().expect("read")
    );
    assert!(
        err.contains("s900.png") && err.contains("leaves the data folder"),
        "{err}"
    );
}
