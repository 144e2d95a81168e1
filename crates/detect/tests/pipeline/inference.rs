//! The `eval` and `predict` commands on a trained run, and test-time flips at inference only.

use super::*;

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

#[test]
fn flips_left_out_of_validation_still_score_the_kept_checkpoint() {
    let data = tempfile::tempdir().unwrap();
    let ann = rectangles(data.path(), 8, 64, 64);
    let runs = tempfile::tempdir().unwrap();
    let run = |name: &str, tta: bool| {
        let mut cfg = config(ann.clone(), Freeze::Frozen);
        if tta {
            cfg.postprocess.tta = vec![Flip::Horizontal, Flip::Transpose];
            cfg.postprocess.fusion_iou = Some(0.7);
            cfg.postprocess.validate_with_tta = false;
        }
        let dir = runs.path().join("detect").join(name);
        let outcome = pipeline::train(&cfg, &quiet(&dir)).unwrap();
        (dir, outcome)
    };
    let (plain_dir, plain) = run("plain", false);
    let (tta_dir, tta) = run("tta", true);
    // The evaluations during training, which choose the checkpoint, are the plain run's (the
    // statistics of a run this small are too coarse to tell validations with and without
    // the flips apart; `PostProcess::for_validation`'s unit test covers that choice).
    let evals = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == "eval")
            .map(|v| v["metrics"].clone())
            .collect()
    };
    assert_eq!(evals(&plain_dir).len(), 2);
    assert_eq!(evals(&plain_dir), evals(&tta_dir));
    assert_eq!(plain.report.best_step, tta.report.best_step);
    // The final evaluation of that checkpoint uses the flips and the fusion, as `eval` does.
    let detections = |dir: &Path| coco::load_results(&dir.join("val_results.json")).unwrap();
    assert!(!detections(&plain_dir).is_empty());
    assert_ne!(detections(&plain_dir), detections(&tta_dir));
    let out = succeeded(
        Command::new(env!("CARGO_BIN_EXE_detect"))
            .args(["eval", "--json", "--run"])
            .arg(&tta_dir),
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (name, value) in detect::metric::coco_eval::STAT_NAMES
        .iter()
        .zip(tta.stats.values)
    {
        assert!(
            (stats[name].as_f64().unwrap() - value).abs() < 1e-9,
            "{name}: {stats}"
        );
    }
}
