//! Loading detection data: valid COCO and VOC sets with arbitrary ids and names, and every
//! kind of bad input giving an error that names the file and the record.

use std::path::Path;
use std::process::Command;

use detect::data::{self, coco, voc};
use downstream_core::train::config::RunConfig;
use serde_json::json;

fn write_png(path: &Path, w: u32, h: u32) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]))
        .save(path)
        .unwrap();
}

/// A folder with two 64x48 images and a COCO file built from `anns` and `images`.
fn coco_set(dir: &Path, images: serde_json::Value, anns: serde_json::Value) -> std::path::PathBuf {
    write_png(&dir.join("a.png"), 64, 48);
    write_png(&dir.join("b.png"), 64, 48);
    let file = json!({
        "images": images,
        "annotations": anns,
        "categories": [{"id": 17, "name": "scratch"}, {"id": 90, "name": "dent"}],
    });
    let path = dir.join("gt.json");
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    path
}

fn two_images() -> serde_json::Value {
    json!([
        {"id": 5, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 9, "file_name": "b.png", "width": 64, "height": 48},
    ])
}

fn ann(id: u64, image_id: u64, category_id: u64, bbox: [f64; 4]) -> serde_json::Value {
    json!({"id": id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0})
}

fn load_err(path: &Path) -> String {
    format!("{:#}", coco::load(path, None).unwrap_err())
}

#[test]
fn a_coco_set_with_unseen_ids_and_names_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = coco_set(
        dir.path(),
        two_images(),
        json!([
            ann(1, 5, 90, [1.0, 2.0, 10.0, 12.0]),
            ann(2, 9, 17, [30.0, 20.0, 8.0, 8.0])
        ]),
    );
    let set = coco::load(&path, None).unwrap();
    assert_eq!(set.images.len(), 2);
    assert_eq!(set.annotations.len(), 2);
    assert_eq!(set.clipped, 0);
    let classes = set.class_index();
    assert_eq!(classes[&17], 0);
    assert_eq!(classes[&90], 1);
    // Saving and loading again gives the same set.
    let again = dir.path().join("again.json");
    coco::save(&set, &again).unwrap();
    let back = coco::load(&again, None).unwrap();
    assert_eq!(back.annotations, set.annotations);
    assert_eq!(back.categories, set.categories);
}

#[test]
fn boxes_partly_outside_are_clipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = coco_set(
        dir.path(),
        two_images(),
        json!([
            ann(1, 5, 90, [-4.0, 40.0, 10.0, 20.0]),
            ann(2, 9, 17, [60.0, 0.0, 8.0, 8.0]),
            ann(3, 9, 17, [1.0, 1.0, 5.0, 5.0])
        ]),
    );
    let set = coco::load(&path, None).unwrap();
    assert_eq!(set.clipped, 2);
    assert_eq!(set.annotations[0].bbox, [0.0, 40.0, 6.0, 8.0]);
    assert_eq!(set.annotations[0].area, 48.0);
    assert_eq!(set.annotations[1].bbox, [60.0, 0.0, 4.0, 8.0]);
    assert_eq!(set.annotations[2].bbox, [1.0, 1.0, 5.0, 5.0]);
}

#[test]
fn a_missing_image_names_the_file_and_image() {
    let dir = tempfile::tempdir().unwrap();
    let images = json!([{"id": 5, "file_name": "a.png", "width": 64, "height": 48}, {"id": 7, "file_name": "gone.png", "width": 64, "height": 48}]);
    let err = load_err(&coco_set(dir.path(), images, json!([])));
    assert!(
        err.contains("image id 7") && err.contains("gone.png") && err.contains("gt.json"),
        "{err}"
    );
}

#[test]
fn an_unreadable_image_names_the_file_and_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = coco_set(dir.path(), two_images(), json!([]));
    std::fs::write(dir.path().join("b.png"), b"not a png at all").unwrap();
    let err = load_err(&path);
    assert!(err.contains("image id 9") && err.contains("b.png"), "{err}");
}

#[test]
fn malformed_json_names_the_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gt.json");
    std::fs::write(&path, "{\"images\": [\n  {\"id\": 1,, }\n]}").unwrap();
    let err = load_err(&path);
    assert!(err.contains("gt.json") && err.contains("line 2"), "{err}");
}

