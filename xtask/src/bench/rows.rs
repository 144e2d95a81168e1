//! The rows of `cargo xtask bench`: what each one times, at which shape, and how much matrix
//! work it does.
//!
//! Both sides read their shapes from here: the Rust side directly, the PyTorch side
//! (`scripts/bench/torch_side.py`) through the `shape` string each row reports, which the
//! report compares, so that a ratio is never taken between different work.

/// One row of the bench.
#[derive(Clone, Debug)]
pub struct Row {
    /// Stable name: selects the row (`--only`) and pairs the two sides.
    pub id: &'static str,
    pub model: &'static str,
    /// `ceiling`, `op`, `inference`, `train` (forward, backward, AdamW update), `frozen epoch`,
    /// `optimizer`.
    pub mode: &'static str,
    /// Examples per timed call (1 for ops).
    pub batch: usize,
    pub shape: String,
    /// Floating-point operations of the matrix products in one timed call, counted
    /// analytically; `None` where the row is not matrix work.
    pub flops: Option<f64>,
    /// Whether `scripts/bench/torch_side.py` has this row.
    pub torch: bool,
}

/// The machine's ceiling: one square f32 matrix product of this side.
pub const CEILING_N: usize = 2048;
/// Token rows, width and heads of the op rows: one ViT-S/14 block's activations on 8 images.
pub const OPS: (usize, usize, usize, usize) = (8, 257, 384, 6);
pub const VISION: (usize, usize) = (8, 224);
pub const TEXT: (usize, usize) = (16, 128);
/// Images in a frozen-mode epoch, served from the feature cache in batches of `VISION.0`.
pub const FROZEN_EPOCH_IMAGES: usize = 64;
/// Classes of the linear head trained in the frozen epoch.
pub const FROZEN_CLASSES: usize = 10;
/// Target sentences, target length, source length, decoder layers, target vocabulary: the
/// `translate` defaults on the demo's sentence lengths.
pub const DECODER: (usize, usize, usize, usize, usize) = (16, 32, 32, 2, 4000);
/// Batch, classes and width of the segmentation head on block-8 features of 224 images.
pub const SEGMENT: (usize, usize, usize) = (8, 4, 64);

/// DINOv2 ViT-S/14: width, blocks, tokens at 224 (256 patches and the class token).
const VIT: (f64, f64, f64) = (384.0, 12.0, 257.0);
/// all-MiniLM-L6-v2: width, blocks.
const BERT: (f64, f64) = (384.0, 6.0);

/// Matrix-product FLOPs of one transformer block's forward pass over `t` tokens of width `d`
/// with a 4x feed-forward: Q, K, V and output projections (4 d^2), the two feed-forward maps
/// (8 d^2), two multiply-adds each, and the two attention products (2 t d each).
fn block_flops(t: f64, d: f64) -> f64 {
    2.0 * t * 12.0 * d * d + 4.0 * t * t * d
}

fn vit_forward_flops(batch: usize) -> f64 {
    let (d, blocks, t) = VIT;
    let patches = t - 1.0;
    let patch_embed = 2.0 * patches * (3.0 * 14.0 * 14.0) * d;
    batch as f64 * (blocks * block_flops(t, d) + patch_embed)
}

fn bert_forward_flops(batch: usize, len: usize) -> f64 {
    let (d, blocks) = BERT;
    batch as f64 * blocks * block_flops(len as f64, d)
}

fn decoder_forward_flops() -> f64 {
    let (b, t, s, layers, vocab) = DECODER;
    let (b, t, s, layers, vocab) = (b as f64, t as f64, s as f64, layers as f64, vocab as f64);
    let d = BERT.0;
    // Self-attention and feed-forward as an encoder block; cross-attention projects queries
    // and outputs on the target (2 d^2 each), keys and values on the source, and attends
    // target to source; then the LM head's transform (d^2) and vocabulary map (d V).
    let cross = 2.0 * (2.0 * t * d * d + 2.0 * s * d * d) + 4.0 * t * s * d;
    let head = 2.0 * t * (d * d + d * vocab);
    b * (layers * (block_flops(t, d) + cross) + head)
}

/// A training step's matrix work: the forward pass and a backward pass of twice its work
/// (the gradient of each product with respect to both operands), the usual estimate.
fn train(forward: f64) -> f64 {
    3.0 * forward
}

