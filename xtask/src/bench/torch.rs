//! The PyTorch side: its Python environment, made on demand, and one process per row.
//!
//! `--vs-torch` creates `target/bench/torch-env` (a virtual environment with the pinned
//! torch and transformers of `scripts/bench/requirements.txt`) the first time, so that the
//! side-by-side numbers need no manual pip step; the environment is rebuilt when the pins
//! change.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::cases::Timing;
use super::repo;

pub struct TorchSide {
    python: PathBuf,
    script: PathBuf,
    threads: usize,
}

/// The PyTorch row's timing and the versions it ran with.
pub struct TorchTiming {
    pub timing: Timing,
    pub versions: String,
}

impl TorchSide {
    /// The environment under `target_dir`, created or updated first if its pins changed.
    pub fn ensure(target_dir: &Path, threads: usize) -> Result<Self> {
        let requirements = repo().join("scripts/bench/requirements.txt");
        let pins = std::fs::read_to_string(&requirements)
            .with_context(|| format!("reading {}", requirements.display()))?;
        let env = target_dir.join("torch-env");
        let python = env.join("bin/python");
        let stamp = env.join(".installed");
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(pins.as_str()) {
            eprintln!(
                "creating the PyTorch environment in {} (python3 -m venv, then pip install -r \
                 {}; a one-time download of about 1 GB)",
                env.display(),
                requirements.display()
            );
            if !python.is_file() {
                run(Command::new("python3").args(["-m", "venv"]).arg(&env))?;
            }
            run(Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "-r"])
                .arg(&requirements))?;
            std::fs::write(&stamp, &pins)?;
        }
        Ok(Self {
            python,
            script: repo().join("scripts/bench/torch_side.py"),
            threads,
        })
    }

    pub fn time(&self, id: &str, runs: usize) -> Result<TorchTiming> {
        let out = Command::new(&self.python)
            .arg(&self.script)
            .args(["--row", id, "--runs", &runs.to_string()])
            .args(["--threads", &self.threads.to_string()])
            .output()
            .with_context(|| format!("starting {}", self.python.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "the PyTorch side of `{id}` failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let last = stdout
            .lines()
            .last()
            .with_context(|| format!("the PyTorch side of `{id}` printed nothing"))?;
        let value: serde_json::Value = serde_json::from_str(last)
            .with_context(|| format!("the PyTorch side of `{id}` printed `{last}`"))?;
        let versions = format!(
            "torch {}, transformers {}",
            value["torch"].as_str().unwrap_or("?"),
            value["transformers"].as_str().unwrap_or("?")
        );
        Ok(TorchTiming {
            timing: serde_json::from_value(value)?,
            versions,
        })
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
