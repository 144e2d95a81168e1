//! Shapes to pixels: a shape is a signed distance from its outline (negative inside), and a
//! pixel's coverage is `0.5 - d` at its centre, clamped to [0, 1], which anti-aliases edges
//! without supersampling. Coverage is kept per shape over the pixels it can touch (a
//! [`Patch`]), so that what later shapes hide of earlier ones, and each object's tight box, are
//! computed from the same numbers that paint the image. The [`Canvas`] keeps RGB as floats,
//! so that blending each shape in by its coverage loses no precision until the image is
//! written.

pub(super) type Pt = [f32; 2];

#[derive(Clone, Debug)]
pub(super) enum Geom {
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
    pub(super) fn dist(&self, p: Pt) -> f32 {
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
    pub(super) fn bounds(&self) -> [f32; 4] {
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

    pub(super) fn shifted(self, d: Pt) -> Geom {
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

pub(super) fn coverage(d: f32) -> f32 {
    (0.5 - d).clamp(0.0, 1.0)
}

/// Per-pixel coverage of one shape over the pixels it can touch.
pub(super) struct Patch {
    pub(super) x0: usize,
    pub(super) y0: usize,
    pub(super) w: usize,
    pub(super) h: usize,
    pub(super) a: Vec<f32>,
}

impl Patch {
    pub(super) fn raster(g: &Geom, size: usize) -> Patch {
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

    pub(super) fn get(&self, x: usize, y: usize) -> f32 {
        if x < self.x0 || y < self.y0 || x >= self.x0 + self.w || y >= self.y0 + self.h {
            return 0.0;
        }
        self.a[(y - self.y0) * self.w + (x - self.x0)]
    }

    /// `[x0, y0, x1, y1)` of the pixels whose `values` (laid out like `a`) are at least 1/2.
    pub(super) fn tight_box(&self, values: &[f32]) -> Option<[usize; 4]> {
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
pub(super) struct Canvas {
    pub(super) size: usize,
    pub(super) px: Vec<[f32; 3]>,
}

impl Canvas {
    pub(super) fn paint(&mut self, p: &Patch, colour: impl Fn(usize, usize) -> [f32; 3]) {
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

    pub(super) fn mean_under(&self, p: &Patch) -> [f32; 3] {
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