#[test]
fn bad_boxes_and_references_name_the_annotation() {
    let cases = [
        (
            ann(31, 5, 90, [5.0, 5.0, -3.0, 4.0]),
            vec!["annotation id 31", "non-positive"],
        ),
        (
            ann(32, 5, 90, [100.0, 5.0, 10.0, 4.0]),
            vec!["annotation id 32", "entirely outside"],
        ),
        (
            ann(33, 5, 4, [5.0, 5.0, 3.0, 4.0]),
            vec!["annotation id 33", "unknown category id 4"],
        ),
        (
            ann(34, 77, 90, [5.0, 5.0, 3.0, 4.0]),
            vec!["annotation id 34", "image id 77", "no such image"],
        ),
        (
            json!({"id": 35, "image_id": 5, "category_id": 90, "bbox": [1, 2, 3]}),
            vec!["annotation id 35", "bbox"],
        ),
    ];
    for (bad, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = coco_set(
            dir.path(),
            two_images(),
            json!([ann(1, 5, 90, [1.0, 1.0, 4.0, 4.0]), bad]),
        );
        let err = load_err(&path);
        for n in needles {
            assert!(
                err.contains(n) && err.contains("gt.json"),
                "missing `{n}` in: {err}"
            );
        }
    }
}

#[test]
fn file_names_that_escape_the_data_folder_are_refused() {
    for name in ["../outside.png", "/etc/passwd", "sub/../../x.png"] {
        let dir = tempfile::tempdir().unwrap();
        let images = json!([{"id": 3, "file_name": name, "width": 64, "height": 48}]);
        let err = load_err(&coco_set(dir.path(), images, json!([])));
        assert!(
            err.contains("image id 3") && err.contains("escapes the data folder"),
            "{err}"
        );
    }
}

fn write_voc(dir: &Path, file: &str, image: &str, objects: &[(&str, [u32; 4], bool)]) {
    let objs: String = objects
        .iter()
        .map(|(n, b, d)| {
            format!(
                "<object><name>{n}</name><difficult>{}</difficult><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>",
                *d as u8, b[0], b[1], b[2], b[3]
            )
        })
        .collect();
    let xml = format!("<annotation><filename>{image}</filename><size><width>64</width><height>48</height><depth>3</depth></size>{objs}</annotation>");
    std::fs::write(dir.join(file), xml).unwrap();
}

#[test]
fn a_voc_folder_loads_with_sorted_classes_and_difficult_as_crowd() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("a.png"), 64, 48);
    write_png(&dir.path().join("b.png"), 64, 48);
    write_voc(
        dir.path(),
        "a.xml",
        "a.png",
        &[
            ("Tree", [1, 2, 11, 22], false),
            ("Dead", [5, 5, 9, 9], true),
        ],
    );
    write_voc(
        dir.path(),
        "b.xml",
        "b.png",
        &[("Tree", [30, 10, 70, 20], false)],
    );
    let set = data::load(dir.path()).unwrap();
    let names: Vec<_> = set.categories.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["Dead", "Tree"]);
    assert_eq!(set.annotations[0].bbox, [1.0, 2.0, 10.0, 20.0]);
    assert!(set.annotations[1].iscrowd);
    assert_eq!(
        set.clipped, 1,
        "the box reaching x = 70 in a 64-wide image is clipped"
    );
}

