//! The built-in detection demo set, "shapes": circles, squares, triangles and crosses on
//! textured, cluttered backgrounds, generated from a seed so that no download is needed.
//!
//! Every image draws from its own random stream (seed, split, index), so an image is the same
//! whatever the thread count or the order the images are made in. Shapes are rasterised with a
//! signed distance per pixel centre (coverage `0.5 - d`, clamped, which anti-aliases edges), and
//! each box is the tight box of the pixels its object still shows in the finished image (coverage
//! at least one half after later objects are drawn over it), so boxes are exact rather than taken
//! from the shape's nominal geometry.

use std::f32::consts::{PI, TAU};
use std::fs::{self, File};
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{ImageFormat, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{coco, Annotation, Category, DetectionSet, ImageRecord};

const CLASSES: [&str; 4] = ["circle", "square", "triangle", "cross"];

/// Changes whenever the pictures change, so that sets on disk from an older generator are
/// rebuilt instead of silently mixing with new ones.
const GENERATOR: u32 = 1;

const MARKER: &str = ".complete";

/// Everything `ensure` may find in its folder; anything else means the folder is not ours.
const OWN_NAMES: [&str; 5] = ["train", "val", "train.json", "val.json", MARKER];

/// Below this the size ranges of objects and clutter (scaled from 224) collapse.
const MIN_SIZE: u32 = 48;

/// Sizes of the built-in set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthSpec {
    pub train: usize,
    pub val: usize,
    pub seed: u64,
    /// Side of the square images, in pixels.
    pub size: u32,
}

