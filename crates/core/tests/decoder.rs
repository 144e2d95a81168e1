//! The BERT decoder's own guarantees, beyond parity with transformers (`parity.rs`):
//! generation with the key/value cache computes what the whole-sequence forward computes, a
//! warm start copies the encoder's layers into independent parameters, and a trained target
//! vocabulary encodes and decodes text exactly.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use downstream_core::backbone::bert_decoder::{decoder_config, warm_start};
use downstream_core::backbone::{Bert, BertConfig, BertDecoder};
use downstream_core::params::WeightFile;
use downstream_core::tokenizer::{TextTokenizer, SPECIAL_TOKENS};
use downstream_core::{Freeze, ParamStore};

fn small_config() -> BertConfig {
    BertConfig {
        vocab_size: 40,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 32,
        max_position_embeddings: 24,
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..BertConfig::default()
    }
}

fn fresh_decoder(seed: u64) -> (BertDecoder, ParamStore) {
    let config = decoder_config(&small_config(), 2, 40);
    let mut store = ParamStore::new();
    store.top_depth = 3;
    let mut file = WeightFile::fresh(seed, &Device::Cpu);
    let decoder = BertDecoder::from_weights(config, &mut file, &mut store, "decoder.", 3).unwrap();
    (decoder, store)
}

fn ids(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}

#[test]
fn cached_steps_give_the_logits_of_the_whole_sequence() {
    let (decoder, _) = fresh_decoder(7);
    let dev = Device::Cpu;
    let encoder = Tensor::randn(0f32, 1.0, (2, 5, 16), &dev).unwrap();
    let encoder_mask =
        Tensor::from_vec(vec![1f32, 1., 1., 1., 1., 1., 1., 1., 0., 0.], (2, 5), &dev).unwrap();
    let tokens = ids(&[&[2, 9, 14, 3, 21, 5], &[2, 30, 8, 8, 11, 3]]);
    let whole = decoder
        .forward(&tokens, None, &encoder, Some(&encoder_mask))
        .unwrap();

    // One token per step.
    let mut state = decoder.start(&encoder, Some(&encoder_mask)).unwrap();
    for t in 0..6 {
        let step = decoder
            .step(&mut state, &tokens.narrow(1, t, 1).unwrap())
            .unwrap();
        assert_close(
            &step,
            &whole.narrow(1, t, 1).unwrap(),
            1e-5,
            &format!("step {t}"),
        );
    }
    assert_eq!(state.len(), 6);

    // Two tokens, then four at once: the causal bias after cached positions.
    let mut state = decoder.start(&encoder, Some(&encoder_mask)).unwrap();
    let first = decoder
        .step(&mut state, &tokens.narrow(1, 0, 2).unwrap())
        .unwrap();
    let rest = decoder
        .step(&mut state, &tokens.narrow(1, 2, 4).unwrap())
        .unwrap();
    assert_close(
        &Tensor::cat(&[&first, &rest], 1).unwrap(),
        &whole,
        1e-5,
        "chunks",
    );
}

#[test]
fn selecting_rows_of_a_state_follows_those_rows() {
    let (decoder, _) = fresh_decoder(3);
    let dev = Device::Cpu;
    let encoder = Tensor::randn(0f32, 1.0, (2, 4, 16), &dev).unwrap();
    let tokens = ids(&[&[2, 5, 6], &[2, 7, 8]]);
    let mut state = decoder.start(&encoder, None).unwrap();
    decoder
        .step(&mut state, &tokens.narrow(1, 0, 2).unwrap())
        .unwrap();
    // Row 1 twice, then row 0: as a beam search reorders its hypotheses.
    let rows = Tensor::new(&[1u32, 1, 0], &dev).unwrap();
    state.select(&rows).unwrap();
    let next = ids(&[&[8], &[8], &[6]]);
    let got = decoder.step(&mut state, &next).unwrap();
    let whole = decoder
        .forward(
            &ids(&[&[2, 7, 8], &[2, 7, 8], &[2, 5, 6]]),
            None,
            &encoder.index_select(&rows, 0).unwrap(),
            None,
        )
        .unwrap();
    assert_close(
        &got,
        &whole.narrow(1, 2, 1).unwrap(),
        1e-5,
        "reordered rows",
    );
}

#[test]
fn fresh_weights_depend_on_the_seed_and_name_only() {
    let (_, a) = fresh_decoder(11);
    let (_, b) = fresh_decoder(11);
    let (_, c) = fresh_decoder(12);
    let name = "decoder.bert.encoder.layer.1.crossattention.self.query.weight";
    let get = |s: &ParamStore| s.get(name).unwrap().tensor().clone();
    assert_eq!(max_diff(&get(&a), &get(&b)), 0.0);
    assert!(max_diff(&get(&a), &get(&c)) > 1e-3);
    // Hugging Face's initialisation: norms one, biases zero, matrices small.
    let norm = a
        .get("decoder.bert.encoder.layer.0.output.LayerNorm.weight")
        .unwrap();
    assert!(values(norm.tensor()).iter().all(|&v| v == 1.0));
    let bias = a.get("decoder.cls.predictions.bias").unwrap();
    assert!(values(bias.tensor()).iter().all(|&v| v == 0.0));
    let w = values(&get(&a));
    let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
    assert!((0.01..0.03).contains(&std), "std {std}");
    // Every decoder parameter trains, at the depth given.
    assert!(a.iter().all(|p| p.trainable() && p.depth == 3));
}

