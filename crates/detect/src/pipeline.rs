//! Train, evaluate and predict: what the `detect` commands do, as library functions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use downstream_core::train::checkpoint;
use downstream_core::train::config::{holdout, DataConfig, RunConfig, TrainConfig};
use downstream_core::train::predict_all;
use downstream_core::train::result::{self, RunResult};
use downstream_core::train::trainer::{fit, FitReport, RunOptions};
use serde::{Deserialize, Serialize};

use crate::data::coco::{self, Detection};
use crate::data::{self, Category, DetectionSet, ImageRecord};
use crate::dataset::{DetectionData, InputConfig};
use crate::detector::{Detector, ModelConfig};
use crate::metric::accumulate::Collector;
use crate::metric::coco_eval;
use crate::model::postprocess::PostProcess;
use crate::synth;
use downstream_core::vision::draw::{annotate_file, Labelled};

/// Everything a detection run is made of; saved as `config.toml` in the run folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    pub data: DataConfig,
    pub input: InputConfig,
    pub model: ModelConfig,
    pub postprocess: PostProcess,
    pub train: TrainConfig,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            data: DataConfig::default(),
            input: InputConfig::default(),
            model: ModelConfig::default(),
            postprocess: PostProcess::default(),
            train: TrainConfig {
                epochs: 12,
                batch: 16,
                lr: 2e-3,
                ..TrainConfig::default()
            },
        }
    }
}

impl RunConfig for DetectConfig {
    fn train_mut(&mut self) -> &mut TrainConfig {
        &mut self.train
    }
}

pub use downstream_hub::datasets_root;

/// The images of `set` whose ids are (or, with `keep = false`, are not) in `ids`.
fn subset(set: &DetectionSet, ids: &std::collections::HashSet<u64>, keep: bool) -> DetectionSet {
    let mut s = set.clone();
    s.images.retain(|im| ids.contains(&im.id) == keep);
    s.annotations.retain(|a| ids.contains(&a.image_id) == keep);
    s
}

/// Loads (or generates) the training and validation sets a configuration names.
pub fn load_data(cfg: &DataConfig) -> Result<(DetectionSet, DetectionSet)> {
    let (train_path, val_path) = match &cfg.train {
        // A named data set, prepared on first use.
        Some(p) if p.as_os_str() == data::deepforest::NAME && !p.exists() => {
            let (t, v) = data::deepforest::ensure()?;
            (t, cfg.val.clone().or(Some(v)))
        }
        Some(p) => (p.clone(), cfg.val.clone()),
        None => {
            let (t, v) = synth::ensure(
                &datasets_root().join("shapes"),
                &downstream_core::vision::generated::SceneSpec::default(),
            )?;
            (t, Some(v))
        }
    };
    let train = data::load(&train_path)?;
    let (train, val) = match val_path {
        Some(v) => (train, data::load(&v)?),
        None => holdout_split(&train, cfg)?,
    };
    let train = limited(train, |n| cfg.kept(n));
    let val = limited(val, |n| cfg.val_kept(n));
    Ok((train, val))
}

/// `set` less the images a limit drops: `keep(n)` says which of its `n` images, in id order,
/// stay (`None`: all). Whole images are kept or dropped, with their boxes.
fn limited(set: DetectionSet, keep: impl FnOnce(usize) -> Option<Vec<bool>>) -> DetectionSet {
    let mut ids: Vec<u64> = set.images.iter().map(|i| i.id).collect();
    ids.sort_unstable();
    match keep(ids.len()) {
        Some(keep) => {
            let kept: std::collections::HashSet<u64> = ids
                .iter()
                .zip(keep)
                .filter_map(|(&id, k)| k.then_some(id))
                .collect();
            subset(&set, &kept, true)
        }
        None => set,
    }
}

