//! FCOS-style training targets: which ground-truth box (if any) each output location must
//! predict, its distances to the box sides and its centre-ness.
//!
//! A location is positive for a box when it lies inside the box, within 1.5 strides of the
//! box centre (FCOS "centre sampling", which keeps border locations that see mostly
//! background from being positives), and the box's size suits the location's pyramid level;
//! among several such boxes the smallest wins.

/// Where the detector's outputs sit in the input image.
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    /// The square input side in pixels.
    pub size: usize,
    /// One entry per pyramid level: (stride in pixels, grid height, grid width).
    pub levels: Vec<(f64, usize, usize)>,
}

impl Geometry {
    /// Three levels at half, one and two times the patch size, as a simple feature pyramid
    /// builds them from a ViT's single-scale map.
    pub fn new(size: usize, patch: usize) -> Self {
        let g = size / patch;
        let p = patch as f64;
        Self {
            size,
            levels: vec![(p / 2.0, 2 * g, 2 * g), (p, g, g), (2.0 * p, g / 2, g / 2)],
        }
    }

    /// All locations, level by level, row-major: (centre x, centre y, level).
    pub fn locations(&self) -> Vec<(f32, f32, usize)> {
        let mut out = Vec::with_capacity(self.len());
        for (l, &(s, h, w)) in self.levels.iter().enumerate() {
            for i in 0..h {
                for j in 0..w {
                    out.push((
                        ((j as f64 + 0.5) * s) as f32,
                        ((i as f64 + 0.5) * s) as f32,
                        l,
                    ));
                }
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.levels.iter().map(|(_, h, w)| h * w).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The range of the largest side distance `max(l, t, r, b)` that level `l` predicts:
    /// 4x the level's stride up to 4x the next one (FCOS uses 8x for its larger inputs).
    pub fn size_range(&self, level: usize) -> (f32, f32) {
        let lo = if level == 0 {
            0.0
        } else {
            4.0 * self.levels[level - 1].0 as f32
        };
        let hi = if level + 1 == self.levels.len() {
            f32::INFINITY
        } else {
            4.0 * self.levels[level].0 as f32
        };
        (lo, hi)
    }
}

/// The target of one location.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Assigned {
    pub class: usize,
    /// Distances to the left, top, right and bottom sides, in pixels.
    pub ltrb: [f32; 4],
    pub centerness: f32,
}

/// Targets for every location of `geometry` from boxes `(class, [x0, y0, x1, y1])`.
pub fn assign(geometry: &Geometry, boxes: &[(usize, [f32; 4])]) -> Vec<Option<Assigned>> {
    let mut out = vec![None; geometry.len()];
    for (k, &(cx, cy, level)) in geometry.locations().iter().enumerate() {
        let (lo, hi) = geometry.size_range(level);
        let radius = 1.5 * geometry.levels[level].0 as f32;
        let mut best: Option<(f32, Assigned)> = None;
        for &(class, [x0, y0, x1, y1]) in boxes {
            let ltrb = [cx - x0, cy - y0, x1 - cx, y1 - cy];
            if ltrb.iter().any(|&d| d <= 0.0) {
                continue;
            }
            let (bx, by) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
            if (cx - bx).abs() > radius || (cy - by).abs() > radius {
                continue;
            }
            let reach = ltrb.iter().copied().fold(0f32, f32::max);
            if reach < lo || reach > hi {
                continue;
            }
            let area = (x1 - x0) * (y1 - y0);
            if best.is_some_and(|(a, _)| a <= area) {
                continue;
            }
            let [l, t, r, b] = ltrb;
            let centerness = ((l.min(r) / l.max(r)) * (t.min(b) / t.max(b))).sqrt();
            best = Some((
                area,
                Assigned {
                    class,
                    ltrb,
                    centerness,
                },
            ));
        }
        out[k] = best.map(|(_, a)| a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_of_a_224_input_with_patch_14() {
        let g = Geometry::new(224, 14);
        assert_eq!(g.levels, vec![(7.0, 32, 32), (14.0, 16, 16), (28.0, 8, 8)]);
        assert_eq!(g.len(), 1024 + 256 + 64);
        assert_eq!(g.locations()[1], (10.5, 3.5, 0));
        assert_eq!(g.size_range(0), (0.0, 28.0));
        assert_eq!(g.size_range(1), (28.0, 56.0));
        assert_eq!(g.size_range(2).0, 56.0);
    }

    #[test]
    fn small_boxes_go_to_fine_levels_large_to_coarse_and_overlaps_to_the_smaller() {
        let g = Geometry::new(224, 14);
        let small = (1, [20.0, 20.0, 40.0, 40.0]);
        let large = (2, [100.0, 60.0, 220.0, 200.0]);
        let a = assign(&g, &[small, large]);
        let locs = g.locations();
        let pos: Vec<_> = a
            .iter()
            .zip(&locs)
            .filter_map(|(a, l)| a.map(|a| (a.class, l.2)))
            .collect();
        assert!(pos.iter().any(|&(c, l)| c == 1 && l == 0));
        assert!(
            pos.iter()
                .all(|&(c, l)| (c == 1 && l == 0) || (c == 2 && l == 2)),
            "{pos:?}"
        );
        // Positives stay near the centre.
        for (a, l) in a.iter().zip(&locs) {
            if let Some(a) = a {
                assert!(a.centerness > 0.0 && a.centerness <= 1.0);
                let s = g.levels[l.2].0 as f32;
                if a.class == 1 {
                    assert!((l.0 - 30.0).abs() <= 1.5 * s && (l.1 - 30.0).abs() <= 1.5 * s);
                }
            }
        }
        // A box inside another box claims the shared locations.
        let inner = (3, [140.0, 100.0, 180.0, 150.0]);
        let a = assign(&g, &[large, inner]);
        assert!(a.iter().flatten().any(|a| a.class == 3));
    }
}
