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

use std::f32::consts::{PI, TAU};

use anyhow::{bail, Result};
use image::{GrayImage, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

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

type Pt = [f32; 2];

#[derive(Clone, Debug)]
enum Geom {
    Disc {
        c: Pt,
        r: f32,
    },
    /// Even-odd filled, so the twelve corners of a plus sign work as they are.
    Polygon(Vec<Pt>),
    /// At least two points.
    Stroke {
        pts: Vec<Pt>,
        half_width: f32,
    },
}

fn seg_dist(p: Pt, a: Pt, b: Pt) -> f32 {
    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
    let (px, py) = (p[0] - a[0], p[1] - a[1]);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        ((px * dx + py * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (px - t * dx).hypot(py - t * dy)
}

impl Geom {
    /// Signed distance from the outline, negative inside.
    fn dist(&self, p: Pt) -> f32 {
        match self {
            Geom::Disc { c, r } => (p[0] - c[0]).hypot(p[1] - c[1]) - r,
            Geom::Polygon(v) => {
                let mut d = f32::INFINITY;
                let mut inside = false;
                for (i, &a) in v.iter().enumerate() {
                    let b = v[(i + 1) % v.len()];
                    d = d.min(seg_dist(p, a, b));
                    if (a[1] > p[1]) != (b[1] > p[1]) {
                        let x = a[0] + (p[1] - a[1]) / (b[1] - a[1]) * (b[0] - a[0]);
                        if p[0] < x {
                            inside = !inside;
                        }
                    }
                }
                if inside {
                    -d
                } else {
                    d
                }
            }
            Geom::Stroke { pts, half_width } => {
                pts.windows(2)
                    .map(|w| seg_dist(p, w[0], w[1]))
                    .fold(f32::INFINITY, f32::min)
                    - half_width
            }
        }
    }

    /// `[x0, y0, x1, y1]` of the shape itself (no anti-aliasing margin).
    fn bounds(&self) -> [f32; 4] {
        let (pts, pad) = match self {
            Geom::Disc { c, r } => return [c[0] - r, c[1] - r, c[0] + r, c[1] + r],
            Geom::Polygon(v) => (v, 0.0),
            Geom::Stroke { pts, half_width } => (pts, *half_width),
        };
        let mut b = [
            f32::INFINITY,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
        ];
        for p in pts {
            b = [
                b[0].min(p[0]),
                b[1].min(p[1]),
                b[2].max(p[0]),
                b[3].max(p[1]),
            ];
        }
        [b[0] - pad, b[1] - pad, b[2] + pad, b[3] + pad]
    }

    fn shifted(self, d: Pt) -> Geom {
        let mv = |p: Pt| [p[0] + d[0], p[1] + d[1]];
        match self {
            Geom::Disc { c, r } => Geom::Disc { c: mv(c), r },
            Geom::Polygon(v) => Geom::Polygon(v.into_iter().map(mv).collect()),
            Geom::Stroke { pts, half_width } => Geom::Stroke {
                pts: pts.into_iter().map(mv).collect(),
                half_width,
            },
        }
    }
}

fn coverage(d: f32) -> f32 {
    (0.5 - d).clamp(0.0, 1.0)
}

/// Per-pixel coverage of one shape over the pixels it can touch.
struct Patch {
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
    a: Vec<f32>,
}

impl Patch {
    fn raster(g: &Geom, size: usize) -> Patch {
        let s = size as f32;
        let b = g.bounds();
        let x0 = (b[0] - 1.0).floor().clamp(0.0, s) as usize;
        let y0 = (b[1] - 1.0).floor().clamp(0.0, s) as usize;
        let x1 = (b[2] + 1.0).ceil().clamp(0.0, s) as usize;
        let y1 = (b[3] + 1.0).ceil().clamp(0.0, s) as usize;
        let (w, h) = (x1.saturating_sub(x0), y1.saturating_sub(y0));
        let mut a = Vec::with_capacity(w * h);
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                a.push(coverage(g.dist([x as f32 + 0.5, y as f32 + 0.5])));
            }
        }
        Patch { x0, y0, w, h, a }
    }

    fn get(&self, x: usize, y: usize) -> f32 {
        if x < self.x0 || y < self.y0 || x >= self.x0 + self.w || y >= self.y0 + self.h {
            return 0.0;
        }
        self.a[(y - self.y0) * self.w + (x - self.x0)]
    }

    /// `[x0, y0, x1, y1)` of the pixels whose `values` (laid out like `a`) are at least 1/2.
    fn tight_box(&self, values: &[f32]) -> Option<[usize; 4]> {
        let mut b: Option<[usize; 4]> = None;
        for j in 0..self.h {
            for i in 0..self.w {
                if values[j * self.w + i] >= 0.5 {
                    let (x, y) = (self.x0 + i, self.y0 + j);
                    b = Some(match b {
                        None => [x, y, x + 1, y + 1],
                        Some(b) => [b[0].min(x), b[1].min(y), b[2].max(x + 1), b[3].max(y + 1)],
                    });
                }
            }
        }
        b
    }
}

/// RGB in 0..255 as floats, so that blending does not lose precision until the end.
struct Canvas {
    size: usize,
    px: Vec<[f32; 3]>,
}

impl Canvas {
    fn paint(&mut self, p: &Patch, colour: impl Fn(usize, usize) -> [f32; 3]) {
        for j in 0..p.h {
            for i in 0..p.w {
                let a = p.a[j * p.w + i];
                if a <= 0.0 {
                    continue;
                }
                let (x, y) = (p.x0 + i, p.y0 + j);
                let c = colour(x, y);
                let px = &mut self.px[y * self.size + x];
                for k in 0..3 {
                    px[k] += (c[k] - px[k]) * a;
                }
            }
        }
    }

    fn mean_under(&self, p: &Patch) -> [f32; 3] {
        let (mut sum, mut weight) = ([0f32; 3], 0f32);
        for j in 0..p.h {
            for i in 0..p.w {
                let a = p.a[j * p.w + i];
                let px = self.px[(p.y0 + j) * self.size + p.x0 + i];
                for k in 0..3 {
                    sum[k] += px[k] * a;
                }
                weight += a;
            }
        }
        sum.map(|s| s / weight.max(1e-6))
    }
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let c = v * s;
    let hp = h.rem_euclid(360.0) / 60.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [(r + m) * 255.0, (g + m) * 255.0, (b + m) * 255.0]
}

fn lerp3(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [0, 1, 2].map(|k| a[k] + (b[k] - a[k]) * t)
}

/// Smooth random field on a `cells` x `cells` grid of random node values.
struct ValueNoise {
    cells: usize,
    nodes: Vec<[f32; 3]>,
}

impl ValueNoise {
    /// Mostly light/dark variation with a weaker colour tint, like stains and shadows.
    fn new(rng: &mut ChaCha8Rng, cells: usize, amp: f32) -> Self {
        let nodes = (0..(cells + 1) * (cells + 1))
            .map(|_| {
                let l = rng.random_range(-amp..amp);
                [0, 1, 2].map(|_| l + rng.random_range(-amp * 0.4..amp * 0.4))
            })
            .collect();
        ValueNoise { cells, nodes }
    }

    fn at(&self, u: f32, v: f32) -> [f32; 3] {
        let g = self.cells;
        let smooth = |t: f32| t * t * (3.0 - 2.0 * t);
        let (fx, fy) = (u * g as f32, v * g as f32);
        let (i, j) = ((fx as usize).min(g - 1), (fy as usize).min(g - 1));
        let (tx, ty) = (smooth(fx - i as f32), smooth(fy - j as f32));
        let n = |i: usize, j: usize| self.nodes[j * (g + 1) + i];
        let top = lerp3(n(i, j), n(i + 1, j), tx);
        let bottom = lerp3(n(i, j + 1), n(i + 1, j + 1), tx);
        lerp3(top, bottom, ty)
    }
}

fn background(rng: &mut ChaCha8Rng, size: usize) -> Canvas {
    let corners: [[f32; 3]; 4] = std::array::from_fn(|_| {
        hsv(
            rng.random_range(0.0..360.0),
            rng.random_range(0.05..0.6),
            rng.random_range(0.25..0.9),
        )
    });
    let cells = rng.random_range(3..=5);
    let amp = rng.random_range(20.0..45.0);
    let octaves = [
        ValueNoise::new(rng, cells, amp),
        ValueNoise::new(rng, cells * 3, amp * 0.5),
    ];
    let blobs: Vec<(Pt, f32, [f32; 3], f32)> = (0..rng.random_range(2..=5))
        .map(|_| {
            let s = size as f32;
            let c = [rng.random_range(0.0..s), rng.random_range(0.0..s)];
            let sigma = rng.random_range(0.04..0.18) * s;
            let colour = hsv(
                rng.random_range(0.0..360.0),
                rng.random_range(0.1..0.8),
                rng.random_range(0.2..1.0),
            );
            (c, sigma, colour, rng.random_range(0.2..0.6))
        })
        .collect();
    let mut px = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            let (u, v) = (
                (x as f32 + 0.5) / size as f32,
                (y as f32 + 0.5) / size as f32,
            );
            let mut c = lerp3(
                lerp3(corners[0], corners[1], u),
                lerp3(corners[2], corners[3], u),
                v,
            );
            for o in &octaves {
                let n = o.at(u, v);
                c = [0, 1, 2].map(|k| c[k] + n[k]);
            }
            for &(centre, sigma, colour, alpha) in &blobs {
                let (dx, dy) = (x as f32 + 0.5 - centre[0], y as f32 + 0.5 - centre[1]);
                let w = alpha * (-(dx * dx + dy * dy) / (2.0 * sigma * sigma)).exp();
                c = lerp3(c, colour, w);
            }
            px.push(c);
        }
    }
    Canvas { size, px }
}

