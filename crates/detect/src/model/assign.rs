//! Training targets: which ground-truth box (if any) each output location must predict, its
//! distances to the box sides and its centre-ness. Two rules choose the positives:
//!
//! - FCOS (the default): a location is positive for a box when it lies inside the box, within
//!   1.5 strides of the box centre (FCOS "centre sampling", which keeps border locations that
//!   see mostly background from being positives), and the box's size suits the location's
//!   pyramid level; among several such boxes the smallest wins. The fixed size ranges split a
//!   box whose size lies near a boundary between two levels by where each location sits.
//! - ATSS (Zhang et al. 2020, "Bridging the gap between anchor-based and anchor-free
//!   detection"): for each box, the 9 locations of each level nearest its centre are
//!   candidates, each with a square of 8 strides centred on it (the paper's anchor; the
//!   largest box FCOS's ranges give the level). The box's own threshold is the mean plus the
//!   standard deviation of those squares' IoUs with the box, and the candidates inside the
//!   box at or above it are positives: each box picks its level(s) and count from its own
//!   statistics instead of fixed ranges. A location claimed by several boxes takes the one it
//!   overlaps most. One change to the paper's rule: where no candidate inside the box
//!   reaches the threshold, those at the mean or above are positives (or, if none, the best
//!   one). With three levels this happens to every box whose size lies between two levels'
//!   squares (about 7% of DeepForest's training crowns at 336 pixels, those near 80 and 155
//!   pixels): its candidates on both levels overlap it about equally, and the spread lifts
//!   the threshold above all of them, where the paper's five levels would leave it below;
//!   the paper's rule leaves such a box without a positive, unlearnt. A box with no
//!   candidate inside it (one thinner than a stride) still has none, as under FCOS's rule.

use super::postprocess::iou;

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

/// The rule that chooses each box's positive locations (see the module's opening).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Assigner {
    #[default]
    Fcos,
    Atss,
}

impl std::str::FromStr for Assigner {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fcos" => Ok(Assigner::Fcos),
            "atss" => Ok(Assigner::Atss),
            _ => Err(format!("unknown assigner `{s}`: fcos or atss")),
        }
    }
}

impl Assigner {
    /// Targets for every location of `geometry` from boxes `(class, [x0, y0, x1, y1])`.
    pub fn assign(self, geometry: &Geometry, boxes: &[(usize, [f32; 4])]) -> Vec<Option<Assigned>> {
        match self {
            Assigner::Fcos => fcos(geometry, boxes),
            Assigner::Atss => atss(geometry, boxes),
        }
    }
}

/// The target of a location at `(cx, cy)` for a box, if the location lies inside it.
fn target(class: usize, (cx, cy): (f32, f32), [x0, y0, x1, y1]: [f32; 4]) -> Option<Assigned> {
    let ltrb = [cx - x0, cy - y0, x1 - cx, y1 - cy];
    if ltrb.iter().any(|&d| d <= 0.0) {
        return None;
    }
    let [l, t, r, b] = ltrb;
    let centerness = ((l.min(r) / l.max(r)) * (t.min(b) / t.max(b))).sqrt();
    Some(Assigned {
        class,
        ltrb,
        centerness,
    })
}

fn fcos(geometry: &Geometry, boxes: &[(usize, [f32; 4])]) -> Vec<Option<Assigned>> {
    let mut out = vec![None; geometry.len()];
    for (k, &(cx, cy, level)) in geometry.locations().iter().enumerate() {
        let (lo, hi) = geometry.size_range(level);
        let radius = 1.5 * geometry.levels[level].0 as f32;
        let mut best: Option<(f32, Assigned)> = None;
        for &(class, b) in boxes {
            let Some(a) = target(class, (cx, cy), b) else {
                continue;
            };
            let [x0, y0, x1, y1] = b;
            let (bx, by) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
            if (cx - bx).abs() > radius || (cy - by).abs() > radius {
                continue;
            }
            let reach = a.ltrb.iter().copied().fold(0f32, f32::max);
            if reach < lo || reach > hi {
                continue;
            }
            let area = (x1 - x0) * (y1 - y0);
            if best.is_some_and(|(smallest, _)| smallest <= area) {
                continue;
            }
            best = Some((area, a));
        }
        out[k] = best.map(|(_, a)| a);
    }
    out
}

/// Candidates per level and box (ATSS's k).
const ATSS_CANDIDATES: usize = 9;

