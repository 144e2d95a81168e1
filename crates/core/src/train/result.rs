//! `result.json`: what a finished run scored with its best checkpoint on the whole validation
//! set, machine-readable, so that scripts and studies (`cargo xtask bench transfer`) read a
//! run's outcome instead of parsing what it printed. It is written atomically after
//! everything else a run writes, so its presence means the run finished.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::trainer::FitReport;

/// The file's name in a run folder.
pub const RESULT_FILE: &str = "result.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The metric that chose the best checkpoint (higher is better).
    pub main_metric: String,
    /// The best checkpoint's validation metrics, on the scale the task logs them; a value
    /// with nothing to average (COCO's -1, an undefined mean) is kept as the task gives it,
    /// NaN as `null`.
    #[serde(deserialize_with = "super::metrics_log::nan_if_null_map")]
    pub metrics: BTreeMap<String, f64>,
    /// Validation examples scored.
    pub val_examples: usize,
    pub steps: u64,
    pub best_step: Option<u64>,
    pub stopped_early: bool,
}

impl RunResult {
    pub fn new(
        report: &FitReport,
        main_metric: &str,
        metrics: BTreeMap<String, f64>,
        val_examples: usize,
    ) -> Self {
        Self {
            main_metric: main_metric.to_string(),
            metrics,
            val_examples,
            steps: report.steps,
            best_step: report.best_step,
            stopped_early: report.stopped_early,
        }
    }

    /// The main metric's value.
    pub fn main(&self) -> Option<f64> {
        self.metrics.get(&self.main_metric).copied()
    }
}

pub fn write(run_dir: &Path, result: &RunResult) -> Result<()> {
    let json = serde_json::to_string_pretty(result)?;
    crate::atomic::write(&run_dir.join(RESULT_FILE), json.as_bytes())
}

/// The result of a finished run; an error naming the file if it is missing or unreadable.
pub fn read(run_dir: &Path) -> Result<RunResult> {
    let path = run_dir.join(RESULT_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (has the run finished?)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a run result", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_reads_back_with_its_undefined_values() {
        let dir = tempfile::tempdir().unwrap();
        let result = RunResult {
            main_metric: "AP".into(),
            metrics: [("AP".to_string(), 0.25), ("mAcc".to_string(), f64::NAN)].into(),
            val_examples: 17,
            steps: 200,
            best_step: Some(150),
            stopped_early: false,
        };
        write(dir.path(), &result).unwrap();
        let back = read(dir.path()).unwrap();
        assert_eq!(back.main(), Some(0.25));
        assert!(back.metrics["mAcc"].is_nan());
        assert_eq!((back.steps, back.best_step), (200, Some(150)));
        let err = read(&dir.path().join("missing")).unwrap_err();
        assert!(format!("{err:#}").contains(RESULT_FILE), "{err:#}");
    }
}
