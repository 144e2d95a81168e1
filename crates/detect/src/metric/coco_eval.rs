//! COCO bounding-box evaluation, equal to pycocotools' `COCOeval(gt, dt, "bbox")` with its
//! default parameters: IoU thresholds .50:.05:.95, 101-point interpolated precision, at most
//! 1, 10 and 100 detections per image and category, small/medium/large areas, crowd regions
//! ignored, and averages taken only over categories that have ground truth.
//!
//! The details that change numbers, all as pycocotools does them: ground-truth areas come
//! from the annotation's `area` field (detections use w*h); area bounds are inclusive at both
//! ends; the IoU with a crowd region is intersection over the detection's area; a detection
//! may match when IoU >= threshold, a later ground truth with equal IoU wins, and once it has
//! a regular match it never moves to an ignored one; ties in score keep file order within an
//! image and image-id order across images (stable sorts).

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};

use crate::data::coco::Detection;
use crate::data::DetectionSet;

/// The twelve statistics, named as pycocotools prints them.
pub const STAT_NAMES: [&str; 12] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
];

#[derive(Clone, Debug, PartialEq)]
pub struct CocoStats {
    /// In [`STAT_NAMES`] order; -1 where pycocotools reports -1 (nothing to average).
    pub values: [f64; 12],
    /// Detections whose category is not in the ground truth (pycocotools drops them too).
    pub dropped_detections: usize,
}

impl CocoStats {
    pub fn get(&self, name: &str) -> Option<f64> {
        STAT_NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| self.values[i])
    }

    /// The statistics as one JSON object, keyed by name in pycocotools' order.
    pub fn to_json(&self) -> String {
        let fields: Vec<String> = STAT_NAMES
            .iter()
            .zip(self.values)
            .map(|(n, v)| format!("\"{n}\":{}", serde_json::Value::from(v)))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    /// The twelve lines pycocotools' `summarize()` prints.
    pub fn summary(&self) -> String {
        let rows = [
            ("Average Precision", "AP", "0.50:0.95", "all", 100),
            ("Average Precision", "AP", "0.50", "all", 100),
            ("Average Precision", "AP", "0.75", "all", 100),
            ("Average Precision", "AP", "0.50:0.95", "small", 100),
            ("Average Precision", "AP", "0.50:0.95", "medium", 100),
            ("Average Precision", "AP", "0.50:0.95", "large", 100),
            ("Average Recall", "AR", "0.50:0.95", "all", 1),
            ("Average Recall", "AR", "0.50:0.95", "all", 10),
            ("Average Recall", "AR", "0.50:0.95", "all", 100),
            ("Average Recall", "AR", "0.50:0.95", "small", 100),
            ("Average Recall", "AR", "0.50:0.95", "medium", 100),
            ("Average Recall", "AR", "0.50:0.95", "large", 100),
        ];
        rows.iter()
            .zip(self.values)
            .map(|((title, short, iou, area, max), v)| {
                format!(" {title:<18} ({short}) @[ IoU={iou:<9} | area={area:>6} | maxDets={max:>3} ] = {v:0.3}\n")
            })
            .collect()
    }
}

const AREAS: [(f64, f64); 4] = [(0.0, 1e10), (0.0, 1024.0), (1024.0, 9216.0), (9216.0, 1e10)];
const MAX_DETS: [usize; 3] = [1, 10, 100];

fn iou_thresholds() -> Vec<f64> {
    // numpy.linspace(.5, .95, 10): start + i * step, the last value exact.
    let step = (0.95 - 0.5) / 9.0;
    let mut t: Vec<f64> = (0..10).map(|i| 0.5 + i as f64 * step).collect();
    t[9] = 0.95;
    t
}

fn recall_thresholds() -> Vec<f64> {
    let mut r: Vec<f64> = (0..101).map(|i| i as f64 * 0.01).collect();
    r[100] = 1.0;
    r
}

struct Gt {
    bbox: [f64; 4],
    area: f64,
    crowd: bool,
}

struct Dt {
    bbox: [f64; 4],
    area: f64,
    score: f64,
}

fn iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[0] + d[2]).min(g[0] + g[2]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[1] + d[3]).min(g[1] + g[3]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    let da = d[2] * d[3];
    let union = if crowd { da } else { da + g[2] * g[3] - inter };
    inter / union
}

/// One (image, category, area range) after matching, detections in score order.
struct ImageEval {
    scores: Vec<f64>,
    /// `[threshold][detection]`: matched to some ground truth.
    matched: Vec<Vec<bool>>,
    /// `[threshold][detection]`: neither counted as true nor false positive.
    ignored: Vec<Vec<bool>>,
    /// Ground truth that counts (not crowd, inside the area range).
    regular_gt: usize,
}

