//! Training progress for people and for later: live bars on a terminal, an append-only
//! `metrics.jsonl` that survives a kill and a resume without duplicated steps, and PNG plots
//! that render their text from an embedded font, so they work on machines with no fonts installed.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use serde::{Deserialize, Deserializer};

const METRICS_FILE: &str = "metrics.jsonl";
const PLOT_SIZE: (u32, u32) = (900, 500);

// serde_json writes non-finite floats as `null`; a diverged run (NaN loss) must still be readable
// afterwards, so `null` reads back as NaN (an infinity loses its sign, which plots skip anyway).
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn nan_if_null_map<'de, D: Deserializer<'de>>(
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

pub struct Progress {
    path: PathBuf,
    file: File,
    show_bar: bool,
    bar: Option<ProgressBar>,
    epoch: Option<(usize, usize)>,
    last_step: Option<StepRecord>,
}

impl Progress {
    /// Opens `run_dir/metrics.jsonl`. `resume_step = None`: a fresh run, the file is truncated.
    /// `Some(s)`: a resumed run; records with step > s (logged by the killed run after its last checkpoint) are dropped,
    /// by rewriting the file atomically (temp file + fsync + rename), then appending continues.
    /// `show_bar`: draw indicatif bars on stderr (false in tests / when stderr is not a terminal — also check `std::io::IsTerminal`).
    pub fn new(run_dir: &Path, resume_step: Option<u64>, show_bar: bool) -> Result<Self> {
        fs::create_dir_all(run_dir)
            .with_context(|| format!("creating run directory {}", run_dir.display()))?;
        let path = run_dir.join(METRICS_FILE);
        let file = match resume_step {
            None => File::create(&path),
            Some(step) => {
                drop_records_after(&path, step)?;
                OpenOptions::new().create(true).append(true).open(&path)
            }
        }
        .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            path,
            file,
            // Bar escape codes in a log file are noise, so a redirected stderr gets plain lines.
            show_bar: show_bar && std::io::stderr().is_terminal(),
            bar: None,
            epoch: None,
            last_step: None,
        })
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
        self.append(&rec)?;
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
        self.append(&rec)?;
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

    fn append(&mut self, rec: &Record) -> Result<()> {
        let mut line = serde_json::to_string(rec).context("serialising a metrics record")?;
        line.push('\n');
        // One write per line: a kill can then tear at most the final line, which resume tolerates.
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .with_context(|| format!("appending to {}", self.path.display()))
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

/// Keeps the records a resumed run will not log again, so the log has each step once.
fn drop_records_after(path: &Path, last_kept: u64) -> Result<()> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = String::with_capacity(text.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(rec) if rec.step() <= last_kept => {
                kept.push_str(line);
                kept.push('\n');
            }
            Ok(_) => {}
            // A kill mid-write can only tear the final, unterminated line; anything else is
            // corruption that silently dropping would hide.
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => bail!("{} line {}: malformed record: {e}", path.display(), i + 1),
        }
    }
    if kept == text {
        return Ok(());
    }
    // Rewriting in place could lose the whole history if this process dies mid-write.
    crate::atomic::write(path, kept.as_bytes())
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

/// Writes `loss.png` (training loss per step, plus a smoothed curve e.g. EMA or moving average; x = step, log-scale y optional) and,
/// if there are eval records, `metrics.png` (each metric vs step, one line per metric with a legend) into `run_dir`,
/// from `run_dir/metrics.jsonl`. Returns the paths written. Each PNG is written atomically (render to a temp path in the same folder, then rename).
/// Handles edge cases without panicking: no records, one record, constant values, NaN/inf values (skip them).
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let records = read_records(&run_dir.join(METRICS_FILE))?;
    let mut loss = Vec::new();
    let mut metrics: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut any_eval = false;
    for rec in &records {
        match rec {
            Record::Step(r) => loss.push((r.step as f64, r.loss)),
            Record::Eval(r) => {
                any_eval = true;
                for (name, v) in &r.metrics {
                    metrics
                        .entry(name.clone())
                        .or_default()
                        .push((r.step as f64, *v));
                }
            }
        }
    }

    let mut written = Vec::new();
    let loss = finite_sorted(loss);
    let smoothed = ema(&loss);
    let loss_series = vec![
        Series {
            label: "loss".into(),
            color: RGBColor(150, 180, 225),
            width: 1,
            markers: loss.len() <= 30,
            points: loss,
        },
        Series {
            label: "loss (EMA)".into(),
            color: RGBColor(214, 39, 40),
            width: 2,
            markers: false,
            points: smoothed,
        },
    ];
    let path = run_dir.join("loss.png");
    render_png(&path, "training loss", "loss", &loss_series)?;
    written.push(path);

    if any_eval {
        let series: Vec<Series> = metrics
            .into_iter()
            .enumerate()
            .map(|(i, (label, points))| {
                let points = finite_sorted(points);
                Series {
                    label,
                    color: PALETTE[i % PALETTE.len()],
                    width: 2,
                    markers: points.len() <= 100,
                    points,
                }
            })
            .collect();
        let path = run_dir.join("metrics.png");
        render_png(&path, "validation metrics", "value", &series)?;
        written.push(path);
    }
    Ok(written)
}

