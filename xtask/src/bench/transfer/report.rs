//! The study's output: one record per (cell, metric) as `transfer.json`, a markdown table
//! per task (each init's mean over seeds with the range the seeds span, and which
//! differences stand outside that range), and one chart per task of the first metric against
//! the training-set size, one line per init, drawn with the project's plotting code.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use downstream_core::train::plot::{line_chart, Line, Point};
use serde::{Deserialize, Serialize};

use super::super::machine::Machine;
use super::plan::{Init, TaskPlan};

/// One line of `transfer.json`'s `transfer` list.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub task: String,
    pub dataset: String,
    pub train_size: usize,
    pub init: String,
    pub metric: String,
    pub value: f64,
    pub seed: u64,
    pub steps: u64,
    pub wall_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Study {
    pub machine: Machine,
    /// A `--quick` check: its numbers are not claims.
    pub quick: bool,
    /// Every planned cell has finished.
    pub complete: bool,
    pub cells_planned: usize,
    pub transfer: Vec<Record>,
}

/// The seeds' values of one (size, init): mean and range.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub wall_s: f64,
}

impl Summary {
    /// Of the finite values (a metric a run did not report is NaN, and must not rank).
    fn of(values: &[(f64, f64)]) -> Option<Self> {
        let values: Vec<(f64, f64)> = values.iter().copied().filter(|v| v.0.is_finite()).collect();
        let n = values.len();
        if n == 0 {
            return None;
        }
        let (low, high) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
                (l.min(v.0), h.max(v.0))
            });
        Some(Self {
            n,
            mean: values.iter().map(|v| v.0).sum::<f64>() / n as f64,
            low,
            high,
            wall_s: values.iter().map(|v| v.1).sum::<f64>() / n as f64,
        })
    }

    /// Whether the two ranges of seeds overlap: the difference of their means is then inside
    /// what the seeds alone move the metric by. Unknown (`None`) with a single seed on
    /// either side.
    pub fn overlaps(&self, other: &Summary) -> Option<bool> {
        (self.n > 1 && other.n > 1).then_some(self.low <= other.high && other.low <= self.high)
    }
}

/// (size, init) -> summary of `metric` for `task`.
pub fn summaries(
    records: &[Record],
    task: &str,
    metric: &str,
) -> BTreeMap<(usize, String), Summary> {
    let mut groups: BTreeMap<(usize, String), Vec<(f64, f64)>> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.task == task && r.metric == metric)
    {
        groups
            .entry((r.train_size, r.init.clone()))
            .or_default()
            .push((r.value, r.wall_s));
    }
    groups
        .into_iter()
        .filter_map(|(k, v)| Summary::of(&v).map(|s| (k, s)))
        .collect()
}

fn minutes(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.0} s")
    } else {
        format!("{}:{:02}", (secs / 60.0) as u64, (secs % 60.0) as u64)
    }
}

/// For each size: the inits from best to worst by their mean, each step down marked `>` where
/// the two ranges of seeds do not overlap, `~` where they do, `?` with one seed.
pub fn ranking(by: &BTreeMap<(usize, String), Summary>, size: usize, decimals: usize) -> String {
    let mut at: Vec<(&String, &Summary)> = by
        .iter()
        .filter(|((s, _), _)| *s == size)
        .map(|((_, init), v)| (init, v))
        .collect();
    at.sort_by(|a, b| b.1.mean.total_cmp(&a.1.mean));
    let mut out = String::new();
    for (i, (init, s)) in at.iter().enumerate() {
        if i > 0 {
            let sign = match at[i - 1].1.overlaps(s) {
                Some(false) => ">",
                Some(true) => "~",
                None => "?",
            };
            let _ = write!(out, " {sign} ");
        }
        let _ = write!(out, "{init} {:.decimals$}", s.mean);
    }
    out
}

