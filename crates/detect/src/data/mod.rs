//! Detection data: COCO JSON and Pascal VOC XML, validated on load.
//!
//! Every problem with the input is reported with the file and the record it is in (image id,
//! annotation id, XML file); nothing is silently dropped except boxes that stick out of their
//! image, which are clipped and counted.

pub mod coco;
pub mod deepforest;
pub mod voc;

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Category {
    pub id: u64,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: u64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
}

/// One ground-truth box, `bbox` as COCO writes it: `[x, y, width, height]` in pixels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    pub id: u64,
    pub image_id: u64,
    pub category_id: u64,
    pub bbox: [f64; 4],
    /// The area used for COCO's small/medium/large split (the box area unless the file says).
    pub area: f64,
    /// Crowd regions (and VOC `difficult` objects) are neither required nor penalised.
    pub iscrowd: bool,
}

impl Annotation {
    /// A box whose area is its own (not a segmentation's).
    pub fn from_box(
        id: u64,
        image_id: u64,
        category_id: u64,
        bbox: [f64; 4],
        iscrowd: bool,
    ) -> Self {
        Self {
            id,
            image_id,
            category_id,
            bbox,
            area: bbox[2] * bbox[3],
            iscrowd,
        }
    }
}

/// A validated detection data set: images under `root`, boxes, categories.
#[derive(Clone, Debug)]
pub struct DetectionSet {
    pub root: PathBuf,
    /// Where the annotations came from, for messages.
    pub source: PathBuf,
    pub images: Vec<ImageRecord>,
    pub annotations: Vec<Annotation>,
    pub categories: Vec<Category>,
    /// Boxes that were partly outside their image and were clipped to it.
    pub clipped: usize,
    /// The file each image's annotations came from, where that is not `source` (VOC).
    pub image_sources: HashMap<u64, PathBuf>,
}

impl DetectionSet {
    pub fn image_path(&self, image: &ImageRecord) -> PathBuf {
        self.root.join(&image.file_name)
    }

    /// Annotations grouped by image id.
    pub fn by_image(&self) -> HashMap<u64, Vec<&Annotation>> {
        let mut map: HashMap<u64, Vec<&Annotation>> = HashMap::new();
        for a in &self.annotations {
            map.entry(a.image_id).or_default().push(a);
        }
        map
    }

    /// Reads the size of every image whose record gives none (0 x 0) from its file.
    pub fn fill_image_sizes(&mut self) -> Result<()> {
        let root = self.root.clone();
        self.images
            .par_iter_mut()
            .filter(|im| im.width == 0 || im.height == 0)
            .try_for_each(|im| -> Result<()> {
                let path = root.join(&im.file_name);
                let (w, h) = image::image_dimensions(&path).with_context(|| {
                    format!(
                        "image id {} ({}) is missing or unreadable",
                        im.id,
                        path.display()
                    )
                })?;
                (im.width, im.height) = (w, h);
                Ok(())
            })
    }

    /// Category id to a contiguous class index (in id order).
    pub fn class_index(&self) -> BTreeMap<u64, usize> {
        let mut ids: Vec<u64> = self.categories.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.into_iter().enumerate().map(|(i, id)| (id, i)).collect()
    }

    /// Checks names, references and (for training data, `geometry`) boxes, clipping those
    /// partly outside their image; `check_files` also opens every image.
    pub(crate) fn validate(mut self, check_files: bool, geometry: bool) -> Result<Self> {
        let src = self.source.display().to_string();
        if self.categories.is_empty() {
            bail!("{src}: no categories");
        }
        let mut cats = std::collections::HashSet::new();
        for c in &self.categories {
            if !cats.insert(c.id) {
                bail!("{src}: category id {} appears twice", c.id);
            }
        }
        let mut sizes = HashMap::new();
        for im in &self.images {
            check_relative(&im.file_name).with_context(|| format!("{src}: image id {}", im.id))?;
            if sizes.insert(im.id, (im.width, im.height)).is_some() {
                bail!("{src}: image id {} appears twice", im.id);
            }
        }
        if check_files {
            self.images
                .par_iter_mut()
                .try_for_each(|im| -> Result<()> {
                    let path = self.root.join(&im.file_name);
                    downstream_core::vision::io::check_inside(&self.root, &path)
                        .with_context(|| format!("{src}: image id {}", im.id))?;
                    let (w, h) = image::image_dimensions(&path).with_context(|| {
                        format!(
                            "{src}: image id {} ({}) is missing or unreadable",
                            im.id,
                            path.display()
                        )
                    })?;
                    if (im.width, im.height) == (0, 0) {
                        (im.width, im.height) = (w, h);
                    } else if (im.width, im.height) != (w, h) {
                        bail!(
                            "{src}: image id {} ({}) is {w}x{h}, the annotations say {}x{}",
                            im.id,
                            path.display(),
                            im.width,
                            im.height
                        );
                    }
                    Ok(())
                })?;
            sizes = self
                .images
                .iter()
                .map(|im| (im.id, (im.width, im.height)))
                .collect();
        }
        let mut clipped = 0;
        let mut ann_ids = std::collections::HashSet::new();
        for a in &mut self.annotations {
            let file = self
                .image_sources
                .get(&a.image_id)
                .map_or(src.clone(), |p| p.display().to_string());
            let what = || format!("{file}: annotation id {} (image id {})", a.id, a.image_id);
            if !ann_ids.insert(a.id) {
                bail!("{}: the annotation id appears twice", what());
            }
            let &(iw, ih) = sizes
                .get(&a.image_id)
                .with_context(|| format!("{}: no such image", what()))?;
            if !cats.contains(&a.category_id) {
                bail!("{}: unknown category id {}", what(), a.category_id);
            }
            if !geometry {
                continue;
            }
            let [x, y, w, h] = a.bbox;
            if a.bbox.iter().any(|v| !v.is_finite()) || w <= 0.0 || h <= 0.0 {
                bail!(
                    "{}: box {:?} has a non-positive or invalid size",
                    what(),
                    a.bbox
                );
            }
            let (x0, y0) = (x.max(0.0), y.max(0.0));
            let (x1, y1) = ((x + w).min(iw as f64), (y + h).min(ih as f64));
            if x1 <= x0 || y1 <= y0 {
                bail!(
                    "{}: box {:?} lies entirely outside the {iw}x{ih} image",
                    what(),
                    a.bbox
                );
            }
            if (x0, y0, x1, y1) != (x, y, x + w, y + h) {
                let was_box_area = (a.area - w * h).abs() < 1e-6 * (w * h).max(1.0);
                a.bbox = [x0, y0, x1 - x0, y1 - y0];
                if was_box_area {
                    a.area = a.bbox[2] * a.bbox[3];
                }
                clipped += 1;
            }
        }
        self.clipped = clipped;
        Ok(self)
    }
}

/// Refuses file names that would leave the data folder (absolute, `..`, drive prefixes).
pub fn check_relative(name: &str) -> Result<()> {
    let p = Path::new(name);
    if name.is_empty() {
        bail!("empty file name");
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => bail!("file name `{name}` escapes the data folder"),
        }
    }
    Ok(())
}

/// Loads a data set from a COCO JSON file or a Pascal VOC folder (or a folder of VOC XML files).
pub fn load(path: &Path) -> Result<DetectionSet> {
    if path.is_dir() {
        voc::load(path, None)
    } else {
        coco::load(path, None)
    }
}
