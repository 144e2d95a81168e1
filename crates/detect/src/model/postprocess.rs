//! From head outputs to boxes: score = sqrt(class probability x centre-ness), the best
//! candidates per level, then class-wise non-maximum suppression.

use anyhow::Result;
use candle_core::{Device, Tensor, D};

use super::assign::Geometry;
use super::head::HeadOutput;
use super::loss::{decode_distances, stride_column};

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
    pub draw_threshold: f32,
}

impl Default for PostProcess {
    fn default() -> Self {
        Self {
            score_threshold: 0.05,
            pre_nms: 1000,
            nms_iou: 0.6,
            max_detections: 100,
            draw_threshold: 0.5,
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
pub fn nms(mut dets: Vec<BoxDet>, threshold: f32, max: usize) -> Vec<BoxDet> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<BoxDet> = Vec::new();
    for d in dets {
        if kept.len() >= max {
            break;
        }
        if kept
            .iter()
            .all(|k| k.class != d.class || iou(&k.xyxy, &d.xyxy) <= threshold)
        {
            kept.push(d);
        }
    }
    kept
}

/// Boxes for every image of a batch, in input pixels.
pub fn decode(out: &HeadOutput, geometry: &Geometry, pp: &PostProcess) -> Result<Vec<Vec<BoxDet>>> {
    let dev: &Device = out.class_logits.device();
    let (b, l, _) = out.class_logits.dims3()?;
    let prob = sigmoid(&out.class_logits)?;
    let ctr = sigmoid(&out.centerness)?.unsqueeze(D::Minus1)?;
    let scores: Vec<Vec<Vec<f32>>> = prob.broadcast_mul(&ctr)?.sqrt()?.to_vec3()?;
    let dist: Vec<Vec<Vec<f32>>> =
        decode_distances(&out.box_log, &stride_column(geometry, dev)?)?.to_vec3()?;
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
        result.push(nms(cands, pp.nms_iou, pp.max_detections));
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
}
