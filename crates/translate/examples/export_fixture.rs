//! Writes the export fixture that `tests/export.rs` checks: a toy translator trained on the
//! tests' toy corpus (tiny encoder fine-tuned in full mode, so that the export carries trained
//! weights on both sides; the decoder reads block 1 of 2, as the default reads the lower half),
//! the digest of its export, and the files the reference script needs
//! to write transformers' greedy output for it. Run through `scripts/reference/export_fixture.sh`,
//! which runs `export_check.py --write-fixture` next:
//!
//!     cargo run --release -p translate --example export_fixture -- FIXTURE_DIR WORK_DIR
//!
//! FIXTURE_DIR gets `encoder/`, `run/` (configuration, target vocabulary, best weights) and
//! `export.digest`; WORK_DIR gets the export (`export/`), `sources.txt` and our greedy
//! translations of them (`ours.txt`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use downstream_core::train::checkpoint;
use downstream_core::train::config::RunConfig;
use downstream_core::train::trainer::RunOptions;
use downstream_core::Freeze;
use translate::data::write_tsv;
use translate::dataset::TranslationData;
use translate::pipeline::{self, TranslateConfig};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(fixture), Some(work)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: export_fixture FIXTURE_DIR WORK_DIR");
    };
    let (fixture, work) = (PathBuf::from(fixture), PathBuf::from(work));
    // Only folders this generator wrote are cleared, never whatever a mistyped path names.
    for (dir, mark) in [(&fixture, "export.digest"), (&work, "sources.txt")] {
        if dir.exists() {
            let empty = std::fs::read_dir(dir)?.next().is_none();
            anyhow::ensure!(
                empty || dir.join(mark).is_file(),
                "{} is neither empty nor an earlier output (no {mark}): not clearing it",
                dir.display()
            );
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir)?;
    }
    let encoder = common::tiny_encoder(&fixture);
    let tsv = work.join("pairs.tsv");
    write_tsv(&tsv, &common::corpus(400))?;
    let mut cfg = common::config(&encoder, tsv, Freeze::Full);
    // The default block (1 of 2): the export of an encoder cut short is what is checked.
    cfg.model.encoder_blocks = None;
    cfg.train.epochs = 40;
    let trained = work.join("trained");
    let outcome = pipeline::train(
        &cfg,
        &RunOptions {
            show_progress: false,
            ..RunOptions::new(&trained)
        },
    )?;
    let bleu = outcome.scores.context("no scores")?.bleu;
    eprintln!("toy run: validation BLEU {bleu:.1}");
    // A model that has not learnt the grammar would make a fixture of near ties.
    anyhow::ensure!(bleu > 90.0, "the toy run did not learn the grammar");

    // The committed run: what loading needs, nothing else; its configuration as resolved.
    let run = fixture.join("run");
    std::fs::create_dir_all(run.join("checkpoints"))?;
    let mut saved = TranslateConfig::load(&trained.join("config.toml"))?;
    saved.data.train = None;
    saved.train.backbone = "encoder".into();
    downstream_core::train::config::save_toml(&run.join("config.toml"), &saved)?;
    std::fs::copy(trained.join("tokenizer.json"), run.join("tokenizer.json"))?;
    // The best weights without the optimizer's moments: a third of the bytes to commit.
    let (_, best, _) = pipeline::load_run(&trained, &Device::Cpu)?;
    let kept = checkpoint::load(&checkpoint::best_path(&trained), &Device::Cpu)?;
    checkpoint::save_weights(
        &checkpoint::best_path(&run),
        &best.params,
        &kept.state,
        &kept.config,
    )?;

    // Export and translate exactly as the test will, from the committed files.
    let device = Device::Cpu;
    let loaded = common::fixture_run(&fixture, &work.join("loaded"));
    let (_, translator, source) = pipeline::load_run(&loaded, &device)?;
    let export = work.join("export");
    translate::export::export(&translator, &encoder, &loaded, &export)?;
    let digest = downstream_hub::cache::tree_digest(&export)?;
    std::fs::write(fixture.join("export.digest"), format!("{digest}\n"))?;

    let sources = common::fixture_sources();
    let data = TranslationData::sources_only(&sources, &source)?;
    let ours = pipeline::translate_all(&translator, &data, 8)?;
    std::fs::write(work.join("sources.txt"), sources.join("\n") + "\n")?;
    std::fs::write(work.join("ours.txt"), ours.join("\n") + "\n")?;
    eprintln!(
        "wrote {} and {}; export digest {digest}",
        fixture.display(),
        work.display()
    );
    Ok(())
}
