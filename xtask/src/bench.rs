//! `cargo xtask bench`: the backbone and op timings of candle (this project) next to PyTorch on
//! the same shapes and thread count, as one table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// 3 timed runs per case instead of 7.
    #[arg(long)]
    quick: bool,
    /// Only cases whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Skip the PyTorch side (scripts/bench/torch_backbone.py).
    #[arg(long)]
    no_torch: bool,
    /// Where the raw timings and the table go.
    #[arg(long, default_value = "runs/bench")]
    out: PathBuf,
}

#[derive(Deserialize)]
struct Record {
    name: String,
    shape: String,
    runs: usize,
    median_s: f64,
}

fn read(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}: line {}", path.display(), i + 1))
        })
        .collect()
}

fn common_flags(args: &BenchArgs, json: &Path) -> Vec<String> {
    let mut flags = vec!["--json".to_string(), json.display().to_string()];
    if args.quick {
        flags.push("--quick".into());
    }
    if let Some(only) = &args.only {
        flags.extend(["--only".into(), only.clone()]);
    }
    flags
}

pub fn run(args: BenchArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let out = std::fs::canonicalize(&args.out)?;
    let candle_json = out.join("candle.jsonl");
    let torch_json = out.join("torch.jsonl");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "bench",
            "--package",
            "downstream-core",
            "--bench",
            "backbone",
            "--",
        ])
        .args(common_flags(&args, &candle_json))
        .status()?;
    if !status.success() {
        bail!("the candle benchmark failed");
    }
    let candle = read(&candle_json)?;
    // Same thread count on both sides: candle's pool sizes itself from the machine.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let torch = if args.no_torch {
        None
    } else {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench/torch_backbone.py");
        let status = Command::new("python3")
            .arg(&script)
            .args(common_flags(&args, &torch_json))
            .args(["--threads", &threads.to_string()])
            .status();
        match status {
            Ok(s) if s.success() => Some(read(&torch_json)?),
            _ => {
                eprintln!(
                    "PyTorch side skipped: `python3 scripts/bench/torch_backbone.py` failed \
                     (pip install -r scripts/reference/requirements.txt)"
                );
                None
            }
        }
    };
    let table = table(&candle, torch.as_deref(), threads);
    println!("\n{table}");
    let report = out.join("report.md");
    std::fs::write(&report, &table).with_context(|| format!("writing {}", report.display()))?;
    println!("written: {}", report.display());
    Ok(())
}

fn table(candle: &[Record], torch: Option<&[Record]>, threads: usize) -> String {
    let torch: BTreeMap<&str, &Record> = torch
        .unwrap_or_default()
        .iter()
        .map(|r| (r.name.as_str(), r))
        .collect();
    let mut s = format!(
        "Median wall time of {} runs, {threads} threads, release build.\n\n\
         | case | shape | candle (this project) | PyTorch | candle / PyTorch |\n\
         | --- | --- | --- | --- | --- |\n",
        candle.first().map_or(0, |r| r.runs)
    );
    for r in candle {
        let (t, ratio) = match torch.get(r.name.as_str()) {
            Some(t) => (
                format!("{:.4} s", t.median_s),
                format!("{:.2}x", r.median_s / t.median_s),
            ),
            None => ("-".into(), "-".into()),
        };
        s.push_str(&format!(
            "| {} | {} | {:.4} s | {t} | {ratio} |\n",
            r.name, r.shape, r.median_s
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, median_s: f64) -> Record {
        Record {
            name: name.into(),
            shape: "8x3".into(),
            runs: 7,
            median_s,
        }
    }

    #[test]
    fn the_table_pairs_cases_by_name_and_gives_the_ratio() {
        let candle = [rec("forward", 3.0), rec("only here", 1.0)];
        let torch = [rec("forward", 1.5), rec("not in candle", 9.0)];
        let t = table(&candle, Some(&torch), 2);
        assert!(t.contains("7 runs, 2 threads"), "{t}");
        assert!(
            t.contains("| forward | 8x3 | 3.0000 s | 1.5000 s | 2.00x |"),
            "{t}"
        );
        assert!(t.contains("| only here | 8x3 | 1.0000 s | - | - |"), "{t}");
        assert!(!t.contains("not in candle"), "{t}");
        let alone = table(&candle, None, 2);
        assert!(
            alone.contains("| forward | 8x3 | 3.0000 s | - | - |"),
            "{alone}"
        );
    }
}
