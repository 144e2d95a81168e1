//! `cargo run --release -p detect`: fine-tune a pretrained ViT into an object detector.
//!
//! With no arguments it trains on the built-in shapes set with the default backbone,
//! evaluates, draws predictions and prints where everything is.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use detect::data::coco;
use detect::metric::coco_eval;
use detect::model::postprocess::PostProcess;
use detect::pipeline::{self, DetectConfig, TrainOutcome};
use downstream_core::train::config::{self, DataArgs, RunArgs, TrainArgs};
use downstream_core::train::summary;
use downstream_core::train::trainer::RunOptions;

#[derive(Parser)]
#[command(
    name = "detect",
    about = "Fine-tune a pretrained ViT into an object detector"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// How images become inputs, beyond the data flags every task shares.
#[derive(Args, Clone, Debug, Default)]
struct InputArgs {
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
struct ModelArgs {
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
struct PostArgs {
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
    fn apply(&self, pp: &mut PostProcess, input: &mut detect::dataset::InputConfig) {
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

// One value per process, parsed once: its size does not matter, and boxing would only
// clutter clap's derive.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Fine-tune a detector.
    Train {
        #[command(
            flatten,
            next_help_heading = "Data (COCO JSON, Pascal VOC folder, or deepforest)"
        )]
        data: DataArgs,
        #[command(flatten, next_help_heading = "Input")]
        input: InputArgs,
        #[command(flatten, next_help_heading = "Model")]
        model: ModelArgs,
        #[command(flatten, next_help_heading = "Training")]
        train: Box<TrainArgs>,
        #[command(flatten, next_help_heading = "Inference")]
        post: PostArgs,
        #[command(flatten, next_help_heading = "Run")]
        run: RunArgs,
    },
    /// Evaluate: a trained run on a data set (`--run DIR --data D`), or a results file against
    /// ground truth (`--gt GT.json --dt DT.json`), with COCO bbox statistics equal to pycocotools'.
    Eval {
        /// A run folder (runs/detect/NAME).
        #[arg(long, conflicts_with_all = ["gt", "dt"])]
        run: Option<PathBuf>,
        /// The data to evaluate the run on (default: its validation set).
        #[arg(long, requires = "run")]
        data: Option<PathBuf>,
        /// Ground truth, COCO JSON.
        #[arg(long, requires = "dt")]
        gt: Option<PathBuf>,
        /// Detections, a COCO results JSON list.
        #[arg(long, requires = "gt")]
        dt: Option<PathBuf>,
        /// Print one JSON object with the twelve statistics.
        #[arg(long)]
        json: bool,
        #[command(flatten, next_help_heading = "Inference (with --run)")]
        post: PostArgs,
    },
    /// Fetch and convert a named data set (deepforest) into datasets/cache/.
    Fetch { name: String },
    /// Detect objects in images (files or folders): COCO results JSON and annotated PNGs.
    Predict {
        /// A run folder (runs/detect/NAME).
        #[arg(long)]
        run: PathBuf,
        /// Where to write (default: RUN/predict).
        #[arg(long)]
        out: Option<PathBuf>,
        images: Vec<PathBuf>,
        #[command(flatten, next_help_heading = "Inference")]
        post: PostArgs,
    },
}

fn train_config(
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

fn print_outcome(o: &TrainOutcome, seconds: f64, pp: &PostProcess) {
    if !summary::print_training(&o.report, seconds) {
        return;
    }
    if o.clipped > 0 {
        println!(
            "{} boxes reached outside their image and were clipped",
            o.clipped
        );
    }
    // Where the evaluations during training left the flips out, say that these statistics
    // have them, so that they are not read as the training log's.
    let added = pp
        .final_only()
        .map_or(String::new(), |a| format!(", with {a}"));
    println!(
        "validation (best checkpoint, step {}{added}):",
        o.report.best_step.unwrap_or(o.report.steps)
    );
    print!("{}", o.stats.summary());
    println!(
        "mAP (AP@[.50:.95]) = {:.3}   AP50 = {:.3}",
        o.stats.values[0], o.stats.values[1]
    );
    for (name, ap) in &o.per_category {
        println!("  {name:<16} AP {ap:.3}");
    }
    let mut outputs = vec![(
        "results",
        o.run_dir.join("val_results.json").display().to_string(),
    )];
    if let Some(first) = o.predictions.first() {
        let folder = first.parent().unwrap_or(first).display();
        outputs.push((
            "drawn",
            format!("{folder} ({} images)", o.predictions.len()),
        ));
    }
    summary::print_run_files(&o.report, &o.run_dir, &outputs);
}

fn print_stats(stats: &coco_eval::CocoStats, json: bool) {
    if json {
        println!("{}", stats.to_json());
    } else {
        print!("{}", stats.summary());
    }
}

fn run(cli: Cli) -> Result<()> {
    let command = cli.command.unwrap_or(Command::Train {
        data: DataArgs::default(),
        input: InputArgs::default(),
        model: ModelArgs::default(),
        train: Box::default(),
        post: PostArgs::default(),
        run: RunArgs::demo(),
    });
    match command {
        Command::Train {
            data,
            input,
            model,
            train,
            post,
            run,
        } => {
            let dir = run.dir("detect");
            let cfg = train_config(&data, &input, &model, &train, &post, &run, &dir)?;
            let opts = RunOptions {
                resume: run.resume,
                ..RunOptions::new(&dir)
            };
            println!(
                "fine-tuning {} ({}) on {} -> {}",
                cfg.train.backbone,
                cfg.train.mode,
                cfg.data
                    .train
                    .as_ref()
                    .map_or("the built-in shapes set".to_string(), |p| p
                        .display()
                        .to_string()),
                dir.display()
            );
            let started = std::time::Instant::now();
            let outcome = pipeline::train(&cfg, &opts)?;
            print_outcome(&outcome, started.elapsed().as_secs_f64(), &cfg.postprocess);
        }
        Command::Eval {
            run: Some(dir),
            data,
            json,
            post,
            ..
        } => {
            let device = Device::Cpu;
            let (mut cfg, mut detector) = pipeline::load_run(&dir, &device)?;
            post.apply(&mut detector.postprocess, &mut cfg.input);
            if data.is_some() {
                cfg.data.train = data.clone();
                cfg.data.val = data;
            }
            let (_, val) = pipeline::load_data(&cfg.data)?;
            let val_data = detector.examples(val.clone(), &cfg.input.for_inference())?;
            let results = pipeline::predict_set(&detector, &val_data, cfg.train.batch)?;
            print_stats(&coco_eval::evaluate(&val, &results)?, json);
        }
        Command::Eval {
            gt: Some(gt),
            dt: Some(dt),
            json,
            ..
        } => {
            let gt = coco::load_annotations(&gt)?;
            let dets = coco::load_results(&dt)?;
            let stats = coco_eval::evaluate(&gt, &dets)?;
            print_stats(&stats, json);
            if stats.dropped_detections > 0 {
                eprintln!(
                    "note: {} detections of categories not in the ground truth were ignored",
                    stats.dropped_detections
                );
            }
        }
        Command::Eval { .. } => anyhow::bail!("eval needs either --run DIR or both --gt and --dt"),
        Command::Fetch { name } => {
            anyhow::ensure!(
                name == detect::data::deepforest::NAME,
                "unknown data set `{name}`: known: deepforest"
            );
            let (train, val) = detect::data::deepforest::ensure()?;
            println!("{name}: {} and {}", train.display(), val.display());
        }
        Command::Predict {
            run,
            out,
            images,
            post,
        } => {
            let device = Device::Cpu;
            let (mut cfg, mut detector) = pipeline::load_run(&run, &device)?;
            post.apply(&mut detector.postprocess, &mut cfg.input);
            let files = downstream_core::vision::io::image_files(&images)?;
            let out = out.unwrap_or_else(|| run.join("predict"));
            let results = pipeline::predict_files(&cfg, &detector, &files, &out)?;
            println!(
                "{} detections in {} images -> {}",
                results.len(),
                files.len(),
                out.display()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    downstream_core::train::cli::main_with(|| run(Cli::parse()))
}

#[cfg(test)]
mod tests {
    use detect::model::flip::Flip;

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
