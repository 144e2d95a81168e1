//! The folder layouts a data set may come in, and the pairs each one holds for a split. A
//! listed file that reaches outside the data set's folder (a symbolic link elsewhere) is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use downstream_core::vision::io::{check_inside, IMAGE_EXTENSIONS};

use super::{Found, Pair};

/// Which part of a layout with its own splits to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

/// The 21 Pascal VOC classes, in label order.
pub const VOC_CLASSES: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// The Pascal VOC palette: the bits of a label spread over the high bits of R, G and B.
pub fn voc_palette() -> Vec<[u8; 3]> {
    (0..256u32)
        .map(|label| {
            let mut rgb = [0u8; 3];
            let mut c = label;
            for j in 0..8 {
                for (k, channel) in rgb.iter_mut().enumerate() {
                    *channel |= (((c >> k) & 1) as u8) << (7 - j);
                }
                c >>= 3;
            }
            rgb
        })
        .collect()
}

/// Files of a folder by stem, for the image extensions (or PNG masks).
fn by_stem(dir: &Path, masks: bool, root: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let wanted = match ext.as_deref() {
            Some("png") => true,
            Some(e) => !masks && IMAGE_EXTENSIONS.contains(&e),
            None => false,
        };
        if !wanted {
            continue;
        }
        check_inside(root, &path)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(other) = out.insert(stem.clone(), path.clone()) {
            bail!(
                "{} and {} share the stem `{stem}`: pairs would be ambiguous",
                other.display(),
                path.display()
            );
        }
    }
    Ok(out)
}

/// Every image of `images` with the mask of the same stem in `masks`; `names`, if given,
/// restricts and orders the pairs.
fn pair_up(
    root: &Path,
    images: &Path,
    masks: &Path,
    names: Option<Vec<String>>,
) -> Result<Vec<Pair>> {
    let mut imgs = by_stem(images, false, root)?;
    let mut msks = by_stem(masks, true, root)?;
    let names = match names {
        Some(n) => n,
        None => {
            if let Some((stem, path)) = msks.iter().find(|(s, _)| !imgs.contains_key(*s)) {
                bail!(
                    "{}: no image `{stem}.*` in {}",
                    path.display(),
                    images.display()
                );
            }
            imgs.keys().cloned().collect()
        }
    };
    names
        .into_iter()
        .map(|name| {
            let image = imgs
                .remove(&name)
                .with_context(|| format!("no image `{name}` in {}", images.display()))?;
            let mask = msks.remove(&name).with_context(|| {
                format!(
                    "{}: no mask `{name}.png` in {}",
                    image.display(),
                    masks.display()
                )
            })?;
            Ok(Pair {
                name,
                image,
                mask: Some(mask),
            })
        })
        .collect()
}

/// One class name per line of `dir/classes.txt`, if there is one.
fn class_names(dir: &Path) -> Result<Option<Vec<String>>> {
    let path = dir.join("classes.txt");
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        bail!("{}: no class names", path.display());
    }
    Ok(Some(names))
}

/// Whether `dir` has its own train and validation splits (VOC, ADE20K).
pub fn has_splits(dir: &Path) -> bool {
    dir.join("JPEGImages").is_dir() || dir.join("images/training").is_dir()
}

/// The pairs of `split` in `dir`, whatever its layout.
pub fn read(dir: &Path, split: Split) -> Result<Found> {
    if dir.join("JPEGImages").is_dir() && dir.join("SegmentationClass").is_dir() {
        let list = dir.join("ImageSets/Segmentation").join(match split {
            Split::Train => "train.txt",
            Split::Val => "val.txt",
        });
        let text = std::fs::read_to_string(&list)
            .with_context(|| format!("reading {}", list.display()))?;
        let names = text.split_whitespace().map(String::from).collect();
        return Ok(Found {
            pairs: pair_up(
                dir,
                &dir.join("JPEGImages"),
                &dir.join("SegmentationClass"),
                Some(names),
            )?,
            classes: Some(VOC_CLASSES.map(String::from).to_vec()),
            palette: Some(voc_palette()),
            reduce_zero_label: false,
        });
    }
    if dir.join("images/training").is_dir() && dir.join("annotations/training").is_dir() {
        let sub = match split {
            Split::Train => "training",
            Split::Val => "validation",
        };
        return Ok(Found {
            pairs: pair_up(
                dir,
                &dir.join("images").join(sub),
                &dir.join("annotations").join(sub),
                None,
            )?,
            classes: class_names(dir)?,
            palette: None,
            reduce_zero_label: true,
        });
    }
    if dir.join("images").is_dir() && dir.join("masks").is_dir() {
        return Ok(Found {
            pairs: pair_up(dir, &dir.join("images"), &dir.join("masks"), None)?,
            classes: class_names(dir)?,
            palette: None,
            reduce_zero_label: false,
        });
    }
    bail!(
        "{}: not a segmentation data set (expected images/ and masks/, a Pascal VOC \
         folder with JPEGImages/ and SegmentationClass/, or an ADE20K folder with \
         images/training/ and annotations/training/)",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_voc_palette_starts_as_published() {
        let p = voc_palette();
        assert_eq!(p[0], [0, 0, 0]);
        assert_eq!(p[1], [128, 0, 0]);
        assert_eq!(p[2], [0, 128, 0]);
        assert_eq!(p[15], [192, 128, 128]);
        assert_eq!(p[255], [224, 224, 192]);
    }
}
