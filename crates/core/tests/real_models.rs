//! The two default backbones with their real pretrained weights (fetched and converted on
//! first use), against references computed by `scripts/reference/real_models.py`:
//! all-MiniLM-L6-v2 sentence embeddings from transformers, DINOv2 ViT-S/14 features from
//! onnxruntime on the ONNX graph the weights were converted from.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use downstream_core::backbone::{self, bert::mean_pool_normalized};
use downstream_core::{grad, Freeze};
use serde::Deserialize;

#[derive(Deserialize)]
struct Sentence {
    text: String,
    num_tokens: usize,
    token_ids: Vec<u32>,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct MiniLmReference {
    sentences: Vec<Sentence>,
}

fn minilm_reference() -> MiniLmReference {
    let path = fixtures().join("real/minilm_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_sentence_embeddings_match_transformers() {
    let dev = Device::Cpu;
    let reference = minilm_reference();
    let (model, tokenizer, _) =
        backbone::load_text(backbone::DEFAULT_TEXT, Freeze::Frozen, &dev).unwrap();
    assert_eq!((model.hidden_size(), model.num_layers()), (384, 6));
    for s in &reference.sentences {
        assert_eq!(
            tokenizer.ids(&s.text).unwrap(),
            s.token_ids,
            "token ids of {:?}",
            s.text
        );
        assert_eq!(s.token_ids.len(), s.num_tokens);
    }
    // One padded batch: the long sentence (> 128 tokens) sets the length for all.
    let texts: Vec<&str> = reference
        .sentences
        .iter()
        .map(|s| s.text.as_str())
        .collect();
    let batch = tokenizer.batch(&texts, &dev).unwrap();
    let longest = reference
        .sentences
        .iter()
        .map(|s| s.num_tokens)
        .max()
        .unwrap();
    assert!(
        longest > 128,
        "the fixture must prove the 128-token limit is lifted"
    );
    assert_eq!(batch.input_ids.dims(), &[texts.len(), longest]);
    let hidden = model.forward(&batch).unwrap();
    let emb = mean_pool_normalized(&hidden, &batch.attention_mask).unwrap();
    let mut worst = 1f32;
    for (i, s) in reference.sentences.iter().enumerate() {
        let got: Vec<f32> = emb.get(i).unwrap().to_vec1().unwrap();
        let c = cosine(&got, &s.embedding);
        assert!(c >= 0.9999, "cosine {c} for {:?}", s.text);
        worst = worst.min(c);
    }
    eprintln!(
        "MiniLM: lowest cosine to transformers over {} sentences: {worst:.7}",
        reference.sentences.len()
    );
}

#[test]
fn minilm_batches_pad_to_their_longest_member_not_128() {
    let dev = Device::Cpu;
    let (_, tokenizer, _) =
        backbone::load_text(backbone::DEFAULT_TEXT, Freeze::Frozen, &dev).unwrap();
    let batch = tokenizer
        .batch(&["Hello world.", "A slightly longer sentence here."], &dev)
        .unwrap();
    let (b, t) = batch.input_ids.dims2().unwrap();
    assert_eq!(b, 2);
    assert_eq!(
        t,
        tokenizer
            .ids("A slightly longer sentence here.")
            .unwrap()
            .len()
    );
    let mask: Vec<Vec<f32>> = batch.attention_mask.to_vec2().unwrap();
    assert_eq!(mask[0].iter().sum::<f32>() as usize, 5);
    assert!(mask[1].iter().all(|&m| m == 1.0));
}

#[test]
fn dinov2_features_match_the_onnx_graph() {
    let dev = Device::Cpu;
    let r = load_reference(&fixtures().join("real/dinov2_s14_reference.safetensors"));
    let (model, params) = backbone::load_vision(
        backbone::DEFAULT_VISION,
        Freeze::Frozen,
        backbone::Readout::Final,
        &dev,
    )
    .unwrap();
    assert_eq!(
        (model.hidden_size(), model.num_blocks(), model.patch_size()),
        (384, 12, 14)
    );
    let (_, total) = params.counts();
    assert_eq!(
        total, 22_056_192,
        "parameter count of the converted backbone"
    );
    let out = model.forward(get(&r, "pixel_values"), &[5, 8]).unwrap();
    assert_eq!(out.grid, (16, 16));
    assert_close(
        &out.last_hidden_state,
        get(&r, "last_hidden_state"),
        1e-3,
        "last_hidden_state",
    );
    eprintln!(
        "DINOv2: max |diff| to onnxruntime {:e} (largest value {:.2})",
        max_diff(&out.last_hidden_state, get(&r, "last_hidden_state")),
        max_abs(get(&r, "last_hidden_state"))
    );
    let rows = get(&r, "token_index").to_dtype(DType::U32).unwrap();
    for (block, key) in [(5, "hidden_states.6_subset"), (8, "hidden_states.9_subset")] {
        let (_, h) = out.blocks.iter().find(|(i, _)| *i == block).unwrap();
        let subset = h.index_select(&rows, 1).unwrap();
        assert_close(&subset, get(&r, key), 1e-3, key);
    }
}

fn fixed_weights(shape: &[usize], dev: &Device) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    Tensor::from_vec(v, shape, dev).unwrap()
}

#[test]
fn minilm_full_fine_tuning_reaches_every_parameter() {
    let dev = Device::Cpu;
    let (model, tokenizer, params) =
        backbone::load_text(backbone::DEFAULT_TEXT, Freeze::Full, &dev).unwrap();
    // 101 = 103 tensors of the checkpoint less the unused pooler (2).
    assert_eq!(params.trainable().count(), 101);
    let batch = tokenizer
        .batch(&["A defect on the left edge.", "No defect."], &dev)
        .unwrap();
    let out = model.forward(&batch).unwrap();
    let loss = (&out * fixed_weights(out.dims(), &dev))
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    grad::assert_full_coverage(&params, &grads).unwrap();
}

#[test]
fn dinov2_full_fine_tuning_reaches_every_parameter() {
    let dev = Device::Cpu;
    let (model, params) = backbone::load_vision(
        backbone::DEFAULT_VISION,
        Freeze::Full,
        backbone::Readout::Final,
        &dev,
    )
    .unwrap();
    assert_eq!(params.trainable().count(), params.len());
    // 56x70 px: a 4x5 grid, so the position embeddings go through interpolation as well.
    let x = fixed_weights(&[1, 3, 56, 70], &dev);
    let out = model.forward(&x, &[]).unwrap();
    let loss = (&out.last_hidden_state * fixed_weights(out.last_hidden_state.dims(), &dev))
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    grad::assert_full_coverage(&params, &grads).unwrap();
}
