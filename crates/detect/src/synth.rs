//! The built-in detection demo set, "shapes": the generated scenes of
//! [`downstream_core::vision::scene`] exported as a COCO set (PNG images, `train.json`,
//! `val.json`), written once under the data-set cache so that no download is needed.
//!
//! The set is built in a temporary folder and renamed into place
//! ([`downstream_core::atomic::build_dir`]); its completion marker holds the generator version
//! and the spec, so that a set from an older generator or another spec is rebuilt instead of
//! mixed with new images.

use std::fs::{self, File};
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use downstream_core::atomic;
use downstream_core::vision::scene::{self, Split, SHAPES};
use image::{ImageFormat, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{coco, Annotation, Category, DetectionSet, ImageRecord};

/// Changes whenever the pictures change, so that sets on disk from an older generator are
/// rebuilt instead of silently mixing with new ones.
const GENERATOR: u32 = 1;

/// Everything `ensure` may find in its folder; anything else means the folder is not ours.
const OWN_NAMES: [&str; 5] = ["train", "val", "train.json", "val.json", atomic::COMPLETE];

/// Sizes of the built-in set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthSpec {
    pub train: usize,
    pub val: usize,
    pub seed: u64,
    /// Side of the square images, in pixels.
    pub size: u32,
}

impl Default for SynthSpec {
    fn default() -> Self {
        Self {
            train: 320,
            val: 80,
            seed: 0,
            size: 224,
        }
    }
}

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

#[derive(Serialize, Deserialize, PartialEq)]
struct Marker {
    generator: u32,
    spec: SynthSpec,
}

/// Writes (if not already complete) `dir/train/*.png`, `dir/val/*.png`, `dir/train.json` and
/// `dir/val.json` (COCO, file names relative to `dir`); returns the paths of the two JSON
/// files. Two processes must not build the same folder at the same time. An existing `dir` is
/// replaced only if it holds nothing but what this function writes.
pub fn ensure(dir: &Path, spec: &SynthSpec) -> Result<(PathBuf, PathBuf)> {
    let paths = (dir.join("train.json"), dir.join("val.json"));
    let stamp = serde_json::to_string_pretty(&Marker {
        generator: GENERATOR,
        spec: spec.clone(),
    })?;
    if atomic::completed(dir).as_deref() == Some(stamp.as_str()) {
        return Ok(paths);
    }
    if spec.size < scene::MIN_SIZE {
        bail!(
            "synthetic images must be at least {} pixels wide, not {}",
            scene::MIN_SIZE,
            spec.size
        );
    }
    if dir.exists() {
        check_replaceable(dir)?;
    }
    atomic::build_dir(dir, &stamp, |root| build(root, spec))?;
    Ok(paths)
}

fn check_replaceable(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "{} exists and is not a folder; refusing to replace it with the synthetic set",
            dir.display()
        );
    }
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name();
        if !OWN_NAMES.iter().any(|own| name == *own) {
            bail!(
                "{} holds `{}`, which the synthetic set did not write; refusing to replace it",
                dir.display(),
                name.to_string_lossy()
            );
        }
    }
    Ok(())
}

fn build(root: &Path, spec: &SynthSpec) -> Result<()> {
    for (split, count) in [(Split::Train, spec.train), (Split::Val, spec.val)] {
        let folder = root.join(split.name());
        fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
        let boxes: Vec<Boxes> = (0..count)
            .into_par_iter()
            .map(|index| -> Result<_> {
                let (img, boxes) = render(spec, split, index)?;
                write_png(&root.join(file_name(split, index)), &img)?;
                Ok(boxes)
            })
            .collect::<Result<_>>()?;
        if let Ok(d) = File::open(&folder) {
            d.sync_all().ok();
        }
        let mut annotations = Vec::new();
        let mut images = Vec::with_capacity(count);
        for (index, objects) in boxes.into_iter().enumerate() {
            let image_id = index as u64 + 1;
            images.push(ImageRecord {
                id: image_id,
                file_name: file_name(split, index),
                width: spec.size,
                height: spec.size,
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
        coco::save(&set, &json)?;
    }
    Ok(())
}

fn file_name(split: Split, index: usize) -> String {
    format!("{}/{index:06}.png", split.name())
}

/// Synced, so that a set renamed into place is on disk and not just in the page cache.
fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)?;
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Objects as (category id, COCO `[x, y, w, h]`), in drawing order.
pub type Boxes = Vec<(u64, [f64; 4])>;

/// One image and its objects.
pub fn render(spec: &SynthSpec, split: Split, index: usize) -> Result<(RgbImage, Boxes)> {
    let scene = scene::render(spec.seed, spec.size, split, index)?;
    let boxes = scene
        .objects
        .iter()
        .map(|o| (o.class as u64 + 1, o.bbox))
        .collect();
    Ok((scene.image, boxes))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let small = SynthSpec {
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
            dir.join(atomic::COMPLETE),
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
        let mut small = SynthSpec {
            train: 2,
            val: 1,
            seed: 0,
            size: 96,
        };
        ensure(&dir, &small).unwrap();
        small.val = 3;
        let (_, val_json) = ensure(&dir, &small).unwrap();
        assert_eq!(coco::load(&val_json, None).unwrap().images.len(), 3);
        let marker: Marker = serde_json::from_str(&atomic::completed(&dir).unwrap()).unwrap();
        assert!(marker.spec == small && marker.generator == GENERATOR);

        let foreign = tmp.path().join("mine");
        fs::create_dir_all(&foreign).unwrap();
        fs::write(foreign.join("notes.txt"), b"keep me").unwrap();
        let err = ensure(&foreign, &small).unwrap_err();
        assert!(format!("{err:#}").contains("notes.txt"), "{err:#}");
        assert_eq!(fs::read(foreign.join("notes.txt")).unwrap(), b"keep me");
        assert!(ensure(&tmp.path().join("tiny"), &SynthSpec { size: 16, ..small }).is_err());
    }
}
