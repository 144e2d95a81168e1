//! Training, evaluation and prediction end to end on a small generated corpus and a tiny
//! encoder built here: every fine-tuning mode reaches what it trains, training raises BLEU,
//! greedy and beam search agree where they must, the commands work on a trained run (predict
//! keeps one output line per input line, in order), and bad input is an error naming the file
//! and line with no run folder left behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use candle_core::Device;
use downstream_core::backbone::{Bert, BertConfig};
use downstream_core::params::WeightFile;
use downstream_core::tokenizer::TextTokenizer;
use downstream_core::train::config::{DataConfig, TrainConfig};
use downstream_core::train::trainer::RunOptions;
use downstream_core::{Freeze, ParamStore};
use translate::data::{write_tsv, Pair};
use translate::dataset::TranslationData;
use translate::pipeline::{self, TranslateConfig};
use translate::translator::{ModelConfig, Translator};

const WORDS: [(&str, &str); 12] = [
    ("red", "rote"),
    ("green", "grüne"),
    ("small", "kleine"),
    ("old", "alte"),
    ("cat", "Katze"),
    ("house", "Haus"),
    ("window", "Fenster"),
    ("table", "Tisch"),
    ("sees", "sieht"),
    ("opens", "öffnet"),
    ("closes", "schließt"),
    ("finds", "findet"),
];

/// `n` sentence pairs of a tiny grammar, "the ADJ NOUN VERB the NOUN ." word for word.
fn corpus(n: usize) -> Vec<Pair> {
    (0..n)
        .map(|i| {
            let pick = |k: usize, from: usize, to: usize| from + (i * k + i / 3) % (to - from);
            let (a, s, v, o) = (pick(1, 0, 4), pick(3, 4, 8), pick(5, 8, 12), pick(7, 4, 8));
            Pair {
                source: format!(
                    "the {} {} {} the {} .",
                    WORDS[a].0, WORDS[s].0, WORDS[v].0, WORDS[o].0
                ),
                target: format!(
                    "die {} {} {} das {} .",
                    WORDS[a].1, WORDS[s].1, WORDS[v].1, WORDS[o].1
                ),
            }
        })
        .collect()
}

/// A tiny random BERT encoder folder (config, weights, a source vocabulary) under `dir`.
fn tiny_encoder(dir: &Path) -> PathBuf {
    let out = dir.join("encoder");
    std::fs::create_dir_all(&out).unwrap();
    let texts: Vec<String> = corpus(200).into_iter().map(|p| p.source).collect();
    let tok = TextTokenizer::train_bpe(texts.iter(), 60, 64).unwrap();
    tok.save(&out.join("tokenizer.json")).unwrap();
    let config = BertConfig {
        vocab_size: tok.vocab_size(),
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 64,
        ..BertConfig::default()
    };
    let mut store = ParamStore::new();
    let mut file = WeightFile::fresh(1, &Device::Cpu);
    Bert::from_weights(config.clone(), &mut file, &mut store, Freeze::Full).unwrap();
    store.save(&out.join("model.safetensors")).unwrap();
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    out
}

fn config(dir: &Path, train: PathBuf, mode: Freeze) -> TranslateConfig {
    TranslateConfig {
        data: DataConfig {
            train: Some(train),
            val_fraction: Some(0.2),
            ..DataConfig::default()
        },
        aligned: None,
        model: ModelConfig {
            decoder_layers: 1,
            vocab_size: 60,
            max_source_len: 32,
            max_target_len: 32,
            ..ModelConfig::default()
        },
        train: TrainConfig {
            backbone: tiny_encoder(dir).display().to_string(),
            mode,
            epochs: 2,
            batch: 16,
            lr: 3e-3,
            ..TrainConfig::default()
        },
    }
}

fn quiet(dir: &Path) -> RunOptions {
    RunOptions {
        show_progress: false,
        ..RunOptions::new(dir)
    }
}

#[test]
fn every_mode_reaches_every_parameter_it_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = corpus(20);
    let target = Arc::new(
        TextTokenizer::train_bpe(pairs.iter().map(|p| p.target.as_str()), 60, 32).unwrap(),
    );
    for mode in [Freeze::Frozen, Freeze::Full, Freeze::Partial(1)] {
        for warm in [true, false] {
            let cfg = config(tmp.path(), tmp.path().join("unused.tsv"), mode);
            let model = ModelConfig {
                warm_start: warm,
                ..cfg.model.clone()
            };
            let (t, source) =
                Translator::new(&cfg.train, &model, target.clone(), &Device::Cpu).unwrap();
            let data = TranslationData::new(&pairs, &source, &target).unwrap();
            let coverage = downstream_core::grad::check_task(&t, &data, 4)
                .unwrap_or_else(|e| panic!("{mode} warm {warm}: {e:#}"));
            assert!(!coverage.ok.is_empty(), "{mode}: nothing trains");
            let encoder_trains = t
                .params
                .trainable()
                .any(|p| p.name.starts_with("encoder.layer.1."));
            assert_eq!(encoder_trains, mode != Freeze::Frozen, "{mode}");
        }
    }
}