/// A distractor: something that is none of the classes. Returns the shape and whether it is
/// drawn over the objects (a few thin strokes are, as real scenes have wires and twigs in
/// front of things).
fn distractor(rng: &mut ChaCha8Rng, size: usize) -> (Geom, bool) {
    let s = size as f32;
    let k = s / 224.0;
    let point = |rng: &mut ChaCha8Rng| [rng.random_range(0.0..s), rng.random_range(0.0..s)];
    match rng.random_range(0..5) {
        0 => {
            let mut p = point(rng);
            let mut angle = rng.random_range(0.0..TAU);
            let mut pts = vec![p];
            for _ in 0..rng.random_range(1..=2) {
                let len = rng.random_range(12.0..60.0) * k;
                p = [p[0] + len * angle.cos(), p[1] + len * angle.sin()];
                pts.push(p);
                angle += rng.random_range(-1.2..1.2);
            }
            let half_width = rng.random_range(0.5..1.2);
            (Geom::Stroke { pts, half_width }, rng.random_bool(0.15))
        }
        1 => {
            let p0 = point(rng);
            let mut off = |r: f32| {
                [
                    p0[0] + rng.random_range(-r..r) * k,
                    p0[1] + rng.random_range(-r..r) * k,
                ]
            };
            let (p1, p2) = (off(50.0), off(70.0));
            let pts = (0..=16)
                .map(|i| {
                    let t = i as f32 / 16.0;
                    let (a, b, c) = ((1.0 - t) * (1.0 - t), 2.0 * t * (1.0 - t), t * t);
                    [
                        a * p0[0] + b * p1[0] + c * p2[0],
                        a * p0[1] + b * p1[1] + c * p2[1],
                    ]
                })
                .collect();
            let half_width = rng.random_range(0.5..1.2);
            (Geom::Stroke { pts, half_width }, rng.random_bool(0.15))
        }
        2 => {
            let c = point(rng);
            let r = rng.random_range(1.0..3.0) * k.max(0.5);
            (Geom::Disc { c, r }, false)
        }
        3 => {
            // At most a little over half a turn, so an arc never reads as a circle.
            let c = point(rng);
            let r = rng.random_range(5.0..22.0) * k;
            let a0 = rng.random_range(0.0..TAU);
            let span = rng.random_range(0.8..3.5);
            let pts = (0..=12)
                .map(|i| {
                    let a = a0 + span * i as f32 / 12.0;
                    [c[0] + r * a.cos(), c[1] + r * a.sin()]
                })
                .collect();
            let half_width = rng.random_range(0.6..1.3);
            (Geom::Stroke { pts, half_width }, false)
        }
        _ => {
            // Under 12 pixels across, and irregular, so it is never mistaken for an object.
            let c = point(rng);
            let r = rng.random_range(2.5..5.5) * k.max(0.5);
            let n = rng.random_range(5..=8);
            let pts = (0..n)
                .map(|i| {
                    let a = TAU * i as f32 / n as f32 + rng.random_range(-0.3..0.3);
                    let ri = r * rng.random_range(0.45..1.0);
                    [c[0] + ri * a.cos(), c[1] + ri * a.sin()]
                })
                .collect();
            (Geom::Polygon(pts), false)
        }
    }
}

