//! `cargo run --release -p translate`: fine-tune a pretrained BERT encoder into an English ->
//! German translator.
//!
//! With no arguments it fetches the default encoder and the LibreOffice help corpus, trains,
//! and prints BLEU and chrF on the validation split with a few example translations.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use downstream_core::train::config::{self, DataArgs, RunArgs, TrainArgs};
use downstream_core::train::summary;
use downstream_core::train::trainer::RunOptions;
use translate::data::{ding, libreoffice, read_lines, read_tsv};
use translate::dataset::TranslationData;
use translate::pipeline::{self, AlignedFiles, Scores, TrainOutcome, TranslateConfig};

#[derive(Parser)]
#[command(
    name = "translate",
    about = "Fine-tune a pretrained BERT encoder into an English -> German translator"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// The model's shape and its vocabulary.
#[derive(Args, Clone, Debug, Default)]
struct ModelArgs {
    /// Two aligned files instead of --data: the sources, one per line...
    #[arg(long, requires = "target")]
    source: Option<PathBuf>,
    /// ...and their translations, line by line.
    #[arg(long, requires = "source")]
    target: Option<PathBuf>,
    /// Entries of the target vocabulary trained on the training targets.
    #[arg(long)]
    vocab_size: Option<usize>,
    /// The encoder block the decoder reads (default: the middle one; the blocks above are not run).
    #[arg(long)]
    encoder_blocks: Option<usize>,
    /// Layers of the decoder.
    #[arg(long)]
    decoder_layers: Option<usize>,
    /// Start the decoder new instead of from the encoder's layers.
    #[arg(long)]
    no_warm_start: bool,
}

/// How translations are generated.
#[derive(Args, Clone, Debug, Default)]
struct SearchArgs {
    /// Beam width (1: greedy).
    #[arg(long)]
    beam: Option<usize>,
    /// The most tokens per translation.
    #[arg(long)]
    max_len: Option<usize>,
    /// Length penalty of beam search (score / length^alpha).
    #[arg(long)]
    length_penalty: Option<f64>,
}

impl SearchArgs {
    fn apply(&self, cfg: &mut TranslateConfig) {
        let s = &mut cfg.model.search;
        if let Some(b) = self.beam {
            s.beam = b.max(1);
        }
        if let Some(m) = self.max_len {
            s.max_len = m;
        }
        if let Some(a) = self.length_penalty {
            s.length_penalty = a;
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a translator.
    Train {
        #[command(
            flatten,
            next_help_heading = "Data (a TSV file, a named corpus: libreoffice-help-de-en, ding-de-en)"
        )]
        data: DataArgs,
        #[command(flatten, next_help_heading = "Model")]
        model: ModelArgs,
        #[command(flatten, next_help_heading = "Search")]
        search: SearchArgs,
        #[command(flatten, next_help_heading = "Training")]
        train: Box<TrainArgs>,
        #[command(flatten, next_help_heading = "Run")]
        run: RunArgs,
    },
    /// Score: a trained run on a split (`--run DIR`), or translations against references
    /// (`--refs FILE --hyps FILE`), as sacreBLEU does.
    Eval {
        /// A run folder (runs/translate/NAME).
        #[arg(long, conflicts_with_all = ["refs", "hyps"])]
        run: Option<PathBuf>,
        /// A TSV file to evaluate on (default: the run's validation pairs).
        #[arg(long, requires = "run")]
        data: Option<PathBuf>,
        /// The named corpus's test split instead of its validation split.
        #[arg(long, requires = "run")]
        test: bool,
        /// Reference translations, one per line.
        #[arg(long, requires = "hyps")]
        refs: Option<PathBuf>,
        /// Translations to score, one per line.
        #[arg(long, requires = "refs")]
        hyps: Option<PathBuf>,
        #[command(flatten)]
        search: SearchArgs,
        /// Print one JSON object: bleu, chrf, precisions, bp, lengths.
        #[arg(long)]
        json: bool,
    },
    /// Translate lines from a file or standard input, one translation per line on standard
    /// output, in order.
    Predict {
        /// A run folder (runs/translate/NAME).
        #[arg(long)]
        run: PathBuf,
        /// Read sources from this file (default: standard input).
        #[arg(long)]
        input: Option<PathBuf>,
        #[command(flatten)]
        search: SearchArgs,
    },
    /// Write a trained run as a Hugging Face `EncoderDecoderModel` folder.
    Export {
        /// A run folder (runs/translate/NAME).
        run: PathBuf,
        /// Where to write the folder.
        out: PathBuf,
    },
    /// Fetch and prepare a named corpus (libreoffice-help-de-en, ding-de-en).
    Fetch { name: String },
}

