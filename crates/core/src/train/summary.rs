//! What a `train` command prints when it ends: how long it trained, and where everything the
//! run wrote is, so that a user can open it. A task adds its own metrics and outputs.

use std::path::{Path, PathBuf};

use super::trainer::FitReport;

/// Prints the end of a run: the steps and time, or how to continue an interrupted run; then,
/// for a finished run, its folder with the configuration, log, plots, best checkpoint and the
/// task's own `outputs` (label, path). Returns whether the run finished.
pub fn print_training(report: &FitReport, seconds: f64) -> bool {
    if !report.finished {
        println!(
            "stopped after {} steps; continue with --resume",
            report.steps
        );
        return false;
    }
    println!();
    println!(
        "trained {} steps in {seconds:.0} s{}",
        report.steps,
        if report.stopped_early {
            " (stopped early)"
        } else {
            ""
        }
    );
    true
}

/// Prints where a finished run's files are.
pub fn print_run_files(report: &FitReport, dir: &Path, outputs: &[(&str, PathBuf)]) {
    let line =
        |label: &str, path: &Path| println!("  {:<11} {}", format!("{label}:"), path.display());
    println!();
    println!("run folder:   {}", dir.display());
    line("config", &dir.join("config.toml"));
    line("metrics", &dir.join(super::metrics_log::METRICS_FILE));
    for p in &report.plots {
        line("plot", p);
    }
    if let Some(b) = &report.best_checkpoint {
        line("best model", b);
    }
    for (label, path) in outputs {
        line(label, path);
    }
}
