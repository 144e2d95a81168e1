//! `metrics.jsonl`: one JSON line per training step and per evaluation, appended and flushed
//! as the run goes, so that it survives a kill; a resumed run first drops what the killed one
//! logged after its last checkpoint, so each step and evaluation appears once. A checkpoint
//! records how many records the log held when it was saved, and the log is cut back to
//! exactly that many (an evaluation logged after a checkpoint of the same step belongs to the
//! lost part); checkpoints from before that count fall back to dropping later steps.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer};

/// The log's file name in a run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";

// serde_json writes non-finite floats as `null`; a diverged run (NaN loss) must still be readable
// afterwards, so `null` reads back as NaN (an infinity loses its sign, which plots skip anyway).
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

pub(crate) fn nan_if_null_map<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, f64>, D::Error> {
    let map = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub epoch: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub samples_per_s: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    pub epoch: usize,
    #[serde(deserialize_with = "nan_if_null_map")]
    pub metrics: BTreeMap<String, f64>,
}

/// One line of `metrics.jsonl`: `{"kind":"step",...}` or `{"kind":"eval",...}` (serde internally tagged, tag "kind", lowercase).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Step(StepRecord),
    Eval(EvalRecord),
}

impl Record {
    fn step(&self) -> u64 {
        match self {
            Record::Step(r) => r.step,
            Record::Eval(r) => r.step,
        }
    }
}

/// The open log of one run.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
    records: u64,
}

/// Where a resumed run's log continues: the checkpoint's step, and how many records the log
/// held when the checkpoint was saved (unknown for older checkpoints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeAt {
    pub step: u64,
    pub records: Option<u64>,
}

impl MetricsLog {
    /// Opens `run_dir/metrics.jsonl`. `resume_step = None`: a fresh run, the file is truncated.
    /// `Some(s)`: a resumed run; records with step > s (logged by the killed run after its last
    /// checkpoint) are dropped by rewriting the file atomically, then appending continues.
    pub fn open(run_dir: &Path, resume_step: Option<u64>) -> Result<Self> {
        Self::open_at(
            run_dir,
            resume_step.map(|step| ResumeAt {
                step,
                records: None,
            }),
        )
    }

    /// As [`Self::open`], cutting a resumed log back to the checkpoint's record count where
    /// it is known.
    pub fn open_at(run_dir: &Path, resume: Option<ResumeAt>) -> Result<Self> {
        fs::create_dir_all(run_dir)
            .with_context(|| format!("creating run directory {}", run_dir.display()))?;
        let path = run_dir.join(METRICS_FILE);
        let (file, records) = match resume {
            None => (File::create(&path), 0),
            Some(at) => {
                let kept = keep_records(&path, at)?;
                (
                    OpenOptions::new().create(true).append(true).open(&path),
                    kept,
                )
            }
        };
        let file = file.with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            path,
            file,
            records,
        })
    }

    /// Records in the log: what a checkpoint saved now would cover.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Appends one record and flushes it.
    pub fn append(&mut self, rec: &Record) -> Result<()> {
        let mut line = serde_json::to_string(rec).context("serialising a metrics record")?;
        line.push('\n');
        // One write per line: a kill can then tear at most the final line, which resume tolerates.
        let before = self.file.metadata().map(|m| m.len());
        let written = self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush());
        if let Err(e) = written {
            // A full disk takes part of the line: cut it off again, so that the log stays
            // readable by everything, not only by a resume.
            if let Ok(len) = before {
                let _ = self.file.set_len(len);
            }
            return Err(e).with_context(|| format!("appending to {}", self.path.display()));
        }
        self.records += 1;
        Ok(())
    }
}

