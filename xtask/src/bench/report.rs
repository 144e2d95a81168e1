//! The bench's output: one record per row (ours, PyTorch's where it ran, the achieved
//! GFLOP/s and their share of the machine's ceiling), as a markdown table and as JSON.

use serde::{Deserialize, Serialize};

use super::cases::Timing;
use super::machine::Machine;
use super::rows::Row;

/// One row of `latest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Speed {
    pub id: String,
    pub model: String,
    pub mode: String,
    pub batch: usize,
    pub shape: String,
    pub runs: usize,
    /// Median wall time of this project's side.
    pub ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub samples_per_s: f64,
    pub peak_rss_mb: f64,
    /// Achieved matrix-product rate, from the row's analytic FLOP count.
    pub gflops: Option<f64>,
    /// `gflops` over the machine's ceiling measured in the same run.
    pub peak_fraction: Option<f64>,
    pub torch_ms: Option<f64>,
    pub torch_min_ms: Option<f64>,
    pub torch_max_ms: Option<f64>,
    pub torch_peak_rss_mb: Option<f64>,
    /// `ms / torch_ms`: below 1 is faster than PyTorch.
    pub ratio: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    pub quick: bool,
    /// The ceiling row's rate, GFLOP/s.
    pub ceiling_gflops: Option<f64>,
    pub speed: Vec<Speed>,
}

pub fn speed(row: &Row, ours: &Timing, torch: Option<&Timing>, ceiling: Option<f64>) -> Speed {
    let gflops = row.flops.map(|f| f / (ours.median_ms * 1e-3) / 1e9);
    Speed {
        id: row.id.to_string(),
        model: row.model.to_string(),
        mode: row.mode.to_string(),
        batch: row.batch,
        shape: row.shape.clone(),
        runs: ours.runs,
        ms: ours.median_ms,
        min_ms: ours.min_ms,
        max_ms: ours.max_ms,
        samples_per_s: row.batch as f64 / (ours.median_ms * 1e-3),
        peak_rss_mb: ours.peak_rss_mb,
        gflops,
        peak_fraction: gflops.zip(ceiling).map(|(g, c)| g / c),
        torch_ms: torch.map(|t| t.median_ms),
        torch_min_ms: torch.map(|t| t.min_ms),
        torch_max_ms: torch.map(|t| t.max_ms),
        torch_peak_rss_mb: torch.map(|t| t.peak_rss_mb),
        ratio: torch.map(|t| ours.median_ms / t.median_ms),
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

/// Two decimals, or two significant digits for a ratio far below one (the frozen epoch's).
fn ratio(x: f64) -> String {
    if x >= 0.1 || x <= 0.0 || !x.is_finite() {
        format!("{x:.2}x")
    } else {
        format!("{:.1$}x", x, (1.0 - x.log10().floor()) as usize)
    }
}

pub fn table(report: &Report) -> String {
    let m = &report.machine;
    let runs = report.speed.first().map_or(0, |r| r.runs);
    let mut s = format!(
        "{} ({} threads, matrix kernels {}), commit {}, {} UTC{}. Median of {runs} runs \
         (min-max in brackets), release build{}.\n\n\
         | row | shape | ours ms | PyTorch ms | ours / PyTorch | samples/s | GFLOP/s | of ceiling | peak RSS MB (ours / PyTorch) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        m.cpu,
        m.threads,
        m.matmul_kernels,
        m.commit,
        m.date,
        m.torch
            .as_ref()
            .map_or(String::new(), |t| format!(", {t}")),
        if report.quick { ", --quick" } else { "" },
    );
    for r in &report.speed {
        s.push_str(&format!(
            "| {} | {} | {:.1} ({:.1}-{:.1}) | {} | {} | {:.1} | {} | {} | {:.0} / {} |\n",
            r.id,
            r.shape,
            r.ms,
            r.min_ms,
            r.max_ms,
            match (r.torch_ms, r.torch_min_ms, r.torch_max_ms) {
                (Some(t), Some(lo), Some(hi)) => format!("{t:.1} ({lo:.1}-{hi:.1})"),
                _ => "-".into(),
            },
            opt(r.ratio, ratio),
            r.samples_per_s,
            opt(r.gflops, |x| format!("{x:.0}")),
            opt(r.peak_fraction, |x| format!("{:.0}%", 100.0 * x)),
            r.peak_rss_mb,
            opt(r.torch_peak_rss_mb, |x| format!("{x:.0}")),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::{machine, rows};
    use super::*;

    fn timing(id: &str, ms: f64) -> Timing {
        Timing {
            id: id.into(),
            shape: String::new(),
            runs: 3,
            median_ms: ms,
            min_ms: ms * 0.9,
            max_ms: ms * 1.2,
            peak_rss_mb: 100.0,
        }
    }

    #[test]
    fn a_row_reports_its_rate_its_share_of_the_ceiling_and_its_ratio() {
        let row = rows::find("op matmul (linear)").unwrap();
        let flops = row.flops.unwrap();
        // Ours at 1.5x PyTorch's time, on a machine whose ceiling is twice our rate.
        let ms = flops / 1e9 / 100.0 * 1e3; // 100 GFLOP/s
        let s = speed(
            &row,
            &timing(row.id, ms),
            Some(&timing(row.id, ms / 1.5)),
            Some(200.0),
        );
        assert!((s.gflops.unwrap() - 100.0).abs() < 1e-9);
        assert!((s.peak_fraction.unwrap() - 0.5).abs() < 1e-12);
        assert!((s.ratio.unwrap() - 1.5).abs() < 1e-12);
        assert!((s.samples_per_s - 1e3 / ms).abs() < 1e-9);
        let alone = speed(&row, &timing(row.id, ms), None, None);
        assert!(alone.ratio.is_none() && alone.torch_ms.is_none() && alone.peak_fraction.is_none());
        let report = Report {
            machine: machine::describe(2),
            quick: false,
            ceiling_gflops: Some(200.0),
            speed: vec![s, alone],
        };
        let t = table(&report);
        assert!(t.contains("| 1.50x | "), "{t}");
        assert!(t.contains("| 50% |"), "{t}");
        assert_eq!(
            t.lines().filter(|l| l.starts_with("| op matmul")).count(),
            2
        );
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        for key in [
            "model",
            "mode",
            "batch",
            "ms",
            "samples_per_s",
            "peak_rss_mb",
            "gflops",
            "peak_fraction",
            "torch_ms",
            "ratio",
        ] {
            assert!(json["speed"][0].get(key).is_some(), "{key}");
        }
        assert!(json["speed"][1]["ratio"].is_null());
        assert_eq!(ratio(0.00476), "0.0048x");
        assert_eq!(ratio(1.5), "1.50x");
    }
}
