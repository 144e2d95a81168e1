//! What goes where: clutter that is none of the classes (strokes, curves, specks, arcs, small
//! irregular blobs, a few of them drawn over the objects) and the objects themselves, their
//! sizes log-uniform so that small ones are as common as large ones, placed so that no two
//! boxes overlap by more than [`MAX_IOU`] and the objects placed later hide, all together, at
//! most [`MAX_HIDDEN`] of an earlier one's coverage: every object stays plain to see.

use std::f32::consts::{PI, TAU};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::raster::{Geom, Patch, Pt};
use super::SHAPES;

/// A distractor: something that is none of the classes. Returns the shape and whether it is
/// drawn over the objects (a few thin strokes are, as real scenes have wires and twigs in
/// front of things).
pub(super) fn distractor(rng: &mut ChaCha8Rng, size: usize) -> (Geom, bool) {
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

pub(super) struct Object {
    pub(super) class: usize,
    pub(super) geom: Geom,
    pub(super) patch: Patch,
    /// Coverage still showing after the objects drawn over it, laid out like `patch.a`.
    pub(super) visible: Vec<f32>,
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

pub(super) fn iou(a: [usize; 4], b: [usize; 4]) -> f32 {
    let area = |b: [usize; 4]| ((b[2] - b[0]) * (b[3] - b[1])) as f32;
    let iw = a[2].min(b[2]).saturating_sub(a[0].max(b[0]));
    let ih = a[3].min(b[3]).saturating_sub(a[1].max(b[1]));
    let inter = (iw * ih) as f32;
    inter / (area(a) + area(b) - inter)
}

/// Largest share of an earlier object's pixels a later one may hide.
const MAX_HIDDEN: f32 = 0.4;
pub(super) const MAX_IOU: f32 = 0.4;

pub(super) fn place_objects(rng: &mut ChaCha8Rng, size: usize) -> Vec<Object> {
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