fn train_config(
    data: &DataArgs,
    model: &ModelArgs,
    search: &SearchArgs,
    train: &TrainArgs,
    run: &RunArgs,
    dir: &std::path::Path,
) -> Result<TranslateConfig> {
    config::resolve(train, run, dir, |cfg: &mut TranslateConfig| {
        data.apply(&mut cfg.data);
        if let (Some(source), Some(target)) = (&model.source, &model.target) {
            cfg.aligned = Some(AlignedFiles {
                source: source.clone(),
                target: target.clone(),
            });
        }
        if let Some(v) = model.vocab_size {
            cfg.model.vocab_size = v;
        }
        if model.encoder_blocks.is_some() {
            cfg.model.encoder_blocks = model.encoder_blocks;
        }
        if let Some(l) = model.decoder_layers {
            cfg.model.decoder_layers = l;
        }
        if model.no_warm_start {
            cfg.model.warm_start = false;
        }
        search.apply(cfg);
    })
}

fn print_scores(s: &Scores, json: bool) {
    if json {
        println!("{}", serde_json::to_string(s).expect("scores serialise"));
        return;
    }
    let p = &s.parts.precisions;
    println!(
        "BLEU = {:.2} {:.1}/{:.1}/{:.1}/{:.1} (BP = {:.3} hyp_len = {} ref_len = {})   chrF2 = {:.2}",
        s.bleu, p[0], p[1], p[2], p[3], s.parts.bp, s.parts.sys_len, s.parts.ref_len, s.chrf
    );
}

fn print_outcome(o: &TrainOutcome, seconds: f64) {
    if !summary::print_training(&o.report, seconds) {
        return;
    }
    if let Some(scores) = &o.scores {
        println!(
            "validation (best checkpoint, step {}):",
            o.report.best_step.unwrap_or(o.report.steps)
        );
        print_scores(scores, false);
    }
    for (source, hypothesis, reference) in &o.examples {
        println!(
            "\n  source:      {source}\n  translation: {hypothesis}\n  reference:   {reference}"
        );
    }
    println!();
    let outputs = vec![(
        "translated",
        o.run_dir.join("val_translations.txt").display().to_string(),
    )];
    summary::print_run_files(&o.report, &o.run_dir, &outputs);
}

