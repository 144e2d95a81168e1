//! From head outputs to boxes: score = sqrt(class probability x centre-ness), the best
//! candidates per level, then class-wise non-maximum suppression.
//!
//! Three options serve small, crowded objects whose boxes come out loose. Box voting replaces
//! each kept box by the score-weighted mean of the candidates it suppressed: neighbouring
//! locations each see a slightly different part of the object, and their average sits closer
//! to it than the single best. Test-time flips run the backbone and head on flipped copies of
//! the input too (mirrors, and for images without an "up" the transposes: the eight
//! symmetries of a square); their boxes, flipped back, join the candidates before the final
//! merge. Fusion makes that merge average the views' boxes of an object rather than keep the
//! best one, and scores each object by how many views found it ([`merge`]): on DeepForest
//! (README, row 12) it is what makes the flips pay, where suppression alone keeps the single
//! view's box and its score, and voting over every candidate drags the box towards its
//! neighbours' looser ones. The flips cost a backbone pass each, so a configuration may
//! leave them, and the fusion, out of the evaluations during training.
//!
//! A tiled image's boxes are merged across its tiles (`metric::accumulate`). A box that
//! reaches an edge shared with a neighbouring tile is often an object cut in two; with
//! `tile_edge_score` below 1 its score drops, so that where the overlap lets another tile see
//! the whole object, that view ranks first (and suppresses the part where they overlap by
//! more than `nms_iou`), while an object no tile sees whole is still found; 0 drops such
//! boxes outright.

use anyhow::Result;
use candle_core::{Device, Tensor, D};

use super::assign::Geometry;
use super::flip::Flip;
use super::head::HeadOutput;

/// One detection in input pixels, `[x0, y0, x1, y1]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxDet {
    pub class: usize,
    pub score: f32,
    pub xyxy: [f32; 4],
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostProcess {
    /// Candidates below this score are dropped before suppression.
    pub score_threshold: f32,
    /// Candidates kept per level before suppression.
    pub pre_nms: usize,
    /// Boxes of the same class overlapping more than this are suppressed.
    pub nms_iou: f32,
    /// Boxes kept per image.
    pub max_detections: usize,
    /// Only boxes at least this confident are drawn on prediction images (all are saved).
    /// With `fusion_iou` it applies to the fused scores, which are lower for objects that
    /// not every view finds.
    pub draw_threshold: f32,
    /// Each kept box becomes the score-weighted mean of the boxes it suppressed.
    pub box_voting: bool,
    /// Flipped views added at inference (validation, `eval`, `predict`), never in training.
    pub tta: Vec<Flip>,
    /// Fuse instead of only suppressing when an image's tiles and views are merged: each box
    /// the suppression keeps moves to the score-weighted mean of the boxes it suppressed that
    /// overlap it by more than this (and itself), and scores the sum of their best scores, as
    /// many as there are views, over the number of views (see [`merge`]). `None` keeps the
    /// suppression alone.
    pub fusion_iou: Option<f32>,
    /// The evaluations during training, which choose the best checkpoint, use the flips and
    /// the fusion too. Off, they run on the plain view with suppression alone, at one
    /// backbone pass per input; the final evaluation of the best checkpoint, `eval` and
    /// `predict` still use them.
    pub validate_with_tta: bool,
    /// Tiled images: the scores of boxes that reach an edge a tile shares with its
    /// neighbours are multiplied by this before the tiles' boxes are merged (1 keeps them as
    /// they are, 0 drops them).
    pub tile_edge_score: f32,
}

impl PostProcess {
    /// The settings of the evaluations during training: without the flips and the fusion
    /// unless `validate_with_tta`.
    pub fn for_validation(&self) -> PostProcess {
        if self.validate_with_tta {
            return self.clone();
        }
        PostProcess {
            tta: Vec::new(),
            fusion_iou: None,
            ..self.clone()
        }
    }

    /// What the final evaluation adds to the evaluations during training ("7 flips and
    /// fusion"), if anything.
    pub fn final_only(&self) -> Option<String> {
        let mut added = Vec::new();
        if !self.validate_with_tta {
            if !self.tta.is_empty() {
                let n = self.tta.len();
                added.push(format!("{n} flip{}", if n == 1 { "" } else { "s" }));
            }
            if self.fusion_iou.is_some() {
                added.push("fusion".to_string());
            }
        }
        (!added.is_empty()).then(|| added.join(" and "))
    }
}

