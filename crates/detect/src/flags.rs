//! The flags that change a run's configuration: the input, model and inference settings
//! that `train` lays over the configuration file (with the data, training and run flags
//! every task shares, from core), and the inference ones that `eval` and `predict` lay over
//! a trained run's. The configuration types stay in the library; this module only maps
//! command-line values onto them, so the commands in `main.rs` read as what they do.

use std::path::Path;

use anyhow::Result;
use clap::Args;
use detect::model::postprocess::PostProcess;
use detect::pipeline::DetectConfig;
use downstream_core::train::config::{self, DataArgs, RunArgs, TrainArgs};

/// How images become inputs, beyond the data flags every task shares.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct InputArgs {
    /// Model input side in pixels (a multiple of 28 for patch-14 backbones).
    #[arg(long)]
    size: Option<usize>,
    /// Tile large images into squares of this many pixels at native scale.
    #[arg(long)]
    tile: Option<usize>,
    /// Overlap between neighbouring tiles in pixels, smaller than the tile (boxes of the
    /// overlap are merged).
    #[arg(long)]
    tile_overlap: Option<usize>,
    /// With tiles, take each training view's tile anywhere in the image (random crops at
    /// native scale) instead of at its place in the grid.
    #[arg(long)]
    random_crop: bool,
    /// Also flip training views upside down (aerial, microscope images).
    #[arg(long)]
    flip_vertical: bool,
    /// Also turn training views by quarter turns.
    #[arg(long)]
    rotate90: bool,
    /// Colour jitter: brightness, contrast and saturation scaled by up to 1 +- this.
    #[arg(long, value_name = "AMOUNT")]
    colour: Option<f64>,
    /// Augmented views per example kept in the feature cache (frozen backbone).
    #[arg(long)]
    views: Option<usize>,
}

/// The detector's shape, beyond what the configuration file says.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct ModelArgs {
    /// Backbone blocks whose outputs the head reads, e.g. 5,8,11 (zero-based).
    #[arg(long, value_delimiter = ',', value_name = "BLOCKS")]
    feature_blocks: Vec<usize>,
    /// Channels of the pyramid and head.
    #[arg(long)]
    width: Option<usize>,
    /// 3x3 convolutions in the head's tower.
    #[arg(long)]
    tower: Option<usize>,
    /// What the quality branch learns: centerness (FCOS) or iou (the predicted box's overlap).
    #[arg(long)]
    quality: Option<detect::model::loss::Quality>,
    /// Weight of the box (GIoU) loss against the classification loss (default 1).
    #[arg(long)]
    box_weight: Option<f64>,
    /// The finest pyramid level also reads each patch's raw pixels, for box sides finer than
    /// a patch.
    #[arg(long)]
    pixel_skip: bool,
    /// A tower of its own for the box and quality branches (as deep as `--tower`).
    #[arg(long)]
    split_tower: bool,
    /// Each box side as a distribution over STEPS + 1 distances (GFL's distribution focal
    /// loss, e.g. 16); 0 for FCOS's one output per side.
    #[arg(long, value_name = "STEPS")]
    box_bins: Option<usize>,
    /// How training locations become positives: fcos (size ranges per level, centre
    /// sampling) or atss (each box's own IoU statistics over its nearest locations).
    #[arg(long)]
    assign: Option<detect::model::assign::Assigner>,
}

/// Inference settings, beyond what the run's configuration says.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct PostArgs {
    /// Also run on flipped copies of each input and merge the boxes, comma-separated:
    /// horizontal (h), vertical (v), both (hv), and for images without an "up" transpose (t),
    /// clockwise (th), anticlockwise (tv), antitranspose (thv). One backbone pass more each.
    #[arg(long, value_delimiter = ',', value_name = "FLIPS")]
    tta: Vec<detect::model::flip::Flip>,
    /// Without the flips the run's configuration adds (`[postprocess] tta`): one backbone
    /// pass per input.
    #[arg(long, conflicts_with = "tta")]
    no_tta: bool,
    /// Move each kept box to the score-weighted mean of the boxes it suppressed.
    #[arg(long)]
    box_voting: bool,
    /// Merge an image's tiles and views by fusion: each kept box becomes the weighted mean of
    /// the boxes overlapping it by more than this IoU, scored by how many views found it.
    #[arg(long, value_name = "IOU", value_parser = overlap)]
    fusion_iou: Option<f32>,
    /// Without the fusion the run's configuration sets (`[postprocess] fusion_iou`).
    #[arg(long, conflicts_with = "fusion_iou")]
    no_fusion: bool,
    /// Suppress a box overlapping a better one of its class by more than this IoU.
    #[arg(long, value_name = "IOU", value_parser = overlap)]
    nms_iou: Option<f32>,
    /// Tiled images: multiply the scores of boxes reaching an edge shared with another tile
    /// by this before merging the tiles' boxes (0 drops them, 1 keeps them as they are).
    #[arg(long, value_name = "FACTOR", value_parser = fraction)]
    tile_edge_score: Option<f32>,
    /// Tiled images: overlap in pixels of the tiles cut at inference (validation, eval,
    /// predict), where it should differ from training's --tile-overlap.
    #[arg(long, value_name = "PIXELS")]
    inference_overlap: Option<usize>,
}

