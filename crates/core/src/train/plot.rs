//! The project's plots. A run's, drawn from `metrics.jsonl` when it finishes: `loss.png`
//! (training loss per step with a smoothed trend, and the validation loss where one was
//! logged) and `metrics.png` (the few validation metrics the task names, not every one it
//! reports, so the lines stay apart and readable). And [`line_chart`], the same drawing for
//! measurements against any x (a study's metric against training-set size), with the spread
//! of repeated measurements as bars. The legend goes to a corner no line crosses; when each
//! is crossed, the y-axis rises to make room over the lines under an upper one.
//! Text comes from an embedded font, so plots work on machines with no fonts installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Result;
use plotters::prelude::*;

use super::inference::VAL_LOSS;
use super::metrics_log::{read_records, Record, METRICS_FILE};

const PLOT_SIZE: (u32, u32) = (900, 500);

/// Writes `loss.png` and, if the log holds evaluations, `metrics.png` with the metrics named in
/// `plotted` into `run_dir`; returns the paths written. Each PNG is written atomically.
/// Non-finite values are skipped; empty and constant series still give a readable plot.
pub fn plot_run(run_dir: &Path, plotted: &[String]) -> Result<Vec<PathBuf>> {
    let records = read_records(&run_dir.join(METRICS_FILE))?;
    let mut loss = Vec::new();
    let mut val_loss = Vec::new();
    let mut metrics: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut any_eval = false;
    for rec in &records {
        match rec {
            Record::Step(r) => loss.push((r.step as f64, r.loss)),
            Record::Eval(r) => {
                any_eval = true;
                if let Some(v) = r.metrics.get(VAL_LOSS) {
                    val_loss.push((r.step as f64, *v));
                }
                for name in plotted {
                    if let Some(v) = r.metrics.get(name) {
                        metrics
                            .entry(name.as_str())
                            .or_default()
                            .push((r.step as f64, *v));
                    }
                }
            }
        }
    }

    let mut written = Vec::new();
    let loss = finite_sorted(loss);
    let smoothed = ema(&loss);
    let mut loss_series = vec![
        Series {
            label: "loss".into(),
            color: RGBColor(150, 180, 225),
            width: 1,
            markers: loss.len() <= 30,
            points: loss,
            spread: Vec::new(),
        },
        Series {
            label: "loss (EMA)".into(),
            color: RGBColor(31, 119, 180),
            width: 2,
            markers: false,
            points: smoothed,
            spread: Vec::new(),
        },
    ];
    if !val_loss.is_empty() {
        loss_series.push(Series {
            label: "validation loss".into(),
            color: RGBColor(214, 39, 40),
            width: 2,
            markers: true,
            points: finite_sorted(val_loss),
            spread: Vec::new(),
        });
    }
    let path = run_dir.join("loss.png");
    render_png(&path, "training loss", &Axes::steps("loss"), &loss_series)?;
    written.push(path);

    if any_eval {
        // In the order the task gave, each in its own colour.
        let series: Vec<Series> = plotted
            .iter()
            .filter_map(|name| metrics.remove(name.as_str()).map(|p| (name, p)))
            .enumerate()
            .map(|(i, (label, points))| {
                let points = finite_sorted(points);
                Series {
                    label: label.clone(),
                    color: PALETTE[i % PALETTE.len()],
                    width: 2,
                    markers: points.len() <= 100,
                    points,
                    spread: Vec::new(),
                }
            })
            .collect();
        let path = run_dir.join("metrics.png");
        render_png(&path, "validation metrics", &Axes::steps("value"), &series)?;
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
    /// Vertical bars (x, low, high): the range of repeated measurements.
    spread: Vec<(f64, f64, f64)>,
}

/// What the axes say, and whether x is drawn on a log scale.
struct Axes<'a> {
    x_desc: &'a str,
    y_desc: &'a str,
    log_x: bool,
}

impl<'a> Axes<'a> {
    fn steps(y_desc: &'a str) -> Self {
        Self {
            x_desc: "step",
            y_desc,
            log_x: false,
        }
    }
}

/// One measured point of a [`Line`]: the value drawn, and the range its repeats span.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub low: f64,
    pub high: f64,
}

