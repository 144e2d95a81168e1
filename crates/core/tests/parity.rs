//! The backbones against Hugging Face transformers: outputs, hidden states, and the gradient
//! of a fixed scalar loss for every parameter, from tiny random checkpoints written by
//! `scripts/reference/backbones.py`. Freezing modes are checked against the same references.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use downstream_core::backbone::{Bert, TextBatch, Vit};
use downstream_core::{Freeze, ParamStore};

const OUT_TOL: f32 = 1e-4;
const GRAD_REL: f32 = 1e-3;

fn bert_batch(r: &HashMap<String, Tensor>) -> TextBatch {
    TextBatch {
        input_ids: get(r, "a.input_ids").to_dtype(DType::U32).unwrap(),
        attention_mask: get(r, "a.attention_mask").to_dtype(DType::F32).unwrap(),
        token_type_ids: get(r, "a.token_type_ids").to_dtype(DType::U32).unwrap(),
    }
}

/// Runs the model on case `c`, checks outputs, and returns (loss, hidden states checked).
fn bert_case(model: &Bert, r: &HashMap<String, Tensor>) -> Tensor {
    let (out, hidden) = model.forward_with_hidden(&bert_batch(r), true).unwrap();
    assert_close(
        &out,
        get(r, "a.last_hidden_state"),
        OUT_TOL,
        "bert last_hidden_state",
    );
    for (k, h) in hidden.iter().enumerate() {
        assert_close(
            h,
            get(r, &format!("a.hidden_states.{k}")),
            OUT_TOL,
            &format!("bert hidden_states.{k}"),
        );
    }
    let loss = (out * get(r, "a.loss_weight")).unwrap().sum_all().unwrap();
    let want = get(r, "a.loss").to_scalar::<f32>().unwrap();
    let got = loss.to_scalar::<f32>().unwrap();
    assert!(
        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
        "loss {got} vs {want}"
    );
    loss
}

fn vit_case(model: &Vit, r: &HashMap<String, Tensor>, c: &str, blocks: usize) -> Tensor {
    let keep: Vec<usize> = (0..blocks).collect();
    let out = model
        .forward(get(r, &format!("{c}.pixel_values")), &keep)
        .unwrap();
    assert_close(
        &out.last_hidden_state,
        get(r, &format!("{c}.last_hidden_state")),
        OUT_TOL,
        &format!("{c} last_hidden_state"),
    );
    for (i, h) in &out.blocks {
        let k = i + 1;
        assert_close(
            h,
            get(r, &format!("{c}.hidden_states.{k}")),
            OUT_TOL,
            &format!("{c} hidden_states.{k}"),
        );
    }
    assert_eq!(out.blocks.len(), blocks);
    (&out.last_hidden_state * get(r, &format!("{c}.loss_weight")))
        .unwrap()
        .sum_all()
        .unwrap()
}

/// Every trainable parameter's gradient equals the reference, and the set of parameters with
/// a gradient is exactly the trainable set.
fn check_grads(params: &ParamStore, loss: &Tensor, r: &HashMap<String, Tensor>, c: &str) {
    let grads = loss.backward().unwrap();
    let floor = params
        .trainable()
        .map(|p| max_abs(get(r, &format!("{c}.grad.{}", p.name))))
        .fold(0f32, f32::max)
        * 1e-3;
    let mut checked = 0;
    for p in params.iter() {
        match (p.var(), grads.get(p.tensor())) {
            (Some(v), _) => {
                let g = grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{}: no gradient", p.name));
                assert_grad_close(
                    g,
                    get(r, &format!("{c}.grad.{}", p.name)),
                    GRAD_REL,
                    floor,
                    &format!("{c} grad {}", p.name),
                );
                checked += 1;
            }
            (None, Some(_)) => panic!("frozen parameter {} received a gradient", p.name),
            (None, None) => {}
        }
    }
    assert_eq!(checked, params.trainable().count());
}

