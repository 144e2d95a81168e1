//! Training progress for people: a bar per epoch on a terminal (loss, learning rate,
//! samples/s, ETA), a line per epoch and per evaluation otherwise. Every record also goes to
//! the run's `metrics.jsonl` ([`super::metrics_log`]).

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use super::metrics_log::{EvalRecord, MetricsLog, Record, ResumeAt, StepRecord};

pub struct Progress {
    log: MetricsLog,
    show_bar: bool,
    bar: Option<ProgressBar>,
    epoch: Option<(usize, usize)>,
    last_step: Option<StepRecord>,
}

impl Progress {
    /// Opens the run's metrics log (see [`MetricsLog::open_at`]); `show_bar` draws bars on
    /// stderr when it is a terminal.
    pub fn new(run_dir: &Path, resume: Option<ResumeAt>, show_bar: bool) -> Result<Self> {
        Ok(Self {
            log: MetricsLog::open_at(run_dir, resume)?,
            // Bar escape codes in a log file are noise, so a redirected stderr gets plain lines.
            show_bar: show_bar && std::io::stderr().is_terminal(),
            bar: None,
            epoch: None,
            last_step: None,
        })
    }

    /// Records logged so far (those a checkpoint saved now covers).
    pub fn records(&self) -> u64 {
        self.log.records()
    }

    /// A bar for epoch `epoch` (0-based; displayed as epoch+1/epochs) of `steps` optimizer steps, `done` of which are already done (resume mid-epoch).
    pub fn start_epoch(&mut self, epoch: usize, epochs: usize, steps: u64, done: u64) {
        self.finish_epoch();
        self.epoch = Some((epoch, epochs));
        self.last_step = None;
        if !self.show_bar {
            return;
        }
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} [{elapsed_precise} eta {eta}]",
        )
        // The template is a constant, so this only guards against an indicatif template change.
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = ProgressBar::new(steps)
            .with_style(style)
            .with_position(done.min(steps))
            .with_prefix(format!("epoch {}/{}", epoch + 1, epochs));
        // Steps done before a resume took no time in this process; counting them would make
        // the ETA wildly optimistic.
        bar.reset_eta();
        // Slow steps (large models on CPU) would otherwise freeze the elapsed/ETA display.
        bar.enable_steady_tick(Duration::from_millis(500));
        self.bar = Some(bar);
    }

    /// Advances the bar by one step, shows loss, lr, samples/s and ETA in its message/template, appends a JSON line (flushed).
    pub fn step(&mut self, rec: StepRecord) -> Result<()> {
        let rec = Record::Step(rec);
        self.log.append(&rec)?;
        let Record::Step(rec) = rec else {
            unreachable!("constructed as a step record above")
        };
        if let Some(bar) = &self.bar {
            bar.set_message(step_summary(&rec));
            bar.inc(1);
        }
        self.last_step = Some(rec);
        Ok(())
    }

    /// Appends an eval line (flushed) and prints a one-line summary above the bar (bar.println or eprintln when hidden).
    pub fn eval(&mut self, rec: EvalRecord) -> Result<()> {
        let rec = Record::Eval(rec);
        self.log.append(&rec)?;
        let Record::Eval(rec) = rec else {
            unreachable!("constructed as an eval record above")
        };
        let metrics = rec
            .metrics
            .iter()
            .map(|(k, v)| format!("{k} {}", fmt_num(*v)))
            .collect::<Vec<_>>()
            .join(", ");
        self.println(&format!(
            "eval epoch {} step {}: {metrics}",
            rec.epoch + 1,
            rec.step
        ));
        Ok(())
    }

    pub fn finish_epoch(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        } else if let (Some((epoch, epochs)), Some(last)) = (self.epoch, &self.last_step) {
            // Without a bar, one line per epoch is what tells a log reader the run is alive.
            eprintln!(
                "epoch {}/{} done at step {}: {}",
                epoch + 1,
                epochs,
                last.step,
                step_summary(last)
            );
        }
        self.epoch = None;
        self.last_step = None;
    }

    /// Prints a line without disturbing the bar.
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(msg),
            _ => eprintln!("{msg}"),
        }
    }
}

fn step_summary(rec: &StepRecord) -> String {
    format!(
        "loss {} lr {:.2e} {:.1} samples/s",
        fmt_num(rec.loss),
        rec.lr,
        rec.samples_per_s
    )
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() || (1e-3..1e5).contains(&v.abs()) {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}