/// One line of a [`line_chart`].
#[derive(Clone, Debug)]
pub struct Line {
    pub label: String,
    pub points: Vec<Point>,
}

/// Writes a PNG line chart to `path` (atomically): one line per entry of `lines`, in the
/// palette's colours, each point marked with a bar over its `low..high` where they differ.
/// With `log_x` the x axis is logarithmic (sizes that grow by factors), labelled in x's own
/// units. Non-finite points are skipped.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    log_x: bool,
    lines: &[Line],
) -> Result<()> {
    let tx = |x: f64| if log_x { x.log10() } else { x };
    let series: Vec<Series> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let ok = |p: &&Point| p.x.is_finite() && p.y.is_finite() && (!log_x || p.x > 0.0);
            let kept: Vec<&Point> = line.points.iter().filter(ok).collect();
            Series {
                label: line.label.clone(),
                color: PALETTE[i % PALETTE.len()],
                width: 2,
                markers: true,
                points: finite_sorted(kept.iter().map(|p| (tx(p.x), p.y)).collect()),
                spread: kept
                    .iter()
                    .filter(|p| p.low.is_finite() && p.high.is_finite() && p.low < p.high)
                    .map(|p| (tx(p.x), p.low, p.high))
                    .collect(),
            }
        })
        .collect();
    let axes = Axes {
        x_desc,
        y_desc,
        log_x,
    };
    render_png(path, title, &axes, &series)
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

