//! `cargo run --release -p detect`: fine-tune a pretrained ViT into an object detector.
//!
//! With no arguments it trains on the built-in shapes set with the default backbone,
//! evaluates, draws predictions and prints where everything is.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use detect::data::coco;
use detect::metric::coco_eval;
use detect::pipeline::{self, DetectConfig, TrainOutcome};
use downstream_core::train::config::{RunArgs, TrainArgs};
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

#[derive(Args, Clone, Debug, Default)]
struct DataArgs {
    /// Training data: a COCO JSON file, a Pascal VOC folder, or `deepforest` (fetched on first
    /// use; default: the built-in shapes set).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Validation data (default: every fifth training image).
    #[arg(long)]
    val: Option<PathBuf>,
    /// Model input side in pixels (a multiple of 28 for patch-14 backbones).
    #[arg(long)]
    size: Option<usize>,
    /// Tile large images into squares of this many pixels at native scale.
    #[arg(long)]
    tile: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a detector.
    Train {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        train: Box<TrainArgs>,
        #[command(flatten)]
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
    },
}

fn train_config(
    data: &DataArgs,
    train: &TrainArgs,
    run: &RunArgs,
    dir: &Path,
) -> Result<DetectConfig> {
    let mut cfg = if run.resume {
        DetectConfig::load(&dir.join("config.toml"))
            .context("--resume needs the run's config.toml")?
    } else {
        match &train.config {
            Some(path) => DetectConfig::load(path)?,
            None => DetectConfig::default(),
        }
    };
    if !run.resume {
        train.apply(&mut cfg.train);
        if data.data.is_some() {
            cfg.data.train = data.data.clone();
        }
        if data.val.is_some() {
            cfg.data.val = data.val.clone();
        }
        if let Some(s) = data.size {
            cfg.input.size = s;
        }
        if data.tile.is_some() {
            cfg.input.tile = data.tile;
        }
    }
    Ok(cfg)
}

fn print_outcome(o: &TrainOutcome, seconds: f64) {
    if !o.report.finished {
        println!(
            "stopped after {} steps; continue with --resume",
            o.report.steps
        );
        return;
    }
    println!();
    println!(
        "trained {} steps in {:.0} s{}",
        o.report.steps,
        seconds,
        if o.report.stopped_early {
            " (stopped early)"
        } else {
            ""
        }
    );
    if o.clipped > 0 {
        println!(
            "{} boxes reached outside their image and were clipped",
            o.clipped
        );
    }
    println!(
        "validation (best checkpoint, step {}):",
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
    println!();
    println!("run folder:   {}", o.run_dir.display());
    println!("  config:     {}", o.run_dir.join("config.toml").display());
    println!(
        "  metrics:    {}",
        o.run_dir.join("metrics.jsonl").display()
    );
    for p in &o.report.plots {
        println!("  plot:       {}", p.display());
    }
    if let Some(b) = &o.report.best_checkpoint {
        println!("  best model: {}", b.display());
    }
    println!(
        "  results:    {}",
        o.run_dir.join("val_results.json").display()
    );
    if let Some(first) = o.predictions.first() {
        println!(
            "  drawn:      {} ({} images)",
            first.parent().unwrap_or(first).display(),
            o.predictions.len()
        );
    }
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
        train: Box::default(),
        run: RunArgs {
            name: "demo".into(),
            runs_dir: "runs".into(),
            resume: false,
        },
    });
    match command {
        Command::Train { data, train, run } => {
            let dir = run.dir("detect");
            let cfg = train_config(&data, &train, &run, &dir)?;
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
            let (mut cfg, detector) = pipeline::load_run(&dir, &device)?;
            if data.is_some() {
                cfg.data.train = data.clone();
                cfg.data.val = data;
            }
            let (_, val) = pipeline::load_data(&cfg.data)?;
            let val_data = detector.examples(val.clone(), &cfg.input)?;
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
        Command::Predict { run, out, images } => {
            let device = Device::Cpu;
            let (cfg, detector) = pipeline::load_run(&run, &device)?;
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
    downstream_core::memory::tune_for_training();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
