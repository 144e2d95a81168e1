//! `cargo run --release -p segment`: fine-tune a pretrained ViT into a semantic segmenter.
//!
//! With no arguments it trains on the built-in generated set with the default backbone,
//! evaluates, writes predicted masks and overlays, and prints mIoU, per-class IoU and where
//! everything is.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use downstream_core::train::config::{self, DataArgs, RunArgs, TrainArgs};
use downstream_core::train::summary;
use downstream_core::train::trainer::RunOptions;
use segment::metric::confusion::{LabelRules, SegStats};
use segment::pipeline::{self, SegmentConfig, TrainOutcome};

#[derive(Parser)]
#[command(
    name = "segment",
    about = "Fine-tune a pretrained ViT into a semantic segmenter"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// How masks are read, and how images become inputs.
#[derive(Args, Clone, Debug, Default)]
struct LabelArgs {
    /// Number of classes (default: from classes.txt, the layout, or the largest label).
    #[arg(long)]
    num_classes: Option<usize>,
    /// The mask label that counts for nothing.
    #[arg(long)]
    ignore_index: Option<u8>,
    /// Label 0 means "other" and is ignored; the other labels drop by one (ADE20K).
    #[arg(long)]
    reduce_zero_label: bool,
}

#[derive(Args, Clone, Debug, Default)]
struct InputArgs {
    /// Model input side in pixels (a multiple of the patch size).
    #[arg(long)]
    size: Option<usize>,
    /// Sliding-window inference on large images: CROP,STRIDE in image pixels.
    #[arg(long, value_parser = parse_slide)]
    slide: Option<(usize, usize)>,
}

fn parse_slide(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("`{s}`: expected CROP,STRIDE"))?;
    let n = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("`{v}`: {e}"));
    Ok((n(a)?, n(b)?))
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a segmenter.
    Train {
        #[command(
            flatten,
            next_help_heading = "Data (images/ + masks/, Pascal VOC or ADE20K folder, brain-mri, fashion-scenes)"
        )]
        data: DataArgs,
        #[command(flatten, next_help_heading = "Labels")]
        labels: LabelArgs,
        #[command(flatten, next_help_heading = "Input")]
        input: InputArgs,
        #[command(flatten, next_help_heading = "Training")]
        train: Box<TrainArgs>,
        #[command(flatten, next_help_heading = "Run")]
        run: RunArgs,
    },
    /// Evaluate: a trained run on a data set (`--run DIR [--data D]`), or predicted masks
    /// against ground truth (`--gt DIR --pred DIR --num-classes N`), by mmsegmentation's
    /// convention.
    Eval {
        /// A run folder (runs/segment/NAME).
        #[arg(long, conflicts_with_all = ["gt", "pred"])]
        run: Option<PathBuf>,
        /// The data to evaluate the run on (default: its validation set).
        #[arg(long, requires = "run")]
        data: Option<PathBuf>,
        /// A folder of ground-truth masks.
        #[arg(long, requires_all = ["pred", "num_classes"])]
        gt: Option<PathBuf>,
        /// A folder of predicted masks (class ids), paired with the ground truth by file stem.
        #[arg(long, requires = "gt")]
        pred: Option<PathBuf>,
        #[command(flatten)]
        labels: LabelArgs,
        /// Print one JSON object: mIoU, aAcc, mAcc, per-class IoU and Acc.
        #[arg(long)]
        json: bool,
    },
    /// Fetch and prepare a named data set (brain-mri, fashion-scenes) into datasets/cache/.
    Fetch { name: String },
    /// Predict masks for images (files or folders): mask PNGs and overlays with a legend.
    Predict {
        /// A run folder (runs/segment/NAME).
        #[arg(long)]
        run: PathBuf,
        /// Where to write (default: RUN/predict).
        #[arg(long)]
        out: Option<PathBuf>,
        images: Vec<PathBuf>,
    },
}

fn train_config(
    data: &DataArgs,
    labels: &LabelArgs,
    input: &InputArgs,
    train: &TrainArgs,
    run: &RunArgs,
    dir: &Path,
) -> Result<SegmentConfig> {
    config::resolve(train, run, dir, |cfg: &mut SegmentConfig| {
        data.apply(&mut cfg.data);
        if labels.num_classes.is_some() {
            cfg.labels.num_classes = labels.num_classes;
        }
        if let Some(i) = labels.ignore_index {
            cfg.labels.ignore_index = i;
        }
        if labels.reduce_zero_label {
            cfg.labels.reduce_zero_label = Some(true);
        }
        if let Some(s) = input.size {
            cfg.input.size = s;
        }
        if input.slide.is_some() {
            cfg.input.slide = input.slide;
        }
    })
}

