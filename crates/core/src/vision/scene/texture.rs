//! The backgrounds objects are found on: a colour gradient between four corners, two octaves
//! of smooth value noise (stains and shadows, mostly light and dark) and a few soft blobs of
//! colour, so that no fixed colour or flat area gives the objects away. Colours are drawn in
//! HSV ([`hsv`]), where saturation and brightness can be bounded directly; the scene draws
//! its objects' and clutter's colours the same way.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::raster::{Canvas, Pt};

pub(super) fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
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

pub(super) fn background(rng: &mut ChaCha8Rng, size: usize) -> Canvas {
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