impl Default for PostProcess {
    fn default() -> Self {
        Self {
            score_threshold: 0.05,
            pre_nms: 1000,
            nms_iou: 0.6,
            max_detections: 100,
            draw_threshold: 0.5,
            box_voting: false,
            tta: Vec::new(),
            fusion_iou: None,
            validate_with_tta: true,
            tile_edge_score: 1.0,
        }
    }
}

pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Class-wise non-maximum suppression; returns at most `max` boxes, best first.
pub fn nms(dets: Vec<BoxDet>, threshold: f32, max: usize) -> Vec<BoxDet> {
    greedy(dets, threshold, max, |_, _, _| {})
}

/// Non-maximum suppression that also tells `each` about every box it reaches, best first:
/// the index of the kept box it became (the last one kept) or that suppressed it (the first
/// of its class, in score order, overlapping it by more than `threshold`), and that box.
fn greedy(
    mut dets: Vec<BoxDet>,
    threshold: f32,
    max: usize,
    mut each: impl FnMut(usize, &BoxDet, &BoxDet),
) -> Vec<BoxDet> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<BoxDet> = Vec::new();
    for d in dets {
        if kept.len() >= max {
            break;
        }
        let by = kept
            .iter()
            .position(|k| k.class == d.class && iou(&k.xyxy, &d.xyxy) > threshold);
        let i = by.unwrap_or_else(|| {
            kept.push(d);
            kept.len() - 1
        });
        each(i, &kept[i], &d);
    }
    kept
}

/// Non-maximum suppression as `pp` sets it: with box voting, each kept box moves to the
/// score-weighted mean of every candidate of its class overlapping it by more than the
/// suppression threshold (itself included); scores stay.
pub fn suppress(dets: Vec<BoxDet>, pp: &PostProcess) -> Vec<BoxDet> {
    if !pp.box_voting {
        return nms(dets, pp.nms_iou, pp.max_detections);
    }
    nms(dets.clone(), pp.nms_iou, pp.max_detections)
        .into_iter()
        .map(|k| {
            let mut cluster = Cluster::default();
            for d in &dets {
                if d == &k || (d.class == k.class && iou(&k.xyxy, &d.xyxy) > pp.nms_iou) {
                    cluster.add(d);
                }
            }
            BoxDet {
                xyxy: cluster.mean(),
                ..k
            }
        })
        .collect()
}

/// The final merge of an image's boxes, gathered from its tiles and `views` views (1 + the
/// flips): suppression, then with `fusion_iou` each kept box fused with the boxes it
/// suppressed that overlap it by more than `fusion_iou` (and itself). A box suppressed by a
/// better one never joins a weaker kept box nearby, so that box cannot borrow the better
/// one's scores. The box becomes the score-weighted mean of its members; the score the sum
/// of their `views` best scores over `views`, so that an object every view finds keeps its
/// score and one that a single view finds keeps a share of it (as weighted box fusion scores
/// the boxes of several models).
/// Each view has already suppressed its own duplicates, so a cluster holds about one box per
/// view and tile that saw the object; where overlapping tiles both see it, the best boxes
/// count whichever view they come from. The per-image limit keeps the best fused scores.
pub fn merge(dets: Vec<BoxDet>, pp: &PostProcess, views: usize) -> Vec<BoxDet> {
    let Some(threshold) = pp.fusion_iou else {
        return suppress(dets, pp);
    };
    let views = views.max(1);
    let mut clusters: Vec<Cluster> = Vec::new();
    let kept = greedy(dets, pp.nms_iou, usize::MAX, |i, k, d| {
        if i == clusters.len() {
            clusters.push(Cluster::default());
            clusters[i].add(d);
        } else if iou(&k.xyxy, &d.xyxy) > threshold {
            clusters[i].add(d);
        }
    });
    let mut fused: Vec<BoxDet> = kept
        .into_iter()
        .zip(clusters)
        .map(|(k, mut cluster)| {
            cluster.scores.sort_by(|a, b| b.total_cmp(a));
            BoxDet {
                xyxy: cluster.mean(),
                score: cluster.scores.iter().take(views).sum::<f32>() / views as f32,
                ..k
            }
        })
        .collect();
    fused.sort_by(|a, b| b.score.total_cmp(&a.score));
    fused.truncate(pp.max_detections);
    fused
}

/// Boxes gathered around a kept one, as voting and fusion use them: their score-weighted
/// sum and their scores.
#[derive(Default)]
struct Cluster {
    sum: [f32; 4],
    weight: f32,
    scores: Vec<f32>,
}

