//! `cargo xtask bench`: the project's speed instrument. Each row (a backbone's inference pass
//! or training step, a task head's step, the optimizer update, the hot ops, the machine's
//! matrix-product ceiling) is timed in a process of its own, on this project's side and,
//! with `--vs-torch`, on PyTorch's with the same shapes, threads and optimizer; the report
//! gives the ratio, samples/s, peak resident memory, achieved GFLOP/s and their share of the
//! ceiling, as a markdown table, `target/bench/latest.json` and (full runs) a dated copy
//! under `bench/results/`. `cargo xtask bench transfer` is the other study: what pretraining
//! buys on each task's real data (`transfer/`).

mod cases;
mod machine;
mod report;
mod rows;
mod torch;
mod transfer;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use cases::Timing;
use report::Report;

#[derive(clap::Subcommand)]
enum Study {
    /// What pretraining buys: scratch, frozen and full fine-tuning of every task on its real
    /// data at three training-set sizes (writes target/bench/transfer.json, tables, charts).
    Transfer(transfer::TransferArgs),
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    study: Option<Study>,
    /// Two timed runs per row instead of seven (the PyTorch side only with --vs-torch): a
    /// check that every row still runs, not a measurement.
    #[arg(long)]
    quick: bool,
    /// Time PyTorch on every row too, creating its environment (target/bench/torch-env,
    /// pinned in scripts/bench/requirements.txt) the first time.
    #[arg(long)]
    vs_torch: bool,
    /// Only rows whose name contains this text (the ceiling row always runs).
    #[arg(long)]
    only: Option<String>,
    /// Timed runs per row (after one warm-up run).
    #[arg(long)]
    runs: Option<usize>,
    /// Where latest.json and report.md go.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn repo() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::canonicalize(&here).unwrap_or(here)
}

/// `xtask bench-row ID --runs N`: times one row in this process and prints its JSON.
pub fn run_row(id: &str, runs: usize) -> Result<()> {
    downstream_core::memory::tune_for_training();
    // As the task binaries run ([`downstream_core::train::cli::main_with`]).
    let timing = downstream_core::threads::on_pool(|| cases::run(id, runs))?;
    println!("{}", serde_json::to_string(&timing)?);
    Ok(())
}

fn time_in_child(id: &str, runs: usize) -> Result<Timing> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(["bench-row", id, "--runs", &runs.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("starting the bench-row process")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("bench row `{id}` failed ({})", out.status);
    }
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("bench row `{id}` printed `{last}`"))
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(Study::Transfer(t)) = args.study {
        return transfer::run(t, &repo());
    }
    let runs = args.runs.unwrap_or(if args.quick { 2 } else { 7 });
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| repo().join("target/bench"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = std::fs::canonicalize(&out)?;
    // Both sides get every core: candle's pool and PyTorch's intra-op threads.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let torch = if args.vs_torch {
        Some(torch::TorchSide::ensure(
            &repo().join("target/bench"),
            threads,
        )?)
    } else {
        None
    };
    let chosen: Vec<rows::Row> = rows::all()
        .into_iter()
        .filter(|r| r.mode == "ceiling" || args.only.as_deref().is_none_or(|o| r.id.contains(o)))
        .collect();
    let mut machine = machine::describe(threads);
    let mut speed = Vec::new();
    let mut ceiling = None;
    for row in &chosen {
        eprintln!("bench: {} ({})", row.id, row.shape);
        let ours = time_in_child(row.id, runs)?;
        let theirs = match &torch {
            Some(side) if row.torch => {
                let t = side.time(row.id, runs)?;
                if t.timing.shape != ours.shape {
                    bail!(
                        "bench row `{}`: PyTorch timed {} and this project {}: \
                         scripts/bench/torch_side.py and xtask/src/bench/rows.rs disagree",
                        row.id,
                        t.timing.shape,
                        ours.shape
                    );
                }
                machine.torch = Some(t.versions);
                Some(t.timing)
            }
            _ => None,
        };
        if row.mode == "ceiling" {
            // The machine's ceiling: the best run of either side's large product.
            let rate = |t: &Timing| row.flops.expect("counted") / (t.min_ms * 1e-3) / 1e9;
            ceiling = Some(rate(&ours).max(theirs.as_ref().map_or(0.0, rate)));
        }
        let s = report::speed(row, &ours, theirs.as_ref(), ceiling);
        eprintln!(
            "  ours {:.1} ms{}",
            s.ms,
            s.torch_ms.map_or(String::new(), |t| format!(
                ", PyTorch {t:.1} ms, ratio {:.2}",
                s.ms / t
            ))
        );
        speed.push(s);
    }
    let report = Report {
        machine,
        quick: args.quick,
        ceiling_gflops: ceiling,
        speed,
    };
    let table = report::table(&report);
    println!("\n{table}");
    let json = serde_json::to_string_pretty(&report)?;
    downstream_core::atomic::write(&out.join("latest.json"), json.as_bytes())?;
    downstream_core::atomic::write(&out.join("report.md"), table.as_bytes())?;
    println!("written: {}", out.join("latest.json").display());
    if !args.quick && args.only.is_none() {
        let stamp = report.machine.date.replace([' ', ':'], "-");
        let dated = repo().join(format!("bench/results/{stamp}.json"));
        std::fs::create_dir_all(dated.parent().expect("has a parent"))?;
        downstream_core::atomic::write(&dated, json.as_bytes())?;
        println!("written: {}", dated.display());
    }
    Ok(())
}
