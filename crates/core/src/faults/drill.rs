//! The kill drill each task's tests run on its real binary: a training run killed outright
//! (SIGKILL: no handler runs, as when a machine is switched off or the kernel's OOM killer
//! strikes) at seeded random moments, resumed after each kill, must end bit for bit where a
//! run that was never interrupted ends: the same last and best checkpoint files (weights,
//! optimizer moments, position), the same metrics log (less its timings) and the same
//! result. The moments fall anywhere, during start-up, a step, an evaluation or a checkpoint
//! write; each is printed with the seed, so that a failure can be reproduced.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rand::{Rng, SeedableRng};

use crate::train::metrics_log::{read_records, Record, METRICS_FILE};
use crate::train::{checkpoint, result};

/// A drill: the task's `train` command for a run named `name` under the runs folder `runs`
/// (without `--resume`; the drill adds it), and the run folder it makes.
pub struct Drill<'a> {
    pub task: &'a str,
    pub command: &'a dyn Fn(&Path, &str) -> Command,
    /// How many times the interrupted run is killed, for each seed of the kill moments.
    pub kills: usize,
    pub seeds: &'a [u64],
}

/// The command a drill runs for a task whose whole run is in one configuration file:
/// `BIN train --config CONFIG --runs-dir RUNS --name NAME`.
pub fn config_command(bin: &str, config: &Path) -> impl Fn(&Path, &str) -> Command {
    let (bin, config) = (bin.to_string(), config.to_path_buf());
    move |runs: &Path, name: &str| {
        let mut cmd = Command::new(&bin);
        cmd.args(["train", "--config"])
            .arg(&config)
            .arg("--runs-dir")
            .arg(runs)
            .args(["--name", name]);
        cmd
    }
}

fn run_to_end(mut cmd: Command, what: &str) -> Result<Duration> {
    let started = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(started.elapsed())
}

/// The metrics log without its wall-clock fields, which no two runs share.
fn log_without_timings(dir: &Path) -> Result<Vec<String>> {
    read_records(&dir.join(METRICS_FILE))?
        .into_iter()
        .map(|mut r| {
            if let Record::Step(s) = &mut r {
                s.samples_per_s = 0.0;
            }
            Ok(serde_json::to_string(&r)?)
        })
        .collect()
}

/// Runs the drill once per seed, each in a fresh folder; an error says which kill schedule
/// broke what.
pub fn drill(d: &Drill) -> Result<()> {
    for &seed in d.seeds {
        drill_seed(d, seed)?;
    }
    Ok(())
}

fn drill_seed(d: &Drill, seed: u64) -> Result<()> {
    let runs = tempfile::tempdir()?;
    let straight_dir = runs.path().join(d.task).join("straight");
    let killed_dir = runs.path().join(d.task).join("killed");
    let took = run_to_end(
        (d.command)(runs.path(), "straight"),
        "the uninterrupted run",
    )?;

    let total = result::read(&straight_dir)?.steps.max(1) as f64;
    let reached = || {
        checkpoint::load(
            &checkpoint::last_path(&killed_dir),
            &candle_core::Device::Cpu,
        )
        .ok()
        .map(|c| c.state.step)
    };

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut schedule = Vec::new();
    for k in 0..d.kills {
        let done = reached();
        let mut cmd = (d.command)(runs.path(), "killed");
        if done.is_some() {
            cmd.arg("--resume");
        }
        // Anywhere in what is left of the run (start-up included), a little past its end at
        // most, so that kills spread over the run instead of piling up after it.
        let left = (1.0 - done.unwrap_or(0) as f64 / total).max(0.15);
        let after = took.mul_f64(left * rng.random_range(0.05..1.05));
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the run to kill")?;
        std::thread::sleep(after);
        let killed = child.try_wait()?.is_none();
        if killed {
            child.kill()?;
        }
        let status = child.wait()?;
        let step = reached().map_or("none".to_string(), |s| s.to_string());
        let line = format!(
            "kill {k}: {} after {} ms{} (last checkpoint: step {step})",
            d.task,
            after.as_millis(),
            if killed { "" } else { ", already ended" }
        );
        eprintln!("{line}");
        schedule.push(line);
        ensure!(
            killed || status.success(),
            "seed {}: the run failed by itself ({status}):\n{}",
            seed,
            schedule.join("\n")
        );
    }
    let mut last = (d.command)(runs.path(), "killed");
    if checkpoint::last_path(&killed_dir).is_file() {
        last.arg("--resume");
    }
    let context = || format!("seed {}, kills:\n{}", seed, schedule.join("\n"));
    run_to_end(last, "the resumed run").with_context(context)?;

    for file in [
        "checkpoints/last.safetensors",
        "checkpoints/best.safetensors",
    ] {
        let a = std::fs::read(straight_dir.join(file)).with_context(context)?;
        let b = std::fs::read(killed_dir.join(file)).with_context(context)?;
        ensure!(a == b, "{file} differs after the kills ({})", context());
    }
    let (a, b) = (
        log_without_timings(&straight_dir)?,
        log_without_timings(&killed_dir)?,
    );
    if a != b {
        let i = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        bail!(
            "metrics.jsonl differs after the kills, first at record {i} of {} / {}:\n  \
             uninterrupted: {}\n  killed:        {}\n({})",
            a.len(),
            b.len(),
            a.get(i).map_or("(end)", String::as_str),
            b.get(i).map_or("(end)", String::as_str),
            context()
        );
    }
    ensure!(
        result::read(&straight_dir)? == result::read(&killed_dir)?,
        "result.json differs after the kills ({})",
        context()
    );
    Ok(())
}