fn evaluate_image(
    gts: &[&Gt],
    dts: &[&Dt],
    range: (f64, f64),
    thresholds: &[f64],
) -> Option<ImageEval> {
    if gts.is_empty() && dts.is_empty() {
        return None;
    }
    let outside = |a: f64| a < range.0 || a > range.1;
    let gt_ignored: Vec<bool> = gts.iter().map(|g| g.crowd || outside(g.area)).collect();
    // Regular ground truth first, file order otherwise.
    let mut gt_order: Vec<usize> = (0..gts.len()).collect();
    gt_order.sort_by_key(|&i| gt_ignored[i]);
    let mut dt_order: Vec<usize> = (0..dts.len()).collect();
    dt_order.sort_by(|&a, &b| {
        dts[b]
            .score
            .partial_cmp(&dts[a].score)
            .expect("finite scores")
    });
    dt_order.truncate(*MAX_DETS.last().expect("non-empty"));
    let ious: Vec<Vec<f64>> = dt_order
        .iter()
        .map(|&d| {
            gt_order
                .iter()
                .map(|&g| iou(&dts[d].bbox, &gts[g].bbox, gts[g].crowd))
                .collect()
        })
        .collect();
    let g_ign: Vec<bool> = gt_order.iter().map(|&g| gt_ignored[g]).collect();
    let g_crowd: Vec<bool> = gt_order.iter().map(|&g| gts[g].crowd).collect();
    let mut matched = vec![vec![false; dt_order.len()]; thresholds.len()];
    let mut ignored = vec![vec![false; dt_order.len()]; thresholds.len()];
    for (t, &thr) in thresholds.iter().enumerate() {
        let mut gt_taken = vec![false; gt_order.len()];
        for d in 0..dt_order.len() {
            let mut best = thr.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for g in 0..gt_order.len() {
                if gt_taken[g] && !g_crowd[g] {
                    continue;
                }
                if m.is_some_and(|m| !g_ign[m]) && g_ign[g] {
                    break;
                }
                if ious[d][g] < best {
                    continue;
                }
                best = ious[d][g];
                m = Some(g);
            }
            if let Some(m) = m {
                ignored[t][d] = g_ign[m];
                matched[t][d] = true;
                gt_taken[m] = true;
            }
        }
        for (d, &di) in dt_order.iter().enumerate() {
            if !matched[t][d] && outside(dts[di].area) {
                ignored[t][d] = true;
            }
        }
    }
    Some(ImageEval {
        scores: dt_order.iter().map(|&d| dts[d].score).collect(),
        matched,
        ignored,
        regular_gt: g_ign.iter().filter(|&&i| !i).count(),
    })
}