/// The training set less every k-th image (by id), and those images to validate.
fn holdout_split(train: &DetectionSet, cfg: &DataConfig) -> Result<(DetectionSet, DetectionSet)> {
    // Images held out in id order, so that the split does not depend on file order.
    let mut ids: Vec<u64> = train.images.iter().map(|i| i.id).collect();
    ids.sort_unstable();
    let held = holdout(ids.len(), cfg.holdout_fraction()?);
    let val_ids: std::collections::HashSet<u64> = ids
        .iter()
        .zip(held)
        .filter_map(|(&id, h)| h.then_some(id))
        .collect();
    let val = subset(train, &val_ids, true);
    Ok((subset(train, &val_ids, false), val))
}

/// What a finished training run reports.
pub struct TrainOutcome {
    pub report: FitReport,
    /// COCO statistics of the best checkpoint on the validation set.
    pub stats: coco_eval::CocoStats,
    pub per_category: BTreeMap<String, f64>,
    pub run_dir: PathBuf,
    pub predictions: Vec<PathBuf>,
    pub clipped: usize,
}

/// Trains a detector as `cfg` says into `run.dir`, then scores the best checkpoint on the
/// validation set and draws predictions for a few validation images.
pub fn train(cfg: &DetectConfig, run: &RunOptions) -> Result<TrainOutcome> {
    let device = run.device.clone();
    cfg.input.check()?;
    let (train_set, val_set) = load_data(&cfg.data)?;
    if train_set.images.is_empty() || val_set.images.is_empty() {
        bail!("need at least one training and one validation image");
    }
    let clipped = train_set.clipped + val_set.clipped;
    let mut categories = train_set.categories.clone();
    categories.sort_by_key(|c| c.id);
    let mut detector = Detector::new(
        &cfg.train,
        &cfg.model,
        cfg.input.size,
        categories,
        cfg.postprocess.clone(),
        &device,
    )?;
    // `Detector::new` checked the whole inference settings; the evaluations during training
    // may leave out the flips and the fusion, and the final one below uses them.
    detector.postprocess = cfg.postprocess.for_validation();
    // Held until the run's last file is written; it creates the folder.
    let _lock = downstream_core::train::lock::acquire(&run.dir)?;
    downstream_core::atomic::write(
        &run.dir.join("categories.json"),
        serde_json::to_string_pretty(&detector.categories)?.as_bytes(),
    )?;
    let train_data = detector.examples(train_set, &cfg.input)?;
    let val_data = detector.examples(val_set.clone(), &cfg.input.for_inference())?;
    let report = fit(
        &detector,
        &train_data,
        Some(&val_data),
        &cfg.train,
        cfg,
        run,
    )?;
    if !report.finished {
        return Ok(TrainOutcome {
            report,
            stats: coco_eval::CocoStats {
                values: [-1.0; 12],
                dropped_detections: 0,
            },
            per_category: BTreeMap::new(),
            run_dir: run.dir.clone(),
            predictions: Vec::new(),
            clipped,
        });
    }
    if let Some(best) = &report.best_checkpoint {
        checkpoint::load(best, &device)?.restore_params(&detector.params)?;
    }
    detector.postprocess = cfg.postprocess.clone();
    let results = predict_set(&detector, &val_data, cfg.train.batch)?;
    coco::save_results(&results, &run.dir.join("val_results.json"))?;
    let stats = coco_eval::evaluate(&val_set, &results)?;
    let per_category = coco_eval::per_category_ap(&val_set, &results)?;
    let predictions = draw_predictions(
        &detector,
        &val_set,
        &results,
        &run.dir.join("predictions"),
        8,
    )?;
    let metrics = coco_eval::STAT_NAMES
        .iter()
        .map(|n| n.to_string())
        .zip(stats.values)
        .collect();
    let main = downstream_core::train::Task::main_metric(&detector);
    let summary = RunResult::new(&report, main, metrics, val_set.images.len());
    result::write(&run.dir, &summary)?;
    Ok(TrainOutcome {
        report,
        stats,
        per_category,
        run_dir: run.dir.clone(),
        predictions,
        clipped,
    })
}

