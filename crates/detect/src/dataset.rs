//! Detection examples for the engine: each image becomes one input (letterboxed into the
//! square model input) or, with tiling, several overlapping tiles at native scale whose boxes
//! are clipped to the tile. View 0 is the example as it is; odd views are flipped left-right.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use downstream_core::backbone::{IMAGENET_MEAN, IMAGENET_STD};
use downstream_core::train::Dataset;
use image::imageops::{self, FilterType};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::data::{Annotation, DetectionSet, ImageRecord};
use crate::model::assign::{assign, Assigned, Geometry};

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
    /// A box cut by a tile edge is kept when at least this fraction of it is inside.
    pub min_visible: f64,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            size: 224,
            tile: None,
            tile_overlap: 64,
            min_visible: 0.4,
        }
    }
}

/// Which part of which image one example is.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Index into the data set's images.
    pub image: usize,
    pub image_id: u64,
    /// The window `[x0, y0, w, h]` of the original image.
    pub crop: [u32; 4],
    /// Input pixels per original pixel.
    pub scale: f64,
}

impl Sample {
    /// A box in input pixels `[x0, y0, x1, y1]` back in original image pixels `[x, y, w, h]`.
    pub fn to_original(&self, xyxy: [f32; 4]) -> [f64; 4] {
        let s = self.scale;
        let x0 = (xyxy[0] as f64 / s + self.crop[0] as f64).max(self.crop[0] as f64);
        let y0 = (xyxy[1] as f64 / s + self.crop[1] as f64).max(self.crop[1] as f64);
        let x1 =
            (xyxy[2] as f64 / s + self.crop[0] as f64).min((self.crop[0] + self.crop[2]) as f64);
        let y1 =
            (xyxy[3] as f64 / s + self.crop[1] as f64).min((self.crop[1] + self.crop[3]) as f64);
        [x0, y0, (x1 - x0).max(0.0), (y1 - y0).max(0.0)]
    }
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

/// Tile starts along one axis: the fewest tiles that overlap by at least `overlap`, spread
/// evenly so that the last one ends at the border.
fn windows(len: u32, tile: u32, overlap: u32) -> Vec<u32> {
    if len <= tile {
        return vec![0];
    }
    let step = (tile - overlap.min(tile - 1)).max(1);
    let n = (len - tile).div_ceil(step) + 1;
    (0..n)
        .map(|i| ((i as u64 * (len - tile) as u64 + (n as u64 - 1) / 2) / (n as u64 - 1)) as u32)
        .collect()
}

/// A detection data set as engine examples.
pub struct DetectionData {
    pub set: DetectionSet,
    pub samples: Vec<Sample>,
    pub input: InputConfig,
    pub geometry: Geometry,
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
        device: &Device,
    ) -> Result<Self> {
        anyhow::ensure!(
            input.size > 0 && input.size.is_multiple_of(2 * patch),
            "the input size {} must be a multiple of {} (twice the patch size)",
            input.size,
            2 * patch
        );
        let mut samples = Vec::new();
        for (i, im) in set.images.iter().enumerate() {
            match input.tile {
                Some(tile) => {
                    let t = tile as u32;
                    for y in windows(im.height, t, input.tile_overlap as u32) {
                        for x in windows(im.width, t, input.tile_overlap as u32) {
                            let crop = [x, y, t.min(im.width), t.min(im.height)];
                            samples.push(Sample {
                                image: i,
                                image_id: im.id,
                                crop,
                                scale: input.size as f64 / tile as f64,
                            });
                        }
                    }
                }
                None => {
                    let longest = im.width.max(im.height).max(1);
                    let scale = input.size as f64 / longest as f64;
                    samples.push(Sample {
                        image: i,
                        image_id: im.id,
                        crop: [0, 0, im.width, im.height],
                        scale,
                    });
                }
            }
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
            classes,
            boxes,
            truths,
            device: device.clone(),
        })
    }

    fn image(&self, sample: &Sample) -> Result<RgbImage> {
        let record = &self.set.images[sample.image];
        let path: PathBuf = self.set.image_path(record);
        let img = image::open(&path)
            .with_context(|| {
                format!(
                    "{}: image id {} ({}) cannot be read",
                    self.set.source.display(),
                    record.id,
                    path.display()
                )
            })?
            .to_rgb8();
        let [x, y, w, h] = sample.crop;
        Ok(imageops::crop_imm(&img, x, y, w, h).to_image())
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
        let crop = self.image(sample)?;
        let s = self.input.size as u32;
        let nw = ((crop.width() as f64 * sample.scale).round() as u32).clamp(1, s);
        let nh = ((crop.height() as f64 * sample.scale).round() as u32).clamp(1, s);
        let resized = imageops::resize(&crop, nw, nh, FilterType::Triangle);
        // Padding takes the mean colour, which normalises to zero.
        let mean = IMAGENET_MEAN.map(|m| (m * 255.0).round() as u8);
        let mut canvas = RgbImage::from_pixel(s, s, image::Rgb(mean));
        imageops::replace(&mut canvas, &resized, 0, 0);
        if view % 2 == 1 {
            imageops::flip_horizontal_in_place(&mut canvas);
        }
        let n = (s * s) as usize;
        let mut data = vec![0f32; 3 * n];
        for (i, p) in canvas.pixels().enumerate() {
            for c in 0..3 {
                data[c * n + i] = (p.0[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
        Ok(Tensor::from_vec(
            data,
            (3, s as usize, s as usize),
            &self.device,
        )?)
    }

    fn target(&self, index: usize, view: u64) -> Result<Target> {
        let sample = &self.samples[index];
        let [cx, cy, cw, ch] = sample.crop.map(|v| v as f64);
        let size = self.input.size as f32;
        let mut boxes = Vec::new();
        for &(class, [x, y, w, h]) in &self.boxes[sample.image] {
            let (x0, y0) = (x.max(cx), y.max(cy));
            let (x1, y1) = ((x + w).min(cx + cw), (y + h).min(cy + ch));
            if x1 <= x0 || y1 <= y0 || (x1 - x0) * (y1 - y0) < self.input.min_visible * w * h {
                continue;
            }
            let s = sample.scale;
            let mut b = [
                ((x0 - cx) * s) as f32,
                ((y0 - cy) * s) as f32,
                ((x1 - cx) * s) as f32,
                ((y1 - cy) * s) as f32,
            ];
            if view % 2 == 1 {
                b = [size - b[2], b[1], size - b[0], b[3]];
            }
            boxes.push((class, b));
        }
        let assigned = assign(&self.geometry, &boxes);
        let positives = assigned.iter().filter(|a| a.is_some()).count();
        Ok(Target {
            sample: sample.clone(),
            truth: self.truths[sample.image].clone(),
            boxes,
            assigned,
            positives,
        })
    }

    /// View 1 is the left-right flip.
    fn cached_views(&self) -> u64 {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_image_with_overlap() {
        assert_eq!(windows(100, 224, 64), vec![0]);
        assert_eq!(windows(400, 224, 64), vec![0, 88, 176]);
        assert_eq!(windows(400, 224, 16), vec![0, 176]);
        let w = windows(2299, 320, 64);
        assert_eq!((w[0], *w.last().unwrap()), (0, 2299 - 320));
        assert!(w.windows(2).all(|p| p[1] - p[0] <= 256 && p[1] > p[0]));
    }

    #[test]
    fn boxes_map_back_to_the_original_image() {
        let s = Sample {
            image: 0,
            image_id: 1,
            crop: [100, 50, 320, 320],
            scale: 224.0 / 320.0,
        };
        let back = s.to_original([7.0, 14.0, 70.0, 84.0]);
        let want = [110.0, 70.0, 90.0, 100.0];
        for (g, w) in back.iter().zip(want) {
            assert!((g - w).abs() < 1e-3, "{back:?}");
        }
    }
}