#[test]
fn training_raises_bleu_and_the_commands_work_on_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let tsv = tmp.path().join("pairs.tsv");
    write_tsv(&tsv, &corpus(400)).unwrap();
    let mut cfg = config(tmp.path(), tsv.clone(), Freeze::Full);
    let run_dir = tmp.path().join("runs/translate/toy");

    // The untrained model's BLEU, through the same path as evaluation.
    let splits = pipeline::load_pairs(&cfg).unwrap();
    std::fs::create_dir_all(&run_dir).unwrap();
    let target = Arc::new(pipeline::target_tokenizer(&run_dir, &splits.train, &cfg.model).unwrap());
    let (untrained, source) =
        Translator::new(&cfg.train, &cfg.model, target.clone(), &Device::Cpu).unwrap();
    let val = TranslationData::new(&splits.val, &source, &target).unwrap();
    let refs: Vec<String> = splits.val.iter().map(|p| p.target.clone()).collect();
    let before = pipeline::score(
        &pipeline::translate_all(&untrained, &val, 32).unwrap(),
        &refs,
    )
    .unwrap()
    .bleu;

    cfg.train.epochs = 12;
    let outcome = pipeline::train(&cfg, &quiet(&run_dir)).unwrap();
    let after = outcome.scores.unwrap().bleu;
    eprintln!("BLEU {before:.1} untrained, {after:.1} trained");
    assert!(
        after > before + 30.0,
        "BLEU must rise with training: {before:.1} before, {after:.1} after"
    );
    assert!(run_dir.join("val_translations.txt").is_file());

    // predict: standard input in, one line out per line in, in order (an empty line stays).
    let bin = env!("CARGO_BIN_EXE_translate");
    let input = "the red cat sees the house .\n\nthe old table finds the window .\n";
    let mut child = Command::new(bin)
        .args(["predict", "--run"])
        .arg(&run_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[1].is_empty());
    for l in [&lines[0], &lines[2]] {
        assert!(l.starts_with("die ") && l.ends_with(" ."), "{lines:?}");
    }
    assert_ne!(
        lines[0], lines[2],
        "two sources, two translations, in order"
    );

    // Beam search with a beam of 4 finds a translation at least as good here.
    let beam = Command::new(bin)
        .args(["eval", "--beam", "4", "--json", "--run"])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(
        beam.status.success(),
        "{}",
        String::from_utf8_lossy(&beam.stderr)
    );
    let scores: serde_json::Value = serde_json::from_slice(&beam.stdout).unwrap();
    assert!(scores["bleu"].as_f64().unwrap() >= after - 5.0, "{scores}");
    for key in ["chrf", "bp", "precisions", "sys_len", "ref_len"] {
        assert!(scores.get(key).is_some(), "{key} missing: {scores}");
    }
}

#[test]
fn metric_only_eval_prints_sacrebleu_scores_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let refs = tmp.path().join("refs.txt");
    let hyps = tmp.path().join("hyps.txt");
    std::fs::write(
        &refs,
        "Die Katze sitzt auf der Matte.\nEr öffnet das Fenster.\n",
    )
    .unwrap();
    std::fs::write(
        &hyps,
        "Die Katze sitzt auf der Matte.\nEr öffnet die Tür.\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_translate"))
        .args(["eval", "--json", "--refs"])
        .arg(&refs)
        .arg("--hyps")
        .arg(&hyps)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (bleu, chrf) = (v["bleu"].as_f64().unwrap(), v["chrf"].as_f64().unwrap());
    assert!(bleu > 30.0 && bleu < 100.0, "{v}");
    assert!(chrf > bleu && chrf < 100.0, "{v}");
    assert_eq!(v["sys_len"], 12);
}

#[test]
fn bad_input_stops_with_the_file_and_line_and_leaves_no_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.tsv");
    std::fs::write(&bad, "the cat .\tdie Katze .\nno tab on this line\n").unwrap();
    let runs = tmp.path().join("runs");
    let out = Command::new(env!("CARGO_BIN_EXE_translate"))
        .args(["train", "--data"])
        .arg(&bad)
        .arg("--runs-dir")
        .arg(&runs)
        .args(["--name", "bad"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.tsv:2") && err.contains("tab"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!runs.join("translate/bad").exists());

    let (en, de) = (tmp.path().join("a.en"), tmp.path().join("a.de"));
    std::fs::write(&en, "one .\ntwo .\n").unwrap();
    std::fs::write(&de, b"eins .\nzw\xc3ei .\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_translate"))
        .args(["train", "--source"])
        .arg(&en)
        .arg("--target")
        .arg(&de)
        .arg("--runs-dir")
        .arg(&runs)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a.de:2") && err.contains("UTF-8"), "{err}");
    assert!(!runs.join("translate").exists());
}