/// The markdown tables of a study: per task, a row per size and a column per init.
pub fn table(study: &Study, plans: &[TaskPlan], inits: &[Init]) -> String {
    let mut out = String::new();
    if study.quick {
        out.push_str("A `--quick` check: one size, one seed, a few steps; not a measurement.\n\n");
    }
    for plan in plans {
        let metric = plan.metrics[0];
        let scaled: Vec<Record> = study
            .transfer
            .iter()
            .filter(|r| r.task == plan.task && r.metric == metric.name)
            .map(|r| Record {
                value: r.value * metric.scale,
                ..r.clone()
            })
            .collect();
        let by = summaries(&scaled, plan.task, metric.name);
        let _ = writeln!(
            out,
            "### {} on {} ({}, {} steps of {}; mean over seeds, [range], wall time)\n",
            plan.task, plan.dataset, metric.name, plan.steps, plan.batch
        );
        let _ = writeln!(
            out,
            "| training examples | {} | ranking (`>`: ranges apart, `~`: inside the seeds' range, `?`: one seed) |",
            inits.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(" | ")
        );
        let _ = writeln!(out, "|---:|{}---|", "---|".repeat(inits.len()));
        for &size in &plan.sizes {
            let d = metric.decimals;
            let cells: Vec<String> = inits
                .iter()
                .map(|init| match by.get(&(size, init.to_string())) {
                    None => "not run".to_string(),
                    Some(s) if s.n == 1 => {
                        format!("{:.d$} (1 seed, {})", s.mean, minutes(s.wall_s))
                    }
                    Some(s) => format!(
                        "{:.d$} [{:.d$}, {:.d$}] ({})",
                        s.mean,
                        s.low,
                        s.high,
                        minutes(s.wall_s)
                    ),
                })
                .collect();
            let pct = 100.0 * size as f64 / plan.train_total as f64;
            let _ = writeln!(
                out,
                "| {size} ({pct:.0}%) | {} | {} |",
                cells.join(" | "),
                ranking(&by, size, d)
            );
        }
        out.push('\n');
    }
    out
}

/// One PNG per task in `dir`: the first metric against the training-set size (log scale),
/// a line per init through the seeds' means, bars over their range. Returns the paths.
pub fn charts(
    study: &Study,
    plans: &[TaskPlan],
    inits: &[Init],
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for plan in plans {
        let metric = plan.metrics[0];
        let by = summaries(&study.transfer, plan.task, metric.name);
        let lines: Vec<Line> = inits
            .iter()
            .map(|init| Line {
                label: init.to_string(),
                points: plan
                    .sizes
                    .iter()
                    .filter_map(|&size| by.get(&(size, init.to_string())).map(|s| (size, s)))
                    .map(|(size, s)| Point {
                        x: size as f64,
                        y: s.mean * metric.scale,
                        low: s.low * metric.scale,
                        high: s.high * metric.scale,
                    })
                    .collect(),
            })
            .collect();
        if lines.iter().all(|l| l.points.is_empty()) {
            continue;
        }
        let path = dir.join(format!("transfer-{}.png", plan.task));
        let title = format!(
            "{} on {}: {} after {} steps",
            plan.task, plan.dataset, metric.name, plan.steps
        );
        line_chart(
            &path,
            &title,
            "training examples",
            metric.name,
            true,
            &lines,
        )?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(size: usize, init: &str, seed: u64, value: f64) -> Record {
        Record {
            task: "segment".into(),
            dataset: "d".into(),
            train_size: size,
            init: init.into(),
            metric: "mIoU".into(),
            value,
            seed,
            steps: 10,
            wall_s: 60.0 + seed as f64,
        }
    }

    #[test]
    fn seeds_give_a_mean_a_range_and_an_honest_ranking() {
        let records = vec![
            rec(10, "full", 0, 0.40),
            rec(10, "full", 1, 0.44),
            rec(10, "frozen", 0, 0.30),
            rec(10, "frozen", 1, 0.32),
            rec(10, "scratch", 0, 0.29),
            rec(10, "scratch", 1, 0.31),
            rec(30, "full", 0, 0.5),
        ];
        let by = summaries(&records, "segment", "mIoU");
        let full = &by[&(10, "full".to_string())];
        assert!((full.mean - 0.42).abs() < 1e-12);
        assert_eq!((full.low, full.high, full.n), (0.40, 0.44, 2));
        assert!((full.wall_s - 60.5).abs() < 1e-12);
        // full's range is above frozen's; frozen's and scratch's overlap.
        assert_eq!(
            ranking(&by, 10, 2),
            "full 0.42 > frozen 0.31 ~ scratch 0.30"
        );
        assert_eq!(ranking(&by, 30, 2), "full 0.50");
        assert_eq!(full.overlaps(&by[&(30, "full".to_string())]), None);
        assert!(summaries(&records, "detect", "mIoU").is_empty());
    }
}
