//! Detection examples for the engine: each image becomes one input (letterboxed into the
//! square model input) or, with tiling, several overlapping tiles at native scale whose boxes
//! are clipped to the tile (core's [`Placement`]). View 0 is the example as it is; other views
//! are drawn from the input's augmentation policy (core's [`Augment`]: flips, quarter turns,
//! zoom, colour), image and boxes together. With `random_crop`, a tile's other views also
//! move its window to a random place in the image: crops at native scale that differ every
//! epoch, where the fixed grid would show the same few squares again. Inference may cut a
//! denser grid than training (`inference_overlap`), so that some tile sees each object whole.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use downstream_core::train::Dataset;
use downstream_core::vision::augment::{Augment, AugmentPolicy};
use downstream_core::vision::input::{to_tensor, Placement};
use downstream_core::vision::io;
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::{Annotation, DetectionSet, ImageRecord};
use crate::model::assign::{Assigned, Assigner, Geometry};

/// How images become model inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    /// Side of the square model input in pixels (a multiple of twice the patch size).
    pub size: usize,
    /// Cut images into tiles of this many pixels (native scale, each resized to `size`)
    /// instead of fitting the whole image into one input. For large images with small objects.
    pub tile: Option<usize>,
    /// Overlap between neighbouring tiles, in pixels.
    pub tile_overlap: usize,
    /// Overlap between the tiles that validation, `eval` and `predict` cut, where it differs
    /// from `tile_overlap`: with random crops the training grid mostly sets how many crops an
    /// epoch holds (only view 0 keeps a tile's place), while at inference an overlap wider
    /// than the largest object lets some tile see each object whole.
    pub inference_overlap: Option<usize>,
    /// A box cut by a tile edge is kept when at least this fraction of it is inside.
    pub min_visible: f64,
    /// The augmentations training views are drawn from.
    pub augment: AugmentPolicy,
    /// Distinct views per training example (the plain one included) when the backbone is
    /// frozen and its features are cached: each costs a backbone pass and its features' memory.
    pub views: usize,
    /// With tiling, training views take their tile anywhere in the image (random crops at
    /// native scale) instead of at its place in the grid.
    pub random_crop: bool,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            size: 224,
            tile: None,
            tile_overlap: 64,
            inference_overlap: None,
            min_visible: 0.4,
            augment: AugmentPolicy::default(),
            views: 2,
            random_crop: false,
        }
    }
}

impl InputConfig {
    /// Refuses overlaps as wide as the tile: the grid would step by one pixel.
    pub fn check(&self) -> Result<()> {
        let Some(tile) = self.tile else {
            return Ok(());
        };
        // The inference overlap first: `for_inference` copies it into `tile_overlap`.
        for (name, overlap) in [
            ("inference_overlap", self.inference_overlap),
            ("tile_overlap", Some(self.tile_overlap)),
        ] {
            if let Some(o) = overlap {
                anyhow::ensure!(
                    o < tile,
                    "input.{name} = {o} must be smaller than input.tile = {tile}"
                );
            }
        }
        Ok(())
    }

    /// The input as inference cuts it: tiles overlapping by `inference_overlap` where set.
    pub fn for_inference(&self) -> Self {
        Self {
            tile_overlap: self.inference_overlap.unwrap_or(self.tile_overlap),
            ..self.clone()
        }
    }
}

/// Which part of which image one example is.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Index into the data set's images.
    pub image: usize,
    pub image_id: u64,
    pub placement: Placement,
}

/// One image's ground truth as the data set holds it (original pixels, crowd regions
/// included), shared by all of the image's examples, for the metric.
#[derive(Clone, Debug)]
pub struct ImageTruth {
    pub record: ImageRecord,
    pub annotations: Vec<Annotation>,
}

/// The training target of one example.
#[derive(Clone, Debug)]
pub struct Target {
    pub sample: Sample,
    pub truth: Arc<ImageTruth>,
    /// Boxes in input pixels `[x0, y0, x1, y1]` with their class index.
    pub boxes: Vec<(usize, [f32; 4])>,
    pub assigned: Vec<Option<Assigned>>,
    pub positives: usize,
}

/// A detection data set as engine examples.
pub struct DetectionData {
    pub set: DetectionSet,
    pub samples: Vec<Sample>,
    pub input: InputConfig,
    pub geometry: Geometry,
    /// How the targets' positive locations are chosen.
    pub assigner: Assigner,
    /// Category id to class index.
    pub classes: BTreeMap<u64, usize>,
    boxes: Vec<Vec<(usize, [f64; 4])>>,
    truths: Vec<Arc<ImageTruth>>,
    device: Device,
}

