//! Train, evaluate and predict: what the `segment` commands do, as library functions.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use downstream_core::train::checkpoint;
use downstream_core::train::config::{holdout, DataConfig, RunConfig, TrainConfig};
use downstream_core::train::result::{self, RunResult};
use downstream_core::train::trainer::{fit, FitReport, RunOptions};
use downstream_core::train::{predict_all, Dataset};
use downstream_core::vision::draw::{colour, overlay, with_legend};
use downstream_core::vision::generated::SceneSpec;
use downstream_core::vision::io::{open_rgb, save_png};
use downstream_core::vision::mask::save_mask;
use image::{GrayImage, Rgb};
use serde::{Deserialize, Serialize};

use crate::data::layout::{self, Split};
use crate::data::{brain, fashion};
use crate::data::{LabelConfig, SegmentationSet};
use crate::dataset::{InputConfig, SegmentationData};
use crate::metric::accumulate::{mask_view, Assembled, Assembler};
use crate::metric::confusion::{Confusion, LabelRules, SegStats};
use crate::segmenter::{ModelConfig, Segmenter};
use crate::synth;

/// Everything a segmentation run is made of; saved as `config.toml` in the run folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentConfig {
    pub data: DataConfig,
    pub labels: LabelConfig,
    pub input: InputConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self {
            data: DataConfig::default(),
            labels: LabelConfig::default(),
            input: InputConfig::default(),
            model: ModelConfig::default(),
            train: TrainConfig {
                epochs: 10,
                batch: 16,
                lr: 2e-3,
                ..TrainConfig::default()
            },
        }
    }
}

impl RunConfig for SegmentConfig {
    fn train_mut(&mut self) -> &mut TrainConfig {
        &mut self.train
    }
}

/// The classes of a trained run, saved as `labels.json` beside its configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunLabels {
    pub classes: Vec<String>,
    pub ignore_index: u8,
    pub reduce_zero_label: bool,
    pub palette: Option<Vec<[u8; 3]>>,
}

impl RunLabels {
    pub fn rules(&self) -> LabelRules {
        LabelRules {
            num_classes: self.classes.len(),
            ignore_index: self.ignore_index,
            reduce_zero_label: self.reduce_zero_label,
        }
    }

    fn of(set: &SegmentationSet) -> Self {
        Self {
            classes: set.classes.clone(),
            ignore_index: set.rules.ignore_index,
            reduce_zero_label: set.rules.reduce_zero_label,
            palette: set.palette.clone(),
        }
    }

    /// The drawing colour of each class: the data set's palette where it has one.
    pub fn colours(&self) -> Vec<Rgb<u8>> {
        (0..self.classes.len())
            .map(|k| match &self.palette {
                Some(p) if k < p.len() => Rgb(p[k]),
                _ => colour(k),
            })
            .collect()
    }
}

/// The built-in set's folder and size.
pub fn builtin() -> (PathBuf, SceneSpec) {
    let spec = SceneSpec {
        train: 400,
        val: 100,
        seed: 0,
        size: 224,
    };
    (downstream_hub::datasets_root().join("shapes-seg"), spec)
}

/// Loads (or generates) the training and validation sets a configuration names. The
/// validation set reads its labels as the training set does.
pub fn load_data(
    data: &DataConfig,
    labels: &LabelConfig,
) -> Result<(SegmentationSet, SegmentationSet)> {
    let (train_dir, val_dir) = match &data.train {
        // Named data sets, prepared on first use.
        Some(p) if !p.exists() && p.as_os_str() == brain::NAME => {
            let (t, v) = brain::ensure()?;
            (t, data.val.clone().or(Some(v)))
        }
        Some(p) if !p.exists() && p.as_os_str() == fashion::NAME => {
            let (t, v) = fashion::ensure()?;
            (t, data.val.clone().or(Some(v)))
        }
        Some(p) => (p.clone(), data.val.clone()),
        None => {
            let (dir, spec) = builtin();
            let (t, v) = synth::ensure(&dir, &spec)?;
            (t, Some(v))
        }
    };
    let train =
        SegmentationSet::validate(&train_dir, layout::read(&train_dir, Split::Train)?, labels)?;
    let same = LabelConfig {
        num_classes: Some(train.classes.len()),
        reduce_zero_label: Some(train.rules.reduce_zero_label),
        ..labels.clone()
    };
    let val_source = match val_dir {
        Some(v) => Some(v),
        None if layout::has_splits(&train_dir) => Some(train_dir.clone()),
        None => None,
    };
    let (train, val) = match val_source {
        Some(v) => {
            let mut val = SegmentationSet::validate(&v, layout::read(&v, Split::Val)?, &same)?;
            val.classes = train.classes.clone();
            (train, val)
        }
        None => {
            let held = holdout(train.pairs.len(), data.holdout_fraction()?);
            let val = train.select(|i| held[i]);
            (train.select(|i| !held[i]), val)
        }
    };
    let train = match data.kept(train.pairs.len()) {
        Some(keep) => train.select(|i| keep[i]),
        None => train,
    };
    let val = match data.val_kept(val.pairs.len()) {
        Some(keep) => val.select(|i| keep[i]),
        None => val,
    };
    Ok((train, val))
}