// Tableau 10: distinguishable for most colour-vision deficiencies.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    width: u32,
    markers: bool,
}

fn finite_sorted(mut points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    points.retain(|(x, y)| x.is_finite() && y.is_finite());
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// Bias-corrected EMA (as TensorBoard smooths), with a time constant that grows with the run so
/// long runs get a readable trend while short ones are not flattened.
fn ema(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let span = (points.len() as f64 / 30.0).clamp(1.0, 200.0);
    let beta = 1.0 - 1.0 / span;
    let mut acc = 0.0;
    let mut weight = 0.0;
    points
        .iter()
        .map(|&(x, y)| {
            acc = beta * acc + (1.0 - beta) * y;
            weight = beta * weight + (1.0 - beta);
            (x, acc / weight)
        })
        .collect()
}

fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            // plotters' `ab_glyph` backend only renders fonts registered here, never system
            // fonts. DejaVu Sans comes embedded in the `dejavu` crate; its licence is the
            // Bitstream Vera font licence (DejaVu's changes are public domain), which allows
            // redistribution, including inside binaries.
            plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font failed to parse".to_string())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn render_png(path: &Path, title: &str, y_label: &str, series: &[Series]) -> Result<()> {
    ensure_font()?;
    let (w, h) = PLOT_SIZE;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    draw_chart(&mut buf, title, y_label, series)
        .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;

    // A viewer or a concurrent `plot_run` must never see a half-written PNG.
    crate::atomic::write_with(path, |out| {
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new(out),
            &buf,
            w,
            h,
            image::ExtendedColorType::Rgb8,
        )?;
        Ok(())
    })
}

