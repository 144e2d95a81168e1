//! Generated scenes: shapes (circles, squares, triangles, crosses) on textured, cluttered
//! backgrounds, drawn from a seed so that no download is needed, with the exact extent of every
//! object: its tight box and its per-pixel mask. `detect` exports them as a COCO set, and a
//! segmenter can take the class of every pixel.
//!
//! Every image draws from its own random stream (seed, split, index), so an image is the same
//! whatever the thread count or the order the images are made in. Shapes are rasterised with a
//! signed distance per pixel centre (coverage `0.5 - d`, clamped, which anti-aliases edges). An
//! object's visible coverage is what later objects leave of it; its box is the tight box of
//! the pixels where that is at least one half, so boxes are exact rather than taken from the
//! shape's nominal geometry. Its mask further discounts the clutter drawn over objects.
//!
//! The pieces: `raster.rs` (shapes to anti-aliased coverage, and the canvas they are painted
//! on), `texture.rs` (the backgrounds, and the colour space every colour is drawn in),
//! `layout.rs` (clutter and object placement); this module draws one scene from them and
//! keeps what the exports need.

mod layout;
mod raster;
mod texture;

use std::f32::consts::TAU;

use anyhow::{bail, Result};
use image::{GrayImage, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use layout::{distractor, place_objects};
use raster::{Geom, Patch};
use texture::{background, hsv};

/// The shape classes, in class-index order.
pub const SHAPES: [&str; 4] = ["circle", "square", "triangle", "cross"];

/// Below this the size ranges of objects and clutter (scaled from 224) collapse.
pub const MIN_SIZE: u32 = 48;

/// Which part of a generated set an image belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }

    /// Disjoint ChaCha streams, so validation images never repeat training ones.
    fn stream(self, index: usize) -> u64 {
        let tag = match self {
            Split::Train => 0u64,
            Split::Val => 1,
        };
        (tag << 63) | (index as u64 & (u64::MAX >> 1))
    }
}

/// One object of a scene.
pub struct SceneObject {
    /// Index into [`SHAPES`].
    pub class: usize,
    /// COCO `[x, y, w, h]` of its visible pixels.
    pub bbox: [f64; 4],
    #[cfg_attr(not(test), allow(dead_code))]
    geom: Geom,
    /// What later objects leave of its coverage, laid out like `patch.a`.
    visible: Vec<f32>,
    patch: Patch,
}

/// A finished image and what is on it.
pub struct Scene {
    pub image: RgbImage,
    /// In drawing order.
    pub objects: Vec<SceneObject>,
    /// Clutter drawn over the objects.
    occluders: Vec<Patch>,
}

impl Scene {
    /// The class of every pixel: `background` where no object shows, else `class + 1` of the
    /// object that shows there (visible coverage at least one half after later objects and the
    /// clutter drawn over it).
    pub fn class_mask(&self, background: u8) -> GrayImage {
        let (w, h) = self.image.dimensions();
        let mut mask = GrayImage::from_pixel(w, h, image::Luma([background]));
        for o in &self.objects {
            let p = &o.patch;
            for j in 0..p.h {
                for i in 0..p.w {
                    let (x, y) = (p.x0 + i, p.y0 + j);
                    let mut v = o.visible[j * p.w + i];
                    for c in &self.occluders {
                        v *= 1.0 - c.get(x, y);
                    }
                    if v >= 0.5 {
                        mask.put_pixel(x as u32, y as u32, image::Luma([o.class as u8 + 1]));
                    }
                }
            }
        }
        mask
    }
}

/// Image `index` of `split` in the set of `size`-pixel scenes generated from `seed`.
pub fn render(seed: u64, size: u32, split: Split, index: usize) -> Result<Scene> {
    if size < MIN_SIZE {
        bail!("generated images must be at least {MIN_SIZE} pixels wide, not {size}");
    }
    Ok(render_scene(seed, size, split, index))
}

/// Saturated and far from what lies under it, so the object is plain to see on any texture.
fn object_colour(rng: &mut ChaCha8Rng, under: [f32; 3]) -> [f32; 3] {
    let mut best = (-1.0, [0.0; 3]);
    for _ in 0..16 {
        let c = hsv(
            rng.random_range(0.0..360.0),
            rng.random_range(0.6..1.0),
            rng.random_range(0.55..1.0),
        );
        let d = (0..3)
            .map(|k| (c[k] - under[k]).powi(2))
            .sum::<f32>()
            .sqrt();
        if d > best.0 {
            best = (d, c);
        }
        if d >= 110.0 {
            break;
        }
    }
    best.1
}

