//! `cargo run --release -p detect -- <command>`: object detection on a pretrained ViT.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use detect::data::coco;
use detect::metric::coco_eval;

#[derive(Parser)]
#[command(
    name = "detect",
    about = "Fine-tune a pretrained ViT into an object detector"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// COCO bounding-box evaluation of a results file against ground truth (pycocotools-exact).
    Eval {
        /// Ground truth, COCO JSON.
        #[arg(long)]
        gt: PathBuf,
        /// Detections, a COCO results JSON list.
        #[arg(long)]
        dt: PathBuf,
        /// Print one JSON object with the twelve statistics.
        #[arg(long)]
        json: bool,
    },
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Eval { gt, dt, json } => {
            let gt = coco::load_annotations(&gt)?;
            let dets = coco::load_results(&dt)?;
            let stats = coco_eval::evaluate(&gt, &dets)?;
            if json {
                println!("{}", stats.to_json());
            } else {
                print!("{}", stats.summary());
            }
            if stats.dropped_detections > 0 {
                eprintln!(
                    "note: {} detections of categories not in the ground truth were ignored",
                    stats.dropped_detections
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