fn render_png(path: &Path, title: &str, axes: &Axes, series: &[Series]) -> Result<()> {
    ensure_font()?;
    let (w, h) = PLOT_SIZE;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    draw_chart(&mut buf, title, axes, series)
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
    axes: &Axes,
    series: &[Series],
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(buf, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE)?;

    let pts = || series.iter().flat_map(|s| s.points.iter());
    let bars = || series.iter().flat_map(|s| s.spread.iter());
    let empty = pts().next().is_none();
    // A log axis gets a margin so that its end points and their markers stay inside.
    let x_margin = if axes.log_x { 0.05 } else { 0.0 };
    let (x0, x1) = padded_range(pts().map(|p| p.0), x_margin, Some(1.0));
    let ys = pts().map(|p| p.1).chain(bars().flat_map(|b| [b.1, b.2]));
    let (y0, y1) = padded_range(ys, 0.05, None);
    let (corner, y1) = legend_place(series, (x0, x1), (y0, y1), axes.log_x);

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
    let log_x = axes.log_x;
    let x_fmt = move |x: &f64| {
        if log_x {
            format!("{:.0}", 10f64.powf(*x))
        } else {
            format!("{x:.xd$}")
        }
    };
    let y_fmt = move |y: &f64| {
        if *y != 0.0 && (y.abs() >= 1e5 || (y1 - y0) < 1e-4) {
            format!("{y:.3e}")
        } else {
            format!("{y:.yd$}")
        }
    };
    chart
        .configure_mesh()
        .x_desc(axes.x_desc)
        .y_desc(axes.y_desc)
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
        chart.draw_series(
            s.spread.iter().map(|&(x, lo, hi)| {
                PathElement::new(vec![(x, lo), (x, hi)], style.stroke_width(1))
            }),
        )?;
    }
    if !empty {
        chart
            .configure_series_labels()
            .position(corner)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Where the legend goes, and the top of the y-axis: a corner whose legend-sized patch no line
/// crosses, else an upper corner with the axis raised until the lines pass below the legend
/// (a legend that hides a point hides data). Lines are sampled along each segment, not only at
/// their points, since a legend hides a line as well as a marker. Ties go to the usual
/// corner: upper right for a run's curves, upper left for a study's (more data, better
/// scores: its lines tend to start low).
fn legend_place(
    series: &[Series],
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
    log_x: bool,
) -> (SeriesLabelPosition, f64) {
    use SeriesLabelPosition::{LowerLeft, LowerRight, UpperLeft, UpperRight};
    // The legend's share of the plot area: about 120 pixels wide, 20 a label high, in a
    // plot area of about 780 by 380 pixels.
    let labelled = series.iter().filter(|s| !s.points.is_empty()).count();
    let patch_w = 0.16;
    let patch_h = (16.0 + 20.0 * labelled as f64) / 380.0;
    let norm_x = |x: f64| (x - x0) / (x1 - x0);
    let mut samples = Vec::new();
    for s in series {
        for w in s.points.windows(2) {
            for k in 0..=16 {
                let t = k as f64 / 16.0;
                let (a, b) = (w[0], w[1]);
                samples.push((a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t));
            }
        }
        samples.extend(s.points.iter().copied());
        samples.extend(s.spread.iter().flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]));
    }
    let order = if log_x {
        [UpperLeft, UpperRight, LowerRight, LowerLeft]
    } else {
        [UpperRight, UpperLeft, LowerRight, LowerLeft]
    };
    let sides = |corner: &SeriesLabelPosition| match corner {
        UpperLeft => (false, true),
        UpperRight => (true, true),
        LowerLeft => (false, false),
        _ => (true, false),
    };
    let in_band = |right: bool, x: f64| {
        if right {
            norm_x(x) >= 1.0 - patch_w
        } else {
            norm_x(x) <= patch_w
        }
    };
    let hidden = |corner: &SeriesLabelPosition| {
        let (right, top) = sides(corner);
        samples
            .iter()
            .filter(|&&(x, y)| {
                let y = (y - y0) / (y1 - y0);
                let in_y = if top {
                    y >= 1.0 - patch_h
                } else {
                    y <= patch_h
                };
                in_band(right, x) && in_y
            })
            .count()
    };
    // The first free corner in the order above, so that the order breaks ties.
    if let Some(free) = (0..order.len()).find(|&i| hidden(&order[i]) == 0) {
        return (order.into_iter().nth(free).unwrap_or(UpperRight), y1);
    }
    // Every corner is crossed: raise the top above the highest sample under an upper corner,
    // so that the legend's patch (and a little air) fits over it; the lower raise wins.
    let raised = |corner: &SeriesLabelPosition| {
        let (right, _) = sides(corner);
        let top = samples
            .iter()
            .filter(|&&(x, _)| in_band(right, x))
            .map(|&(_, y)| y)
            .fold(y0, f64::max);
        y0 + (top - y0) / (1.0 - patch_h - 0.03)
    };
    order
        .into_iter()
        .filter(|c| sides(c).1)
        .map(|c| {
            let top = raised(&c).max(y1);
            (c, top)
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((UpperRight, y1))
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
    use crate::train::metrics_log::samples::{eval, step};
    use crate::train::metrics_log::MetricsLog;
    use std::fs;

    fn plotted() -> Vec<String> {
        vec!["accuracy".to_string()]
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
        let mut p = MetricsLog::open(dir.path(), None).unwrap();
        for s in 1..=300u64 {
            let noise = ((s * 7919) % 13) as f64 / 13.0 - 0.5;
            p.append(&Record::Step(step(
                s,
                0,
                2.0 * (-(s as f64) / 100.0).exp() + 0.2 * noise,
            )))
            .unwrap();
            if s % 50 == 0 {
                p.append(&Record::Eval(eval(
                    s,
                    0,
                    0.5 + s as f64 / 1000.0,
                    1.5 - s as f64 / 400.0,
                )))
                .unwrap();
            }
        }
        drop(p);

        let written = plot_run(dir.path(), &plotted()).unwrap();
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
    fn a_line_chart_draws_each_line_in_its_colour_with_its_spread() {
        let dir = tempfile::tempdir().unwrap();
        let point = |x: f64, y: f64, d: f64| Point {
            x,
            y,
            low: y - d,
            high: y + d,
        };
        let lines = vec![
            Line {
                label: "frozen".into(),
                points: vec![point(300.0, 30.0, 1.0), point(3000.0, 28.0, 0.0)],
            },
            Line {
                label: "full".into(),
                // A non-finite value is skipped, not drawn or fatal.
                points: vec![point(300.0, 40.0, 2.0), point(900.0, f64::NAN, 0.0)],
            },
            Line {
                label: "never run".into(),
                points: Vec::new(),
            },
        ];
        let path = dir.path().join("chart.png");
        line_chart(&path, "study", "training examples", "mIoU", true, &lines).unwrap();
        let img = decode(&path);
        let count = |c: RGBColor| img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count();
        assert!(count(PALETTE[0]) > 100, "the first line is missing");
        assert!(count(PALETTE[1]) > 20, "the second line's point is missing");
        // The bar over the second line's spread (38 to 42) is drawn in its colour, above and
        // below its marker: more of that colour than a marker and a legend entry alone.
        let without_bar = {
            let mut l = lines.clone();
            l[1].points[0] = point(300.0, 40.0, 0.0);
            let p = dir.path().join("no_bar.png");
            line_chart(&p, "study", "training examples", "mIoU", true, &l).unwrap();
            let img = decode(&p);
            let c = PALETTE[1];
            img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count()
        };
        assert!(count(PALETTE[1]) > without_bar + 10, "no spread bar drawn");
    }

    #[test]
    fn the_legend_goes_where_the_lines_are_not() {
        let series = |lines: &[[(f64, f64); 2]]| -> Vec<Series> {
            lines
                .iter()
                .map(|pts| Series {
                    label: String::new(),
                    points: pts.to_vec(),
                    color: PALETTE[0],
                    width: 1,
                    markers: true,
                    spread: Vec::new(),
                })
                .collect()
        };
        let place = |s: &[Series]| legend_place(s, (0.0, 1.0), (0.0, 1.0), true);
        let at = |s: &[Series]| place(s).0;
        // Rising lines leave the upper left free.
        let rising = series(&[[(0.0, 0.1), (1.0, 0.9)], [(0.0, 0.0), (1.0, 0.6)]]);
        assert!(matches!(at(&rising), SeriesLabelPosition::UpperLeft));
        assert_eq!(place(&rising).1, 1.0, "a free corner keeps the axis");
        // A line falling from the upper left, one low along the bottom: the upper right.
        let falling = series(&[[(0.0, 1.0), (1.0, 0.7)], [(0.0, 0.05), (1.0, 0.0)]]);
        assert!(matches!(at(&falling), SeriesLabelPosition::UpperRight));
        // Lines through both upper corners: a lower one.
        let high = series(&[[(0.0, 0.95), (1.0, 0.95)], [(0.0, 0.02), (1.0, 0.5)]]);
        assert!(matches!(at(&high), SeriesLabelPosition::LowerRight));
        // Lines through all four corners (the segment study's shape: a falling top line, a
        // low flat one): the axis rises over the lower end of the top line, and the legend
        // goes there, over no sample.
        let crossed = series(&[[(0.0, 0.98), (1.0, 0.9)], [(0.0, 0.05), (1.0, 0.02)]]);
        let (corner, top) = place(&crossed);
        assert!(matches!(corner, SeriesLabelPosition::UpperRight));
        assert!(top > 1.0 && top < 1.2, "{top}");
        let replaced = legend_place(&crossed, (0.0, 1.0), (0.0, top), true);
        assert!(matches!(replaced.0, SeriesLabelPosition::UpperRight));
        assert_eq!(replaced.1, top, "the raised axis leaves that corner free");
    }

    #[test]
    fn plot_run_edge_cases_do_not_panic() {
        // No records at all: a loss plot (saying there is nothing yet) and no metrics plot.
        let dir = tempfile::tempdir().unwrap();
        drop(MetricsLog::open(dir.path(), None).unwrap());
        let written = plot_run(dir.path(), &plotted()).unwrap();
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
            let mut p = MetricsLog::open(dir.path(), None).unwrap();
            let has_eval = records.iter().any(|r| matches!(r, Record::Eval(_)));
            for rec in records {
                match rec {
                    Record::Step(s) => p.append(&Record::Step(s)).unwrap(),
                    Record::Eval(e) => p.append(&Record::Eval(e)).unwrap(),
                }
            }
            let written =
                plot_run(dir.path(), &plotted()).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(written.len(), 1 + has_eval as usize, "{name}");
            for path in &written {
                assert!(distinct_colours(&decode(path)) > 2, "{name}: blank plot");
            }
        }
    }
}