/// A factor in [0, 1].
fn fraction(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if (0.0..=1.0).contains(&t) => Ok(t),
        _ => Err(format!("`{s}` is not a number in [0, 1]")),
    }
}

/// An overlap threshold: a number in (0, 1].
fn overlap(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if t > 0.0 && t <= 1.0 => Ok(t),
        _ => Err(format!("`{s}` is not an overlap in (0, 1]")),
    }
}

impl PostArgs {
    pub(crate) fn apply(&self, pp: &mut PostProcess, input: &mut detect::dataset::InputConfig) {
        if self.no_tta {
            pp.tta.clear();
        } else if !self.tta.is_empty() {
            pp.tta = self.tta.clone();
        }
        pp.box_voting |= self.box_voting;
        if self.no_fusion {
            pp.fusion_iou = None;
        } else if self.fusion_iou.is_some() {
            pp.fusion_iou = self.fusion_iou;
        }
        if let Some(t) = self.nms_iou {
            pp.nms_iou = t;
        }
        if let Some(f) = self.tile_edge_score {
            pp.tile_edge_score = f;
        }
        if self.inference_overlap.is_some() {
            input.inference_overlap = self.inference_overlap;
        }
    }
}

pub(crate) fn train_config(
    data: &DataArgs,
    input: &InputArgs,
    model: &ModelArgs,
    train: &TrainArgs,
    post: &PostArgs,
    run: &RunArgs,
    dir: &Path,
) -> Result<DetectConfig> {
    config::resolve(train, run, dir, |cfg: &mut DetectConfig| {
        data.apply(&mut cfg.data);
        post.apply(&mut cfg.postprocess, &mut cfg.input);
        if let Some(s) = input.size {
            cfg.input.size = s;
        }
        if input.tile.is_some() {
            cfg.input.tile = input.tile;
        }
        if let Some(o) = input.tile_overlap {
            cfg.input.tile_overlap = o;
        }
        cfg.input.random_crop |= input.random_crop;
        let augment = &mut cfg.input.augment;
        augment.flip_vertical |= input.flip_vertical;
        augment.rotate90 |= input.rotate90;
        if let Some(c) = input.colour {
            augment.colour = c;
        }
        if let Some(v) = input.views {
            cfg.input.views = v;
        }
        if !model.feature_blocks.is_empty() {
            cfg.model.feature_blocks = model.feature_blocks.clone();
            cfg.model.feature_block = None;
        }
        if let Some(w) = model.width {
            cfg.model.width = w;
        }
        if let Some(t) = model.tower {
            cfg.model.tower = t;
        }
        if let Some(q) = model.quality {
            cfg.model.quality = q;
        }
        if let Some(w) = model.box_weight {
            cfg.model.box_weight = w;
        }
        cfg.model.pixel_skip |= model.pixel_skip;
        cfg.model.split_tower |= model.split_tower;
        if let Some(n) = model.box_bins {
            cfg.model.box_bins = n;
        }
        if let Some(a) = model.assign {
            cfg.model.assign = a;
        }
    })
}

#[cfg(test)]
mod tests {
    use detect::model::flip::Flip;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Post {
        #[command(flatten)]
        post: PostArgs,
    }

    /// The flips `eval` and `predict` use for a run configured with the vertical one, given
    /// `flags`.
    fn flips(flags: &[&str]) -> Result<Vec<Flip>, clap::Error> {
        let args = Post::try_parse_from(std::iter::once("eval").chain(flags.iter().copied()))?;
        let mut pp = PostProcess {
            tta: vec![Flip::Vertical],
            ..Default::default()
        };
        args.post
            .apply(&mut pp, &mut detect::dataset::InputConfig::default());
        Ok(pp.tta)
    }

    #[test]
    fn the_configured_flips_are_kept_replaced_or_turned_off() {
        assert_eq!(flips(&[]).unwrap(), [Flip::Vertical]);
        assert_eq!(
            flips(&["--tta", "h,hv"]).unwrap(),
            [Flip::Horizontal, Flip::Both]
        );
        assert_eq!(flips(&["--no-tta"]).unwrap(), []);
        let err = flips(&["--no-tta", "--tta", "v"]).unwrap_err().to_string();
        assert!(err.contains("--no-tta") && err.contains("--tta"), "{err}");
    }

    #[test]
    fn the_fusion_threshold_is_kept_or_replaced_and_must_be_an_overlap() {
        let fusion = |flags: &[&str]| -> Result<Option<f32>, clap::Error> {
            let args = Post::try_parse_from(std::iter::once("eval").chain(flags.iter().copied()))?;
            let mut pp = PostProcess {
                fusion_iou: Some(0.6),
                ..Default::default()
            };
            args.post
                .apply(&mut pp, &mut detect::dataset::InputConfig::default());
            Ok(pp.fusion_iou)
        };
        assert_eq!(fusion(&[]).unwrap(), Some(0.6));
        assert_eq!(fusion(&["--fusion-iou", "0.7"]).unwrap(), Some(0.7));
        assert_eq!(fusion(&["--no-fusion"]).unwrap(), None);
        assert!(fusion(&["--no-fusion", "--fusion-iou", "0.7"]).is_err());
        assert!(fusion(&["--fusion-iou", "1.5"]).is_err());
        assert!(fusion(&["--fusion-iou", "0"]).is_err());
    }
}