impl DetectionData {
    pub fn new(
        set: DetectionSet,
        input: InputConfig,
        patch: usize,
        classes: BTreeMap<u64, usize>,
        assigner: Assigner,
        device: &Device,
    ) -> Result<Self> {
        anyhow::ensure!(
            input.size > 0 && input.size.is_multiple_of(2 * patch),
            "the input size {} must be a multiple of {} (twice the patch size)",
            input.size,
            2 * patch
        );
        input.check()?;
        let mut samples = Vec::new();
        for (i, im) in set.images.iter().enumerate() {
            let size = input.size as u32;
            let placements = match input.tile {
                Some(tile) => Placement::tiles(
                    im.width,
                    im.height,
                    tile as u32,
                    input.tile_overlap as u32,
                    size,
                ),
                None => vec![Placement::whole(im.width, im.height, size)],
            };
            samples.extend(placements.into_iter().map(|placement| Sample {
                image: i,
                image_id: im.id,
                placement,
            }));
        }
        let index: std::collections::HashMap<u64, usize> = set
            .images
            .iter()
            .enumerate()
            .map(|(i, im)| (im.id, i))
            .collect();
        let mut boxes = vec![Vec::new(); set.images.len()];
        let mut annotations = vec![Vec::new(); set.images.len()];
        for a in &set.annotations {
            let i = index[&a.image_id];
            annotations[i].push(a.clone());
            if a.iscrowd {
                continue;
            }
            let class = *classes
                .get(&a.category_id)
                .with_context(|| format!("category id {} has no class", a.category_id))?;
            boxes[i].push((class, a.bbox));
        }
        let truths = set
            .images
            .iter()
            .zip(annotations)
            .map(|(record, annotations)| {
                Arc::new(ImageTruth {
                    record: record.clone(),
                    annotations,
                })
            })
            .collect();
        let geometry = Geometry::new(input.size, patch);
        Ok(Self {
            set,
            samples,
            input,
            geometry,
            assigner,
            classes,
            boxes,
            truths,
            device: device.clone(),
        })
    }

    fn image(&self, sample: &Sample) -> Result<RgbImage> {
        let record = &self.set.images[sample.image];
        let path: PathBuf = self.set.image_path(record);
        io::open_rgb(&path).with_context(|| {
            format!(
                "{}: image id {} cannot be read",
                self.set.source.display(),
                record.id
            )
        })
    }

    fn augment(&self, view: u64) -> Augment {
        Augment::draw(&self.input.augment, view)
    }

    /// Where `view` of `sample` lies in its image: the sample's own window, or with
    /// `random_crop` (tiles only, never view 0) a window of the same size anywhere in the image,
    /// drawn from the view on a stream of its own (the augmentation draws from stream 0).
    fn placement(&self, sample: &Sample, view: u64) -> Placement {
        if view == 0 || !self.input.random_crop || self.input.tile.is_none() {
            return sample.placement.clone();
        }
        let record = &self.set.images[sample.image];
        let [_, _, w, h] = sample.placement.crop;
        let mut rng = ChaCha8Rng::seed_from_u64(view);
        rng.set_stream(1);
        let x = rng.random_range(0..=record.width.saturating_sub(w));
        let y = rng.random_range(0..=record.height.saturating_sub(h));
        Placement {
            crop: [x, y, w, h],
            scale: sample.placement.scale,
        }
    }
}

impl Dataset for DetectionData {
    type Input = Tensor;
    type Target = Target;

    fn len(&self) -> usize {
        self.samples.len()
    }

    fn input(&self, index: usize, view: u64) -> Result<Tensor> {
        let sample = &self.samples[index];
        let image = self.image(sample)?;
        let input = self
            .placement(sample, view)
            .render(&image, self.input.size as u32);
        to_tensor(&self.augment(view).image(&input), &self.device)
    }

    fn target(&self, index: usize, view: u64) -> Result<Target> {
        let sample = &self.samples[index];
        let size = self.input.size as u32;
        let augment = self.augment(view);
        let placement = self.placement(sample, view);
        let boxes: Vec<(usize, [f32; 4])> = self.boxes[sample.image]
            .iter()
            .filter_map(|&(class, b)| {
                let b = placement.box_to_input(b, self.input.min_visible)?;
                Some((class, augment.boxed(b, size, self.input.min_visible)?))
            })
            .collect();
        let assigned = self.assigner.assign(&self.geometry, &boxes);
        let positives = assigned.iter().filter(|a| a.is_some()).count();
        Ok(Target {
            sample: Sample {
                placement,
                ..sample.clone()
            },
            truth: self.truths[sample.image].clone(),
            boxes,
            assigned,
            positives,
        })
    }

    fn cached_views(&self) -> u64 {
        self.input.views.max(1) as u64
    }
}
