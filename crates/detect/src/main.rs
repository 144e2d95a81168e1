//! `cargo run --release -p detect`: fine-tune a pretrained ViT into an object detector.
//!
//! With no arguments it trains on the built-in shapes set with the default backbone,
//! evaluates, draws predictions and prints where everything is. The subcommands are here;
//! the flags that change a configuration, and how they map onto it, are in `flags.rs`.

mod flags;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use candle_core::Device;
use clap::{Parser, Subcommand};
use detect::data::coco;
use detect::metric::coco_eval;
use detect::model::postprocess::PostProcess;
use detect::pipeline::{self, TrainOutcome};
use downstream_core::train::config::{DataArgs, RunArgs, TrainArgs};
use downstream_core::train::summary;
use downstream_core::train::trainer::RunOptions;
use flags::{train_config, InputArgs, ModelArgs, PostArgs};

#[derive(Parser)]
#[command(
    name = "detect",
    about = "Fine-tune a pretrained ViT into an object detector"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
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