fn render_scene(seed: u64, side: u32, split: Split, index: usize) -> Scene {
    let size = side as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(split.stream(index));

    let mut canvas = background(&mut rng, size);
    let clutter: Vec<_> = (0..rng.random_range(5..=15))
        .map(|_| {
            let (geom, over) = distractor(&mut rng, size);
            let colour = hsv(
                rng.random_range(0.0..360.0),
                rng.random_range(0.0..1.0),
                rng.random_range(0.05..1.0),
            );
            (Patch::raster(&geom, size), over, colour)
        })
        .collect();
    for (patch, _, colour) in clutter.iter().filter(|c| !c.1) {
        canvas.paint(patch, |_, _| *colour);
    }

    let objects = place_objects(&mut rng, size);
    for o in &objects {
        let base = object_colour(&mut rng, canvas.mean_under(&o.patch));
        // A gentle brightness ramp, as if lit from one side, so objects are not flat stamps.
        let (sin, cos) = rng.random_range(0.0..TAU).sin_cos();
        let strength = rng.random_range(0.0..0.15);
        let b = o.geom.bounds();
        let centre = [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0];
        let half = ((b[2] - b[0]).max(b[3] - b[1]) / 2.0).max(1.0);
        canvas.paint(&o.patch, |x, y| {
            let t =
                ((x as f32 + 0.5 - centre[0]) * cos + (y as f32 + 0.5 - centre[1]) * sin) / half;
            base.map(|c| c * (1.0 + strength * t))
        });
    }
    for (patch, _, colour) in clutter.iter().filter(|c| c.1) {
        canvas.paint(patch, |_, _| *colour);
    }

    let sigma = rng.random_range(2.5..7.0);
    let mut image = RgbImage::new(side, side);
    for (out, px) in image.pixels_mut().zip(&canvas.px) {
        for (o, &c) in out.0.iter_mut().zip(px) {
            // Three uniforms sum to a near-Gaussian with standard deviation 1/2.
            let n: f32 = rng.random::<f32>() + rng.random::<f32>() + rng.random::<f32>() - 1.5;
            *o = (c + 2.0 * sigma * n).round().clamp(0.0, 255.0) as u8;
        }
    }

    let occluders = clutter
        .into_iter()
        .filter(|c| c.1)
        .map(|(patch, _, _)| patch)
        .collect();
    let objects = objects
        .into_iter()
        .filter_map(|o| {
            // Placement keeps most of every object visible, so this always finds pixels.
            let [x0, y0, x1, y1] = o.patch.tight_box(&o.visible)?.map(|v| v as f64);
            Some(SceneObject {
                class: o.class,
                bbox: [x0, y0, x1 - x0, y1 - y0],
                geom: o.geom,
                visible: o.visible,
                patch: o.patch,
            })
        })
        .collect();
    Scene {
        image,
        objects,
        occluders,
    }
}

#[cfg(test)]
mod tests {
    use super::layout::{iou, MAX_IOU};
    use super::raster::coverage;
    use super::*;
    use rayon::prelude::*;

    /// The boxes of image `index`, as (class, box).
    fn boxes(split: Split, index: usize) -> Vec<(usize, [f64; 4])> {
        let scene = render(0, 224, split, index).unwrap();
        scene.objects.iter().map(|o| (o.class, o.bbox)).collect()
    }

    #[test]
    fn an_image_renders_identically_every_time_and_splits_differ() {
        let image = |seed, split, index| render(seed, 224, split, index).unwrap().image;
        let a = image(0, Split::Train, 3);
        assert_eq!(a.as_raw(), image(0, Split::Train, 3).as_raw());
        assert_eq!(boxes(Split::Train, 3), boxes(Split::Train, 3));
        let train0 = image(0, Split::Train, 0);
        assert_ne!(train0.as_raw(), image(0, Split::Val, 0).as_raw());
        assert_ne!(train0.as_raw(), image(1, Split::Train, 0).as_raw());
        // Rendering in parallel, in whatever order threads pick, gives the same pictures.
        let parallel: Vec<_> = (0..8)
            .into_par_iter()
            .rev()
            .map(|i| (image(0, Split::Val, i), boxes(Split::Val, i)))
            .collect();
        for (i, (img, b)) in parallel.iter().rev().enumerate() {
            assert_eq!(
                img.as_raw(),
                image(0, Split::Val, i).as_raw(),
                "val image {i}"
            );
            assert_eq!(b, &boxes(Split::Val, i), "val image {i}");
        }
    }

