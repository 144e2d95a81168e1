//! What a `train` command prints when it ends: how long it trained, and where everything the
//! run wrote is, so that a user can open it. A task adds its own metrics and outputs.

use std::path::Path;

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

/// Prints where a finished run's files are; `outputs` are the task's own, as (label, where).
pub fn print_run_files(report: &FitReport, dir: &Path, outputs: &[(&str, String)]) {
    let line = |label: &str, what: &dyn std::fmt::Display| {
        println!("  {:<11} {what}", format!("{label}:"))
    };
    println!();
    println!("run folder:   {}", dir.display());
    line("config", &dir.join("config.toml").display());
    line(
        "metrics",
        &dir.join(super::metrics_log::METRICS_FILE).display(),
    );
    for p in &report.plots {
        line("plot", &p.display());
    }
    if let Some(b) = &report.best_checkpoint {
        line("best model", &b.display());
    }
    let result = dir.join(super::result::RESULT_FILE);
    if result.is_file() {
        line("result", &result.display());
    }
    for (label, what) in outputs {
        line(label, what);
    }
}
