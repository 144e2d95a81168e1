//! The DeepForest sample data as COCO training and validation sets.
//!
//! The package ships four aerial images of tree crowns in Pascal VOC XML (951 boxes). With
//! so few images, a split by image would validate on one scene only; instead every image is
//! cut at three quarters of its height: the top part trains, the bottom quarter validates,
//! so both sets see every site. Each part is then cut into tiles of at most 400 x 400 pixels
//! (the size of DeepForest's own evaluation crops), which keeps the trees per image under
//! COCO evaluation's limit of 100 detections. A box goes with the part and tile that hold its
//! centre and is clipped to them. The labels (`Tree`, and `Alive`/`Dead` in one image) become
//! a single class `tree`, as DeepForest's own model has.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use downstream_core::atomic;

use super::{coco, voc, Annotation, Category, DetectionSet, ImageRecord};

pub const NAME: &str = "deepforest";

/// Fraction of each image's height, from the top, that trains.
pub const TRAIN_FRACTION: f64 = 0.75;

/// Largest tile side in pixels.
pub const TILE: u32 = 400;

/// Tile starts covering `[0, len)` in steps of [`TILE`]; a remainder narrower than a quarter
/// tile joins the last tile instead of becoming a sliver.
fn tile_starts(len: u32) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < len {
        let mut end = (start + TILE).min(len);
        if len - end < TILE / 4 {
            end = len;
        }
        out.push((start, end));
        start = end;
    }
    out
}

/// Fetches the raw data (on first use) and converts it; returns the train and val JSON paths.
pub fn ensure() -> Result<(PathBuf, PathBuf)> {
    let manifest = downstream_hub::manifest::find_dataset(NAME)?;
    let raw = downstream_hub::ensure(&manifest, &downstream_hub::datasets_root())?;
    prepare(&raw, &raw.join("coco"))
}

/// Converts the raw VOC folder `raw` into `out/{train,val}.json` with cropped images.
pub fn prepare(raw: &Path, out: &Path) -> Result<(PathBuf, PathBuf)> {
    let (train_json, val_json) = (out.join("train.json"), out.join("val.json"));
    if atomic::completed(out).is_some() {
        return Ok((train_json, val_json));
    }
    let set = voc::load(raw, None)?;
    atomic::build_dir(out, "", |partial| write_split(&set, partial))?;
    Ok((train_json, val_json))
}

/// Writes the tiles and `{train,val}.json` of `set` into `partial`.
fn write_split(set: &DetectionSet, partial: &Path) -> Result<()> {
    let categories = vec![Category {
        id: 1,
        name: "tree".into(),
    }];
    let mut splits = [
        ("train", Vec::new(), Vec::new()),
        ("val", Vec::new(), Vec::new()),
    ];
    for im in &set.images {
        let path = set.image_path(im);
        let img = image::open(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .to_rgb8();
        let cut = (im.height as f64 * TRAIN_FRACTION).round() as u32;
        let stem = Path::new(&im.file_name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (part, (name, images, annotations)) in splits.iter_mut().enumerate() {
            let (py0, py1) = if part == 0 {
                (0, cut)
            } else {
                (cut, im.height)
            };
            let dir = partial.join(*name);
            std::fs::create_dir_all(&dir)?;
            for (ty0, ty1) in tile_starts(py1 - py0)
                .into_iter()
                .map(|(a, b)| (a + py0, b + py0))
            {
                for (x0, x1) in tile_starts(im.width) {
                    let file_name = format!("{name}/{stem}_{x0}_{ty0}.png");
                    image::imageops::crop_imm(&img, x0, ty0, x1 - x0, ty1 - ty0)
                        .to_image()
                        .save(partial.join(&file_name))
                        .with_context(|| {
                            format!("writing {}", partial.join(&file_name).display())
                        })?;
                    let id = images.len() as u64 + 1;
                    images.push(ImageRecord {
                        id,
                        file_name,
                        width: x1 - x0,
                        height: ty1 - ty0,
                    });
                    for a in set.annotations.iter().filter(|a| a.image_id == im.id) {
                        let [x, y, w, h] = a.bbox;
                        let (cx, cy) = (x + w / 2.0, y + h / 2.0);
                        let inside = |c: f64, lo: u32, hi: u32| c >= lo as f64 && c < hi as f64;
                        if !(inside(cx, x0, x1) && inside(cy, ty0, ty1)) {
                            continue;
                        }
                        let (left, top) = (x.max(x0 as f64), y.max(ty0 as f64));
                        let (right, bottom) = ((x + w).min(x1 as f64), (y + h).min(ty1 as f64));
                        if right - left < 2.0 || bottom - top < 2.0 {
                            continue;
                        }
                        let bbox = [
                            left - x0 as f64,
                            top - ty0 as f64,
                            right - left,
                            bottom - top,
                        ];
                        annotations.push(Annotation::from_box(
                            annotations.len() as u64 + 1,
                            id,
                            1,
                            bbox,
                            a.iscrowd,
                        ));
                    }
                }
            }
        }
    }
    for (name, images, annotations) in splits {
        let part = DetectionSet {
            root: partial.to_path_buf(),
            source: partial.join(format!("{name}.json")),
            images,
            annotations,
            categories: categories.clone(),
            clipped: 0,
            image_sources: Default::default(),
        };
        coco::save(&part, &partial.join(format!("{name}.json")))?;
    }
    Ok(())
}
