//! COCO JSON: ground truth (`images`, `annotations` with `bbox` as x, y, w, h, `categories`
//! with arbitrary ids, `iscrowd`) and detection results.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{Annotation, Category, DetectionSet, ImageRecord};

#[derive(Deserialize)]
struct File {
    images: Vec<Image>,
    #[serde(default)]
    annotations: Vec<Ann>,
    categories: Vec<Category>,
}

#[derive(Deserialize)]
struct Image {
    id: u64,
    file_name: String,
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
}

#[derive(Deserialize)]
struct Ann {
    id: u64,
    image_id: u64,
    category_id: u64,
    bbox: Vec<f64>,
    area: Option<f64>,
    #[serde(default)]
    iscrowd: u8,
}

/// Reads a COCO ground-truth file. Image files are looked up under `images` (default: the
/// JSON file's folder) and must exist and decode.
pub fn load(path: &Path, images: Option<&Path>) -> Result<DetectionSet> {
    load_with(path, images, true)
}

/// [`load`] without opening the image files and with boxes taken as they are (not clipped):
/// ground truth for metric-only evaluation, as pycocotools reads it.
pub fn load_annotations(path: &Path) -> Result<DetectionSet> {
    load_with(path, None, false)
}

fn load_with(path: &Path, images: Option<&Path>, for_training: bool) -> Result<DetectionSet> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: File = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!("{}: not a valid COCO annotation file: {e}", path.display())
    })?;
    let mut annotations = Vec::with_capacity(file.annotations.len());
    for a in file.annotations {
        let [x, y, w, h] = a.bbox[..] else {
            bail!(
                "{}: annotation id {}: bbox must be [x, y, width, height], got {:?}",
                path.display(),
                a.id,
                a.bbox
            );
        };
        annotations.push(Annotation {
            id: a.id,
            image_id: a.image_id,
            category_id: a.category_id,
            bbox: [x, y, w, h],
            area: a.area.unwrap_or(w * h),
            iscrowd: a.iscrowd != 0,
        });
    }
    let root = match images {
        Some(dir) => dir.to_path_buf(),
        None => path.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    DetectionSet {
        root,
        source: path.to_path_buf(),
        images: file
            .images
            .into_iter()
            .map(|i| ImageRecord {
                id: i.id,
                file_name: i.file_name,
                width: i.width,
                height: i.height,
            })
            .collect(),
        annotations,
        categories: file.categories,
        clipped: 0,
        image_sources: Default::default(),
    }
    .validate(for_training, for_training)
}

#[derive(Serialize)]
struct OutFile<'a> {
    images: &'a [ImageRecord],
    annotations: Vec<OutAnn>,
    categories: &'a [Category],
}

#[derive(Serialize)]
struct OutAnn {
    id: u64,
    image_id: u64,
    category_id: u64,
    bbox: [f64; 4],
    area: f64,
    iscrowd: u8,
}

/// Writes `set` as a COCO ground-truth file, atomically.
pub fn save(set: &DetectionSet, path: &Path) -> Result<()> {
    let out = OutFile {
        images: &set.images,
        annotations: set
            .annotations
            .iter()
            .map(|a| OutAnn {
                id: a.id,
                image_id: a.image_id,
                category_id: a.category_id,
                bbox: a.bbox,
                area: a.area,
                iscrowd: a.iscrowd as u8,
            })
            .collect(),
        categories: &set.categories,
    };
    downstream_core::atomic::write(path, serde_json::to_string(&out)?.as_bytes())
}

/// One detection, as COCO results files hold them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub image_id: u64,
    pub category_id: u64,
    pub bbox: [f64; 4],
    pub score: f64,
}

/// Reads a COCO results file (a JSON list of detections).
pub fn load_results(path: &Path) -> Result<Vec<Detection>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let dets: Vec<Detection> = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a valid COCO results list: {e}", path.display()))?;
    for (i, d) in dets.iter().enumerate() {
        if !d.score.is_finite() || d.bbox.iter().any(|v| !v.is_finite()) {
            bail!(
                "{}: detection {i} has a non-finite score or box",
                path.display()
            );
        }
    }
    Ok(dets)
}

pub fn save_results(dets: &[Detection], path: &Path) -> Result<()> {
    downstream_core::atomic::write(path, serde_json::to_string(dets)?.as_bytes())
}