impl Cluster {
    fn add(&mut self, d: &BoxDet) {
        for (s, v) in self.sum.iter_mut().zip(d.xyxy) {
            *s += d.score * v;
        }
        self.weight += d.score;
        self.scores.push(d.score);
    }

    /// The score-weighted mean box (a cluster always holds its kept box, whose score is
    /// above the score threshold, so the weight is positive).
    fn mean(&self) -> [f32; 4] {
        self.sum.map(|s| s / self.weight)
    }
}

/// Boxes for every image of a batch, in input pixels.
pub fn decode(out: &HeadOutput, geometry: &Geometry, pp: &PostProcess) -> Result<Vec<Vec<BoxDet>>> {
    let dev: &Device = out.class_logits.device();
    let (b, l, _) = out.class_logits.dims3()?;
    let prob = sigmoid(&out.class_logits)?;
    let ctr = sigmoid(&out.centerness)?.unsqueeze(D::Minus1)?;
    let scores: Vec<Vec<Vec<f32>>> = prob.broadcast_mul(&ctr)?.sqrt()?.to_vec3()?;
    let dist: Vec<Vec<Vec<f32>>> = out
        .coding
        .decode(&out.boxes, &out.coding.scale_column(geometry, dev)?)?
        .to_vec3()?;
    let locations = geometry.locations();
    let mut result = Vec::with_capacity(b);
    for i in 0..b {
        let mut cands = Vec::new();
        let mut start = 0;
        for &(_, h, w) in &geometry.levels {
            let end = start + h * w;
            let mut level: Vec<BoxDet> = Vec::new();
            for j in start..end {
                for (c, &s) in scores[i][j].iter().enumerate() {
                    if s > pp.score_threshold {
                        let (x, y, _) = locations[j];
                        let d = &dist[i][j];
                        level.push(BoxDet {
                            class: c,
                            score: s,
                            xyxy: [x - d[0], y - d[1], x + d[2], y + d[3]],
                        });
                    }
                }
            }
            level.sort_by(|a, b| b.score.total_cmp(&a.score));
            level.truncate(pp.pre_nms);
            cands.extend(level);
            start = end;
        }
        debug_assert_eq!(start, l);
        result.push(suppress(cands, pp));
    }
    Ok(result)
}