fn draw_chart(
    buf: &mut [u8],
    title: &str,
    y_label: &str,
    series: &[Series],
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(buf, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE)?;

    let pts = || series.iter().flat_map(|s| s.points.iter());
    let empty = pts().next().is_none();
    let (x0, x1) = padded_range(pts().map(|p| p.0), 0.0, Some(1.0));
    let (y0, y1) = padded_range(pts().map(|p| p.1), 0.05, None);

    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(x0..x1, y0..y1)?;

    // Tick precision follows the visible range so narrow ranges (constant values) still get
    // distinct labels.
    let decimals = |span: f64| (-(span / 10.0).log10()).ceil().clamp(0.0, 8.0) as usize;
    let (xd, yd) = (decimals(x1 - x0), decimals(y1 - y0));
    let x_fmt = move |x: &f64| format!("{x:.xd$}");
    let y_fmt = move |y: &f64| {
        if *y != 0.0 && (y.abs() >= 1e5 || (y1 - y0) < 1e-4) {
            format!("{y:.3e}")
        } else {
            format!("{y:.yd$}")
        }
    };
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .light_line_style(RGBColor(244, 244, 244))
        .draw()?;

    if empty {
        let centre = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
        let style = ("sans-serif", 20)
            .into_font()
            .color(&RGBColor(120, 120, 120))
            .pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Center,
            ));
        chart.draw_series(std::iter::once(Text::new(
            "no finite values yet",
            centre,
            style,
        )))?;
    }

    for s in series.iter().filter(|s| !s.points.is_empty()) {
        let style = ShapeStyle::from(&s.color).stroke_width(s.width);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), style))?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        // A single point draws no line, and sparse evals read better with their samples marked.
        if s.markers {
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, style.filled())))?;
        }
    }
    if !empty {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// The data range, widened so that a single value or a constant series still gets a
/// non-degenerate axis; `degenerate_pad` lets the step axis widen by whole steps instead of
/// by a fraction of the step number.
fn padded_range(
    values: impl Iterator<Item = f64>,
    frac: f64,
    degenerate_pad: Option<f64>,
) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span > 0.0 && span.is_finite() {
        let pad = span * frac;
        (lo - pad, hi + pad)
    } else {
        let pad = match degenerate_pad {
            Some(pad) => pad,
            None if lo == 0.0 => 1.0,
            None => lo.abs() * 0.1,
        };
        (lo - pad, hi + pad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64, epoch: usize, loss: f64) -> StepRecord {
        StepRecord {
            step,
            epoch,
            loss,
            lr: 1e-4 * (1.0 + step as f64).recip(),
            samples_per_s: 32.5,
            grad_norm: 0.75 + step as f64 / 100.0,
        }
    }

    fn eval(step: u64, epoch: usize, acc: f64, loss: f64) -> EvalRecord {
        EvalRecord {
            step,
            epoch,
            metrics: BTreeMap::from([("accuracy".to_string(), acc), ("loss".to_string(), loss)]),
        }
    }

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

        let mut p = Progress::new(dir.path(), None, false).unwrap();
        let mut expected = Vec::new();
        p.start_epoch(0, 2, 3, 0);
        for s in 1..=3 {
            let rec = step(s, 0, 2.0 / s as f64);
            p.step(rec.clone()).unwrap();
            expected.push(Record::Step(rec));
        }
        let ev = eval(3, 0, 0.5, 1.25);
        p.eval(ev.clone()).unwrap();
        expected.push(Record::Eval(ev));
        p.finish_epoch();
        p.start_epoch(1, 2, 3, 0);
        let rec = step(4, 1, 0.125);
        p.step(rec.clone()).unwrap();
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
        let mut p = Progress::new(dir.path(), None, false).unwrap();
        p.step(step(1, 0, f64::NAN)).unwrap();
        p.eval(EvalRecord {
            step: 1,
            epoch: 0,
            metrics: BTreeMap::from([("ppl".to_string(), f64::INFINITY)]),
        })
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

    #[test]
    fn resume_drops_records_after_checkpoint_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        {
            let mut p = Progress::new(dir.path(), None, false).unwrap();
            p.start_epoch(0, 1, 10, 0);
            for s in 1..=10 {
                p.step(step(s, 0, 1.0)).unwrap();
                if s % 5 == 0 {
                    p.eval(eval(s, 0, 0.5, 1.0)).unwrap();
                }
            }
        }
        let mut p = Progress::new(dir.path(), Some(6), false).unwrap();
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
        p.start_epoch(0, 1, 10, 6);
        p.step(step(7, 0, 0.9)).unwrap();
        p.step(step(8, 0, 0.8)).unwrap();
        p.eval(eval(8, 0, 0.6, 0.8)).unwrap();
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
        let mut p = Progress::new(dir.path(), Some(5), false).unwrap();
        p.step(step(2, 0, 0.5)).unwrap();
        assert_eq!(
            steps_of(&read_records(&path).unwrap()),
            [('s', 1), ('s', 2)]
        );

        fs::write(&path, format!("{good}\nnot json\n{good}\n")).unwrap();
        let err = Progress::new(dir.path(), Some(5), false)
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
        let mut p = Progress::new(&dir.path().join("new-run"), Some(3), false).unwrap();
        p.step(step(4, 0, 1.0)).unwrap();
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

    fn decode(path: &Path) -> image::RgbImage {
        let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!((img.width(), img.height()), PLOT_SIZE, "{}", path.display());
        img.to_rgb8()
    }

    fn is_dark(p: &image::Rgb<u8>) -> bool {
        p.0.iter().all(|&c| c < 110)
    }

    /// Columns spanned by dark (text-coloured) pixels within rows `rows`.
    fn dark_extent(img: &image::RgbImage, rows: std::ops::Range<u32>) -> Option<(u32, u32)> {
        let mut ext: Option<(u32, u32)> = None;
        for y in rows {
            for x in 0..img.width() {
                if is_dark(img.get_pixel(x, y)) {
                    ext = Some(ext.map_or((x, x), |(a, b)| (a.min(x), b.max(x))));
                }
            }
        }
        ext
    }

    fn distinct_colours(img: &image::RgbImage) -> usize {
        img.pixels()
            .map(|p| p.0)
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    #[test]
    fn plot_run_writes_pngs_with_text() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Progress::new(dir.path(), None, false).unwrap();
        p.start_epoch(0, 1, 300, 0);
        for s in 1..=300u64 {
            let noise = ((s * 7919) % 13) as f64 / 13.0 - 0.5;
            p.step(step(s, 0, 2.0 * (-(s as f64) / 100.0).exp() + 0.2 * noise))
                .unwrap();
            if s % 50 == 0 {
                p.eval(eval(s, 0, 0.5 + s as f64 / 1000.0, 1.5 - s as f64 / 400.0))
                    .unwrap();
            }
        }
        p.finish_epoch();
        drop(p);

        let written = plot_run(dir.path()).unwrap();
        assert_eq!(
            written,
            vec![dir.path().join("loss.png"), dir.path().join("metrics.png")]
        );
        let loss = decode(&written[0]);
        let metrics = decode(&written[1]);
        for img in [&loss, &metrics] {
            assert!(distinct_colours(img) > 10, "plot looks blank");
        }

        // The caption band holds nothing but the centred title, so its dark pixels are the
        // title's glyphs: their extent tracks the title's length.
        let (l0, l1) = dark_extent(&loss, 0..40).expect("no title text in loss.png");
        let (m0, m1) = dark_extent(&metrics, 0..40).expect("no title text in metrics.png");
        let (lw, mw) = (l1 - l0, m1 - m0);
        assert!(lw > 80, "loss title only {lw}px wide");
        assert!(
            mw > lw + 30,
            "'validation metrics' ({mw}px) not wider than 'training loss' ({lw}px)"
        );
        for (a, b) in [(l0, l1), (m0, m1)] {
            let mid = (a + b) / 2;
            assert!(
                mid.abs_diff(PLOT_SIZE.0 / 2) < 40,
                "title not centred: {a}..{b}"
            );
        }
        // Axis description "step" under the x tick labels.
        let h = PLOT_SIZE.1;
        assert!(dark_extent(&loss, h - 30..h).is_some(), "no x axis label");
        // The rotated y description sits in the leftmost columns.
        let left_dark = (40..h - 60)
            .flat_map(|y| (0..30).map(move |x| (x, y)))
            .filter(|&(x, y)| is_dark(loss.get_pixel(x, y)))
            .count();
        assert!(left_dark > 20, "no y axis label ({left_dark} dark pixels)");

        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }

    #[test]
    fn plot_run_edge_cases_do_not_panic() {
        // No records at all: a loss plot (saying there is nothing yet) and no metrics plot.
        let dir = tempfile::tempdir().unwrap();
        drop(Progress::new(dir.path(), None, false).unwrap());
        let written = plot_run(dir.path()).unwrap();
        assert_eq!(written, vec![dir.path().join("loss.png")]);
        decode(&written[0]);

        let cases: Vec<(&str, Vec<Record>)> = vec![
            (
                "one record each",
                vec![
                    Record::Step(step(1, 0, 0.7)),
                    Record::Eval(eval(1, 0, 0.5, 0.7)),
                ],
            ),
            (
                "constant values",
                (1..=20)
                    .map(|s| Record::Step(step(s, 0, 0.25)))
                    .chain([
                        Record::Eval(eval(10, 0, 0.0, 0.0)),
                        Record::Eval(eval(20, 0, 0.0, 0.0)),
                    ])
                    .collect(),
            ),
            (
                "non-finite values",
                [f64::NAN, 1.0, f64::INFINITY, 0.5, f64::NEG_INFINITY, 0.25]
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| Record::Step(step(i as u64, 0, l)))
                    .chain([Record::Eval(eval(3, 0, f64::NAN, f64::INFINITY))])
                    .collect(),
            ),
            (
                "only non-finite",
                vec![
                    Record::Step(step(1, 0, f64::NAN)),
                    Record::Step(step(2, 0, f64::NAN)),
                ],
            ),
        ];
        for (name, records) in cases {
            let dir = tempfile::tempdir().unwrap();
            let mut p = Progress::new(dir.path(), None, false).unwrap();
            let has_eval = records.iter().any(|r| matches!(r, Record::Eval(_)));
            for rec in records {
                match rec {
                    Record::Step(s) => p.step(s).unwrap(),
                    Record::Eval(e) => p.eval(e).unwrap(),
                }
            }
            let written = plot_run(dir.path()).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(written.len(), 1 + has_eval as usize, "{name}");
            for path in &written {
                assert!(distinct_colours(&decode(path)) > 2, "{name}: blank plot");
            }
        }
    }
}
