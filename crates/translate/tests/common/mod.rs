//! What the translate tests and the export fixture's generator share: a toy corpus of a tiny
//! grammar, translated word for word, and a tiny random BERT encoder for it, so that a model
//! learns the task in seconds.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use downstream_core::backbone::{Bert, BertConfig};
use downstream_core::params::WeightFile;
use downstream_core::tokenizer::TextTokenizer;
use downstream_core::train::config::{DataConfig, TrainConfig};
use downstream_core::{Freeze, ParamStore};
use translate::data::Pair;
use translate::pipeline::TranslateConfig;
use translate::translator::ModelConfig;

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

/// Pair `c` of the grammar's 256, its base-4 digits choosing adjective, subject, verb, object.
fn pair(c: usize) -> Pair {
    let (a, s, v, o) = (c % 4, 4 + c / 4 % 4, 8 + c / 16 % 4, 4 + c / 64 % 4);
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
}

/// `n` sentence pairs of a tiny grammar, "the ADJ NOUN VERB the NOUN ." word for word: every
/// one of its 256 sentences once (in a scattered order) before any comes again, so that a
/// model must read the source to translate it, and a validation share holds unseen sentences.
pub fn corpus(n: usize) -> Vec<Pair> {
    (0..n).map(|i| pair(i * 37 % 256)).collect()
}

/// A tiny random BERT encoder folder (config, weights, a source vocabulary): `dir/encoder`.
pub fn tiny_encoder(dir: &Path) -> PathBuf {
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

/// A small translator on the encoder at `encoder`, trained on the TSV file `train`.
pub fn config(encoder: &Path, train: PathBuf, mode: Freeze) -> TranslateConfig {
    TranslateConfig {
        data: DataConfig {
            train: Some(train),
            val_fraction: Some(0.2),
            ..DataConfig::default()
        },
        aligned: None,
        model: ModelConfig {
            // Both blocks, so that partial modes have a block to freeze and one to train.
            encoder_blocks: Some(2),
            decoder_layers: 1,
            vocab_size: 60,
            max_source_len: 32,
            max_target_len: 32,
            ..ModelConfig::default()
        },
        train: TrainConfig {
            backbone: encoder.display().to_string(),
            mode,
            epochs: 2,
            batch: 16,
            lr: 3e-3,
            ..TrainConfig::default()
        },
    }
}

/// The export fixture: a toy run trained by `examples/export_fixture.rs` with its encoder, the
/// digest of its export and transformers' greedy output for it (`hf_greedy.json`).
pub fn export_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/export")
}

/// The fixture's run as a run folder under `scratch`, its configuration pointing at the
/// fixture's encoder wherever the checkout is.
pub fn fixture_run(fixture: &Path, scratch: &Path) -> PathBuf {
    use downstream_core::train::config::{save_toml, RunConfig};
    let run = scratch.join("run");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    let mut cfg = TranslateConfig::load(&fixture.join("run/config.toml")).unwrap();
    cfg.train.backbone = fixture.join("encoder").display().to_string();
    save_toml(&run.join("config.toml"), &cfg).unwrap();
    for file in ["tokenizer.json", "checkpoints/best.safetensors"] {
        std::fs::copy(fixture.join("run").join(file), run.join(file)).unwrap();
    }
    run
}

/// The sources the fixture's generator translates: 32 different sentences of the grammar,
/// picked in another order than the corpus's.
pub fn fixture_sources() -> Vec<String> {
    (0..32).map(|k| pair((k * 101 + 7) % 256).source).collect()
}