/// Category index `class` centred on the origin, its box side `side`.
fn object_shape(rng: &mut ChaCha8Rng, class: usize, side: f32) -> Geom {
    let unit: Vec<Pt> = match class {
        0 => {
            return Geom::Disc {
                c: [0.0, 0.0],
                r: side / 2.0,
            }
        }
        1 => vec![[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]],
        2 => {
            let squash = rng.random_range(0.8..1.2);
            (0..3)
                .map(|k| {
                    let t = -PI / 2.0 + k as f32 * TAU / 3.0;
                    [t.cos(), t.sin() * squash]
                })
                .collect()
        }
        _ => {
            let t = rng.random_range(0.22..0.4);
            vec![
                [t, 1.0],
                [t, t],
                [1.0, t],
                [1.0, -t],
                [t, -t],
                [t, -1.0],
                [-t, -1.0],
                [-t, -t],
                [-1.0, -t],
                [-1.0, t],
                [-t, t],
                [-t, 1.0],
            ]
        }
    };
    let (sin, cos) = rng.random_range(0.0..TAU).sin_cos();
    let turned = Geom::Polygon(
        unit.iter()
            .map(|p| [p[0] * cos - p[1] * sin, p[0] * sin + p[1] * cos])
            .collect(),
    );
    let b = turned.bounds();
    let scale = side / (b[2] - b[0]).max(b[3] - b[1]);
    let mid = [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0];
    let Geom::Polygon(v) = turned else {
        unreachable!()
    };
    Geom::Polygon(
        v.into_iter()
            .map(|p| [(p[0] - mid[0]) * scale, (p[1] - mid[1]) * scale])
            .collect(),
    )
}