    #[test]
    fn boxes_are_valid_and_classes_and_sizes_vary() {
        let n = 224.0;
        let mut seen = [0usize; 4];
        let (mut smallest, mut largest) = (f64::INFINITY, 0f64);
        let mut counts = [0usize; 6];
        for index in 0..40 {
            let scene = render(0, 224, Split::Train, index).unwrap();
            assert_eq!(scene.image.dimensions(), (224, 224));
            let boxes = boxes(Split::Train, index);
            assert!((1..=5).contains(&boxes.len()), "image {index}: {boxes:?}");
            counts[boxes.len()] += 1;
            for (class, [x, y, w, h]) in &boxes {
                seen[*class] += 1;
                assert!(*w >= 1.0 && *h >= 1.0, "image {index}: {boxes:?}");
                assert!(*x >= 0.0 && *y >= 0.0 && x + w <= n && y + h <= n);
                assert!(x.fract() == 0.0 && y.fract() == 0.0 && w.fract() == 0.0);
                smallest = smallest.min(w.max(*h));
                largest = largest.max(w.max(*h));
            }
        }
        assert!(seen.iter().all(|&c| c > 0), "classes seen: {seen:?}");
        assert!(smallest <= 30.0 && largest >= 80.0, "{smallest}..{largest}");
        assert!(
            counts[1] > 0 && counts[3..].iter().sum::<usize>() > 0,
            "{counts:?}"
        );
    }

    /// Recomputes every object's visible pixels from the shapes alone, over the whole image,
    /// to catch bookkeeping slips in the patch-based computation the renderer uses.
    #[test]
    fn boxes_are_the_tight_boxes_of_the_visible_pixels() {
        let size = 224;
        for index in 0..8 {
            let scene = render(0, size as u32, Split::Train, index).unwrap();
            let geoms: Vec<&Geom> = scene.objects.iter().map(|o| &o.geom).collect();
            for (k, o) in scene.objects.iter().enumerate() {
                let mut b = [usize::MAX, usize::MAX, 0, 0];
                for y in 0..size {
                    for x in 0..size {
                        let p = [x as f32 + 0.5, y as f32 + 0.5];
                        let mut v = coverage(geoms[k].dist(p));
                        for later in &geoms[k + 1..] {
                            v *= 1.0 - coverage(later.dist(p));
                        }
                        if v >= 0.5 {
                            b = [b[0].min(x), b[1].min(y), b[2].max(x + 1), b[3].max(y + 1)];
                        }
                    }
                }
                let expect = [b[0], b[1], b[2] - b[0], b[3] - b[1]].map(|v| v as f64);
                assert_eq!(o.bbox, expect, "image {index} object {k}");
            }
        }
    }

    #[test]
    fn overlaps_are_limited() {
        for index in 0..40 {
            let boxes = boxes(Split::Val, index);
            for (i, a) in boxes.iter().enumerate() {
                for b in &boxes[i + 1..] {
                    let to =
                        |b: [f64; 4]| [b[0], b[1], b[0] + b[2], b[1] + b[3]].map(|v| v as usize);
                    // The limit is applied to full boxes; hiding only trims the lower one.
                    assert!(iou(to(a.1), to(b.1)) <= MAX_IOU, "val {index}: {boxes:?}");
                }
            }
        }
    }

    #[test]
    fn masks_lie_in_their_boxes_and_every_object_shows() {
        for index in 0..12 {
            let scene = render(0, 224, Split::Train, index).unwrap();
            let mask = scene.class_mask(0);
            let mut seen = vec![0usize; scene.objects.len()];
            for (k, o) in scene.objects.iter().enumerate() {
                let [x, y, w, h] = o.bbox.map(|v| v as u32);
                for (px, py, v) in mask.enumerate_pixels() {
                    let inside = px >= x && px < x + w && py >= y && py < y + h;
                    if v.0[0] == o.class as u8 + 1 && inside {
                        seen[k] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&n| n > 0), "image {index}: {seen:?}");
            let labelled = mask.pixels().filter(|p| p.0[0] != 0).count();
            assert!(labelled > 0 && labelled < 224 * 224, "image {index}");
            // No labelled pixel lies outside every box of its class.
            for (px, py, v) in mask.enumerate_pixels() {
                if v.0[0] == 0 {
                    continue;
                }
                assert!(scene.objects.iter().any(|o| {
                    let [x, y, w, h] = o.bbox;
                    o.class as u8 + 1 == v.0[0]
                        && (px as f64) >= x
                        && (px as f64) < x + w
                        && (py as f64) >= y
                        && (py as f64) < y + h
                }));
            }
        }
        assert!(render(0, 16, Split::Train, 0).is_err());
    }
}
