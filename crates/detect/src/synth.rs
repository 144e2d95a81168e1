//! The built-in detection demo set, "shapes": core's generated scenes
//! ([`downstream_core::vision::scene`]) exported as a COCO set: `train/*.png`, `val/*.png`,
//! `train.json` and `val.json`, written once under the data-set cache
//! ([`downstream_core::vision::generated`]) so that no download is needed.

use std::path::{Path, PathBuf};

use anyhow::Result;
use downstream_core::vision::generated::{self, Export, SceneSpec};
use downstream_core::vision::io::save_png;
use downstream_core::vision::scene::{self, Scene, Split, SHAPES};
use image::RgbImage;

use crate::data::{coco, Annotation, Category, DetectionSet, ImageRecord};

/// The shapes as COCO categories, ids from 1 in class order.
pub fn categories() -> Vec<Category> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, name)| Category {
            id: i as u64 + 1,
            name: name.to_string(),
        })
        .collect()
}

/// Objects as (category id, COCO `[x, y, w, h]`), in drawing order.
pub type Boxes = Vec<(u64, [f64; 4])>;

fn boxes(scene: &Scene) -> Boxes {
    scene
        .objects
        .iter()
        .map(|o| (o.class as u64 + 1, o.bbox))
        .collect()
}

/// One image and its objects.
pub fn render(spec: &SceneSpec, split: Split, index: usize) -> Result<(RgbImage, Boxes)> {
    let scene = scene::render(spec.seed, spec.size, split, index)?;
    let b = boxes(&scene);
    Ok((scene.image, b))
}

fn file_name(split: Split, index: usize) -> String {
    format!("{}/{index:06}.png", split.name())
}

struct Coco {
    size: u32,
}

impl Export for Coco {
    type Record = Boxes;

    fn kind(&self) -> &str {
        "coco"
    }

    fn own_names(&self) -> &[&str] {
        &["train", "val", "train.json", "val.json"]
    }

    fn scene(&self, root: &Path, split: Split, index: usize, scene: Scene) -> Result<Boxes> {
        let b = boxes(&scene);
        save_png(
            &root.join(file_name(split, index)),
            &image::DynamicImage::ImageRgb8(scene.image),
        )?;
        Ok(b)
    }

    fn split(&self, root: &Path, split: Split, records: Vec<Boxes>) -> Result<()> {
        let mut annotations = Vec::new();
        let mut images = Vec::with_capacity(records.len());
        for (index, objects) in records.into_iter().enumerate() {
            let image_id = index as u64 + 1;
            images.push(ImageRecord {
                id: image_id,
                file_name: file_name(split, index),
                width: self.size,
                height: self.size,
            });
            for (category_id, bbox) in objects {
                annotations.push(Annotation::from_box(
                    annotations.len() as u64 + 1,
                    image_id,
                    category_id,
                    bbox,
                    false,
                ));
            }
        }
        let json = root.join(format!("{}.json", split.name()));
        let set = DetectionSet {
            root: root.to_path_buf(),
            source: json.clone(),
            images,
            annotations,
            categories: categories(),
            clipped: 0,
            image_sources: Default::default(),
        };
        coco::save(&set, &json)
    }
}

/// Writes the set (if not already there) and returns the paths of `train.json` and `val.json`
/// (COCO, file names relative to `dir`).
pub fn ensure(dir: &Path, spec: &SceneSpec) -> Result<(PathBuf, PathBuf)> {
    generated::ensure(dir, spec, &Coco { size: spec.size })?;
    Ok((dir.join("train.json"), dir.join("val.json")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn mtime(p: &Path) -> std::time::SystemTime {
        fs::metadata(p).unwrap().modified().unwrap()
    }

    #[test]
    fn ensure_writes_a_loadable_set_once_and_cleans_a_stale_partial() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shapes");
        let partial = tmp.path().join(".shapes.partial");
        fs::create_dir_all(partial.join("train")).unwrap();
        fs::write(partial.join("train/000000.png"), b"half-written").unwrap();
        let small = SceneSpec {
            train: 6,
            val: 3,
            seed: 5,
            size: 224,
        };
        let (train_json, val_json) = ensure(&dir, &small).unwrap();
        assert!(!partial.exists());
        assert_eq!(train_json, dir.join("train.json"));
        let train = coco::load(&train_json, None).unwrap();
        let val = coco::load(&val_json, None).unwrap();
        assert_eq!((train.images.len(), val.images.len()), (6, 3));
        assert_eq!(train.categories, categories());
        assert_eq!(train.clipped, 0);
        assert_eq!(train.images[2].file_name, "train/000002.png");
        let per_image = train.by_image();
        for im in &train.images {
            let anns = &per_image[&im.id];
            assert!((1..=5).contains(&anns.len()));
            let index = (im.id - 1) as usize;
            let (_, boxes) = render(&small, Split::Train, index).unwrap();
            let written: Vec<_> = anns.iter().map(|a| (a.category_id, a.bbox)).collect();
            assert_eq!(written, boxes);
            assert!(anns
                .iter()
                .all(|a| a.area == a.bbox[2] * a.bbox[3] && !a.iscrowd));
        }
        let (img, _) = render(&small, Split::Val, 1).unwrap();
        let on_disk = image::open(dir.join("val/000001.png")).unwrap().to_rgb8();
        assert_eq!(on_disk.as_raw(), img.as_raw());

        let watched = [
            train_json.clone(),
            val_json.clone(),
            dir.join(downstream_core::atomic::COMPLETE),
            dir.join("train/000000.png"),
        ];
        let before: Vec<_> = watched.iter().map(|p| mtime(p)).collect();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(ensure(&dir, &small).unwrap(), (train_json, val_json));
        let after: Vec<_> = watched.iter().map(|p| mtime(p)).collect();
        assert_eq!(before, after);
        assert!(!partial.exists());
    }

    #[test]
    fn ensure_rebuilds_for_a_new_spec_and_leaves_foreign_folders_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shapes");
        let mut small = SceneSpec {
            train: 2,
            val: 1,
            seed: 0,
            size: 96,
        };
        ensure(&dir, &small).unwrap();
        small.val = 3;
        let (_, val_json) = ensure(&dir, &small).unwrap();
        assert_eq!(coco::load(&val_json, None).unwrap().images.len(), 3);
        let stamp: serde_json::Value =
            serde_json::from_str(&downstream_core::atomic::completed(&dir).unwrap()).unwrap();
        assert_eq!(stamp["spec"]["val"], 3);

        let foreign = tmp.path().join("mine");
        fs::create_dir_all(&foreign).unwrap();
        fs::write(foreign.join("notes.txt"), b"keep me").unwrap();
        let err = ensure(&foreign, &small).unwrap_err();
        assert!(format!("{err:#}").contains("notes.txt"), "{err:#}");
        assert_eq!(fs::read(foreign.join("notes.txt")).unwrap(), b"keep me");
        assert!(ensure(&tmp.path().join("tiny"), &SceneSpec { size: 16, ..small }).is_err());
    }
}
