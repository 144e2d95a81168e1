//! Training, evaluation and prediction end to end, on small generated data sets and the tiny
//! DINOv2 test checkpoint (so that the tests run in seconds), a module per concern: training
//! in every mode with every setting reaching the model ([`training`]), tiling ([`tiling`]),
//! bad input refused before anything runs ([`refusals`]), runs hit by a full disk, a
//! read-only folder or a kill ([`faults`]), and the `eval` and `predict` commands
//! ([`inference`]). The data and commands more than one of them uses are here.

mod faults;
mod inference;
mod refusals;
mod tiling;
mod training;

use std::path::{Path, PathBuf};
use std::process::Command;

use detect::data::coco;
use detect::model::flip::Flip;
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