#[test]
fn bad_voc_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("a.png"), 64, 48);
    std::fs::write(
        dir.path().join("a.xml"),
        "<annotation><filename>a.png</filename><object>",
    )
    .unwrap();
    let err = format!("{:#}", voc::load(dir.path(), None).unwrap_err());
    assert!(
        err.contains("a.xml") && err.contains("malformed XML"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("a.png"), 64, 48);
    write_voc(
        dir.path(),
        "a.xml",
        "a.png",
        &[("Tree", [10, 10, 5, 20], false)],
    );
    let err = format!("{:#}", voc::load(dir.path(), None).unwrap_err());
    assert!(
        err.contains("a.xml") && err.contains("non-positive"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("a.png"), 64, 48);
    write_voc(
        dir.path(),
        "a.xml",
        "a.png",
        &[("Shrub", [1, 1, 5, 5], false)],
    );
    let err = format!(
        "{:#}",
        voc::load(dir.path(), Some(&["Tree".to_string()])).unwrap_err()
    );
    assert!(err.contains("a.xml") && err.contains("Shrub"), "{err}");
}

#[test]
fn the_eval_command_fails_cleanly_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let gt = dir.path().join("gt.json");
    std::fs::write(&gt, "{ not json").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_detect"))
        .args(["eval", "--gt"])
        .arg(&gt)
        .arg("--dt")
        .arg(&gt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gt.json") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn the_eval_command_prints_the_twelve_named_statistics() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/coco_eval");
    let out = Command::new(env!("CARGO_BIN_EXE_detect"))
        .args(["eval", "--json", "--gt"])
        .arg(fx.join("basic.gt.json"))
        .arg("--dt")
        .arg(fx.join("basic.dt.json"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("basic.stats.json")).unwrap())
            .unwrap();
    for (i, name) in detect::metric::coco_eval::STAT_NAMES.iter().enumerate() {
        let got = v[name].as_f64().unwrap_or_else(|| panic!("no {name}"));
        assert!(
            (got - want["stats"][i].as_f64().unwrap()).abs() < 1e-9,
            "{name}"
        );
    }
}

#[test]
fn the_deepforest_split_keeps_every_box_once_on_the_side_of_its_centre() {
    let raw = tempfile::tempdir().unwrap();
    write_png(&raw.path().join("a.png"), 64, 48);
    // Centre rows: 9 (train), 33 (train, crosses the cut at row 36), 40 (val, crosses it).
    write_voc(
        raw.path(),
        "a.xml",
        "a.png",
        &[
            ("Tree", [1, 2, 11, 16], false),
            ("Alive", [20, 28, 30, 38], false),
            ("Dead", [40, 34, 50, 46], false),
        ],
    );
    let out = raw.path().join("coco");
    let (train, val) = detect::data::deepforest::prepare(raw.path(), &out).unwrap();
    let train = coco::load(&train, None).unwrap();
    let val = coco::load(&val, None).unwrap();
    assert_eq!(train.categories.len(), 1, "one class: tree");
    assert_eq!((train.images[0].height, val.images[0].height), (36, 12));
    assert_eq!(train.annotations.len(), 2);
    assert_eq!(val.annotations.len(), 1);
    assert_eq!(
        train.annotations[1].bbox,
        [20.0, 28.0, 10.0, 8.0],
        "clipped at the cut"
    );
    assert_eq!(
        val.annotations[0].bbox,
        [40.0, 0.0, 10.0, 10.0],
        "shifted into the strip and clipped"
    );
    // A second call reuses the converted files.
    let before = std::fs::metadata(out.join("train.json"))
        .unwrap()
        .modified()
        .unwrap();
    detect::data::deepforest::prepare(raw.path(), &out).unwrap();
    assert_eq!(
        std::fs::metadata(out.join("train.json"))
            .unwrap()
            .modified()
            .unwrap(),
        before
    );
}

