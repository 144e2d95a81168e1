//! Training, evaluation and prediction end to end on a small generated corpus and a tiny
//! encoder built here: every fine-tuning mode reaches what it trains, training raises BLEU,
//! greedy and beam search agree where they must, the commands work on a trained run (predict
//! keeps one output line per input line, in order), and bad input is an error naming the file
//! and line with no run folder left behind.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use candle_core::Device;
use downstream_core::tokenizer::TextTokenizer;
use downstream_core::train::trainer::RunOptions;
use downstream_core::Freeze;
use translate::data::write_tsv;
use translate::dataset::TranslationData;
use translate::pipeline;
use translate::translator::{ModelConfig, Translator};

mod common;
use common::{config, corpus, tiny_encoder};

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
    let encoder = tiny_encoder(tmp.path());
    let target = Arc::new(
        TextTokenizer::train_bpe(pairs.iter().map(|p| p.target.as_str()), 60, 32).unwrap(),
    );
    for mode in [Freeze::Frozen, Freeze::Full, Freeze::Partial(1)] {
        for warm in [true, false] {
            let cfg = config(&encoder, tmp.path().join("unused.tsv"), mode);
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
fn the_encoder_ends_at_the_block_the_decoder_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let encoder = tiny_encoder(tmp.path());
    let pairs = corpus(20);
    let target = Arc::new(
        TextTokenizer::train_bpe(pairs.iter().map(|p| p.target.as_str()), 60, 32).unwrap(),
    );
    let mut cfg = config(&encoder, tmp.path().join("unused.tsv"), Freeze::Full);
    // The tiny encoder has 2 blocks; absent, the decoder reads the middle one (block 1).
    for (blocks, used) in [(Some(1), 1), (None, 1), (Some(2), 2)] {
        cfg.model.encoder_blocks = blocks;
        let (t, _) = Translator::new(&cfg.train, &cfg.model, target.clone(), &Device::Cpu).unwrap();
        assert_eq!(t.encoder.num_layers(), used, "{blocks:?}");
        let above = t
            .params
            .iter()
            .any(|p| p.name.starts_with("encoder.layer.1."));
        assert_eq!(
            above,
            used == 2,
            "{blocks:?}: block 2's weights loaded: {above}"
        );
    }
    // A warm start with more decoder layers than encoder blocks to copy is refused.
    cfg.model.encoder_blocks = Some(1);
    cfg.model.decoder_layers = 2;
    match Translator::new(&cfg.train, &cfg.model, target.clone(), &Device::Cpu) {
        Ok(_) => panic!("2 warm decoder layers from 1 encoder block were accepted"),
        Err(e) => assert!(format!("{e:#}").contains("--no-warm-start"), "{e:#}"),
    }
    cfg.model.encoder_blocks = Some(3);
    match Translator::new(&cfg.train, &cfg.model, target, &Device::Cpu) {
        Ok(_) => panic!("block 3 of a 2-block encoder was accepted"),
        Err(e) => assert!(format!("{e:#}").contains("block 3"), "{e:#}"),
    }
}

#[test]
fn a_new_run_trains_its_own_vocabulary_and_a_resumed_one_keeps_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = corpus(40);
    let mut model = ModelConfig {
        vocab_size: 60,
        ..ModelConfig::default()
    };
    let first = pipeline::target_tokenizer(tmp.path(), &pairs, &model, false).unwrap();
    first.save(&tmp.path().join("tokenizer.json")).unwrap();
    // The same run name again with another size: the earlier vocabulary is not reused...
    model.vocab_size = 40;
    let second = pipeline::target_tokenizer(tmp.path(), &pairs, &model, false).unwrap();
    assert_ne!(first.vocab_size(), second.vocab_size());
    // ...but a resumed run keeps its own.
    let resumed = pipeline::target_tokenizer(tmp.path(), &pairs, &model, true).unwrap();
    assert_eq!(resumed.vocab_size(), first.vocab_size());
}

#[test]
fn training_raises_bleu_and_the_commands_work_on_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let tsv = tmp.path().join("pairs.tsv");
    write_tsv(&tsv, &corpus(400)).unwrap();
    let mut cfg = config(&tiny_encoder(tmp.path()), tsv.clone(), Freeze::Full);
    // The default block (the middle one of two), which the run folder must record as a number.
    cfg.model.encoder_blocks = None;
    let run_dir = tmp.path().join("runs/translate/toy");

    // The untrained model's BLEU, through the same path as evaluation.
    let splits = pipeline::load_pairs(&cfg).unwrap();
    std::fs::create_dir_all(&run_dir).unwrap();
    let target =
        Arc::new(pipeline::target_tokenizer(&run_dir, &splits.train, &cfg.model, false).unwrap());
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
    let result = downstream_core::train::result::read(&run_dir).unwrap();
    assert_eq!(
        (result.main_metric.as_str(), result.main()),
        ("bleu", Some(after))
    );
    eprintln!("BLEU {before:.1} untrained, {after:.1} trained");
    assert!(
        after > before + 30.0,
        "BLEU must rise with training: {before:.1} before, {after:.1} after"
    );
    assert!(run_dir.join("val_translations.txt").is_file());
    let saved = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(saved.contains("encoder_blocks = 1"), "{saved}");

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

#[test]
fn a_run_killed_at_random_moments_resumes_to_the_same_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let encoder = tiny_encoder(tmp.path());
    let tsv = tmp.path().join("pairs.tsv");
    write_tsv(&tsv, &corpus(160)).unwrap();
    // Full fine-tuning with dropout, a checkpoint after every step and an evaluation every
    // other one, so that kills also land in writes and evaluations.
    let mut cfg = config(&encoder, tsv, Freeze::Full);
    cfg.train.epochs = 5;
    cfg.train.checkpoint_every = Some(1);
    cfg.train.eval_every_steps = Some(2);
    let file = tmp.path().join("drill.toml");
    downstream_core::train::config::save_toml(&file, &cfg).unwrap();
    let command = downstream_core::faults::config_command(env!("CARGO_BIN_EXE_translate"), &file);
    let drill = downstream_core::faults::Drill {
        task: "translate",
        command: &command,
        kills: 5,
        seeds: &[31, 32],
    };
    downstream_core::faults::drill(&drill).unwrap();
}
