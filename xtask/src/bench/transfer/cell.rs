//! Running one cell of the study: the task's own binary, as a child process, into a run
//! folder of the study's. A finished cell (its `result.json`, then the study's `cell.json`
//! beside it) is never run again; an unfinished one with a last checkpoint continues with
//! `--resume` (the engine's exact resume); one without starts over. So a study that is killed
//! at any moment goes on from where it was when it is started again.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use downstream_core::train::{checkpoint, result};
use serde::{Deserialize, Serialize};

use super::plan::{Cell, TaskPlan};

/// What the study keeps of a finished cell (`cell.json` in its run folder).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Finished {
    /// The command that ran it (from the repository root).
    pub command: String,
    pub steps: u64,
    /// Wall time of every attempt and how many there were; one killed with the study counts
    /// from its start to its log's last line (what it wrote after that is lost either way).
    pub wall_s: f64,
    pub attempts: usize,
    /// The best checkpoint's validation metrics, as `result.json` has them.
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// Where a cell's run folder, log and attempt times are, under the study's folder.
pub struct Paths {
    pub runs: PathBuf,
    pub dir: PathBuf,
    log: PathBuf,
    attempts: PathBuf,
}

impl Paths {
    pub fn of(study: &Path, cell: &Cell) -> Self {
        let runs = study.join("runs");
        let dir = runs.join(cell.task).join(cell.name());
        let logs = study.join("logs").join(cell.task);
        Self {
            log: logs.join(format!("{}.log", cell.name())),
            attempts: logs.join(format!("{}.attempts", cell.name())),
            runs,
            dir,
        }
    }
}

/// The cell's record if it has finished.
pub fn finished(paths: &Paths) -> Result<Option<Finished>> {
    let path = paths.dir.join("cell.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a study cell record (delete it to rerun the cell)",
            path.display()
        )
    })?))
}

/// Runs (or continues) `cell` with the task binary `exe` from `repo`; returns its record.
pub fn run(
    exe: &Path,
    repo: &Path,
    plan: &TaskPlan,
    cell: &Cell,
    paths: &Paths,
) -> Result<Finished> {
    if let Some(done) = finished(paths)? {
        return Ok(done);
    }
    let mut args = plan.args(cell);
    let resume = checkpoint::last_path(&paths.dir).is_file();
    if !resume && paths.dir.exists() {
        // Killed before its first checkpoint: nothing to continue.
        fs::remove_dir_all(&paths.dir)
            .with_context(|| format!("clearing {}", paths.dir.display()))?;
    }
    // Shown relative to the repository, where it is inside it, so the command reads anywhere.
    let runs = paths.runs.strip_prefix(repo).unwrap_or(&paths.runs);
    let runs = runs.display().to_string();
    args.extend(["--runs-dir".into(), runs, "--name".into(), cell.name()]);
    if resume {
        args.push("--resume".into());
    }
    let command = format!("{} {}", plan.task, args.join(" "));
    fs::create_dir_all(paths.log.parent().expect("has a parent"))?;
    if result::read(&paths.dir).is_err() {
        attempt(exe, repo, &args, &command, paths)?;
    }
    let outcome = result::read(&paths.dir)?;
    close_killed(paths)?;
    let times = attempt_times(&paths.attempts)?;
    let done = Finished {
        command: format!(
            "cargo run --release -p {}",
            command.replacen(' ', " -- ", 1)
        ),
        steps: outcome.steps,
        wall_s: times.iter().sum(),
        attempts: times.len(),
        metrics: outcome.metrics,
    };
    downstream_core::atomic::write(
        &paths.dir.join("cell.json"),
        serde_json::to_string_pretty(&done)?.as_bytes(),
    )?;
    Ok(done)
}

/// One run of the binary, its output appended to the cell's log, its wall time to the cell's
/// attempts; an error with the log's last lines if it fails.
fn attempt(exe: &Path, repo: &Path, args: &[String], command: &str, paths: &Paths) -> Result<()> {
    close_killed(paths)?;
    append_line(&paths.attempts, &format!("start {}", unix_now()))?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .with_context(|| format!("opening {}", paths.log.display()))?;
    writeln!(log, "$ {command}")?;
    let mut child = Command::new(exe);
    child
        .args(args)
        .current_dir(repo)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    die_with_parent(&mut child);
    let started = Instant::now();
    let status = child
        .status()
        .with_context(|| format!("starting {}", exe.display()))?;
    let secs = started.elapsed().as_secs_f64();
    append_line(&paths.attempts, &format!("{secs:.1}"))?;
    if !status.success() {
        bail!(
            "`{command}` failed ({status}); the last lines of {}:\n{}",
            paths.log.display(),
            tail(&paths.log, 15)
        );
    }
    Ok(())
}