/// The logistic function, from primitives (prediction only; no gradient needed).
fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(class: usize, score: f32, xyxy: [f32; 4]) -> BoxDet {
        BoxDet { class, score, xyxy }
    }

    #[test]
    fn nms_is_per_class_and_keeps_the_best() {
        let dets = vec![
            det(0, 0.5, [0.0, 0.0, 10.0, 10.0]),
            det(0, 0.9, [1.0, 1.0, 11.0, 11.0]),
            det(1, 0.8, [0.0, 0.0, 10.0, 10.0]),
            det(0, 0.7, [50.0, 50.0, 60.0, 60.0]),
        ];
        let kept = nms(dets, 0.5, 100);
        assert_eq!(
            kept.iter().map(|d| d.score).collect::<Vec<_>>(),
            vec![0.9, 0.8, 0.7]
        );
        assert_eq!(nms(kept, 0.5, 2).len(), 2);
    }

    #[test]
    fn box_voting_moves_the_kept_box_to_the_weighted_mean_of_its_cluster() {
        let dets = vec![
            det(0, 0.75, [0.0, 0.0, 10.0, 10.0]),
            det(0, 0.25, [2.0, 0.0, 12.0, 10.0]),
            det(1, 0.9, [4.0, 0.0, 14.0, 10.0]),
            det(0, 0.5, [40.0, 40.0, 50.0, 50.0]),
        ];
        let pp = PostProcess {
            nms_iou: 0.5,
            box_voting: true,
            ..PostProcess::default()
        };
        let kept = suppress(dets.clone(), &pp);
        assert_eq!(kept.len(), 3);
        // 0.75 x 0 + 0.25 x 2 over a weight of 1; the other class does not vote.
        assert_eq!(kept[1].xyxy, [0.5, 0.0, 10.5, 10.0]);
        assert_eq!(kept[1].score, 0.75);
        assert_eq!(kept[0].xyxy, [4.0, 0.0, 14.0, 10.0]);
        assert_eq!(kept[2].xyxy, [40.0, 40.0, 50.0, 50.0]);
        let plain = suppress(
            dets,
            &PostProcess {
                box_voting: false,
                ..pp
            },
        );
        assert_eq!(plain[1].xyxy, [0.0, 0.0, 10.0, 10.0]);
    }

    #[test]
    fn merge_fuses_the_views_boxes_of_an_object_and_scores_it_by_how_many_found_it() {
        let dets = vec![
            // One object, found by three views of four, a little apart.
            det(0, 0.8, [0.0, 0.0, 10.0, 10.0]),
            det(0, 0.4, [1.0, 0.0, 11.0, 10.0]),
            det(0, 0.4, [0.0, 1.0, 10.0, 11.0]),
            // A loose box of it: suppressed (IoU 0.625 with the best), too far to be fused.
            det(0, 0.3, [0.0, 0.0, 10.0, 16.0]),
            // Another object, found by one view.
            det(0, 0.6, [40.0, 40.0, 50.0, 50.0]),
        ];
        let pp = PostProcess {
            nms_iou: 0.5,
            fusion_iou: Some(0.7),
            ..PostProcess::default()
        };
        let fused = merge(dets.clone(), &pp, 4);
        assert_eq!(fused.len(), 2);
        // (0.8 + 0.4 + 0.4) / 4 views; the box the three's score-weighted mean.
        assert!((fused[0].score - 0.4).abs() < 1e-6);
        let expected = [0.25, 0.25, 10.25, 10.25];
        for (got, want) in fused[0].xyxy.iter().zip(expected) {
            assert!((got - want).abs() < 1e-5, "{:?}", fused[0].xyxy);
        }
        assert!((fused[1].score - 0.15).abs() < 1e-6);
        assert_eq!(fused[1].xyxy, [40.0, 40.0, 50.0, 50.0]);
        // One view: the best score stays, the box still moves.
        let one = merge(dets.clone(), &pp, 1);
        assert_eq!(one[0].score, 0.8);
        assert_eq!(one[0].xyxy, fused[0].xyxy);
        // At a threshold of 1 each box is its own cluster.
        let alone = merge(
            dets.clone(),
            &PostProcess {
                fusion_iou: Some(1.0),
                ..pp.clone()
            },
            4,
        );
        assert_eq!(alone[0].xyxy, [0.0, 0.0, 10.0, 10.0]);
        assert!((alone[0].score - 0.2).abs() < 1e-6);
        // The per-image limit keeps the best fused scores: here the object three views found
        // over one view's more confident box.
        let limited = merge(
            vec![
                det(0, 0.9, [100.0, 100.0, 110.0, 110.0]),
                det(0, 0.8, [0.0, 0.0, 10.0, 10.0]),
                det(0, 0.8, [0.0, 0.0, 10.0, 10.5]),
                det(0, 0.8, [0.0, 0.0, 10.5, 10.0]),
            ],
            &PostProcess {
                max_detections: 1,
                ..pp.clone()
            },
            4,
        );
        assert_eq!(limited.len(), 1);
        assert!((limited[0].score - 0.6).abs() < 1e-6);
        // A weak box kept beside a strong one does not borrow the boxes the strong one
        // suppressed: [3, 0, 13, 10] overlaps the weak box by 0.82 but was suppressed by the
        // strong one (0.54), too loosely to join it.
        let beside = merge(
            vec![
                det(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
                det(0, 0.8, [3.0, 0.0, 13.0, 10.0]),
                det(0, 0.4, [4.0, 0.0, 14.0, 10.0]),
            ],
            &pp,
            2,
        );
        assert_eq!(beside.len(), 2);
        assert_eq!(beside[0].xyxy, [0.0, 0.0, 10.0, 10.0]);
        assert!((beside[0].score - 0.45).abs() < 1e-6);
        assert_eq!(beside[1].xyxy, [4.0, 0.0, 14.0, 10.0]);
        assert!((beside[1].score - 0.2).abs() < 1e-6);
        // Without fusion, the merge is the suppression.
        let plain = PostProcess {
            fusion_iou: None,
            ..pp.clone()
        };
        assert_eq!(merge(dets.clone(), &plain, 4), suppress(dets, &plain));
    }

    #[test]
    fn evaluations_during_training_may_leave_the_flips_and_the_fusion_out() {
        let pp = PostProcess {
            nms_iou: 0.5,
            fusion_iou: Some(0.7),
            tta: vec![Flip::Vertical],
            validate_with_tta: false,
            ..PostProcess::default()
        };
        let v = pp.for_validation();
        assert!(v.tta.is_empty() && v.fusion_iou.is_none() && v.nms_iou == pp.nms_iou);
        assert_eq!(pp.final_only().as_deref(), Some("1 flip and fusion"));
        let pp = PostProcess {
            validate_with_tta: true,
            ..pp
        };
        assert_eq!(pp.for_validation(), pp);
        assert_eq!(pp.final_only(), None);
    }
}