#[test]
fn shipped_configs_parse_and_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = detect::pipeline::DetectConfig::load(&path)
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            cfg.train
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            cfg.model
                .blocks()
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 1, "no configs in {}", dir.display());
    let load = |name: &str| detect::pipeline::DetectConfig::load(&dir.join(name)).unwrap();
    // The first recipe, which the README's first table and the transfer study reproduce.
    let first = load("deepforest-block8.toml");
    assert_eq!(first.model.feature_block, Some(8));
    assert_eq!((first.model.width, first.model.tower), (96, 1));
    // The recommended recipe and its frozen variant: the last rows of the ablation tables.
    let df = load("deepforest.toml");
    let df224 = load("deepforest-224.toml");
    let frozen = load("deepforest-frozen.toml");
    for cfg in [&df, &df224, &frozen] {
        assert_eq!(cfg.model.blocks().unwrap().0, vec![5, 8, 11]);
        assert_eq!((cfg.model.width, cfg.model.tower), (192, 3));
        assert!(cfg.input.augment.flip_horizontal && cfg.input.augment.flip_vertical);
    }
    // Rows 11 and 7 of the fine-tuned table: the same recipe at 336 and 224 pixels; row 11
    // also merges the squares' boxes its own way (rows 10 and 11).
    assert_eq!(
        (df.input.inference_overlap, df.postprocess.tile_edge_score),
        (Some(96), 0.5)
    );
    assert_eq!(
        (
            df224.input.inference_overlap,
            df224.postprocess.tile_edge_score
        ),
        (None, 1.0)
    );
    for (cfg, size, epochs) in [(&df, 336, 30), (&df224, 224, 21)] {
        assert_eq!(cfg.train.mode, downstream_core::Freeze::Full);
        assert!(cfg.input.augment.rotate90);
        assert_eq!(
            (cfg.input.size, cfg.train.epochs, cfg.train.batch),
            (size, epochs, 8)
        );
        assert_eq!((cfg.input.tile, cfg.input.tile_overlap), (Some(224), 48));
        assert!(cfg.input.random_crop);
        assert_eq!(cfg.postprocess.nms_iou, 0.55);
    }
    assert_eq!(frozen.train.mode, downstream_core::Freeze::Frozen);
    assert_eq!(frozen.input.views, 4);
    assert_eq!(frozen.input.tile, None);
    assert_eq!(frozen.postprocess.nms_iou, 0.6);
    assert_eq!((frozen.train.epochs, frozen.train.batch), (40, 8));
    // Frozen row 5: the upside-down view joins validation, `eval` and `predict`.
    assert_eq!(
        frozen.postprocess.tta,
        [detect::model::flip::Flip::Vertical]
    );
    // Fine-tuned row 12: all eight views, fused, at the final evaluation only.
    assert_eq!(df.postprocess.tta.len(), 7);
    let distinct: std::collections::HashSet<_> = df.postprocess.tta.iter().collect();
    assert_eq!(distinct.len(), 7);
    assert_eq!(df.postprocess.fusion_iou, Some(0.7));
    assert!(!df.postprocess.validate_with_tta);
    assert!(frozen.postprocess.validate_with_tta);
    assert!(df224.postprocess.tta.is_empty() && df224.postprocess.fusion_iou.is_none());
    // Fields the file leaves out keep the detector's defaults, not the engine's generic ones.
    let defaults = detect::pipeline::DetectConfig::default();
    assert_eq!(df.train.lr, defaults.train.lr);
    assert_ne!(
        defaults.train.lr,
        downstream_core::train::config::TrainConfig::default().lr
    );
    assert_eq!(
        df.data.train.as_deref(),
        Some(Path::new(detect::data::deepforest::NAME))
    );
}

#[test]
fn hostile_coco_and_voc_files_load_or_fail_never_panic() {
    use downstream_core::faults::mutate::never_panics;
    let dir = tempfile::tempdir().unwrap();
    let anns = json!([
        ann(1, 5, 17, [4.0, 5.0, 20.0, 10.0]),
        ann(2, 9, 90, [30.0, 6.0, 12.5, 30.0]),
    ]);
    let valid = std::fs::read(coco_set(dir.path(), two_images(), anns)).unwrap();
    let loaded = never_panics("coco", "gt.json", &valid, 41, 400, |p: &Path| {
        coco::load_annotations(p)
    });
    assert!(
        loaded > 0,
        "no mutant loaded: the mutations never reach the validation"
    );
    never_panics("coco results", "dt.json", &valid, 42, 200, |p: &Path| {
        coco::load_results(p)
    });

    let voc_dir = tempfile::tempdir().unwrap();
    write_voc(
        voc_dir.path(),
        "a.xml",
        "a.png",
        &[
            ("scratch", [4, 5, 30, 20], false),
            ("dent", [10, 10, 40, 44], true),
        ],
    );
    let valid = std::fs::read(voc_dir.path().join("a.xml")).unwrap();
    never_panics("voc", "a.xml", &valid, 43, 400, |p: &Path| {
        voc::load(p.parent().unwrap(), None)
    });
}
