//! Train, evaluate and predict: what the `translate` commands do, as library functions.
//!
//! A run folder holds, besides the engine's files, the target vocabulary it trained
//! (`tokenizer.json`), trained anew by every new run on its training targets (an earlier run of
//! the same name is replaced, never half-reused) and read back on resume, in evaluation and in
//! prediction; its `config.toml` records the encoder block read as a number, so that its
//! checkpoints keep their meaning when the default changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Device;
use downstream_core::tokenizer::TextTokenizer;
use downstream_core::train::checkpoint;
use downstream_core::train::config::{holdout, DataConfig, RunConfig, TrainConfig};
use downstream_core::train::result::{self, RunResult};
use downstream_core::train::trainer::{fit, FitReport, RunOptions};
use downstream_core::train::{predict_all, Dataset};
use serde::{Deserialize, Serialize};

use crate::data::{ding, libreoffice, read_aligned, read_tsv, Pair, Split};
use crate::dataset::TranslationData;
use crate::metric::bleu::{self, Bleu, BleuStats};
use crate::metric::chrf::{self, ChrfStats};
use crate::translator::{ModelConfig, Translator};

/// Two aligned files: line `i` of `target` translates line `i` of `source`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlignedFiles {
    pub source: PathBuf,
    pub target: PathBuf,
}

/// Everything a translation run is made of; saved as `config.toml` in the run folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TranslateConfig {
    /// `train`: a TSV file or a named corpus (the LibreOffice help if absent); `val` likewise.
    pub data: DataConfig,
    /// Training pairs from two aligned files instead of `data.train`.
    pub aligned: Option<AlignedFiles>,
    pub model: ModelConfig,
    pub train: TrainConfig,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        Self {
            data: DataConfig::default(),
            aligned: None,
            model: ModelConfig::default(),
            train: TrainConfig {
                backbone: downstream_core::backbone::DEFAULT_TEXT.into(),
                epochs: 1,
                batch: 16,
                lr: 1e-3,
                eval_subset: Some(200),
                eval_batch: Some(64),
                ..TrainConfig::default()
            },
        }
    }
}

impl RunConfig for TranslateConfig {
    fn train_mut(&mut self) -> &mut TrainConfig {
        &mut self.train
    }
}

/// The pairs of a run's splits.
pub struct Splits {
    pub train: Vec<Pair>,
    pub val: Vec<Pair>,
    /// A named corpus's held-out test split.
    pub test: Option<Vec<Pair>>,
    /// Where the training pairs came from, for messages.
    pub origin: String,
}

fn named_corpus(name: &str) -> Result<Option<PathBuf>> {
    Ok(match name {
        libreoffice::NAME => Some(libreoffice::ensure()?),
        ding::NAME => Some(ding::ensure()?),
        _ => None,
    })
}

fn read_split(dir: &Path, split: Split) -> Result<Vec<Pair>> {
    read_tsv(&dir.join(split.file_name()))
}

