//! The Rust COCO evaluation against pycocotools on fixtures written by
//! `scripts/reference/coco_eval.py`.

use std::path::{Path, PathBuf};

use detect::data::coco;
use detect::metric::coco_eval::{evaluate, STAT_NAMES};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/coco_eval")
}

fn check(case: &str) {
    let dir = fixtures();
    let gt = coco::load_annotations(&dir.join(format!("{case}.gt.json"))).unwrap();
    let dt = coco::load_results(&dir.join(format!("{case}.dt.json"))).unwrap();
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{case}.stats.json"))).unwrap(),
    )
    .unwrap();
    let want: Vec<f64> = want["stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let got = evaluate(&gt, &dt).unwrap();
    for (i, name) in STAT_NAMES.iter().enumerate() {
        assert!(
            (got.values[i] - want[i]).abs() <= 1e-9,
            "{case} {name}: {} vs pycocotools {}",
            got.values[i],
            want[i]
        );
    }
}

macro_rules! cases {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            check(stringify!($name));
        }
    )*};
}

cases!(
    basic,
    empty_images,
    dt_without_gt,
    crowd,
    score_ties,
    many_dets,
    cat_no_gt,
    areas,
    all_negative,
    all_crowd,
    random_large
);

#[test]
fn every_fixture_case_is_tested() {
    let mut cases: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .into_string()
                .unwrap()
                .strip_suffix(".stats.json")
                .map(str::to_string)
        })
        .collect();
    cases.sort();
    let tested = [
        "all_crowd",
        "all_negative",
        "areas",
        "basic",
        "cat_no_gt",
        "crowd",
        "dt_without_gt",
        "empty_images",
        "many_dets",
        "random_large",
        "score_ties",
    ];
    assert_eq!(cases, tested);
}

#[test]
fn detections_on_unknown_images_are_an_error() {
    let dir = fixtures();
    let gt = coco::load_annotations(&dir.join("basic.gt.json")).unwrap();
    let bogus = vec![coco::Detection {
        image_id: 987654,
        category_id: 1,
        bbox: [0.0, 0.0, 5.0, 5.0],
        score: 0.5,
    }];
    let err = evaluate(&gt, &bogus).unwrap_err().to_string();
    assert!(err.contains("987654"), "{err}");
}