/// What a finished training run reports.
pub struct TrainOutcome {
    pub report: FitReport,
    /// Of the best checkpoint on the whole validation set.
    pub stats: SegStats,
    pub classes: Vec<String>,
    pub run_dir: PathBuf,
    /// Drawn validation predictions.
    pub predictions: Vec<PathBuf>,
}

/// How many validation images a finished run draws.
const DRAWN: usize = 8;

/// Trains a segmenter as `cfg` says into `run.dir`, then scores the best checkpoint on the
/// validation set and draws predictions for a few validation images.
pub fn train(cfg: &SegmentConfig, run: &RunOptions) -> Result<TrainOutcome> {
    let device = run.device.clone();
    let (train_set, val_set) = load_data(&cfg.data, &cfg.labels)?;
    anyhow::ensure!(
        !train_set.pairs.is_empty() && !val_set.pairs.is_empty(),
        "need at least one training and one validation image"
    );
    let labels = RunLabels::of(&train_set);
    let segmenter = Segmenter::new(
        &cfg.train,
        &cfg.model,
        cfg.input.size,
        labels.classes.clone(),
        labels.rules(),
        &device,
    )?;
    // Held until the run's last file is written; it creates the folder.
    let _lock = downstream_core::train::lock::acquire(&run.dir)?;
    downstream_core::atomic::write(
        &run.dir.join("labels.json"),
        serde_json::to_string_pretty(&labels)?.as_bytes(),
    )?;
    let patch = segmenter.patch_size();
    let train_data = SegmentationData::new(train_set, cfg.input.clone(), patch, true, &device)?;
    let val_data = SegmentationData::new(val_set, cfg.input.clone(), patch, false, &device)?;
    let report = fit(
        &segmenter,
        &train_data,
        Some(&val_data),
        &cfg.train,
        cfg,
        run,
    )?;
    if !report.finished {
        return Ok(TrainOutcome {
            report,
            stats: Confusion::new(labels.rules()).stats(),
            classes: labels.classes,
            run_dir: run.dir.clone(),
            predictions: Vec::new(),
        });
    }
    checkpoint::restore_best_else_last(&run.dir, &segmenter.params, &device)?;
    let out = run.dir.join("predictions");
    let (stats, predictions) =
        evaluate_and_draw(&segmenter, &val_data, &labels, cfg.train.batch, &out, DRAWN)?;
    let metrics = [
        ("mIoU", stats.miou),
        ("mAcc", stats.m_acc),
        ("aAcc", stats.a_acc),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .collect();
    let main = downstream_core::train::Task::main_metric(&segmenter);
    let summary = RunResult::new(&report, main, metrics, val_data.len());
    result::write(&run.dir, &summary)?;
    Ok(TrainOutcome {
        report,
        stats,
        classes: labels.classes,
        run_dir: run.dir.clone(),
        predictions,
    })
}

/// Writes one image's predicted mask (`masks/NAME.png`, class ids) and its overlay with a
/// legend (`overlays/NAME.png`) under `out`; returns the overlay's path.
fn draw_prediction(
    data: &SegmentationData,
    done: &Assembled,
    labels: &RunLabels,
    out: &Path,
) -> Result<PathBuf> {
    let pair = &data.set.pairs[done.pair];
    let (h, w) = done.classes.dim();
    let mask = GrayImage::from_fn(w as u32, h as u32, |x, y| {
        image::Luma([done.classes[[y as usize, x as usize]].min(255) as u8])
    });
    save_mask(
        &out.join("masks").join(format!("{}.png", pair.name)),
        &mask,
        None,
    )?;
    let colours = labels.colours();
    // A background class is left untinted, so that what was found stands out.
    let untinted = (labels.classes.first().map(String::as_str) == Some("background")).then_some(0);
    let tinted = overlay(&open_rgb(&pair.image)?, &mask, &colours, 0.5, untinted);
    let entries: Vec<(String, Rgb<u8>)> = labels
        .classes
        .iter()
        .zip(&colours)
        .enumerate()
        .map(|(k, (name, &c))| match untinted {
            Some(u) if u as usize == k => (format!("{name} (not tinted)"), Rgb([235, 235, 235])),
            _ => (name.clone(), c),
        })
        .collect();
    let path = out.join("overlays").join(format!("{}.png", pair.name));
    save_png(
        &path,
        &image::DynamicImage::ImageRgb8(with_legend(&tinted, &entries)),
    )?;
    Ok(path)
}

/// Runs `segmenter` over `data` through the engine's prediction path, scoring the images
/// that have masks and drawing the first `draw` of them into `out`.
pub fn evaluate_and_draw(
    segmenter: &Segmenter,
    data: &SegmentationData,
    labels: &RunLabels,
    batch: usize,
    out: &Path,
    draw: usize,
) -> Result<(SegStats, Vec<PathBuf>)> {
    let mut assembler = Assembler::new(segmenter.size);
    let mut confusion = Confusion::new(labels.rules());
    let mut drawn = Vec::new();
    predict_all(segmenter, data, batch, None, |b| {
        for (logits, target) in b.outputs.iter().zip(&b.targets) {
            if let Some(done) = assembler.add(logits, target)? {
                if let Some(truth) = &done.truth {
                    confusion.add(mask_view(truth), done.classes.view())?;
                }
                if drawn.len() < draw {
                    drawn.push(draw_prediction(data, &done, labels, out)?);
                }
            }
        }
        Ok(())
    })?;
    assembler.finish()?;
    Ok((confusion.stats(), drawn))
}

/// A trained segmenter loaded from its run folder: its configuration, its labels, and its best
/// (else last) checkpoint.
pub fn load_run(run_dir: &Path, device: &Device) -> Result<(SegmentConfig, RunLabels, Segmenter)> {
    let cfg = SegmentConfig::load(&run_dir.join("config.toml"))
        .with_context(|| format!("{} is not a segment run folder", run_dir.display()))?;
    let path = run_dir.join("labels.json");
    let labels: RunLabels = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: malformed", path.display()))?;
    let segmenter = Segmenter::new(
        &cfg.train,
        &cfg.model,
        cfg.input.size,
        labels.classes.clone(),
        labels.rules(),
        device,
    )?;
    checkpoint::restore_best_else_last(run_dir, &segmenter.params, device)?;
    Ok((cfg, labels, segmenter))
}

/// Scores predicted masks in `pred` against the masks of `gt`, paired by file stem (PNG).
pub fn score_folders(gt: &Path, pred: &Path, rules: LabelRules) -> Result<SegStats> {
    let mut confusion = Confusion::new(rules);
    let mut names: Vec<PathBuf> = std::fs::read_dir(gt)
        .with_context(|| format!("reading {}", gt.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    names.sort();
    anyhow::ensure!(!names.is_empty(), "{}: no PNG masks", gt.display());
    for truth_path in names {
        let stem = truth_path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let pred_path = pred.join(format!("{stem}.png"));
        let truth = downstream_core::vision::mask::open_mask(&truth_path)?.labels;
        if let Some(l) = confusion.out_of_range(mask_view(&truth)) {
            anyhow::bail!(
                "{}: label {l} is not a class (0 to {}) nor the ignore index {}",
                truth_path.display(),
                rules.num_classes - 1,
                rules.ignore_index
            );
        }
        let predicted = downstream_core::vision::mask::open_mask(&pred_path)
            .with_context(|| format!("the prediction for {}", truth_path.display()))?
            .labels;
        anyhow::ensure!(
            predicted.dimensions() == truth.dimensions(),
            "{}: the prediction is {:?}, the mask {:?}",
            pred_path.display(),
            predicted.dimensions(),
            truth.dimensions()
        );
        let classes = mask_view(&predicted).mapv(u32::from);
        confusion.add(mask_view(&truth), classes.view())?;
    }
    Ok(confusion.stats())
}

/// Predicted masks and overlays for image files, into `out`; returns how many were written.
pub fn predict_files(
    cfg: &SegmentConfig,
    labels: &RunLabels,
    segmenter: &Segmenter,
    files: &[PathBuf],
    out: &Path,
) -> Result<usize> {
    let set = SegmentationSet::images_only(files, labels.classes.clone(), labels.rules());
    let data = SegmentationData::new(
        set,
        cfg.input.clone(),
        segmenter.patch_size(),
        false,
        &segmenter.params.device(),
    )?;
    let (_, drawn) = evaluate_and_draw(segmenter, &data, labels, cfg.train.batch, out, usize::MAX)?;
    debug_assert!(data.len() >= drawn.len());
    Ok(drawn.len())
}