/// Reads (fetching a named corpus on first use) the pairs `cfg` names.
pub fn load_pairs(cfg: &TranslateConfig) -> Result<Splits> {
    let data = &cfg.data;
    let named = match (&cfg.aligned, &data.train) {
        (Some(_), Some(_)) => anyhow::bail!("give either --data or --source/--target, not both"),
        (Some(_), None) => None,
        (None, None) => named_corpus(libreoffice::NAME)?,
        (None, Some(p)) if !p.exists() => {
            let name = p.to_string_lossy();
            Some(named_corpus(&name)?.with_context(|| {
                format!(
                    "{name}: no such file, nor a named corpus ({}, {})",
                    libreoffice::NAME,
                    ding::NAME
                )
            })?)
        }
        (None, Some(_)) => None,
    };
    let (mut train, origin) = match (&named, &cfg.aligned, &data.train) {
        (Some(dir), _, _) => (read_split(dir, Split::Train)?, dir.display().to_string()),
        (None, Some(a), _) => (
            read_aligned(&a.source, &a.target)?,
            format!("{} and {}", a.source.display(), a.target.display()),
        ),
        (None, None, Some(p)) => (read_tsv(p)?, p.display().to_string()),
        (None, None, None) => unreachable!("no data resolves to the default corpus"),
    };
    let val = match (&data.val, &named) {
        (Some(v), _) => match named_corpus(&v.to_string_lossy())? {
            Some(dir) if !v.exists() => read_split(&dir, Split::Val)?,
            _ => read_tsv(v)?,
        },
        (None, Some(dir)) => read_split(dir, Split::Val)?,
        (None, None) => {
            let held = holdout(train.len(), data.holdout_fraction()?);
            let (mut kept, mut val) = (Vec::new(), Vec::new());
            for (pair, h) in train.into_iter().zip(held) {
                if h {
                    val.push(pair)
                } else {
                    kept.push(pair)
                }
            }
            train = kept;
            val
        }
    };
    let test = named
        .as_ref()
        .map(|dir| read_split(dir, Split::Test))
        .transpose()?;
    if let Some(keep) = data.kept(train.len()) {
        train = train
            .into_iter()
            .zip(keep)
            .filter_map(|(p, k)| k.then_some(p))
            .collect();
    }
    let val: Vec<_> = match data.val_kept(val.len()) {
        Some(keep) => val
            .into_iter()
            .zip(keep)
            .filter_map(|(p, k)| k.then_some(p))
            .collect(),
        None => val,
    };
    anyhow::ensure!(
        !train.is_empty() && !val.is_empty(),
        "need at least one training and one validation pair"
    );
    Ok(Splits {
        train,
        val,
        test,
        origin,
    })
}

/// The run's target vocabulary: a resumed run reads the one in its folder; a new run trains one
/// on the training targets (the caller saves it once the model is built, replacing what an
/// earlier run of the same name left: its size or data may have been different).
pub fn target_tokenizer(
    run_dir: &Path,
    train: &[Pair],
    model: &ModelConfig,
    resume: bool,
) -> Result<TextTokenizer> {
    let path = run_dir.join("tokenizer.json");
    if resume {
        return TextTokenizer::from_file(&path, model.max_target_len)
            .with_context(|| format!("{}: the run's target vocabulary", path.display()));
    }
    TextTokenizer::train_bpe(
        train.iter().map(|p| p.target.as_str()),
        model.vocab_size,
        model.max_target_len,
    )
}

/// BLEU and chrF of a set of translations, with BLEU's parts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scores {
    pub bleu: f64,
    pub chrf: f64,
    #[serde(flatten)]
    pub parts: Bleu,
}

/// Scores hypotheses against references, line by line.
pub fn score(hypotheses: &[String], references: &[String]) -> Result<Scores> {
    anyhow::ensure!(
        hypotheses.len() == references.len(),
        "{} hypotheses for {} references",
        hypotheses.len(),
        references.len()
    );
    let (mut b, mut c) = (BleuStats::default(), ChrfStats::default());
    for (h, r) in hypotheses.iter().zip(references) {
        b += bleu::segment_stats(h, &[r]);
        c += chrf::segment_stats(h, &[r]);
    }
    let parts = b.score(false);
    Ok(Scores {
        bleu: parts.score,
        chrf: c.score(),
        parts,
    })
}

/// Translations of every example of `data`, in order.
pub fn translate_all(
    translator: &Translator,
    data: &TranslationData,
    batch: usize,
) -> Result<Vec<String>> {
    let mut out = vec![String::new(); data.len()];
    predict_all(translator, data, batch, None, |b| {
        for ((index, _), text) in b.keys.iter().zip(b.outputs) {
            out[*index] = text;
        }
        Ok(())
    })?;
    Ok(out)
}

/// What a finished training run reports.
pub struct TrainOutcome {
    pub report: FitReport,
    /// Of the best checkpoint on the whole validation split.
    pub scores: Option<Scores>,
    /// A few validation sentences: source, translation, reference.
    pub examples: Vec<(String, String, String)>,
    pub run_dir: PathBuf,
    /// Sources and targets cut to fit (training and validation together).
    pub truncated: (usize, usize),
}