/// COCO results of `detector` on every example of `data`, through the engine's prediction
/// path (prefetched, on detached weights).
pub fn predict_set(
    detector: &Detector,
    data: &DetectionData,
    batch: usize,
) -> Result<Vec<Detection>> {
    let mut collector = Collector::new(detector.postprocess.clone(), &detector.categories);
    predict_all(detector, data, batch, None, |b| {
        collector.add(b.outputs, &b.targets.iter().collect::<Vec<_>>());
        Ok(())
    })?;
    Ok(collector.finish())
}

/// Draws the detections at or above the draw threshold on the first `limit` images into `dir`.
pub fn draw_predictions(
    detector: &Detector,
    set: &DetectionSet,
    results: &[Detection],
    dir: &Path,
    limit: usize,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let names: BTreeMap<u64, (usize, &str)> = detector
        .categories
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id, (i, c.name.as_str())))
        .collect();
    let mut written = Vec::new();
    for im in set.images.iter().take(limit) {
        let boxes: Vec<Labelled> = results
            .iter()
            .filter(|d| {
                d.image_id == im.id && d.score >= detector.postprocess.draw_threshold as f64
            })
            .map(|d| {
                let (class, name) = names.get(&d.category_id).copied().unwrap_or((0, "?"));
                Labelled {
                    bbox: d.bbox,
                    label: format!("{name} {:.2}", d.score),
                    class,
                }
            })
            .collect();
        let stem = Path::new(&im.file_name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dst = dir.join(format!("{stem}.png"));
        annotate_file(&set.image_path(im), &dst, &boxes)?;
        written.push(dst);
    }
    Ok(written)
}

/// A trained detector loaded from its run folder: the configuration it was trained with,
/// its categories, and its best (else last) checkpoint.
pub fn load_run(run_dir: &Path, device: &Device) -> Result<(DetectConfig, Detector)> {
    let cfg = DetectConfig::load(&run_dir.join("config.toml"))
        .with_context(|| format!("{} is not a detect run folder", run_dir.display()))?;
    let cats_path = run_dir.join("categories.json");
    let categories: Vec<Category> = serde_json::from_str(
        &std::fs::read_to_string(&cats_path)
            .with_context(|| format!("reading {}", cats_path.display()))?,
    )
    .with_context(|| format!("{}: malformed", cats_path.display()))?;
    let detector = Detector::new(
        &cfg.train,
        &cfg.model,
        cfg.input.size,
        categories,
        cfg.postprocess.clone(),
        device,
    )?;
    checkpoint::restore_best_else_last(run_dir, &detector.params, device)?;
    Ok((cfg, detector))
}

/// Runs a trained detector on image files; writes `predictions.json` (COCO results, image ids
/// numbering the files from 1, with `images.json` mapping them to paths) and annotated PNGs
/// into `out`.
pub fn predict_files(
    cfg: &DetectConfig,
    detector: &Detector,
    files: &[PathBuf],
    out: &Path,
) -> Result<Vec<Detection>> {
    let images: Vec<ImageRecord> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let abs = std::fs::canonicalize(f)
                .with_context(|| format!("{}: cannot be opened", f.display()))?;
            Ok(ImageRecord {
                id: i as u64 + 1,
                file_name: abs.to_string_lossy().into_owned(),
                width: 0,
                height: 0,
            })
        })
        .collect::<Result<_>>()?;
    let mut set = DetectionSet {
        root: PathBuf::from("/"),
        source: out.join("images.json"),
        images,
        annotations: Vec::new(),
        categories: detector.categories.clone(),
        clipped: 0,
        image_sources: Default::default(),
    };
    set.fill_image_sizes()?;
    let data = detector.examples(set.clone(), &cfg.input.for_inference())?;
    let results = predict_set(detector, &data, cfg.train.batch)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    coco::save_results(&results, &out.join("predictions.json"))?;
    coco::save(&set, &out.join("images.json"))?;
    draw_predictions(detector, &set, &results, out, usize::MAX)?;
    Ok(results)
}