/// Cuts the log back to what the checkpoint `at` covers; returns how many records remain.
fn keep_records(path: &Path, at: ResumeAt) -> Result<u64> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = String::with_capacity(text.len());
    let mut count = 0u64;
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(rec) => {
                let covered = match at.records {
                    Some(n) => count < n,
                    None => rec.step() <= at.step,
                };
                if covered {
                    kept.push_str(line);
                    kept.push('\n');
                    count += 1;
                }
            }
            // A kill mid-write can only tear the final, unterminated line; anything else is
            // corruption that silently dropping would hide.
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => bail!("{} line {}: malformed record: {e}", path.display(), i + 1),
        }
    }
    if let Some(n) = at.records {
        anyhow::ensure!(
            count == n,
            "{}: the checkpoint of step {} covers {n} records, the log has only {count}",
            path.display(),
            at.step
        );
    }
    if kept != text {
        // Rewriting in place could lose the whole history if this process dies mid-write.
        crate::atomic::write(path, kept.as_bytes())?;
    }
    Ok(count)
}

/// Reads all records of a metrics.jsonl (errors name the file and line number on malformed lines).
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line =
            line.with_context(|| format!("{} line {}: read failed", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let rec = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: malformed record", path.display(), i + 1))?;
        out.push(rec);
    }
    Ok(out)
}

/// Records for the tests of the log and of the plots.
#[cfg(test)]
pub(crate) mod samples {
    use super::*;

    pub fn step(step: u64, epoch: usize, loss: f64) -> StepRecord {
        StepRecord {
            step,
            epoch,
            loss,
            lr: 1e-4 * (1.0 + step as f64).recip(),
            samples_per_s: 32.5,
            grad_norm: 0.75 + step as f64 / 100.0,
        }
    }