/// Example translations printed at the end of training.
const EXAMPLES: usize = 5;

/// Trains a translator as `cfg` says into `run.dir`, then translates the validation split with
/// the best checkpoint and scores it.
pub fn train(cfg: &TranslateConfig, run: &RunOptions) -> Result<TrainOutcome> {
    let device = run.device.clone();
    let splits = load_pairs(cfg)?;
    // Held until the run's last file is written; it creates the folder.
    let _lock = downstream_core::train::lock::acquire(&run.dir)?;
    let target = Arc::new(target_tokenizer(
        &run.dir,
        &splits.train,
        &cfg.model,
        run.resume,
    )?);
    let (translator, source) = Translator::new(&cfg.train, &cfg.model, target.clone(), &device)?;
    if !run.resume {
        target.save(&run.dir.join("tokenizer.json"))?;
    }
    // The run folder keeps the block read as a number, so that a later change of the default
    // cannot change what its checkpoints mean.
    let mut cfg = cfg.clone();
    cfg.model.encoder_blocks = Some(translator.encoder.num_layers());
    let cfg = &cfg;
    let train_data = TranslationData::new(&splits.train, &source, &target)?;
    let val_data = TranslationData::new(&splits.val, &source, &target)?;
    let truncated = (
        train_data.truncated.0 + val_data.truncated.0,
        train_data.truncated.1 + val_data.truncated.1,
    );
    if truncated != (0, 0) {
        eprintln!(
            "cut to fit: {} sources (over {} tokens) and {} targets (over {})",
            truncated.0, cfg.model.max_source_len, truncated.1, cfg.model.max_target_len
        );
    }
    let report = fit(
        &translator,
        &train_data,
        Some(&val_data),
        &cfg.train,
        cfg,
        run,
    )?;
    if !report.finished {
        return Ok(TrainOutcome {
            report,
            scores: None,
            examples: Vec::new(),
            run_dir: run.dir.clone(),
            truncated,
        });
    }
    checkpoint::restore_best_else_last(&run.dir, &translator.params, &device)?;
    let batch = cfg.train.eval_batch.unwrap_or(cfg.train.batch);
    let hypotheses = translate_all(&translator, &val_data, batch)?;
    let references: Vec<String> = splits.val.iter().map(|p| p.target.clone()).collect();
    let scores = score(&hypotheses, &references)?;
    downstream_core::atomic::write(
        &run.dir.join("val_translations.txt"),
        (hypotheses.join("\n") + "\n").as_bytes(),
    )?;
    let examples = splits
        .val
        .iter()
        .zip(&hypotheses)
        .take(EXAMPLES)
        .map(|(p, h)| (p.source.clone(), h.clone(), p.target.clone()))
        .collect();
    let metrics = [("bleu", scores.bleu), ("chrf", scores.chrf)]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    let main = downstream_core::train::Task::main_metric(&translator);
    let summary = RunResult::new(&report, main, metrics, splits.val.len());
    result::write(&run.dir, &summary)?;
    Ok(TrainOutcome {
        report,
        scores: Some(scores),
        examples,
        run_dir: run.dir.clone(),
        truncated,
    })
}

/// A trained translator loaded from its run folder: its configuration, the model with its best
/// (else last) checkpoint, and the source tokenizer.
pub fn load_run(
    run_dir: &Path,
    device: &Device,
) -> Result<(TranslateConfig, Translator, TextTokenizer)> {
    let cfg = TranslateConfig::load(&run_dir.join("config.toml"))
        .with_context(|| format!("{} is not a translate run folder", run_dir.display()))?;
    let path = run_dir.join("tokenizer.json");
    let target = TextTokenizer::from_file(&path, cfg.model.max_target_len)
        .with_context(|| format!("{}: the run's target vocabulary", path.display()))?;
    let (translator, source) = Translator::new(&cfg.train, &cfg.model, Arc::new(target), device)?;
    checkpoint::restore_best_else_last(run_dir, &translator.params, device)?;
    Ok((cfg, translator, source))
}