impl Default for SynthSpec {
    fn default() -> Self {
        Self {
            train: 320,
            val: 80,
            seed: 0,
            size: 224,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

pub fn categories() -> Vec<Category> {
    CLASSES
        .iter()
        .enumerate()
        .map(|(i, name)| Category {
            id: i as u64 + 1,
            name: name.to_string(),
        })
        .collect()
}

#[derive(Serialize, Deserialize, PartialEq)]
struct Marker {
    generator: u32,
    spec: SynthSpec,
}

fn read_marker(dir: &Path) -> Option<Marker> {
    let text = fs::read_to_string(dir.join(MARKER)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes (if not already complete) `dir/train/*.png`, `dir/val/*.png`, `dir/train.json`,
/// `dir/val.json` (COCO, file names relative to `dir`) and the marker `dir/.complete` holding
/// the spec; if the marker already holds this spec, does nothing. Returns the paths of
/// train.json and val.json.
///
/// The set is built in the sibling folder `<dir>.partial` and renamed into place, so `dir`
/// is either absent, a previous complete set, or the new complete set; an interrupted run
/// leaves only the partial folder, which the next call removes. Two processes must not build
/// the same folder at the same time. An existing `dir` is replaced only if it holds nothing
/// but what this function writes.
pub fn ensure(dir: &Path, spec: &SynthSpec) -> Result<(PathBuf, PathBuf)> {
    let paths = (dir.join("train.json"), dir.join("val.json"));
    let marker = Marker {
        generator: GENERATOR,
        spec: spec.clone(),
    };
    if read_marker(dir).as_ref() == Some(&marker) && paths.0.is_file() && paths.1.is_file() {
        return Ok(paths);
    }
    if spec.size < MIN_SIZE {
        bail!(
            "synthetic images must be at least {MIN_SIZE} pixels wide, not {}",
            spec.size
        );
    }
    let name = dir
        .file_name()
        .with_context(|| format!("{}: not a usable folder name", dir.display()))?;
    let partial = dir.with_file_name(format!("{}.partial", name.to_string_lossy()));
    remove_any(&partial)?;
    if dir.exists() {
        check_replaceable(dir)?;
    }
    if let Err(e) = build(&partial, spec, &marker) {
        fs::remove_dir_all(&partial).ok();
        return Err(e.context(format!(
            "generating the synthetic set in {}",
            partial.display()
        )));
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing the old {}", dir.display()))?;
    }
    fs::rename(&partial, dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    // The rename must reach the disk for the set to count as written.
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(d) = File::open(parent) {
        d.sync_all().ok();
    }
    Ok(paths)
}

fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => return Ok(()),
    }
    .with_context(|| format!("removing the stale {}", path.display()))
}

fn check_replaceable(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "{} exists and is not a folder; refusing to replace it with the synthetic set",
            dir.display()
        );
    }
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name();
        if !OWN_NAMES.iter().any(|own| name == *own) {
            bail!(
                "{} holds `{}`, which the synthetic set did not write; refusing to replace it",
                dir.display(),
                name.to_string_lossy()
            );
        }
    }
    Ok(())
}

fn build(root: &Path, spec: &SynthSpec, marker: &Marker) -> Result<()> {
    for (split, count) in [(Split::Train, spec.train), (Split::Val, spec.val)] {
        let folder = root.join(split.name());
        fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
        let boxes: Vec<Vec<(u64, [f64; 4])>> = (0..count)
            .into_par_iter()
            .map(|index| -> Result<_> {
                let (img, boxes) = render(spec, split, index);
                write_png(&root.join(file_name(split, index)), &img)?;
                Ok(boxes)
            })
            .collect::<Result<_>>()?;
        if let Ok(d) = File::open(&folder) {
            d.sync_all().ok();
        }
        let mut annotations = Vec::new();
        let mut images = Vec::with_capacity(count);
        for (index, objects) in boxes.into_iter().enumerate() {
            let image_id = index as u64 + 1;
            images.push(ImageRecord {
                id: image_id,
                file_name: file_name(split, index),
                width: spec.size,
                height: spec.size,
            });
            for (category_id, bbox) in objects {
                annotations.push(Annotation::from_box(
                    annotations.len() as u64 + 1,
                    image_id,
                    category_id,
                    bbox,
                    false,
                ));
            }
        }
        let json = root.join(format!("{}.json", split.name()));
        let set = DetectionSet {
            root: root.to_path_buf(),
            source: json.clone(),
            images,
            annotations,
            categories: categories(),
            clipped: 0,
            image_sources: Default::default(),
        };
        coco::save(&set, &json)?;
    }
    // Written last: a folder holding the marker holds everything else.
    downstream_core::atomic::write(
        &root.join(MARKER),
        serde_json::to_string_pretty(marker)?.as_bytes(),
    )
}

fn file_name(split: Split, index: usize) -> String {
    format!("{}/{index:06}.png", split.name())
}

/// Synced, so that a set renamed into place is on disk and not just in the page cache.
fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)?;
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// One image and its objects as (category id, COCO `[x, y, w, h]`), in drawing order.
///
/// Panics if `spec.size` is below the minimum that [`ensure`] accepts.
pub fn render(spec: &SynthSpec, split: Split, index: usize) -> (RgbImage, Vec<(u64, [f64; 4])>) {
    let scene = render_scene(spec, split, index);
    (scene.image, scene.boxes)
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
    category: u64,
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
            let class = rng.random_range(0..CLASSES.len());
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
                category: class as u64 + 1,
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

struct Scene {
    image: RgbImage,
    boxes: Vec<(u64, [f64; 4])>,
    #[cfg_attr(not(test), allow(dead_code))]
    geoms: Vec<Geom>,
}

fn render_scene(spec: &SynthSpec, split: Split, index: usize) -> Scene {
    assert!(
        spec.size >= MIN_SIZE,
        "synthetic images must be at least {MIN_SIZE} pixels wide"
    );
    let size = spec.size as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
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
    let mut image = RgbImage::new(spec.size, spec.size);
    for (out, px) in image.pixels_mut().zip(&canvas.px) {
        for (o, &c) in out.0.iter_mut().zip(px) {
            // Three uniforms sum to a near-Gaussian with standard deviation 1/2.
            let n: f32 = rng.random::<f32>() + rng.random::<f32>() + rng.random::<f32>() - 1.5;
            *o = (c + 2.0 * sigma * n).round().clamp(0.0, 255.0) as u8;
        }
    }

    let mut boxes = Vec::with_capacity(objects.len());
    let mut geoms = Vec::with_capacity(objects.len());
    for o in objects {
        // Placement keeps most of every object visible, so this always finds pixels.
        if let Some(b) = o.patch.tight_box(&o.visible) {
            let [x0, y0, x1, y1] = b.map(|v| v as f64);
            boxes.push((o.category, [x0, y0, x1 - x0, y1 - y0]));
            geoms.push(o.geom);
        }
    }
    Scene {
        image,
        boxes,
        geoms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SynthSpec {
        SynthSpec::default()
    }

    #[test]
    fn an_image_renders_identically_every_time_and_splits_differ() {
        let s = spec();
        let a = render(&s, Split::Train, 3);
        let b = render(&s, Split::Train, 3);
        assert_eq!(a.0.as_raw(), b.0.as_raw());
        assert_eq!(a.1, b.1);
        let train0 = render(&s, Split::Train, 0);
        let val0 = render(&s, Split::Val, 0);
        assert_ne!(train0.0.as_raw(), val0.0.as_raw());
        let other_seed = render(
            &SynthSpec {
                seed: 1,
                ..s.clone()
            },
            Split::Train,
            0,
        );
        assert_ne!(train0.0.as_raw(), other_seed.0.as_raw());
        // Rendering in parallel, in whatever order threads pick, gives the same pictures.
        let parallel: Vec<_> = (0..8)
            .into_par_iter()
            .rev()
            .map(|i| render(&s, Split::Val, i))
            .collect();
        for (i, (img, boxes)) in parallel.iter().rev().enumerate() {
            let (serial, serial_boxes) = render(&s, Split::Val, i);
            assert_eq!(img.as_raw(), serial.as_raw(), "val image {i}");
            assert_eq!(boxes, &serial_boxes, "val image {i}");
        }
    }

    #[test]
    fn boxes_are_valid_and_classes_and_sizes_vary() {
        let s = spec();
        let n = s.size as f64;
        let mut seen = [0usize; 4];
        let (mut smallest, mut largest) = (f64::INFINITY, 0f64);
        let mut counts = [0usize; 6];
        for index in 0..40 {
            let (img, boxes) = render(&s, Split::Train, index);
            assert_eq!(img.dimensions(), (s.size, s.size));
            assert!((1..=5).contains(&boxes.len()), "image {index}: {boxes:?}");
            counts[boxes.len()] += 1;
            for (cat, [x, y, w, h]) in &boxes {
                assert!((1..=4).contains(cat));
                seen[*cat as usize - 1] += 1;
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
        let s = spec();
        let size = s.size as usize;
        for index in 0..8 {
            let scene = render_scene(&s, Split::Train, index);
            assert_eq!(scene.boxes.len(), scene.geoms.len());
            for (k, (_, bbox)) in scene.boxes.iter().enumerate() {
                let mut b = [usize::MAX, usize::MAX, 0, 0];
                for y in 0..size {
                    for x in 0..size {
                        let p = [x as f32 + 0.5, y as f32 + 0.5];
                        let mut v = coverage(scene.geoms[k].dist(p));
                        for later in &scene.geoms[k + 1..] {
                            v *= 1.0 - coverage(later.dist(p));
                        }
                        if v >= 0.5 {
                            b = [b[0].min(x), b[1].min(y), b[2].max(x + 1), b[3].max(y + 1)];
                        }
                    }
                }
                let expect = [b[0], b[1], b[2] - b[0], b[3] - b[1]].map(|v| v as f64);
                assert_eq!(*bbox, expect, "image {index} object {k}");
            }
        }
    }

    #[test]
    fn overlaps_are_limited() {
        let s = spec();
        for index in 0..40 {
            let (_, boxes) = render(&s, Split::Val, index);
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

    fn mtime(p: &Path) -> std::time::SystemTime {
        fs::metadata(p).unwrap().modified().unwrap()
    }

    #[test]
    fn ensure_writes_a_loadable_set_once_and_cleans_a_stale_partial() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shapes");
        let partial = tmp.path().join("shapes.partial");
        fs::create_dir_all(partial.join("train")).unwrap();
        fs::write(partial.join("train/000000.png"), b"half-written").unwrap();
        let small = SynthSpec {
            train: 6,
            val: 3,
            seed: 5,
            size: 224,
        };
        let (train_json, val_json) = ensure(&dir, &small).unwrap();
        assert!(!partial.exists());
        assert_eq!(train_json, dir.join("train.json"));
        let train = coco::load(&train_json, None).unwrap();
        let val = coco::load(&val_json, None).unwrap();
        assert_eq!((train.images.len(), val.images.len()), (6, 3));
        assert_eq!(train.categories, categories());
        assert_eq!(train.clipped, 0);
        assert_eq!(train.images[2].file_name, "train/000002.png");
        let per_image = train.by_image();
        for im in &train.images {
            let anns = &per_image[&im.id];
            assert!((1..=5).contains(&anns.len()));
            let index = (im.id - 1) as usize;
            let (_, boxes) = render(&small, Split::Train, index);
            let written: Vec<_> = anns.iter().map(|a| (a.category_id, a.bbox)).collect();
            assert_eq!(written, boxes);
            assert!(anns
                .iter()
                .all(|a| a.area == a.bbox[2] * a.bbox[3] && !a.iscrowd));
        }
        let (img, _) = render(&small, Split::Val, 1);
        let on_disk = image::open(dir.join("val/000001.png")).unwrap().to_rgb8();
        assert_eq!(on_disk.as_raw(), img.as_raw());

        let watched = [
            train_json.clone(),
            val_json.clone(),
            dir.join(MARKER),
            dir.join("train/000000.png"),
        ];
        let before: Vec<_> = watched.iter().map(|p| mtime(p)).collect();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(ensure(&dir, &small).unwrap(), (train_json, val_json));
        let after: Vec<_> = watched.iter().map(|p| mtime(p)).collect();
        assert_eq!(before, after);
        assert!(!partial.exists());
    }

    #[test]
    fn ensure_rebuilds_for_a_new_spec_and_leaves_foreign_folders_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shapes");
        let mut small = SynthSpec {
            train: 2,
            val: 1,
            seed: 0,
            size: 96,
        };
        ensure(&dir, &small).unwrap();
        small.val = 3;
        let (_, val_json) = ensure(&dir, &small).unwrap();
        assert_eq!(coco::load(&val_json, None).unwrap().images.len(), 3);
        let marker: Marker =
            serde_json::from_str(&fs::read_to_string(dir.join(MARKER)).unwrap()).unwrap();
        assert!(marker.spec == small && marker.generator == GENERATOR);

        let foreign = tmp.path().join("mine");
        fs::create_dir_all(&foreign).unwrap();
        fs::write(foreign.join("notes.txt"), b"keep me").unwrap();
        let err = ensure(&foreign, &small).unwrap_err();
        assert!(format!("{err:#}").contains("notes.txt"), "{err:#}");
        assert_eq!(fs::read(foreign.join("notes.txt")).unwrap(), b"keep me");
        assert!(ensure(&tmp.path().join("tiny"), &SynthSpec { size: 16, ..small }).is_err());
    }
}
