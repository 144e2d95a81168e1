//! Bad input refused before training starts, with the file or setting named: malformed data,
//! settings out of range, a run folder already in use.

use super::*;

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
        ("--fusion-iou", "1.5", "--fusion-iou"),
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
fn a_fusion_threshold_out_of_range_is_refused_even_where_validation_leaves_it_out() {
    let data = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = config(rectangles(data.path(), 8, 64, 64), Freeze::Frozen);
    cfg.postprocess.fusion_iou = Some(1.5);
    cfg.postprocess.validate_with_tta = false;
    let run = runs.path().join("detect").join("fusion");
    let err = pipeline::train(&cfg, &quiet(&run))
        .err()
        .expect("was taken");
    assert!(
        format!("{err:#}").contains("postprocess.fusion_iou"),
        "{err:#}"
    );
    assert!(!run.join("checkpoints").exists());
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