fn run(cli: Cli) -> Result<()> {
    let command = cli.command.unwrap_or(Command::Train {
        data: DataArgs::default(),
        model: ModelArgs::default(),
        search: SearchArgs::default(),
        train: Box::default(),
        run: RunArgs::demo(),
    });
    match command {
        Command::Train {
            data,
            model,
            search,
            train,
            run,
        } => {
            let dir = run.dir("translate");
            let cfg = train_config(&data, &model, &search, &train, &run, &dir)?;
            let opts = RunOptions {
                resume: run.resume,
                ..RunOptions::new(&dir)
            };
            println!(
                "fine-tuning {} ({}) into a translator -> {}",
                cfg.train.backbone,
                cfg.train.mode,
                dir.display()
            );
            let started = std::time::Instant::now();
            let outcome = pipeline::train(&cfg, &opts)?;
            print_outcome(&outcome, started.elapsed().as_secs_f64());
        }
        Command::Eval {
            run: Some(dir),
            data,
            test,
            search,
            json,
            ..
        } => {
            let device = Device::Cpu;
            let (mut cfg, mut translator, source) = pipeline::load_run(&dir, &device)?;
            search.apply(&mut cfg);
            translator.search = cfg.model.search.clone();
            let pairs = match (data, test) {
                (Some(path), _) => read_tsv(&path)?,
                (None, true) => pipeline::load_pairs(&cfg)?
                    .test
                    .context("--test needs a named corpus with a test split")?,
                (None, false) => pipeline::load_pairs(&cfg)?.val,
            };
            let examples = TranslationData::new(&pairs, &source, &translator.target_tokenizer)?;
            let batch = cfg.train.eval_batch.unwrap_or(cfg.train.batch);
            let hypotheses = pipeline::translate_all(&translator, &examples, batch)?;
            let references: Vec<String> = pairs.iter().map(|p| p.target.clone()).collect();
            print_scores(&pipeline::score(&hypotheses, &references)?, json);
        }
        Command::Eval {
            refs: Some(refs),
            hyps: Some(hyps),
            json,
            ..
        } => {
            let (r, h) = (read_lines(&refs)?, read_lines(&hyps)?);
            anyhow::ensure!(
                r.len() == h.len(),
                "{} has {} lines but {} has {}",
                refs.display(),
                r.len(),
                hyps.display(),
                h.len()
            );
            print_scores(&pipeline::score(&h, &r)?, json);
        }
        Command::Eval { .. } => {
            anyhow::bail!("eval needs either --run DIR or --refs FILE --hyps FILE")
        }
        Command::Predict { run, input, search } => {
            let device = Device::Cpu;
            let (mut cfg, mut translator, source) = pipeline::load_run(&run, &device)?;
            search.apply(&mut cfg);
            translator.search = cfg.model.search.clone();
            let lines = match &input {
                Some(path) => read_lines(path)?,
                None => {
                    let mut lines = Vec::new();
                    for (i, line) in std::io::stdin().lock().lines().enumerate() {
                        lines.push(line.with_context(|| {
                            format!("standard input, line {}: not valid UTF-8", i + 1)
                        })?);
                    }
                    lines
                }
            };
            // An empty line translates to an empty line, keeping the output aligned.
            let kept: Vec<(usize, String)> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| (i, l.trim().to_string()))
                .collect();
            let sources: Vec<String> = kept.iter().map(|(_, l)| l.clone()).collect();
            let mut out = vec![String::new(); lines.len()];
            if !sources.is_empty() {
                let data = TranslationData::sources_only(&sources, &source)?;
                let batch = cfg.train.eval_batch.unwrap_or(cfg.train.batch);
                let translated = pipeline::translate_all(&translator, &data, batch)?;
                for ((i, _), t) in kept.iter().zip(translated) {
                    out[*i] = t;
                }
            }
            let stdout = std::io::stdout();
            let mut w = stdout.lock();
            for line in out {
                writeln!(w, "{line}")?;
            }
        }
        Command::Export { run, out } => {
            let (cfg, translator, _) = pipeline::load_run(&run, &Device::Cpu)?;
            let (encoder_dir, _) = downstream_core::backbone::resolve(&cfg.train.backbone)?;
            translate::export::export(&translator, &encoder_dir, &run, &out)?;
            println!(
                "{} -> {} (EncoderDecoderModel)",
                run.display(),
                out.display()
            );
        }
        Command::Fetch { name } => {
            let dir = match name.as_str() {
                libreoffice::NAME => libreoffice::ensure()?,
                ding::NAME => ding::ensure()?,
                other => anyhow::bail!(
                    "unknown corpus `{other}`: known: {}, {}",
                    libreoffice::NAME,
                    ding::NAME
                ),
            };
            println!("{name}: {}", dir.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    downstream_core::train::cli::main_with(|| run(Cli::parse()))
}