    pub fn eval(step: u64, epoch: usize, acc: f64, loss: f64) -> EvalRecord {
        EvalRecord {
            step,
            epoch,
            metrics: BTreeMap::from([("accuracy".to_string(), acc), ("loss".to_string(), loss)]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::samples::{eval, step};

    #[test]
    fn hostile_logs_read_back_or_fail_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(dir.path(), None).unwrap();
        for s in 1..=4 {
            log.append(&Record::Step(step(s, 0, 1.0 / s as f64)))
                .unwrap();
        }
        log.append(&Record::Eval(eval(4, 0, 0.5, 0.7))).unwrap();
        let valid = std::fs::read(dir.path().join(METRICS_FILE)).unwrap();
        let read = crate::faults::mutate::never_panics(
            "metrics.jsonl",
            METRICS_FILE,
            &valid,
            1,
            400,
            |p: &Path| read_records(p),
        );
        // Resuming reads the same lines another way.
        crate::faults::mutate::never_panics("resume", METRICS_FILE, &valid, 2, 300, |p: &Path| {
            let at = ResumeAt {
                step: 3,
                records: Some(4),
            };
            MetricsLog::open_at(p.parent().unwrap(), Some(at)).map(|_| ())
        });
        assert!(
            read > 0,
            "no mutant was readable: the mutations are too crude"
        );
    }
    use super::*;

    fn as_json(records: &[Record]) -> serde_json::Value {
        serde_json::to_value(records).unwrap()
    }

    fn steps_of(records: &[Record]) -> Vec<(char, u64)> {
        records
            .iter()
            .map(|r| match r {
                Record::Step(s) => ('s', s.step),
                Record::Eval(e) => ('e', e.step),
            })
            .collect()
    }

    #[test]
    fn jsonl_round_trip_and_fresh_run_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        fs::write(&path, "stale line from an earlier run\n").unwrap();

        let mut p = MetricsLog::open(dir.path(), None).unwrap();
        let mut expected = Vec::new();
        for s in 1..=3 {
            let rec = step(s, 0, 2.0 / s as f64);
            p.append(&Record::Step(rec.clone())).unwrap();
            expected.push(Record::Step(rec));
        }
        let ev = eval(3, 0, 0.5, 1.25);
        p.append(&Record::Eval(ev.clone())).unwrap();
        expected.push(Record::Eval(ev));
        let rec = step(4, 1, 0.125);
        p.append(&Record::Step(rec.clone())).unwrap();
        expected.push(Record::Step(rec));

        // Lines are flushed per record, so a reader sees them while the run is still going.
        let got = read_records(&path).unwrap();
        assert_eq!(as_json(&got), as_json(&expected));

        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with(r#"{"kind":"step","#), "{}", lines[0]);
        assert!(lines[3].starts_with(r#"{"kind":"eval","#), "{}", lines[3]);
    }

    #[test]
    fn non_finite_values_read_back_as_nan() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = MetricsLog::open(dir.path(), None).unwrap();
        p.append(&Record::Step(step(1, 0, f64::NAN))).unwrap();
        p.append(&Record::Eval(EvalRecord {
            step: 1,
            epoch: 0,
            metrics: BTreeMap::from([("ppl".to_string(), f64::INFINITY)]),
        }))
        .unwrap();
        let got = read_records(&dir.path().join(METRICS_FILE)).unwrap();
        match (&got[0], &got[1]) {
            (Record::Step(s), Record::Eval(e)) => {
                assert!(s.loss.is_nan());
                assert!(e.metrics["ppl"].is_nan());
            }
            other => panic!("unexpected records {other:?}"),
        }
    }

    /// Set in the child process of the full-disk test: the folder of the log to append to.
    const FULL_DISK_CHILD: &str = "DOWNSTREAM_TEST_FULL_DISK_LOG";

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_mid_line_leaves_only_whole_lines() {
        if let Ok(dir) = std::env::var(FULL_DISK_CHILD) {
            // The child: no file may grow past 40 bytes more than the log has, as on a disk
            // that fills up, so the next record is cut short by the kernel.
            let dir = PathBuf::from(dir);
            let len = fs::metadata(dir.join(METRICS_FILE)).unwrap().len();
            // SAFETY: these change only this child process's limits and signal disposition.
            unsafe {
                let lim = libc::rlimit {
                    rlim_cur: len + 40,
                    rlim_max: len + 40,
                };
                libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            }
            let at = ResumeAt {
                step: 3,
                records: Some(3),
            };
            let mut log = MetricsLog::open_at(&dir, Some(at)).unwrap();
            let err = log.append(&Record::Step(step(4, 0, 0.5))).unwrap_err();
            println!("append failed: {err:#}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(dir.path(), None).unwrap();
        for s in 1..=3 {
            log.append(&Record::Step(step(s, 0, 1.0))).unwrap();
        }
        drop(log);
        let path = dir.path().join(METRICS_FILE);
        let before = fs::read(&path).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "train::metrics_log::tests::a_full_disk_mid_line_leaves_only_whole_lines",
            ])
            .arg("--nocapture")
            .env(FULL_DISK_CHILD, dir.path())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("append failed") && said.contains(METRICS_FILE),
            "{said}"
        );
        assert_eq!(
            fs::read(&path).unwrap(),
            before,
            "a torn line was left in the log"
        );
        assert_eq!(read_records(&path).unwrap().len(), 3);
    }

    #[test]
    fn resume_keeps_exactly_the_records_the_checkpoint_saw() {
        // Saved after step 5, before that step's evaluation was logged, then killed mid-line:
        // the evaluation at the checkpoint's own step is not the checkpoint's, and a step rule
        // alone would keep it, to be logged a second time by the resumed run.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        let saved_at;
        {
            let mut p = MetricsLog::open(dir.path(), None).unwrap();
            for s in 1..=5 {
                p.append(&Record::Step(step(s, 0, 1.0))).unwrap();
            }
            saved_at = p.records();
            p.append(&Record::Eval(eval(5, 0, 0.5, 1.0))).unwrap();
            p.append(&Record::Step(step(6, 0, 1.0))).unwrap();
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"kind\":\"st")
            .unwrap();
        assert_eq!(saved_at, 5);
        let at = ResumeAt {
            step: 5,
            records: Some(saved_at),
        };
        let p = MetricsLog::open_at(dir.path(), Some(at)).unwrap();
        assert_eq!(p.records(), 5);
        assert_eq!(steps_of(&read_records(&path).unwrap()).len(), 5);
        drop(p);
        // A checkpoint claiming more records than the log holds: the log was damaged.
        let more = ResumeAt {
            step: 5,
            records: Some(9),
        };
        let err = MetricsLog::open_at(dir.path(), Some(more)).err().unwrap();
        assert!(format!("{err:#}").contains("covers 9 records"), "{err:#}");
    }

    #[test]
    fn resume_drops_records_after_checkpoint_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        {
            let mut p = MetricsLog::open(dir.path(), None).unwrap();
            for s in 1..=10 {
                p.append(&Record::Step(step(s, 0, 1.0))).unwrap();
                if s % 5 == 0 {
                    p.append(&Record::Eval(eval(s, 0, 0.5, 1.0))).unwrap();
                }
            }
        }
        let mut p = MetricsLog::open(dir.path(), Some(6)).unwrap();
        // The rewrite must happen at open time: a crash right after resuming keeps a clean log.
        let after_open = read_records(&path).unwrap();
        assert_eq!(
            steps_of(&after_open),
            [1, 2, 3, 4, 5]
                .map(|s| ('s', s))
                .into_iter()
                .chain([('e', 5), ('s', 6)])
                .collect::<Vec<_>>()
        );
        p.append(&Record::Step(step(7, 0, 0.9))).unwrap();
        p.append(&Record::Step(step(8, 0, 0.8))).unwrap();
        p.append(&Record::Eval(eval(8, 0, 0.6, 0.8))).unwrap();
        drop(p);

        let got = steps_of(&read_records(&path).unwrap());
        let mut expected: Vec<(char, u64)> = (1..=5).map(|s| ('s', s)).collect();
        expected.extend([('e', 5), ('s', 6), ('s', 7), ('s', 8), ('e', 8)]);
        assert_eq!(got, expected);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != METRICS_FILE)
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }

    #[test]
    fn resume_tolerates_torn_final_line_but_not_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        let good = serde_json::to_string(&Record::Step(step(1, 0, 1.0))).unwrap();
        fs::write(&path, format!("{good}\n{{\"kind\":\"step\",\"st")).unwrap();
        let mut p = MetricsLog::open(dir.path(), Some(5)).unwrap();
        p.append(&Record::Step(step(2, 0, 0.5))).unwrap();
        assert_eq!(
            steps_of(&read_records(&path).unwrap()),
            [('s', 1), ('s', 2)]
        );

        fs::write(&path, format!("{good}\nnot json\n{good}\n")).unwrap();
        let err = MetricsLog::open(dir.path(), Some(5))
            .err()
            .expect("corrupt log accepted");
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
        // A failed resume must leave the evidence alone.
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{good}\nnot json\n{good}\n")
        );
    }

    #[test]
    fn resume_without_log_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = MetricsLog::open(&dir.path().join("new-run"), Some(3)).unwrap();
        p.append(&Record::Step(step(4, 0, 1.0))).unwrap();
        let got = read_records(&dir.path().join("new-run").join(METRICS_FILE)).unwrap();
        assert_eq!(steps_of(&got), [('s', 4)]);
    }

    #[test]
    fn malformed_line_error_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        let good = serde_json::to_string(&Record::Step(step(1, 0, 1.0))).unwrap();
        fs::write(
            &path,
            format!("{good}\n\n{{\"kind\":\"step\",\"step\":2}}\n"),
        )
        .unwrap();
        let msg = format!("{:#}", read_records(&path).unwrap_err());
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains(METRICS_FILE), "{msg}");
        // The underlying serde message says what is wrong with the line.
        assert!(msg.contains("missing field"), "{msg}");
    }
}