fn atss(geometry: &Geometry, boxes: &[(usize, [f32; 4])]) -> Vec<Option<Assigned>> {
    let locations = geometry.locations();
    let mut starts = Vec::with_capacity(geometry.levels.len());
    let mut start = 0;
    for &(_, h, w) in &geometry.levels {
        starts.push(start);
        start += h * w;
    }
    // Per location: the IoU of the box it holds, so that a better-overlapping box replaces it.
    let mut out: Vec<Option<(f32, Assigned)>> = vec![None; locations.len()];
    for &(class, b) in boxes {
        let (bx, by) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
        let nearest = |x: &(f32, usize), y: &(f32, usize)| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1));
        // (location, squared distance to the box centre, IoU of its square with the box)
        let mut candidates: Vec<(usize, f32, f32)> = Vec::new();
        for (level, &(stride, h, w)) in geometry.levels.iter().enumerate() {
            let mut near: Vec<(f32, usize)> = (starts[level]..starts[level] + h * w)
                .map(|k| {
                    let (cx, cy, _) = locations[k];
                    ((cx - bx).powi(2) + (cy - by).powi(2), k)
                })
                .collect();
            if near.len() > ATSS_CANDIDATES {
                near.select_nth_unstable_by(ATSS_CANDIDATES - 1, nearest);
                near.truncate(ATSS_CANDIDATES);
            }
            let half = 4.0 * stride as f32;
            for (d, k) in near {
                let (cx, cy, _) = locations[k];
                let square = [cx - half, cy - half, cx + half, cy + half];
                candidates.push((k, d, iou(&square, &b)));
            }
        }
        if candidates.is_empty() {
            continue;
        }
        let n = candidates.len() as f32;
        let mean = candidates.iter().map(|c| c.2).sum::<f32>() / n;
        let var = candidates.iter().map(|c| (c.2 - mean).powi(2)).sum::<f32>() / (n - 1.0).max(1.0);
        // Candidates whose location lies inside the box, best overlap first (ties: nearest
        // the centre, where the centre-ness is highest).
        let mut inside: Vec<(usize, f32, f32, Assigned)> = candidates
            .into_iter()
            .filter_map(|(k, d, overlap)| {
                let (cx, cy, _) = locations[k];
                target(class, (cx, cy), b).map(|a| (k, d, overlap, a))
            })
            .collect();
        inside.sort_by(|x, y| y.2.total_cmp(&x.2).then(nearest(&(x.1, x.0), &(y.1, y.0))));
        let reaching = |t: f32| inside.iter().filter(|c| c.2 >= t).count();
        let positives = match reaching(mean + var.sqrt()) {
            0 => reaching(mean).max(1),
            n => n,
        };
        for &(k, _, overlap, a) in inside.iter().take(positives) {
            if out[k].is_none_or(|(held, _)| held < overlap) {
                out[k] = Some((overlap, a));
            }
        }
    }
    out.into_iter().map(|o| o.map(|(_, a)| a)).collect()
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
        let a = Assigner::Fcos.assign(&g, &[small, large]);
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
        let a = Assigner::Fcos.assign(&g, &[large, inner]);
        assert!(a.iter().flatten().any(|a| a.class == 3));
    }

    /// The positive locations of `a` as (location index, class).
    fn positives(a: &[Option<Assigned>]) -> Vec<(usize, usize)> {
        a.iter()
            .enumerate()
            .filter_map(|(k, a)| a.map(|a| (k, a.class)))
            .collect()
    }

    #[test]
    fn atss_picks_the_level_whose_squares_fit_the_box() {
        let g = Geometry::new(224, 14);
        let locs = g.locations();
        // Level 0's squares are 56 pixels, level 1's 112: a 20-pixel box overlaps the first
        // most, a 110-pixel box the second.
        let small = (0, [100.0, 100.0, 120.0, 120.0]);
        let large = (1, [50.0, 40.0, 160.0, 150.0]);
        for (b, level, count) in [(small, 0, Some(9)), (large, 1, None)] {
            let a = Assigner::Atss.assign(&g, &[b]);
            let pos = positives(&a);
            assert!(!pos.is_empty(), "{b:?}");
            if let Some(n) = count {
                // All nine candidates of level 0 hold the whole box and lie inside it.
                assert_eq!(pos.len(), n, "{pos:?}");
            } else {
                // Only the best-placed of level 1's squares pass: not all nine.
                assert!(pos.len() < 9, "{pos:?}");
            }
            let [x0, y0, x1, y1] = b.1;
            for &(k, class) in &pos {
                let (cx, cy, l) = locs[k];
                assert_eq!((l, class), (level, b.0));
                let t = a[k].unwrap();
                assert_eq!(t.ltrb, [cx - x0, cy - y0, x1 - cx, y1 - cy]);
                assert!(t.ltrb.iter().all(|&d| d > 0.0));
            }
        }
        // Together, each keeps its own positives.
        let a = Assigner::Atss.assign(&g, &[large, small]);
        let classes: Vec<usize> = positives(&a).iter().map(|p| p.1).collect();
        assert!(classes.contains(&0) && classes.contains(&1));
    }

    /// The number of positives of `a` on each of three levels.
    fn per_level(a: &[Option<Assigned>], locs: &[(f32, f32, usize)]) -> [usize; 3] {
        let mut n = [0; 3];
        for (k, _) in positives(a) {
            n[locs[k].2] += 1;
        }
        n
    }

    #[test]
    fn atss_falls_back_to_the_mean_for_a_box_between_two_levels() {
        let g = Geometry::new(224, 14);
        let locs = g.locations();
        // An 80-pixel box overlaps level 0's 56-pixel squares by 0.49 and level 1's 112-pixel
        // ones by 0.48 to 0.51; level 2's are far larger, and the spread puts the threshold
        // (0.54) above every candidate. At the mean (0.37), all nine of each of the two levels.
        let b = (0, [70.0, 70.0, 150.0, 150.0]);
        assert_eq!(
            per_level(&Assigner::Atss.assign(&g, &[b]), &locs),
            [9, 9, 0]
        );
    }

    #[test]
    fn atss_keeps_only_candidates_inside_the_box_and_else_the_best_nearest_the_centre() {
        let g = Geometry::new(224, 14);
        let locs = g.locations();
        // A box 4 pixels wide: level 0's squares pass the threshold in three columns, but only
        // the column at x = 101.5 lies inside the box.
        let thin = (0, [100.0, 60.0, 104.0, 160.0]);
        let pos = positives(&Assigner::Atss.assign(&g, &[thin]));
        assert_eq!(pos.len(), 3, "{pos:?}");
        assert!(pos
            .iter()
            .all(|&(k, _)| locs[k].0 == 101.5 && locs[k].2 == 0));
        // A box 4 pixels high: every candidate that passes lies outside it; of those inside,
        // three of level 2 tie in overlap, and the one nearest the centre (110, 98) is kept.
        let flat = (0, [60.0, 96.0, 160.0, 100.0]);
        let pos = positives(&Assigner::Atss.assign(&g, &[flat]));
        assert_eq!(pos.len(), 1, "{pos:?}");
        assert_eq!(locs[pos[0].0], (98.0, 98.0, 2));
    }

    #[test]
    fn atss_gives_a_shared_location_to_the_box_its_square_overlaps_most() {
        let g = Geometry::new(224, 14);
        let locs = g.locations();
        let at = |x: f32, y: f32| {
            locs.iter()
                .position(|&(cx, cy, l)| l == 0 && cx == x && cy == y)
                .unwrap()
        };
        // Both boxes lie inside the 56-pixel squares of level 0 near them, so a square's IoU
        // is the box's area over the square's: the 30-pixel box wins where both are candidates.
        let a20 = (0, [100.0, 100.0, 120.0, 120.0]);
        let b30 = (1, [105.0, 105.0, 135.0, 135.0]);
        for boxes in [[a20, b30], [b30, a20]] {
            let a = Assigner::Atss.assign(&g, &boxes);
            assert_eq!(a[at(115.5, 115.5)].unwrap().class, 1);
            // 108.5 is not among the 30-pixel box's nearest locations (115.5, 122.5, 129.5).
            assert_eq!(a[at(108.5, 108.5)].unwrap().class, 0);
        }
        // FCOS gives shared locations to the smaller box instead.
        let f = Assigner::Fcos.assign(&g, &[b30, a20]);
        assert_eq!(f[at(115.5, 115.5)].unwrap().class, 0);
    }

    #[test]
    fn assigners_parse_from_their_names() {
        assert_eq!("atss".parse::<Assigner>(), Ok(Assigner::Atss));
        assert_eq!("fcos".parse::<Assigner>(), Ok(Assigner::Fcos));
        assert!("retina".parse::<Assigner>().is_err());
    }
}