pub fn all() -> Vec<Row> {
    let (n, t, d, heads) = OPS;
    let (vb, vs) = VISION;
    let (tb, tl) = TEXT;
    let (db, dt, ds, dl, dv) = DECODER;
    let (sb, sk, sw) = SEGMENT;
    let c = CEILING_N;
    let row = |id, model, mode, batch, shape: String, flops, torch| Row {
        id,
        model,
        mode,
        batch,
        shape,
        flops,
        torch,
    };
    let vit_shape = format!("{vb}x3x{vs}x{vs}");
    let text_shape = format!("{tb}x{tl} tokens");
    vec![
        row(
            "matmul ceiling",
            "f32 matmul",
            "ceiling",
            1,
            format!("{c}x{c} @ {c}x{c}"),
            Some(2.0 * (c as f64).powi(3)),
            true,
        ),
        row(
            "op matmul (linear)",
            "f32 matmul",
            "op",
            1,
            format!("{}x{d} @ {d}x{}", n * t, 4 * d),
            Some(2.0 * (n * t * d * 4 * d) as f64),
            true,
        ),
        row(
            "op layer_norm fwd+bwd",
            "layer norm",
            "op",
            1,
            format!("{n}x{t}x{d}"),
            None,
            true,
        ),
        row(
            "op gelu fwd+bwd",
            "gelu",
            "op",
            1,
            format!("{n}x{t}x{}", 4 * d),
            None,
            true,
        ),
        row(
            "op softmax fwd+bwd",
            "softmax",
            "op",
            1,
            format!("{n}x{heads}x{t}x{t}"),
            None,
            true,
        ),
        row(
            "dinov2-s14 forward",
            "dinov2-s14",
            "inference",
            vb,
            vit_shape.clone(),
            Some(vit_forward_flops(vb)),
            true,
        ),
        row(
            "dinov2-s14 train step",
            "dinov2-s14",
            "train",
            vb,
            vit_shape.clone(),
            Some(train(vit_forward_flops(vb))),
            true,
        ),
        row(
            "dinov2-s14 frozen epoch",
            "dinov2-s14",
            "frozen epoch",
            FROZEN_EPOCH_IMAGES,
            format!("{FROZEN_EPOCH_IMAGES} images of {vs}, batches of {vb}, linear head"),
            None,
            true,
        ),
        row(
            "minilm-l6 forward",
            "minilm-l6",
            "inference",
            tb,
            text_shape.clone(),
            Some(bert_forward_flops(tb, tl)),
            true,
        ),
        row(
            "minilm-l6 train step",
            "minilm-l6",
            "train",
            tb,
            text_shape,
            Some(train(bert_forward_flops(tb, tl))),
            true,
        ),
        row(
            "adamw update",
            "dinov2-s14",
            "optimizer",
            1,
            format!(
                "{} params in {} tensors",
                vit_s_param_count(),
                vit_s_shapes().len()
            ),
            None,
            true,
        ),
        row(
            "translate decoder step",
            "bert decoder",
            "train",
            db,
            format!("{db}x{dt} targets over {db}x{ds} sources, {dl} layers, vocab {dv}"),
            Some(train(decoder_forward_flops())),
            true,
        ),
        row(
            "segment head step",
            "progressive decoder",
            "train",
            sb,
            format!("{sb}x16x16x384 features to {sb}x{sk}x224x224, width {sw}"),
            None,
            false,
        ),
    ]
}

/// The parameter shapes of a DINOv2 ViT-S/14 (patch embedding, class token, positions, 12
/// blocks with layer scales, final norm): the AdamW row updates tensors of these shapes on
/// both sides, so that the update covers the same number and sizes of buffers.
pub fn vit_s_shapes() -> Vec<Vec<usize>> {
    let d = 384;
    let mut shapes = vec![vec![d, 3, 14, 14], vec![d], vec![1, 1, d], vec![1, 1370, d]];
    for _ in 0..12 {
        shapes.extend([
            vec![d],
            vec![d],
            vec![3 * d, d],
            vec![3 * d],
            vec![d, d],
            vec![d],
            vec![d],
            vec![d],
            vec![d],
            vec![4 * d, d],
            vec![4 * d],
            vec![d, 4 * d],
            vec![d],
            vec![d],
        ]);
    }
    shapes.extend([vec![d], vec![d]]);
    shapes
}

pub fn vit_s_param_count() -> usize {
    vit_s_shapes()
        .iter()
        .map(|s| s.iter().product::<usize>())
        .sum()
}

pub fn find(id: &str) -> Option<Row> {
    all().into_iter().find(|r| r.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vit_s_shapes_hold_its_known_parameter_count() {
        // DINOv2 ViT-S/14 has 22,056,576 parameters (transformers' Dinov2Model, without the
        // mask token: 384 fewer).
        assert_eq!(vit_s_param_count(), 22_056_576 - 384);
    }

    #[test]
    fn a_training_step_counts_three_forward_passes_and_names_are_unique() {
        let rows = all();
        let f = |id: &str| rows.iter().find(|r| r.id == id).unwrap().flops.unwrap();
        assert!((f("dinov2-s14 train step") / f("dinov2-s14 forward") - 3.0).abs() < 1e-12);
        // Counted by hand for one 224 image: 12 x (2 x 257 x 12 x 384^2 + 4 x 257^2 x 384)
        // for the blocks, 2 x 256 x 588 x 384 for the patch embedding.
        let per_image = f("dinov2-s14 forward") / VISION.0 as f64;
        assert_eq!(per_image, 12_247_123_968.0);
        let mut ids: Vec<_> = rows.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), rows.len());
    }
}
