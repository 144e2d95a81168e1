//! Segmentation data: images paired with class masks, validated on load.
//!
//! Three layouts are recognised as they are: a folder of `images/` and `masks/` paired by file
//! stem (with an optional `classes.txt`, one class name per line), Pascal VOC 2012
//! (`JPEGImages/`, `SegmentationClass/` palette PNGs with 255 borders,
//! `ImageSets/Segmentation/{train,val}.txt`) and ADE20K (`images/{training,validation}/`,
//! `annotations/{training,validation}/`, label 0 meaning "other"). Masks are grey levels or
//! palette PNGs read by index ([`downstream_core::vision::mask`]).
//!
//! Every problem is an error naming the file: an image without its mask or a mask without its
//! image, an unreadable file, a mask whose size differs from its image, a class id at or above
//! the class count that is not the ignore index, a palette that is not the one the data set
//! declares.

pub mod brain;
pub mod fashion;
pub mod layout;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use downstream_core::vision::mask::{open_mask, StoredMask};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::metric::confusion::LabelRules;

/// One image and its mask (absent for images only to be predicted).
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// The file stem both share, which names predictions too.
    pub name: String,
    pub image: PathBuf,
    pub mask: Option<PathBuf>,
}

/// How the labels of a data set are read; the `[labels]` section of a run's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelConfig {
    /// Classes (read from the data where it can be: a `classes.txt`, the layout, or the
    /// largest label in the training masks).
    pub num_classes: Option<usize>,
    /// The label of pixels that count for nothing (borders, unlabelled).
    pub ignore_index: u8,
    /// Label 0 means "other" and is ignored; every other label drops by one (ADE20K).
    pub reduce_zero_label: Option<bool>,
}

impl Default for LabelConfig {
    fn default() -> Self {
        Self {
            num_classes: None,
            ignore_index: 255,
            reduce_zero_label: None,
        }
    }
}

/// A validated data set.
#[derive(Clone, Debug)]
pub struct SegmentationSet {
    /// Where it came from, for messages.
    pub source: PathBuf,
    pub pairs: Vec<Pair>,
    /// Class names in id order.
    pub classes: Vec<String>,
    /// The palette the data set declares, if its masks are palette PNGs of a known layout.
    pub palette: Option<Vec<[u8; 3]>>,
    pub rules: LabelRules,
}

/// What a layout found before labels are settled.
pub struct Found {
    pub pairs: Vec<Pair>,
    pub classes: Option<Vec<String>>,
    pub palette: Option<Vec<[u8; 3]>>,
    pub reduce_zero_label: bool,
}

impl SegmentationSet {
    /// Settles the labels of `found` (the configuration first, then what the layout says, then
    /// the largest label in the masks) and checks every pair.
    pub fn validate(source: &Path, found: Found, labels: &LabelConfig) -> Result<Self> {
        if found.pairs.is_empty() {
            bail!("{}: no image and mask pairs", source.display());
        }
        let reduce = labels.reduce_zero_label.unwrap_or(found.reduce_zero_label);
        let masks: Vec<(StoredMask, (u32, u32))> = found
            .pairs
            .par_iter()
            .map(|p| {
                let path = p
                    .mask
                    .as_ref()
                    .with_context(|| format!("{}: no mask", p.image.display()))?;
                let mask = open_mask(path)?;
                let image = image::image_dimensions(&p.image)
                    .with_context(|| format!("{}: unreadable image", p.image.display()))?;
                let dims = mask.labels.dimensions();
                if dims != image {
                    bail!(
                        "{}: the mask is {}x{}, its image {} is {}x{}",
                        path.display(),
                        dims.0,
                        dims.1,
                        p.image.display(),
                        image.0,
                        image.1
                    );
                }
                Ok((mask, image))
            })
            .collect::<Result<_>>()?;
        let rules_for = |n: usize| LabelRules {
            num_classes: n,
            ignore_index: labels.ignore_index,
            reduce_zero_label: reduce,
        };
        let num_classes = match (labels.num_classes, &found.classes) {
            (Some(n), _) => n,
            (None, Some(names)) => names.len(),
            (None, None) => {
                // The largest class any mask uses, under a rule that would accept all.
                let probe = rules_for(usize::MAX);
                let largest = masks
                    .iter()
                    .flat_map(|(m, _)| m.labels.pixels().filter_map(|p| probe.class_of(p.0[0])))
                    .max()
                    .with_context(|| format!("{}: every pixel is ignored", source.display()))?;
                largest + 1
            }
        };
        if num_classes == 0 {
            bail!("{}: no classes", source.display());
        }
        let rules = rules_for(num_classes);
        for (p, (m, _)) in found.pairs.iter().zip(&masks) {
            if let Some(label) = m
                .labels
                .pixels()
                .map(|px| px.0[0])
                .find(|&l| rules.class_of(l).is_some_and(|c| c >= num_classes))
            {
                bail!(
                    "{}: label {label} is not a class (0 to {}) nor the ignore index {}",
                    p.mask.as_ref().expect("checked").display(),
                    num_classes - 1,
                    labels.ignore_index
                );
            }
            if let (Some(declared), Some(own)) = (&found.palette, &m.palette) {
                let n = own.len().min(declared.len()).min(num_classes);
                if own[..n] != declared[..n] {
                    bail!(
                        "{}: its palette is not the one the data set declares",
                        p.mask.as_ref().expect("checked").display()
                    );
                }
            }
        }
        let classes = match found.classes {
            Some(names) if names.len() == num_classes => names,
            _ => (0..num_classes).map(|i| format!("class {i}")).collect(),
        };
        Ok(Self {
            source: source.to_path_buf(),
            pairs: found.pairs,
            classes,
            palette: found.palette,
            rules,
        })
    }

    /// Images without masks, to be predicted, named by their stems.
    pub fn images_only(files: &[PathBuf], classes: Vec<String>, rules: LabelRules) -> Self {
        let pairs = files
            .iter()
            .map(|f| Pair {
                name: f
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                image: f.clone(),
                mask: None,
            })
            .collect();
        Self {
            source: PathBuf::from("the images given"),
            pairs,
            classes,
            palette: None,
            rules,
        }
    }

    /// The pairs at `keep`, in order.
    pub fn select(&self, keep: impl Fn(usize) -> bool) -> Self {
        Self {
            pairs: self
                .pairs
                .iter()
                .enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(_, p)| p.clone())
                .collect(),
            ..self.clone()
        }
    }
}