#[test]
fn a_warm_start_copies_the_encoder_layers_into_separate_parameters() {
    let dev = Device::Cpu;
    let config = small_config();
    let mut enc_store = ParamStore::new();
    let mut enc_file = WeightFile::fresh(1, &dev);
    Bert::from_weights(config.clone(), &mut enc_file, &mut enc_store, Freeze::Full).unwrap();

    let mut file = warm_start(&enc_store, "", 1, 5, &dev).unwrap();
    let mut store = ParamStore::new();
    store.top_depth = 3;
    let dconfig = decoder_config(&config, 1, 25);
    BertDecoder::from_weights(dconfig, &mut file, &mut store, "decoder.", 3).unwrap();

    let enc = |n: &str| enc_store.get(n).unwrap().tensor().clone();
    let dec = |n: &str| {
        store
            .get(&format!("decoder.bert.{n}"))
            .unwrap()
            .tensor()
            .clone()
    };
    for name in [
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.output.dense.weight",
        "embeddings.position_embeddings.weight",
    ] {
        assert_eq!(max_diff(&enc(name), &dec(name)), 0.0, "{name} copied");
    }
    // Another vocabulary: the word embeddings are new, as is cross-attention.
    assert_eq!(
        store
            .get("decoder.bert.embeddings.word_embeddings.weight")
            .unwrap()
            .tensor()
            .dims(),
        &[25, 16]
    );
    assert!(store
        .get("decoder.bert.encoder.layer.0.crossattention.self.query.weight")
        .is_some());
    // Updating the decoder's copy leaves the encoder alone.
    let name = "encoder.layer.0.attention.self.query.weight";
    let var = store
        .get(&format!("decoder.bert.{name}"))
        .unwrap()
        .var()
        .unwrap()
        .clone();
    var.set(&var.as_tensor().ones_like().unwrap()).unwrap();
    assert!(max_diff(&enc(name), &dec(name)) > 0.5);
}

#[test]
fn a_trained_vocabulary_round_trips_text_and_places_its_special_tokens() {
    let texts = [
        "Wählen Sie Format - Zeichen, um die Schriftart zu ändern.",
        "Die Größe der Schrift können Sie im Dialog einstellen.",
        "Klicken Sie auf \"OK\", um die Änderungen zu übernehmen!",
        "Öffnet das Dokument in einem neuen Fenster.",
        "Geben Sie die Straße und die Hausnummer ein.",
    ];
    let corpus: Vec<String> = texts
        .iter()
        .cycle()
        .take(50)
        .map(|s| s.to_string())
        .collect();
    let tok = TextTokenizer::train_bpe(corpus.iter(), 120, 64).unwrap();
    assert!(tok.vocab_size() <= 120, "{}", tok.vocab_size());
    for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.token_id(token), Some(id as u32));
    }
    for text in texts.iter().chain(&["Die neue Schrift mit ß und Ö."]) {
        let ids = tok.ids(text).unwrap();
        assert_eq!(ids.first(), Some(&2), "begins with [CLS]");
        assert_eq!(ids.last(), Some(&3), "ends with [SEP]");
        assert_eq!(&tok.decode(&ids).unwrap(), text);
    }
    // Saved and read back, it encodes the same.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let back = TextTokenizer::from_file(&path, 64).unwrap();
    assert_eq!(back.ids(texts[0]).unwrap(), tok.ids(texts[0]).unwrap());
}

/// Dropout acts in the training passes of parts that train; a frozen encoder is a fixed
/// function (its cached features must not depend on a dropout draw).
#[test]
fn dropout_acts_only_where_weights_train() {
    use downstream_core::backbone::TextBatch;
    use downstream_core::train::rng::{training_pass, Phase};
    let dev = Device::Cpu;
    let config = BertConfig {
        hidden_dropout_prob: 0.3,
        attention_probs_dropout_prob: 0.3,
        ..small_config()
    };
    let batch = TextBatch {
        input_ids: ids(&[&[2, 5, 9, 3], &[2, 7, 3, 0]]),
        attention_mask: Tensor::from_vec(vec![1f32, 1., 1., 1., 1., 1., 1., 0.], (2, 4), &dev)
            .unwrap(),
        token_type_ids: Tensor::zeros((2, 4), candle_core::DType::U32, &dev).unwrap(),
    };
    let keys = [(0, 0), (1, 0)];
    for (mode, drops) in [(Freeze::Frozen, false), (Freeze::Full, true)] {
        let mut store = ParamStore::new();
        let mut file = WeightFile::fresh(4, &dev);
        let bert = Bert::from_weights(config.clone(), &mut file, &mut store, mode).unwrap();
        let plain = bert.forward(&batch).unwrap();
        let trained = training_pass(9, 1, Phase::Backbone, &keys, || {
            bert.forward(&batch).unwrap()
        });
        let differs = max_diff(&plain, &trained) > 1e-4;
        assert_eq!(differs, drops, "{mode}");
    }
}
