//! `cargo xtask bench transfer`: what pretraining buys, measured. For each task on its real
//! data set, at about 10%, 30% and 100% of the training split, the same architecture is
//! trained from random weights (`scratch`), as a frozen pretrained backbone with a trained
//! head (`frozen`), and fine-tuned end to end (`full`; `partial:N` on request), each for the
//! task's one budget of optimizer steps, with two seeds; the best checkpoint's validation
//! metric is recorded with the wall time. Every cell is a run of the task's own binary into
//! `target/bench/transfer/runs/`, so a killed study continues from its finished cells (and an
//! unfinished cell from its last checkpoint) when started again.

mod cell;
mod plan;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use plan::{Init, TaskPlan};
use report::{Record, Study};

#[derive(clap::Args)]
pub struct TransferArgs {
    /// One small size, one seed, a few steps per task: a check that every cell still runs
    /// end to end (the JSON says `quick: true`; its numbers are not claims).
    #[arg(long)]
    quick: bool,
    /// Tasks to run (default: all three).
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// Initialisations compared: scratch, frozen, full, partial:N.
    #[arg(long, value_delimiter = ',', default_value = "scratch,frozen,full")]
    inits: Vec<String>,
    /// Training seeds per cell (default 2; 1 with --quick).
    #[arg(long)]
    seeds: Option<u64>,
    /// Where transfer.json, the tables, charts and the runs go.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use the task binaries beside this one as they are, without building them first (a
    /// long study run from a copy, while the working tree changes).
    #[arg(long)]
    no_build: bool,
    /// Run nothing: write the report, charts and dated copy from the cells finished so far
    /// (`complete: false` if some are missing).
    #[arg(long)]
    report_only: bool,
}

pub fn run(args: TransferArgs, repo: &Path) -> Result<()> {
    let all = if args.quick {
        plan::quick()
    } else {
        plan::full()
    };
    for t in &args.tasks {
        if !all.iter().any(|p| p.task == t) {
            bail!("unknown task `{t}`: detect, segment or translate");
        }
    }
    let plans: Vec<TaskPlan> = all
        .into_iter()
        .filter(|p| args.tasks.is_empty() || args.tasks.iter().any(|t| t == p.task))
        .collect();
    let inits = args
        .inits
        .iter()
        .map(|s| Init::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let seeds = args.seeds.unwrap_or(if args.quick { 1 } else { 2 });
    if seeds == 0 || inits.is_empty() {
        bail!("--seeds and --inits must name at least one");
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| repo.join("target/bench"));
    let study_dir = out.join(if args.quick {
        "transfer-quick"
    } else {
        "transfer"
    });
    std::fs::create_dir_all(&study_dir)
        .with_context(|| format!("creating {}", study_dir.display()))?;
    let bin_dir = if args.no_build || args.report_only {
        let exe = std::env::current_exe()?;
        exe.parent().expect("in a folder").to_path_buf()
    } else {
        build(repo, &plans)?
    };

    let cells = plan::cells(&plans, &inits, seeds);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut study = Study {
        machine: super::machine::describe(threads),
        quick: args.quick,
        complete: false,
        cells_planned: cells.len(),
        transfer: Vec::new(),
    };
    for (i, c) in cells.iter().enumerate() {
        let plan = plans.iter().find(|p| p.task == c.task).expect("planned");
        let paths = cell::Paths::of(&study_dir, c);
        let earlier = cell::finished(&paths)?;
        let before = earlier.is_some();
        if args.report_only && !before {
            continue;
        }
        eprint!(
            "transfer [{}/{}] {} {} ... ",
            i + 1,
            cells.len(),
            c.task,
            c.name()
        );
        let done = match earlier {
            Some(done) => done,
            None => cell::run(&bin_dir.join(c.task), repo, plan, c, &paths)?,
        };
        let main = plan.metrics[0];
        eprintln!(
            "{} {:.3}{} ({:.0} s)",
            main.name,
            done.metrics.get(main.name).copied().unwrap_or(f64::NAN) * main.scale,
            if before { ", finished earlier" } else { "" },
            done.wall_s
        );
        for m in &plan.metrics {
            study.transfer.push(Record {
                task: c.task.into(),
                dataset: plan.dataset.into(),
                train_size: c.train_size,
                init: c.init.to_string(),
                metric: m.name.into(),
                value: done.metrics.get(m.name).copied().unwrap_or(f64::NAN),
                seed: c.seed,
                steps: done.steps,
                wall_s: done.wall_s,
            });
        }
        // Written after every cell, so that a long study can be read while it runs.
        write(&study, &plans, &inits, &out, false)?;
    }
    let finished = study
        .transfer
        .iter()
        .map(|r| (&r.task, r.train_size, &r.init, r.seed));
    study.complete =
        finished.collect::<std::collections::HashSet<_>>().len() == study.cells_planned;
    let table = write(&study, &plans, &inits, &out, true)?;
    println!("\n{table}");
    println!("written: {}", out.join("transfer.json").display());
    if !args.quick {
        let stamp = study.machine.date.replace([' ', ':'], "-");
        let results = repo.join("bench/results");
        std::fs::create_dir_all(&results)?;
        let json = serde_json::to_string_pretty(&study)?;
        let dated = results.join(format!("transfer-{stamp}.json"));
        downstream_core::atomic::write(&dated, json.as_bytes())?;
        for chart in report::charts(&study, &plans, &inits, &results)? {
            let named = results.join(format!(
                "transfer-{stamp}-{}",
                chart
                    .file_name()
                    .expect("a file")
                    .to_string_lossy()
                    .trim_start_matches("transfer-")
            ));
            std::fs::rename(&chart, &named)?;
            println!("written: {}", named.display());
        }
        println!("written: {}", dated.display());
    }
    Ok(())
}

/// `transfer.json`, `transfer.md` and (with `charts`) one PNG per task into `out`; returns
/// the markdown.
fn write(
    study: &Study,
    plans: &[TaskPlan],
    inits: &[Init],
    out: &Path,
    charts: bool,
) -> Result<String> {
    let json = serde_json::to_string_pretty(study)?;
    downstream_core::atomic::write(&out.join("transfer.json"), json.as_bytes())?;
    let table = report::table(study, plans, inits);
    downstream_core::atomic::write(&out.join("transfer.md"), table.as_bytes())?;
    if charts {
        for path in report::charts(study, plans, inits, out)? {
            println!("written: {}", path.display());
        }
    }
    Ok(table)
}

/// Builds the tasks' binaries in release mode beside this one; returns their folder.
fn build(repo: &Path, plans: &[TaskPlan]) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo).args(["build", "--release"]);
    for p in plans {
        cmd.args(["-p", p.task]);
    }
    eprintln!(
        "transfer: building {}",
        plans.iter().map(|p| p.task).collect::<Vec<_>>().join(", ")
    );
    let status = cmd.status().context("starting cargo")?;
    if !status.success() {
        bail!("building the task binaries failed ({status})");
    }
    let exe = std::env::current_exe()?;
    Ok(exe.parent().expect("in a folder").to_path_buf())
}