struct Object {
    class: usize,
    geom: Geom,
    patch: Patch,
    /// Coverage still showing after the objects drawn over it, laid out like `patch.a`.
    visible: Vec<f32>,
    full_area: f32,
    full_box: [usize; 4],
}

impl Object {
    fn visible_after(&self, over: &Patch) -> f32 {
        let p = &self.patch;
        let mut sum = 0.0;
        for j in 0..p.h {
            for i in 0..p.w {
                sum += self.visible[j * p.w + i] * (1.0 - over.get(p.x0 + i, p.y0 + j));
            }
        }
        sum
    }

    fn cover(&mut self, over: &Patch) {
        let p = &self.patch;
        for j in 0..p.h {
            for i in 0..p.w {
                self.visible[j * p.w + i] *= 1.0 - over.get(p.x0 + i, p.y0 + j);
            }
        }
    }
}

fn iou(a: [usize; 4], b: [usize; 4]) -> f32 {
    let area = |b: [usize; 4]| ((b[2] - b[0]) * (b[3] - b[1])) as f32;
    let iw = a[2].min(b[2]).saturating_sub(a[0].max(b[0]));
    let ih = a[3].min(b[3]).saturating_sub(a[1].max(b[1]));
    let inter = (iw * ih) as f32;
    inter / (area(a) + area(b) - inter)
}

/// Largest share of an earlier object's pixels a later one may hide.
const MAX_HIDDEN: f32 = 0.4;
const MAX_IOU: f32 = 0.4;

fn place_objects(rng: &mut ChaCha8Rng, size: usize) -> Vec<Object> {
    let s = size as f32;
    let k = s / 224.0;
    // Log-uniform, so that small objects (COCO "small") are as common as large ones.
    let (lo, hi) = ((18.0 * k).ln(), (100.0 * k).min(s - 4.0).ln());
    let mut objects: Vec<Object> = Vec::new();
    for _ in 0..rng.random_range(1..=5) {
        for _attempt in 0..30 {
            let class = rng.random_range(0..SHAPES.len());
            let side = rng.random_range(lo..hi).exp();
            let shape = object_shape(rng, class, side);
            let b = shape.bounds();
            // Whole pixels of margin, so no edge pixel of the shape is cut by the border.
            let dx = rng.random_range(1.0 - b[0]..=s - 1.0 - b[2]);
            let dy = rng.random_range(1.0 - b[1]..=s - 1.0 - b[3]);
            let geom = shape.shifted([dx, dy]);
            let patch = Patch::raster(&geom, size);
            let Some(full_box) = patch.tight_box(&patch.a) else {
                continue;
            };
            if objects.iter().any(|o| iou(o.full_box, full_box) > MAX_IOU) {
                continue;
            }
            if objects
                .iter()
                .any(|o| o.visible_after(&patch) < (1.0 - MAX_HIDDEN) * o.full_area)
            {
                continue;
            }
            for o in &mut objects {
                o.cover(&patch);
            }
            objects.push(Object {
                class,
                geom,
                full_area: patch.a.iter().sum(),
                visible: patch.a.clone(),
                patch,
                full_box,
            });
            break;
        }
    }
    objects
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
