//! Large images cut into tiles: detections mapped back to the image, random crops moving a
//! tile with its boxes, and the inference grid and edge score reaching every command.

use super::*;

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