/// A study killed outright must not leave its current cell training on, unseen, into the
/// folder the next study resumes from.
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches only the child's own state.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "{line}").with_context(|| format!("writing {}", path.display()))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An attempt that started but never recorded its time was killed with the study: its time
/// is taken up to the moment its log was last written, before anything else touches the log.
fn close_killed(paths: &Paths) -> Result<()> {
    let text = fs::read_to_string(&paths.attempts).unwrap_or_default();
    let Some(start) = text
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .and_then(|l| l.trim().strip_prefix("start "))
    else {
        return Ok(());
    };
    let start: f64 = start.parse().with_context(|| {
        format!(
            "{}: `start {start}` is not a time",
            paths.attempts.display()
        )
    })?;
    let last_write = fs::metadata(&paths.log)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(start, |d| d.as_secs_f64());
    append_line(
        &paths.attempts,
        &format!("{:.1}", (last_write - start).max(0.0)),
    )
}

/// The attempts' seconds; the file has `start UNIX_TIME` before each attempt and its seconds
/// after it (files from before the start lines have only the seconds).
fn attempt_times(path: &Path) -> Result<Vec<f64>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim().starts_with("start "))
        .map(|l| {
            l.trim()
                .parse::<f64>()
                .with_context(|| format!("{}: `{l}` is not a number of seconds", path.display()))
        })
        .collect()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = File::open(path)
        .ok()
        .and_then(|f| std::io::read_to_string(f).ok())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::super::plan::{self, Init};
    use super::*;

    /// A stand-in for a task binary: killed before it finishes the first time (leaving a
    /// checkpoint), finishing when resumed; every call is counted.
    const FAKE: &str = r#"#!/bin/sh
runs=""; name=""; resume=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs-dir) runs="$2"; shift ;;
    --name) name="$2"; shift ;;
    --resume) resume=1 ;;
  esac
  shift
done
dir="$runs/detect/$name"
echo "$resume" >> calls
mkdir -p "$dir/checkpoints"
if [ "$resume" = 0 ]; then
  touch "$dir/checkpoints/last.safetensors"
  exit 9
fi
printf '{"main_metric":"AP","metrics":{"AP":0.25,"AP50":0.5},"val_examples":17,"steps":200,"best_step":150,"stopped_early":false}' > "$dir/result.json"
"#;

    #[test]
    fn a_killed_cell_resumes_and_a_finished_one_is_never_run_again() {
        let repo = tempfile::tempdir().unwrap();
        let exe = repo.path().join("detect");
        fs::write(&exe, FAKE).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let plan = plan::full().remove(0);
        let cell = Cell {
            task: "detect",
            train_size: 4,
            init: Init::Full,
            seed: 1,
        };
        let study = repo.path().join("study");
        let paths = Paths::of(&study, &cell);

        // The first attempt dies after its first checkpoint: an error naming the command.
        let err = run(&exe, repo.path(), &plan, &cell, &paths).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("--name 4-full-s1") && msg.contains("failed"),
            "{msg}"
        );
        assert!(finished(&paths).unwrap().is_none());

        // Started again, the cell continues from that checkpoint and finishes.
        let done = run(&exe, repo.path(), &plan, &cell, &paths).unwrap();
        assert_eq!(done.metrics["AP"], 0.25);
        assert_eq!((done.steps, done.attempts), (200, 2));
        assert!(done
            .command
            .starts_with("cargo run --release -p detect -- train "));
        assert!(
            done.command.contains("--runs-dir study/runs"),
            "{}",
            done.command
        );

        // Finished: a third start reads the record and runs nothing.
        let again = run(&exe, repo.path(), &plan, &cell, &paths).unwrap();
        assert_eq!(again.wall_s, done.wall_s);
        let calls = fs::read_to_string(repo.path().join("calls")).unwrap();
        assert_eq!(calls.lines().collect::<Vec<_>>(), ["0", "1"]);

        // An attempt killed with the study (a start without seconds) counts up to its log's
        // last write.
        let killed = Cell { seed: 3, ..cell };
        let paths = Paths::of(&study, &killed);
        let t0 = unix_now() - 500.0;
        fs::write(&paths.attempts, format!("start {t0}\n")).unwrap();
        let log = File::create(&paths.log).unwrap();
        log.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t0 + 120.0))
            .unwrap();
        drop(log);
        assert!(run(&exe, repo.path(), &plan, &killed, &paths).is_err());
        let done = run(&exe, repo.path(), &plan, &killed, &paths).unwrap();
        assert_eq!(done.attempts, 3);
        assert!(
            done.wall_s >= 120.0 && done.wall_s < 200.0,
            "the killed attempt's 120 s are missing or wrong: {}",
            done.wall_s
        );

        // A cell killed before its first checkpoint starts over, not with --resume.
        let other = Cell { seed: 2, ..cell };
        let paths = Paths::of(&study, &other);
        fs::create_dir_all(paths.dir.join("checkpoints")).unwrap();
        fs::write(paths.dir.join("metrics.jsonl"), "half a line").unwrap();
        assert!(run(&exe, repo.path(), &plan, &other, &paths).is_err());
        assert!(
            !paths.dir.join("metrics.jsonl").exists(),
            "the stale run was not cleared"
        );
    }
}