/// Evaluates `dets` against `gt` as pycocotools' `COCOeval` does for boxes.
pub fn evaluate(gt: &DetectionSet, dets: &[Detection]) -> Result<CocoStats> {
    let thresholds = iou_thresholds();
    let recalls = recall_thresholds();
    let mut image_ids: Vec<u64> = gt.images.iter().map(|i| i.id).collect();
    image_ids.sort_unstable();
    image_ids.dedup();
    let mut cat_ids: Vec<u64> = gt.categories.iter().map(|c| c.id).collect();
    cat_ids.sort_unstable();

    let mut gts: HashMap<(u64, u64), Vec<Gt>> = HashMap::new();
    for a in &gt.annotations {
        gts.entry((a.image_id, a.category_id))
            .or_default()
            .push(Gt {
                bbox: a.bbox,
                area: a.area,
                crowd: a.iscrowd,
            });
    }
    let known_images: std::collections::HashSet<u64> = image_ids.iter().copied().collect();
    let known_cats: std::collections::HashSet<u64> = cat_ids.iter().copied().collect();
    let mut dts: HashMap<(u64, u64), Vec<Dt>> = HashMap::new();
    let mut dropped = 0;
    for (i, d) in dets.iter().enumerate() {
        if !known_images.contains(&d.image_id) {
            bail!(
                "detection {i} refers to image id {}, which is not in the ground truth",
                d.image_id
            );
        }
        if !known_cats.contains(&d.category_id) {
            dropped += 1;
            continue;
        }
        dts.entry((d.image_id, d.category_id))
            .or_default()
            .push(Dt {
                bbox: d.bbox,
                area: d.bbox[2] * d.bbox[3],
                score: d.score,
            });
    }

    let (nt, nr, nk, na, nm) = (
        thresholds.len(),
        recalls.len(),
        cat_ids.len(),
        AREAS.len(),
        MAX_DETS.len(),
    );
    // precision[t][r][k][a][m] and recall[t][k][a][m], -1 where undefined.
    let pidx = |t: usize, r: usize, k: usize, a: usize, m: usize| {
        (((t * nr + r) * nk + k) * na + a) * nm + m
    };
    let ridx = |t: usize, k: usize, a: usize, m: usize| ((t * nk + k) * na + a) * nm + m;
    let mut precision = vec![-1f64; nt * nr * nk * na * nm];
    let mut recall = vec![-1f64; nt * nk * na * nm];
    let empty_g: Vec<Gt> = Vec::new();
    let empty_d: Vec<Dt> = Vec::new();
    for (k, &cat) in cat_ids.iter().enumerate() {
        for (a, &range) in AREAS.iter().enumerate() {
            let evals: Vec<ImageEval> = image_ids
                .iter()
                .filter_map(|&img| {
                    let g: Vec<&Gt> = gts.get(&(img, cat)).unwrap_or(&empty_g).iter().collect();
                    let d: Vec<&Dt> = dts.get(&(img, cat)).unwrap_or(&empty_d).iter().collect();
                    evaluate_image(&g, &d, range, &thresholds)
                })
                .collect();
            if evals.is_empty() {
                continue;
            }
            let regular: usize = evals.iter().map(|e| e.regular_gt).sum();
            if regular == 0 {
                continue;
            }
            for (m, &max_det) in MAX_DETS.iter().enumerate() {
                // (score, image position, detection position), stable-sorted by score.
                let mut all: Vec<(f64, usize, usize)> = Vec::new();
                for (e, ev) in evals.iter().enumerate() {
                    for d in 0..ev.scores.len().min(max_det) {
                        all.push((ev.scores[d], e, d));
                    }
                }
                all.sort_by(|x, y| y.0.partial_cmp(&x.0).expect("finite scores"));
                for t in 0..nt {
                    let (mut tp, mut fp) = (0f64, 0f64);
                    let mut rc = Vec::with_capacity(all.len());
                    let mut pr = Vec::with_capacity(all.len());
                    for &(_, e, d) in &all {
                        if !evals[e].ignored[t][d] {
                            if evals[e].matched[t][d] {
                                tp += 1.0;
                            } else {
                                fp += 1.0;
                            }
                        }
                        rc.push(tp / regular as f64);
                        pr.push(tp / (tp + fp + f64::EPSILON));
                    }
                    recall[ridx(t, k, a, m)] = rc.last().copied().unwrap_or(0.0);
                    for i in (1..pr.len()).rev() {
                        if pr[i] > pr[i - 1] {
                            pr[i - 1] = pr[i];
                        }
                    }
                    let mut i = 0;
                    for (r, &thr) in recalls.iter().enumerate() {
                        while i < rc.len() && rc[i] < thr {
                            i += 1;
                        }
                        precision[pidx(t, r, k, a, m)] = if i < rc.len() { pr[i] } else { 0.0 };
                    }
                }
            }
        }
    }

    let mean_defined = |values: &mut dyn Iterator<Item = f64>| {
        let (sum, n) = values
            .filter(|&v| v > -1.0)
            .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
        if n == 0 {
            -1.0
        } else {
            sum / n as f64
        }
    };
    let ap = |ts: &[usize], a: usize, m: usize| {
        mean_defined(&mut ts.iter().flat_map(|&t| {
            (0..nr)
                .flat_map(move |r| (0..nk).map(move |k| (t, r, k)))
                .map(|(t, r, k)| precision[pidx(t, r, k, a, m)])
        }))
    };
    let ar = |a: usize, m: usize| {
        mean_defined(
            &mut (0..nt)
                .flat_map(|t| (0..nk).map(move |k| (t, k)))
                .map(|(t, k)| recall[ridx(t, k, a, m)]),
        )
    };
    let all_t: Vec<usize> = (0..nt).collect();
    let values = [
        ap(&all_t, 0, 2),
        ap(&[0], 0, 2),
        ap(&[5], 0, 2),
        ap(&all_t, 1, 2),
        ap(&all_t, 2, 2),
        ap(&all_t, 3, 2),
        ar(0, 0),
        ar(0, 1),
        ar(0, 2),
        ar(1, 2),
        ar(2, 2),
        ar(3, 2),
    ];
    Ok(CocoStats {
        values,
        dropped_detections: dropped,
    })
}

/// Per-category AP (IoU .50:.95, all areas, 100 detections), for reports.
pub fn per_category_ap(gt: &DetectionSet, dets: &[Detection]) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for c in &gt.categories {
        let mut sub = gt.clone();
        sub.categories = vec![c.clone()];
        sub.annotations.retain(|a| a.category_id == c.id);
        let d: Vec<Detection> = dets
            .iter()
            .filter(|d| d.category_id == c.id)
            .cloned()
            .collect();
        out.insert(c.name.clone(), evaluate(&sub, &d)?.values[0]);
    }
    Ok(out)
}
