//! The built-in segmentation demo set: core's generated scenes
//! ([`downstream_core::vision::scene`]) exported as image PNGs and single-channel class-mask
//! PNGs (0 background, then one class per shape), in the `images/` + `masks/` layout with a
//! `classes.txt`, per split; written once under the data-set cache so that no download is
//! needed.

use std::path::{Path, PathBuf};

use anyhow::Result;
use downstream_core::atomic;
use downstream_core::vision::generated::{self, Export, SceneSpec};
use downstream_core::vision::io::save_png;
use downstream_core::vision::mask::save_mask;
use downstream_core::vision::scene::{Scene, Split, SHAPES};

/// The class names, in label order.
pub fn classes() -> Vec<String> {
    std::iter::once("background")
        .chain(SHAPES)
        .map(String::from)
        .collect()
}

struct Masks;

impl Export for Masks {
    type Record = ();

    fn kind(&self) -> &str {
        "masks"
    }

    fn own_names(&self) -> &[&str] {
        &["train", "val"]
    }

    fn scene(&self, root: &Path, split: Split, index: usize, scene: Scene) -> Result<()> {
        let dir = root.join(split.name());
        let name = format!("{index:06}.png");
        save_mask(&dir.join("masks").join(&name), &scene.class_mask(0), None)?;
        save_png(
            &dir.join("images").join(&name),
            &image::DynamicImage::ImageRgb8(scene.image),
        )
    }

    fn split(&self, root: &Path, split: Split, _: Vec<()>) -> Result<()> {
        let text = classes().join("\n") + "\n";
        atomic::write(
            &root.join(split.name()).join("classes.txt"),
            text.as_bytes(),
        )
    }
}

/// Writes the set (if not already there) and returns its training and validation folders.
pub fn ensure(dir: &Path, spec: &SceneSpec) -> Result<(PathBuf, PathBuf)> {
    generated::ensure(dir, spec, &Masks)?;
    Ok((dir.join("train"), dir.join("val")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::layout::{self, Split as Part};
    use crate::data::{LabelConfig, SegmentationSet};

    #[test]
    fn the_set_loads_as_a_folder_data_set_with_exact_masks() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = SceneSpec {
            train: 4,
            val: 2,
            seed: 3,
            size: 96,
        };
        let (train, val) = ensure(&tmp.path().join("shapes"), &spec).unwrap();
        let set = SegmentationSet::validate(
            &train,
            layout::read(&train, Part::Train).unwrap(),
            &LabelConfig::default(),
        )
        .unwrap();
        assert_eq!(set.pairs.len(), 4);
        assert_eq!(set.classes, classes());
        let scene = downstream_core::vision::scene::render(3, 96, Split::Train, 2).unwrap();
        let mask =
            downstream_core::vision::mask::open_mask(set.pairs[2].mask.as_ref().unwrap()).unwrap();
        assert_eq!(mask.labels, scene.class_mask(0));
        assert!(mask.labels.pixels().any(|p| p.0[0] > 0));
        let v = layout::read(&val, Part::Val).unwrap();
        assert_eq!(v.pairs.len(), 2);
    }
}