fn reference_param_names(r: &HashMap<String, Tensor>, c: &str) -> BTreeSet<String> {
    let prefix = format!("{c}.grad.");
    r.keys()
        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

fn bert_dir() -> std::path::PathBuf {
    fixtures().join("bert")
}

#[test]
fn bert_full_matches_outputs_and_every_gradient() {
    bert_full();
}

fn bert_full() {
    let r = load_reference(&bert_dir().join("reference.safetensors"));
    let (model, params) = Bert::load(&bert_dir(), Freeze::Full, &Device::Cpu).unwrap();
    let names: BTreeSet<String> = params.trainable().map(|p| p.name.clone()).collect();
    assert_eq!(
        names,
        reference_param_names(&r, "a"),
        "trainable set differs from the reference's parameters"
    );
    let loss = bert_case(&model, &r);
    check_grads(&params, &loss, &r, "a");
}

#[test]
fn bert_loads_prefixed_checkpoints() {
    // Task checkpoints (BertForMaskedLM and friends) prefix the encoder with `bert.`.
    let dir = tempfile::tempdir().unwrap();
    let src =
        candle_core::safetensors::load(bert_dir().join("model.safetensors"), &Device::Cpu).unwrap();
    let prefixed: HashMap<String, Tensor> = src
        .into_iter()
        .map(|(k, v)| (format!("bert.{k}"), v))
        .collect();
    candle_core::safetensors::save(&prefixed, dir.path().join("model.safetensors")).unwrap();
    std::fs::copy(
        bert_dir().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let r = load_reference(&bert_dir().join("reference.safetensors"));
    let (model, _) = Bert::load(dir.path(), Freeze::Frozen, &Device::Cpu).unwrap();
    bert_case(&model, &r);
}

#[test]
fn bert_frozen_gives_no_backbone_gradient() {
    let r = load_reference(&bert_dir().join("reference.safetensors"));
    let (model, params) = Bert::load(&bert_dir(), Freeze::Frozen, &Device::Cpu).unwrap();
    assert_eq!(params.trainable().count(), 0);
    // A trainable head on top, so that a backward pass really runs through the backbone output.
    let head = Var::ones(32, DType::F32, &Device::Cpu).unwrap();
    let out = model.forward(&bert_batch(&r)).unwrap();
    let loss = out
        .broadcast_mul(head.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    assert!(
        grads.get(head.as_tensor()).is_some(),
        "the head must get a gradient"
    );
    for p in params.iter() {
        assert!(
            grads.get(p.tensor()).is_none(),
            "frozen {} got a gradient",
            p.name
        );
    }
}

#[test]
fn bert_partial_trains_exactly_the_last_blocks() {
    let r = load_reference(&bert_dir().join("reference.safetensors"));
    let (model, params) = Bert::load(&bert_dir(), Freeze::Partial(2), &Device::Cpu).unwrap();
    let want: BTreeSet<String> = reference_param_names(&r, "a")
        .into_iter()
        .filter(|n| n.starts_with("encoder.layer.1.") || n.starts_with("encoder.layer.2."))
        .collect();
    let got: BTreeSet<String> = params.trainable().map(|p| p.name.clone()).collect();
    assert_eq!(got, want);
    let loss = bert_case(&model, &r);
    check_grads(&params, &loss, &r, "a");
}

fn vit_full(dir: &Path) {
    let r = load_reference(&dir.join("reference.safetensors"));
    for c in ["a", "b"] {
        let (model, params) = Vit::load(dir, Freeze::Full, &Device::Cpu).unwrap();
        let names: BTreeSet<String> = params.trainable().map(|p| p.name.clone()).collect();
        assert_eq!(
            names,
            reference_param_names(&r, c),
            "trainable set differs from the reference's parameters"
        );
        let loss = vit_case(&model, &r, c, 3);
        check_grads(&params, &loss, &r, c);
    }
}

fn vit_partial(dir: &Path) {
    let r = load_reference(&dir.join("reference.safetensors"));
    let (model, params) = Vit::load(dir, Freeze::Partial(1), &Device::Cpu).unwrap();
    let want: BTreeSet<String> = reference_param_names(&r, "b")
        .into_iter()
        .filter(|n| n.starts_with("encoder.layer.2.") || n.starts_with("layernorm."))
        .collect();
    let got: BTreeSet<String> = params.trainable().map(|p| p.name.clone()).collect();
    assert_eq!(got, want);
    let loss = vit_case(&model, &r, "b", 1);
    check_grads(&params, &loss, &r, "b");
}

fn vit_frozen(dir: &Path) {
    let r = load_reference(&dir.join("reference.safetensors"));
    let (model, params) = Vit::load(dir, Freeze::Frozen, &Device::Cpu).unwrap();
    assert_eq!(params.trainable().count(), 0);
    let head = Var::ones(32, DType::F32, &Device::Cpu).unwrap();
    let out = model.forward(get(&r, "b.pixel_values"), &[]).unwrap();
    let loss = out
        .last_hidden_state
        .broadcast_mul(head.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    assert!(grads.get(head.as_tensor()).is_some());
    for p in params.iter() {
        assert!(
            grads.get(p.tensor()).is_none(),
            "frozen {} got a gradient",
            p.name
        );
    }
}

#[test]
fn vit_full_matches_outputs_and_every_gradient_at_two_sizes() {
    vit_full(&fixtures().join("vit"));
}

#[test]
fn dinov2_full_matches_outputs_and_every_gradient_at_two_sizes() {
    vit_full(&fixtures().join("dinov2"));
}

#[test]
fn vit_partial_trains_exactly_the_last_block_and_final_norm() {
    vit_partial(&fixtures().join("vit"));
}

#[test]
fn dinov2_partial_trains_exactly_the_last_block_and_final_norm() {
    vit_partial(&fixtures().join("dinov2"));
}

#[test]
fn vit_frozen_gives_no_backbone_gradient() {
    vit_frozen(&fixtures().join("vit"));
}

#[test]
fn dinov2_frozen_gives_no_backbone_gradient() {
    vit_frozen(&fixtures().join("dinov2"));
}

#[test]
fn vit_feature_map_and_cls_come_from_the_right_tokens() {
    let dir = fixtures().join("dinov2");
    let r = load_reference(&dir.join("reference.safetensors"));
    let (model, _) = Vit::load(&dir, Freeze::Frozen, &Device::Cpu).unwrap();
    let out = model.forward(get(&r, "b.pixel_values"), &[1]).unwrap();
    assert_eq!(out.grid, (6, 5));
    let map = out.feature_map().unwrap();
    assert_eq!(map.dims(), &[2, 32, 6, 5]);
    let want = get(&r, "b.last_hidden_state");
    // Token 1 + row * w + col is the patch at (row, col).
    let (row, col) = (4, 3);
    let got_patch = map
        .narrow(2, row, 1)
        .unwrap()
        .narrow(3, col, 1)
        .unwrap()
        .flatten_all()
        .unwrap();
    let want_patch = want
        .narrow(0, 0, 2)
        .unwrap()
        .narrow(1, 1 + row * 5 + col, 1)
        .unwrap()
        .flatten_all()
        .unwrap();
    assert_close(
        &got_patch,
        &want_patch
            .reshape((2, 1, 32))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .flatten_all()
            .unwrap(),
        OUT_TOL,
        "patch (4,3)",
    );
    assert_close(
        &out.cls().unwrap(),
        &want.narrow(1, 0, 1).unwrap().squeeze(1).unwrap(),
        OUT_TOL,
        "cls",
    );
    assert_eq!(out.block_map(1).unwrap().dims(), &[2, 32, 6, 5]);
    assert!(out.block_map(0).is_err(), "block 0 was not requested");
}

#[test]
fn vit_rejects_sizes_that_are_not_patch_multiples() {
    let dir = fixtures().join("vit");
    let (model, _) = Vit::load(&dir, Freeze::Frozen, &Device::Cpu).unwrap();
    let x = Tensor::zeros((1, 3, 33, 32), DType::F32, &Device::Cpu).unwrap();
    let err = model.forward(&x, &[]).unwrap_err().to_string();
    assert!(err.contains("multiple of the patch size"), "{err}");
}

#[test]
fn scratch_backbones_keep_the_architecture_and_drop_the_weights() {
    let dir = fixtures().join("dinov2");
    let spec = format!("{}{}", downstream_core::backbone::SCRATCH, dir.display());
    let (pretrained, p) = Vit::load(&dir, Freeze::Frozen, &Device::Cpu).unwrap();
    let (scratch, s) = downstream_core::backbone::load_vision(
        &spec,
        Freeze::Full,
        downstream_core::backbone::Readout::Final,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(pretrained.num_blocks(), scratch.num_blocks());
    let names: Vec<_> = p.iter().map(|x| x.name.clone()).collect();
    assert_eq!(names, s.iter().map(|x| x.name.clone()).collect::<Vec<_>>());
    let w = |store: &ParamStore, n: &str| values(store.get(n).unwrap().tensor());
    assert_ne!(
        w(&p, "encoder.layer.0.mlp.fc1.weight"),
        w(&s, "encoder.layer.0.mlp.fc1.weight")
    );
    assert!(w(&s, "encoder.layer.0.norm1.weight")
        .iter()
        .all(|&v| v == 1.0));
    assert!(w(&s, "encoder.layer.0.mlp.fc1.bias")
        .iter()
        .all(|&v| v == 0.0));
    let fc = w(&s, "encoder.layer.1.attention.attention.query.weight");
    let std = (fc.iter().map(|v| v * v).sum::<f32>() / fc.len() as f32).sqrt();
    assert!(
        fc.iter().all(|v| v.abs() <= 0.04) && (0.01..0.025).contains(&std),
        "std {std}"
    );
    let x = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(scratch.forward(&x, &[]).is_ok());
}

fn decoder_dir() -> std::path::PathBuf {
    fixtures().join("bert_decoder")
}

/// The decoder as `BertLMHeadModel` with cross-attention computes it: logits, every hidden
/// state, the gradient of every parameter (the tied word embeddings receive both uses) and the
/// gradient that flows back into the encoder's output.
#[test]
fn bert_decoder_matches_outputs_and_every_gradient() {
    bert_decoder_full();
}

/// The composed forms of every op (what a device other than the CPU runs) against the same
/// references: the CPU kernels are not the only path that is right.
#[test]
fn composed_paths_match_outputs_and_every_gradient() {
    downstream_core::nn::ops::composed_only(|| {
        bert_full();
        vit_full(&fixtures().join("dinov2"));
        bert_decoder_full();
    });
}

fn bert_decoder_full() {
    use downstream_core::backbone::{BertConfig, BertDecoder};
    use downstream_core::params::WeightFile;
    let dev = Device::Cpu;
    let r = load_reference(&decoder_dir().join("reference.safetensors"));
    let text = std::fs::read_to_string(decoder_dir().join("config.json")).unwrap();
    let config: BertConfig = serde_json::from_str(&text).unwrap();
    let mut file = WeightFile::load(&decoder_dir().join("model.safetensors"), &[], &dev).unwrap();
    let mut params = ParamStore::new();
    let decoder = BertDecoder::from_weights(config, &mut file, &mut params, "", 1).unwrap();
    let names: BTreeSet<String> = params.trainable().map(|p| p.name.clone()).collect();
    let mut want = reference_param_names(&r, "a");
    want.remove("encoder_hidden_states");
    assert_eq!(names, want, "trainable set differs from the reference's");

    let encoder = Var::from_tensor(get(&r, "a.encoder_hidden_states")).unwrap();
    let ids = get(&r, "a.input_ids").to_dtype(DType::U32).unwrap();
    let mask = get(&r, "a.attention_mask").to_dtype(DType::F32).unwrap();
    let encoder_mask = get(&r, "a.encoder_attention_mask")
        .to_dtype(DType::F32)
        .unwrap();
    let (logits, hidden) = decoder
        .forward_with_hidden(
            &ids,
            Some(&mask),
            encoder.as_tensor(),
            Some(&encoder_mask),
            true,
        )
        .unwrap();
    assert_close(&logits, get(&r, "a.logits"), OUT_TOL, "decoder logits");
    assert_eq!(hidden.len(), 4);
    for (k, h) in hidden.iter().enumerate() {
        assert_close(
            h,
            get(&r, &format!("a.hidden_states.{k}")),
            OUT_TOL,
            &format!("decoder hidden_states.{k}"),
        );
    }
    let loss = (logits * get(&r, "a.loss_weight"))
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let floor = max_abs(get(&r, "a.grad.encoder_hidden_states")) * 1e-3;
    for p in params.iter() {
        let g = grads
            .get(p.var().unwrap().as_tensor())
            .unwrap_or_else(|| panic!("{}: no gradient", p.name));
        assert_grad_close(
            g,
            get(&r, &format!("a.grad.{}", p.name)),
            GRAD_REL,
            floor,
            &format!("decoder grad {}", p.name),
        );
    }
    assert_grad_close(
        grads.get(encoder.as_tensor()).unwrap(),
        get(&r, "a.grad.encoder_hidden_states"),
        GRAD_REL,
        floor,
        "decoder grad encoder_hidden_states",
    );

    // Incremental decoding, one token per step, against transformers' own cached steps.
    let ids = get(&r, "b.input_ids").to_dtype(DType::U32).unwrap();
    let mut state = decoder
        .start(get(&r, "b.encoder_hidden_states"), None)
        .unwrap();
    let steps: Vec<Tensor> = (0..ids.dim(1).unwrap())
        .map(|t| {
            decoder
                .step(&mut state, &ids.narrow(1, t, 1).unwrap())
                .unwrap()
                .squeeze(0)
                .unwrap()
        })
        .collect();
    let steps = Tensor::cat(&steps, 0).unwrap();
    assert_close(&steps, get(&r, "b.step_logits"), OUT_TOL, "decoder steps");
}
