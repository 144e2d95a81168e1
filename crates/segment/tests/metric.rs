//! mIoU, aAcc, mAcc and per-class IoU and accuracy equal to the mmsegmentation convention on
//! the fixture cases of `scripts/reference/miou.py` (ignore index, absent classes, a class
//! predicted but never present, `reduce_zero_label`, images of different sizes), both from the
//! confusion matrix and through `segment eval --gt --pred --json`.

use std::path::Path;
use std::process::Command;

use image::GrayImage;
use ndarray::Array2;
use segment::metric::confusion::{Confusion, LabelRules};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/miou.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn grid(v: &Value) -> Array2<i64> {
    let rows: Vec<Vec<i64>> = serde_json::from_value(v.clone()).unwrap();
    let (h, w) = (rows.len(), rows[0].len());
    Array2::from_shape_vec((h, w), rows.concat()).unwrap()
}

fn rules(case: &Value) -> LabelRules {
    LabelRules {
        num_classes: case["num_classes"].as_u64().unwrap() as usize,
        ignore_index: case["ignore_index"].as_u64().unwrap() as u8,
        reduce_zero_label: case["reduce_zero_label"].as_bool().unwrap(),
    }
}

fn assert_matches(got: &Value, want: &Value, what: &str) {
    for key in ["mIoU", "aAcc", "mAcc"] {
        let (g, w) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
        assert!((g - w).abs() < 1e-9, "{what} {key}: {g} vs {w}");
    }
    for key in ["IoU", "Acc"] {
        let (g, w) = (got[key].as_array().unwrap(), want[key].as_array().unwrap());
        assert_eq!(g.len(), w.len(), "{what} {key}");
        for (k, (g, w)) in g.iter().zip(w).enumerate() {
            match (g.as_f64(), w.as_f64()) {
                (Some(g), Some(w)) => {
                    assert!((g - w).abs() < 1e-9, "{what} {key}[{k}]: {g} vs {w}")
                }
                (None, None) => {}
                _ => panic!("{what} {key}[{k}]: {g} vs {w}"),
            }
        }
    }
}

#[test]
fn the_confusion_matrix_gives_the_reference_metrics() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let mut c = Confusion::new(rules(&case));
        for pair in case["pairs"].as_array().unwrap() {
            let gt = grid(&pair["gt"]).mapv(|v| v as u8);
            let pred = grid(&pair["pred"]).mapv(|v| v as u32);
            c.add(gt.view(), pred.view()).unwrap();
        }
        let got = serde_json::to_value(c.stats()).unwrap();
        assert_matches(&got, &case["expected"], name);
    }
}

fn save(path: &Path, a: &Array2<i64>) {
    let (h, w) = a.dim();
    GrayImage::from_fn(w as u32, h as u32, |x, y| {
        image::Luma([a[[y as usize, x as usize]] as u8])
    })
    .save(path)
    .unwrap();
}

#[test]
fn the_eval_command_scores_mask_folders_by_stem() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (gt, pred) = (dir.path().join("gt"), dir.path().join("pred"));
        std::fs::create_dir_all(&gt).unwrap();
        std::fs::create_dir_all(&pred).unwrap();
        for (i, pair) in case["pairs"].as_array().unwrap().iter().enumerate() {
            save(&gt.join(format!("img{i}.png")), &grid(&pair["gt"]));
            save(&pred.join(format!("img{i}.png")), &grid(&pair["pred"]));
        }
        let r = rules(&case);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_segment"));
        cmd.args(["eval", "--json", "--gt"])
            .arg(&gt)
            .arg("--pred")
            .arg(&pred)
            .args(["--num-classes", &r.num_classes.to_string()])
            .args(["--ignore-index", &r.ignore_index.to_string()]);
        if r.reduce_zero_label {
            cmd.arg("--reduce-zero-label");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_matches(&got, &case["expected"], name);
    }
}

#[test]
fn a_missing_or_misshapen_prediction_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (gt, pred) = (dir.path().join("gt"), dir.path().join("pred"));
    std::fs::create_dir_all(&gt).unwrap();
    std::fs::create_dir_all(&pred).unwrap();
    save(&gt.join("a.png"), &Array2::zeros((3, 4)));
    save(&gt.join("b.png"), &Array2::zeros((3, 4)));
    save(&pred.join("a.png"), &Array2::zeros((4, 4)));
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_segment"))
            .args(["eval", "--gt"])
            .arg(&gt)
            .arg("--pred")
            .arg(&pred)
            .args(["--num-classes", "2"])
            .output()
            .unwrap()
    };
    let out = run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a.png") && err.contains("(4, 4)"), "{err}");
    save(&pred.join("a.png"), &Array2::zeros((3, 4)));
    let err = String::from_utf8_lossy(&run().stderr).into_owned();
    assert!(err.contains("b.png"), "{err}");
    // A ground-truth label that is no class is the data's fault, and said so.
    let mut bad = Array2::zeros((3, 4));
    bad[[1, 1]] = 7;
    save(&gt.join("b.png"), &bad);
    save(&pred.join("b.png"), &Array2::zeros((3, 4)));
    let err = String::from_utf8_lossy(&run().stderr).into_owned();
    assert!(err.contains("b.png") && err.contains("label 7"), "{err}");
}
