//! Segmentation examples for the engine: each image becomes one square input (letterboxed) or,
//! with `slide`, overlapping crops at native scale as mmsegmentation's slide inference takes
//! them. Image and mask go through the same placement and augmentation (core's [`Placement`]
//! and [`Augment`]; the mask by nearest neighbour, its padding ignored). A target carries the
//! training labels at input resolution and, for the metric, the image's whole stored mask.

use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use downstream_core::train::Dataset;
use downstream_core::vision::augment::{Augment, AugmentPolicy};
use downstream_core::vision::input::{to_tensor, Placement};
use downstream_core::vision::io;
use downstream_core::vision::mask::open_mask;
use image::GrayImage;
use serde::{Deserialize, Serialize};

use crate::data::SegmentationSet;
use crate::metric::confusion::LabelRules;

/// The training label of a pixel that counts for nothing (padding, the ignore index).
pub const IGNORED: u32 = u32::MAX;

/// How images become inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    /// Side of the square model input in pixels (a multiple of the patch size).
    pub size: usize,
    /// Sliding-window crops `(crop, stride)` in image pixels, each resized to `size`, for
    /// images larger than the input; logits are averaged where crops overlap.
    pub slide: Option<(usize, usize)>,
    /// Augmentations of training views.
    pub augment: AugmentPolicy,
    /// Distinct views per training image (the plain one included) when the backbone is
    /// frozen and its features are cached: each costs a backbone pass and its features' memory.
    pub views: usize,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            size: 224,
            slide: None,
            augment: AugmentPolicy::default(),
            views: 4,
        }
    }
}

/// Which part of which image one example is.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Index into the data set's pairs.
    pub pair: usize,
    pub placement: Placement,
    /// How many examples the image is cut into (1 without sliding windows).
    pub parts: usize,
}

/// The target of one example.
#[derive(Clone, Debug)]
pub struct Target {
    pub sample: Sample,
    /// Class per input pixel, row-major, [`IGNORED`] where nothing counts.
    pub labels: Vec<u32>,
    /// Pixels that count.
    pub labelled: usize,
    /// The image's `(width, height)`.
    pub image_size: (u32, u32),
    /// The image's stored mask, whole, at its own resolution (absent for images only to be
    /// predicted).
    pub truth: Option<Arc<GrayImage>>,
}

/// A segmentation data set as engine examples.
pub struct SegmentationData {
    pub set: SegmentationSet,
    pub samples: Vec<Sample>,
    pub input: InputConfig,
    /// `(width, height)` of each pair's image.
    sizes: Vec<(u32, u32)>,
    /// Views > 0 are augmented (training); evaluation uses view 0.
    augment: bool,
    device: Device,
}

impl SegmentationData {
    /// Examples of `set`; `augment` draws augmentations for views above 0.
    pub fn new(
        set: SegmentationSet,
        input: InputConfig,
        patch: usize,
        augment: bool,
        device: &Device,
    ) -> Result<Self> {
        anyhow::ensure!(
            input.size > 0 && input.size.is_multiple_of(patch),
            "the input size {} must be a multiple of the patch size {patch}",
            input.size
        );
        if let Some((crop, stride)) = input.slide {
            anyhow::ensure!(
                crop > 0 && stride > 0 && stride <= crop,
                "slide {crop},{stride}: the stride must be between 1 and the crop"
            );
        }
        let size = input.size as u32;
        let mut samples = Vec::new();
        let mut sizes = Vec::with_capacity(set.pairs.len());
        for (i, p) in set.pairs.iter().enumerate() {
            let (w, h) = image::image_dimensions(&p.image)
                .with_context(|| format!("{}: unreadable image", p.image.display()))?;
            sizes.push((w, h));
            let placements = match input.slide {
                Some((crop, stride)) => {
                    Placement::tiles(w, h, crop as u32, (crop - stride) as u32, size)
                }
                None => vec![Placement::whole(w, h, size)],
            };
            let parts = placements.len();
            samples.extend(placements.into_iter().map(|placement| Sample {
                pair: i,
                placement,
                parts,
            }));
        }
        Ok(Self {
            set,
            samples,
            input,
            sizes,
            augment,
            device: device.clone(),
        })
    }

    pub fn rules(&self) -> LabelRules {
        self.set.rules
    }

    fn augmentation(&self, view: u64) -> Augment {
        if self.augment {
            Augment::draw(&self.input.augment, view)
        } else {
            Augment::IDENTITY
        }
    }
}

impl Dataset for SegmentationData {
    type Input = Tensor;
    type Target = Target;

    fn len(&self) -> usize {
        self.samples.len()
    }

    fn input(&self, index: usize, view: u64) -> Result<Tensor> {
        let sample = &self.samples[index];
        let pair = &self.set.pairs[sample.pair];
        let image = io::open_rgb(&pair.image)?;
        let input = sample.placement.render(&image, self.input.size as u32);
        to_tensor(&self.augmentation(view).image(&input), &self.device)
    }

    fn target(&self, index: usize, view: u64) -> Result<Target> {
        let sample = &self.samples[index];
        let pair = &self.set.pairs[sample.pair];
        let image_size = self.sizes[sample.pair];
        let Some(path) = &pair.mask else {
            // Nothing to learn from: every pixel ignored.
            let n = self.input.size * self.input.size;
            return Ok(Target {
                sample: sample.clone(),
                labels: vec![IGNORED; n],
                labelled: 0,
                image_size,
                truth: None,
            });
        };
        let stored = open_mask(path)?.labels;
        let rules = self.rules();
        let size = self.input.size as u32;
        // Padding takes the ignore index, so that it counts for nothing.
        let ignore = rules.ignore_index;
        let placed = sample.placement.render_mask(&stored, size, ignore);
        let placed = self.augmentation(view).mask(&placed, ignore);
        let labels: Vec<u32> = placed
            .pixels()
            .map(|p| rules.class_of(p.0[0]).map_or(IGNORED, |c| c as u32))
            .collect();
        let labelled = labels.iter().filter(|&&l| l != IGNORED).count();
        Ok(Target {
            sample: sample.clone(),
            labels,
            labelled,
            image_size,
            truth: Some(Arc::new(stored)),
        })
    }

    /// With features cached, augmented views are limited to `input.views`.
    fn cached_views(&self) -> u64 {
        if self.augment {
            self.input.views.max(1) as u64
        } else {
            1
        }
    }
}
