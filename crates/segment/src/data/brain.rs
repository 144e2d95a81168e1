//! `brain-mri`: real medical images. The Colin27 T1 MRI of one person (181 x 217 x 181 voxels
//! of 1 mm) with the AAL atlas of 116 anatomical regions on the same grid, from Debian's
//! `mricron-data`, cut into axial slices.
//!
//! The regions are grouped into lobes by the first digit of their AAL code (the third column
//! of `aal.nii.txt`): 2 frontal (with the precentral gyrus), 3 insula, 4 limbic (cingulum,
//! hippocampus, parahippocampal gyrus, amygdala), 5 occipital (with the fusiform gyrus),
//! 6 parietal (with the postcentral gyrus and precuneus), 7 deep grey matter (caudate,
//! putamen, pallidum, thalamus), 8 temporal, 9 cerebellum (with the vermis); everything else
//! is background: 9 classes. Regions are anatomical, not separable by intensity alone.
//!
//! Slices with more than 1% of their voxels labelled are kept (z 12 to 155 here). One subject
//! means that neighbouring slices are nearly the same picture, so training and validation are
//! split by slabs: three slabs of 12 slices validate ([`VAL_SLABS`]), and the 4 slices on either
//! side of each slab are used by neither split. Each slice is written as it lies in the volume
//! (x across, y down with the front of the head at the top) as an RGB PNG of the T1 intensities
//! and a grey mask PNG of the lobes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use downstream_core::atomic;
use downstream_core::vision::io::save_png;
use downstream_core::vision::mask::save_mask;
use image::{GrayImage, Luma, Rgb, RgbImage};
use ndarray::{Array3, ArrayD, Axis, Ix3};
use nifti::{IntoNdArray, NiftiObject, ReaderOptions};

/// The data set's name (`--data brain-mri`, `segment fetch brain-mri`).
pub const NAME: &str = "brain-mri";

/// The classes, in label order.
pub const CLASSES: [&str; 9] = [
    "background",
    "frontal",
    "insula",
    "limbic",
    "occipital",
    "parietal",
    "deep grey matter",
    "temporal",
    "cerebellum",
];

/// Axial slices `[start, end)` that validate.
pub const VAL_SLABS: [(usize, usize); 3] = [(36, 48), (78, 90), (120, 132)];

/// Slices on either side of a validation slab that neither split uses.
pub const GAP: usize = 4;

/// A slice is kept when more than this share of it is labelled.
const MIN_LABELLED: f64 = 0.01;

/// Changes whenever the slices written change.
const VERSION: &str = "axial slabs 1";

fn read_volume(path: &Path) -> Result<Array3<u8>> {
    let object = ReaderOptions::new()
        .read_file(path)
        .with_context(|| format!("reading NIfTI volume {}", path.display()))?;
    let volume: ArrayD<u8> = object
        .into_volume()
        .into_ndarray::<u8>()
        .with_context(|| format!("{}: not a volume of bytes", path.display()))?;
    volume
        .into_dimensionality::<Ix3>()
        .with_context(|| format!("{}: not a 3-D volume", path.display()))
}

/// Atlas index to lobe class, from the lines `INDEX NAME CODE` of `aal.nii.txt`.
fn lobes(path: &Path) -> Result<Vec<u8>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut map = vec![0u8; 256];
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let bad = || {
            format!(
                "{} line {}: expected `INDEX NAME CODE`",
                path.display(),
                n + 1
            )
        };
        let [index, _, code] = fields[..] else {
            bail!(bad());
        };
        let index: usize = index.parse().with_context(bad)?;
        let lobe = match code.chars().next() {
            Some(d @ '2'..='9') => d as u8 - b'1',
            _ => bail!("{}: unknown AAL code `{code}`", bad()),
        };
        *map.get_mut(index).with_context(bad)? = lobe;
    }
    Ok(map)
}

/// Which split slice `z` belongs to, if any.
fn split_of(z: usize) -> Option<&'static str> {
    if VAL_SLABS.iter().any(|&(a, b)| (a..b).contains(&z)) {
        return Some("val");
    }
    if VAL_SLABS
        .iter()
        .any(|&(a, b)| (a.saturating_sub(GAP)..b + GAP).contains(&z))
    {
        return None;
    }
    Some("train")
}