fn print_stats(stats: &SegStats, classes: &[String], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string(stats).expect("statistics serialise")
        );
        return;
    }
    let pct = |v: Option<f64>| v.map_or("   -  ".to_string(), |v| format!("{:6.2}", 100.0 * v));
    println!("{:<20} {:>6} {:>6}", "class", "IoU", "Acc");
    for (k, name) in classes.iter().enumerate() {
        println!("{name:<20} {} {}", pct(stats.iou[k]), pct(stats.acc[k]));
    }
    println!(
        "mIoU = {:.2}   mAcc = {:.2}   aAcc = {:.2}",
        100.0 * stats.miou,
        100.0 * stats.m_acc,
        100.0 * stats.a_acc
    );
}

fn print_outcome(o: &TrainOutcome, seconds: f64) {
    if !summary::print_training(&o.report, seconds) {
        return;
    }
    println!(
        "validation (best checkpoint, step {}):",
        o.report.best_step.unwrap_or(o.report.steps)
    );
    print_stats(&o.stats, &o.classes, false);
    let mut outputs = Vec::new();
    if let Some(first) = o.predictions.first() {
        let overlays = first.parent().unwrap_or(first);
        let masks = overlays.with_file_name("masks");
        outputs.push(("masks", masks.display().to_string()));
        outputs.push((
            "overlays",
            format!("{} ({} images)", overlays.display(), o.predictions.len()),
        ));
    }
    summary::print_run_files(&o.report, &o.run_dir, &outputs);
}

fn run(cli: Cli) -> Result<()> {
    let command = cli.command.unwrap_or(Command::Train {
        data: DataArgs::default(),
        labels: LabelArgs::default(),
        input: InputArgs::default(),
        train: Box::default(),
        run: RunArgs::demo(),
    });
    match command {
        Command::Train {
            data,
            labels,
            input,
            train,
            run,
        } => {
            let dir = run.dir("segment");
            let cfg = train_config(&data, &labels, &input, &train, &run, &dir)?;
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
            print_outcome(&outcome, started.elapsed().as_secs_f64());
        }
        Command::Eval {
            run: Some(dir),
            data,
            json,
            ..
        } => {
            let device = Device::Cpu;
            let (mut cfg, labels, segmenter) = pipeline::load_run(&dir, &device)?;
            if data.is_some() {
                cfg.data.train = data.clone();
                cfg.data.val = data;
            }
            let label_cfg = segment::data::LabelConfig {
                num_classes: Some(labels.classes.len()),
                ignore_index: labels.ignore_index,
                reduce_zero_label: Some(labels.reduce_zero_label),
            };
            let (_, val) = pipeline::load_data(&cfg.data, &label_cfg)?;
            let val = segment::dataset::SegmentationData::new(
                val,
                cfg.input.clone(),
                segmenter.patch_size(),
                false,
                &device,
            )?;
            let (stats, _) = pipeline::evaluate_and_draw(
                &segmenter,
                &val,
                &labels,
                cfg.train.batch,
                &dir.join("eval"),
                0,
            )?;
            print_stats(&stats, &labels.classes, json);
        }
        Command::Eval {
            gt: Some(gt),
            pred: Some(pred),
            labels,
            json,
            ..
        } => {
            let rules = LabelRules {
                num_classes: labels.num_classes.unwrap_or_default(),
                ignore_index: labels.ignore_index.unwrap_or(255),
                reduce_zero_label: labels.reduce_zero_label,
            };
            anyhow::ensure!(rules.num_classes > 0, "--num-classes must be at least 1");
            let stats = pipeline::score_folders(&gt, &pred, rules)?;
            let names: Vec<String> = (0..rules.num_classes)
                .map(|k| format!("class {k}"))
                .collect();
            print_stats(&stats, &names, json);
        }
        Command::Eval { .. } => {
            anyhow::bail!("eval needs either --run DIR or --gt DIR --pred DIR --num-classes N")
        }
        Command::Fetch { name } => {
            let (train, val) = match name.as_str() {
                segment::data::brain::NAME => segment::data::brain::ensure()?,
                segment::data::fashion::NAME => segment::data::fashion::ensure()?,
                other => anyhow::bail!(
                    "unknown data set `{other}`: known: {}, {}",
                    segment::data::brain::NAME,
                    segment::data::fashion::NAME
                ),
            };
            println!("{name}: {} and {}", train.display(), val.display());
        }
        Command::Predict { run, out, images } => {
            let device = Device::Cpu;
            let (cfg, labels, segmenter) = pipeline::load_run(&run, &device)?;
            let files = downstream_core::vision::io::image_files(&images)?;
            let out = out.unwrap_or_else(|| run.join("predict"));
            let n = pipeline::predict_files(&cfg, &labels, &segmenter, &files, &out)?;
            println!("{n} images -> {} (masks/, overlays/)", out.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    downstream_core::train::cli::main_with(|| run(Cli::parse()))
}