/// Writes the slices of the raw files in `raw` into `out/{train,val}` (if not already there)
/// and returns those two folders.
pub fn prepare(raw: &Path, out: &Path) -> Result<(PathBuf, PathBuf)> {
    let dirs = (out.join("train"), out.join("val"));
    if atomic::completed(out).as_deref() == Some(VERSION) {
        return Ok(dirs);
    }
    let t1 = read_volume(&raw.join("ch2.nii.gz"))?;
    let atlas = read_volume(&raw.join("aal.nii.gz"))?;
    if t1.dim() != atlas.dim() {
        bail!(
            "{}: the atlas is {:?}, the MRI {:?}",
            raw.display(),
            atlas.dim(),
            t1.dim()
        );
    }
    let lobe = lobes(&raw.join("aal.nii.txt"))?;
    let (w, h, depth) = t1.dim();
    atomic::build_dir(out, VERSION, |root| {
        for split in ["train", "val"] {
            let classes = CLASSES.join("\n") + "\n";
            atomic::write(&root.join(split).join("classes.txt"), classes.as_bytes())?;
        }
        for z in 0..depth {
            let labels = atlas.index_axis(Axis(2), z);
            let labelled = labels.iter().filter(|&&v| v > 0).count();
            if (labelled as f64) < MIN_LABELLED * (w * h) as f64 {
                continue;
            }
            let Some(split) = split_of(z) else {
                continue;
            };
            let values = t1.index_axis(Axis(2), z);
            // y grows towards the front of the head: the front goes at the top.
            let image = RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let v = values[[x as usize, h - 1 - y as usize]];
                Rgb([v, v, v])
            });
            let mask = GrayImage::from_fn(w as u32, h as u32, |x, y| {
                Luma([lobe[labels[[x as usize, h - 1 - y as usize]] as usize]])
            });
            let dir = root.join(split);
            let name = format!("z{z:03}.png");
            save_png(
                &dir.join("images").join(&name),
                &image::DynamicImage::ImageRgb8(image),
            )?;
            save_mask(&dir.join("masks").join(&name), &mask, None)?;
        }
        Ok(())
    })?;
    Ok(dirs)
}

/// Fetches the raw files (on first use) and cuts them into slices; returns the training and
/// validation folders.
pub fn ensure() -> Result<(PathBuf, PathBuf)> {
    let manifest = downstream_hub::manifest::find_dataset(NAME)?;
    let raw = downstream_hub::ensure(&manifest, &downstream_hub::datasets_root())?;
    prepare(
        &raw,
        &downstream_hub::datasets_root().join(format!("{NAME}-slices")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slabs_and_gaps_split_the_slices() {
        assert_eq!(split_of(20), Some("train"));
        assert_eq!(split_of(31), Some("train"));
        assert_eq!(split_of(32), None);
        assert_eq!(split_of(36), Some("val"));
        assert_eq!(split_of(47), Some("val"));
        assert_eq!(split_of(51), None);
        assert_eq!(split_of(52), Some("train"));
        let val = (0..181).filter(|&z| split_of(z) == Some("val")).count();
        assert_eq!(val, 36);
    }

    #[test]
    fn aal_codes_group_into_lobes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aal.nii.txt");
        std::fs::write(
            &path,
            "1 Precentral_L 2001\n29 Insula_L 3001\n37 Hippocampus_L 4101\n43 Calcarine_L 5001\n\
             57 Postcentral_L 6001\n71 Caudate_L 7001\n79 Heschl_L 8101\n91 Cerebelum_Crus1_L 9001\n",
        )
        .unwrap();
        let map = lobes(&path).unwrap();
        let got: Vec<&str> = [1, 29, 37, 43, 57, 71, 79, 91, 0]
            .iter()
            .map(|&i| CLASSES[map[i] as usize])
            .collect();
        assert_eq!(
            got,
            [
                "frontal",
                "insula",
                "limbic",
                "occipital",
                "parietal",
                "deep grey matter",
                "temporal",
                "cerebellum",
                "background"
            ]
        );
        std::fs::write(&path, "1 Precentral_L\n").unwrap();
        let err = lobes(&path).unwrap_err().to_string();
        assert!(err.contains("aal.nii.txt line 1"), "{err}");
    }
}
