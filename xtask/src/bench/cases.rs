//! The Rust side of each bench row: set up, warm up once, time `runs` calls.
//!
//! A row runs in a process of its own (`cargo xtask bench` starts `xtask bench-row ID`), so
//! that the peak resident memory it reports is that row's alone. Training rows run the
//! engine's own step: forward, a scalar loss, backward, the gradients gathered by
//! [`Grads::accumulate`] and one [`AdamW`] update, as `fit` does.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use downstream_core::backbone::{self, bert_decoder, Readout, TextBatch};
use downstream_core::nn::loss::CrossEntropy;
use downstream_core::nn::ops;
use downstream_core::params::WeightFile;
use downstream_core::train::feature_cache::{CacheKind, FeatureCache};
use downstream_core::train::optimizer::{AdamW, AdamWConfig, Grads};
use downstream_core::{Freeze, ParamStore};
use serde::{Deserialize, Serialize};

use super::rows::{self, Row};

/// Wall times of one row, in milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Timing {
    pub id: String,
    pub shape: String,
    pub runs: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// The process's peak resident memory when the row finished.
    pub peak_rss_mb: f64,
}

fn time(row: &Row, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    f().with_context(|| format!("bench row `{}`", row.id))?;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(Timing {
        id: row.id.to_string(),
        shape: row.shape.clone(),
        runs,
        median_ms: median(&ms),
        min_ms: ms[0],
        max_ms: ms[ms.len() - 1],
        peak_rss_mb: peak_rss_mb(),
    })
}

/// The median of sorted values (the mean of the middle two for an even count).
pub fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The peak resident set size of this process so far, in MiB (Linux reports KiB).
pub fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
    let kib = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return f64::NAN;
        }
        usage.ru_maxrss
    };
    kib as f64 / 1024.0
}

/// One training update through the engine's pieces.
fn update(params: &ParamStore, opt: &mut AdamW, loss: &Tensor) -> Result<()> {
    let store = loss.backward()?;
    let mut grads = Grads::default();
    grads.accumulate(params, &store)?;
    opt.step(&grads, 1e-4)?;
    Ok(())
}

/// Forward then backward of `sum(f(x) * g)` for a fixed random `g`, so every output element
/// carries a distinct gradient.
fn fwd_bwd(x: &Var, g: &Tensor, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<()> {
    let y = f(x.as_tensor())?;
    let grads = (y * g)?.sum_all()?.backward()?;
    grads
        .get(x.as_tensor())
        .context("no gradient for the input")?;
    Ok(())
}

fn randn(shape: &[usize], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::randn(0f32, 1.0, shape, dev)?)
}

/// Times row `id` on the CPU.
pub fn run(id: &str, runs: usize) -> Result<Timing> {
    let row = rows::find(id).with_context(|| format!("no bench row `{id}`"))?;
    let dev = Device::Cpu;
    let (n, t, d, heads) = rows::OPS;
    match id {
        "matmul ceiling" => {
            let c = rows::CEILING_N;
            let (a, b) = (randn(&[c, c], &dev)?, randn(&[c, c], &dev)?);
            time(&row, runs, || {
                a.matmul(&b)?;
                Ok(())
            })
        }
        "op matmul (linear)" => {
            let a = randn(&[n * t, d], &dev)?;
            let w = randn(&[4 * d, d], &dev)?;
            time(&row, runs, || {
                ops::linear(&a, &w, None)?;
                Ok(())
            })
        }
        "op layer_norm fwd+bwd" => {
            let x = Var::from_tensor(&randn(&[n, t, d], &dev)?)?;
            let w = ((randn(&[d], &dev)? * 0.1)? + 1.0)?;
            let b = (randn(&[d], &dev)? * 0.1)?;
            let g = randn(&[n, t, d], &dev)?;
            time(&row, runs, || {
                fwd_bwd(&x, &g, |x| ops::layer_norm(x, &w, &b, 1e-6))
            })
        }
        "op gelu fwd+bwd" => {
            let x = Var::from_tensor(&randn(&[n, t, 4 * d], &dev)?)?;
            let g = randn(&[n, t, 4 * d], &dev)?;
            time(&row, runs, || fwd_bwd(&x, &g, ops::gelu))
        }
        "op softmax fwd+bwd" => {
            let x = Var::from_tensor(&randn(&[n, heads, t, t], &dev)?)?;
            let g = randn(&[n, heads, t, t], &dev)?;
            time(&row, runs, || fwd_bwd(&x, &g, ops::softmax_last_dim))
        }
        "dinov2-s14 forward" => {
            let (b, s) = rows::VISION;
            let pixels = randn(&[b, 3, s, s], &dev)?;
            let (vit, _) = backbone::load_vision(
                backbone::DEFAULT_VISION,
                Freeze::Frozen,
                Readout::Final,
                &dev,
            )?;
            time(&row, runs, || {
                vit.forward(&pixels, &[])?;
                Ok(())
            })
        }
        "dinov2-s14 train step" => {
            let (b, s) = rows::VISION;
            let pixels = randn(&[b, 3, s, s], &dev)?;
            let (vit, params) = backbone::load_vision(
                backbone::DEFAULT_VISION,
                Freeze::Full,
                Readout::Final,
                &dev,
            )?;
            let mut opt = AdamW::new(&params, AdamWConfig::default())?;
            time(&row, runs, || {
                let out = vit.forward(&pixels, &[])?;
                let loss = out.last_hidden_state.sqr()?.mean_all()?;
                update(&params, &mut opt, &loss)
            })
        }
        "dinov2-s14 frozen epoch" => frozen_epoch(&row, runs, &dev),
        "minilm-l6 forward" | "minilm-l6 train step" => {
            let (b, len) = rows::TEXT;
            // Fixed in-vocabulary ids with no padding: the timing does not depend on the text.
            let ids: Vec<u32> = (0..b * len)
                .map(|i| 1000 + (i * 7919 % 20000) as u32)
                .collect();
            let input = TextBatch {
                input_ids: Tensor::from_vec(ids, (b, len), &dev)?,
                attention_mask: Tensor::ones((b, len), DType::U32, &dev)?,
                token_type_ids: Tensor::zeros((b, len), DType::U32, &dev)?,
            };
            if id == "minilm-l6 forward" {
                let (bert, _, _) =
                    backbone::load_text(backbone::DEFAULT_TEXT, Freeze::Frozen, &dev)?;
                return time(&row, runs, || {
                    bert.forward(&input)?;
                    Ok(())
                });
            }
            let (bert, _, params) =
                backbone::load_text(backbone::DEFAULT_TEXT, Freeze::Full, &dev)?;
            let mut opt = AdamW::new(&params, AdamWConfig::default())?;
            time(&row, runs, || {
                let out = bert.forward(&input)?;
                let loss = out.sqr()?.mean(D::Minus1)?.mean_all()?;
                update(&params, &mut opt, &loss)
            })
        }
        "adamw update" => {
            let mut params = ParamStore::new();
            params.top_depth = 1;
            let mut grads = Grads::default();
            for (i, shape) in rows::vit_s_shapes().iter().enumerate() {
                let name = format!("p{i}.weight");
                params.insert(&name, randn(shape, &dev)?, 1, true)?;
                grads.insert(&name, (randn(shape, &dev)? * 1e-3)?);
            }
            let mut opt = AdamW::new(&params, AdamWConfig::default())?;
            time(&row, runs, || opt.step(&grads, 1e-4))
        }
        "translate decoder step" => decoder_step(&row, runs, &dev),
        "segment head step" => segment_step(&row, runs, &dev),
        other => bail!("bench row `{other}` has no Rust side"),
    }
}

/// An epoch of frozen-mode training once the feature cache is warm: each batch's backbone
/// features come from the engine's in-memory cache, and only the head trains (a linear
/// classifier on the mean token, as a linear probe).
fn frozen_epoch(row: &Row, runs: usize, dev: &Device) -> Result<Timing> {
    let (b, s) = rows::VISION;
    let images = rows::FROZEN_EPOCH_IMAGES;
    let (vit, mut params) = backbone::load_vision(
        backbone::DEFAULT_VISION,
        Freeze::Frozen,
        Readout::Final,
        dev,
    )?;
    let dir = tempfile::tempdir()?;
    let cache = FeatureCache::new(CacheKind::Memory, dir.path().to_path_buf(), true, dev)?;
    for start in (0..images).step_by(b) {
        let pixels = randn(&[b, 3, s, s], dev)?;
        let h = vit.forward(&pixels, &[])?.last_hidden_state;
        for i in 0..b {
            cache.put((start + i, 0), &vec![h.get(i)?])?;
        }
    }
    drop(vit);
    let classes = rows::FROZEN_CLASSES;
    let depth = params.top_depth;
    let w = params.insert(
        "head.weight",
        (randn(&[classes, 384], dev)? * 0.02)?,
        depth,
        true,
    )?;
    let bias = params.insert(
        "head.bias",
        Tensor::zeros(classes, DType::F32, dev)?,
        depth,
        true,
    )?;
    let mut opt = AdamW::new(&params, AdamWConfig::default())?;
    let labels: Vec<u32> = (0..b as u32).map(|i| i % classes as u32).collect();
    let labels = Tensor::from_vec(labels, b, dev)?;
    time(row, runs, || {
        for start in (0..images).step_by(b) {
            let mut feats = Vec::with_capacity(b);
            for i in 0..b {
                let f = cache.get((start + i, 0))?.context("feature cache miss")?;
                feats.push(f[0].clone());
            }
            let pooled = Tensor::stack(&feats, 0)?.mean(1)?;
            let logits = ops::linear(&pooled, &w, Some(&bias))?;
            let loss = (CrossEntropy::default().sum(&logits, &labels)? / b as f64)?;
            update(&params, &mut opt, &loss)?;
        }
        Ok(())
    })
}

/// The `translate` decoder (warm start off: the timing does not depend on the values) trained
/// on fixed encoder states, as a frozen-encoder run does once its features are cached.
fn decoder_step(row: &Row, runs: usize, dev: &Device) -> Result<Timing> {
    let (b, t, s, layers, vocab) = rows::DECODER;
    let encoder = backbone::text_config(backbone::DEFAULT_TEXT)?;
    let config = bert_decoder::decoder_config(&encoder, layers, vocab);
    let mut params = ParamStore::new();
    params.top_depth = 1;
    let mut file = WeightFile::fresh(0, dev);
    let decoder =
        bert_decoder::BertDecoder::from_weights(config, &mut file, &mut params, "decoder.", 1)?;
    let mut opt = AdamW::new(&params, AdamWConfig::default())?;
    let ids: Vec<u32> = (0..b * t)
        .map(|i| 5 + (i * 7919 % (vocab - 5)) as u32)
        .collect();
    let inputs = Tensor::from_vec(ids.clone(), (b, t), dev)?;
    let labels = Tensor::from_vec(ids, b * t, dev)?;
    let states = randn(&[b, s, encoder.hidden_size], dev)?;
    time(row, runs, || {
        let logits = decoder.forward(&inputs, None, &states, None)?;
        let loss = (CrossEntropy::default().sum(&logits.reshape((b * t, vocab))?, &labels)?
            / (b * t) as f64)?;
        update(&params, &mut opt, &loss)
    })
}

/// The `segment` default head (progressive decoder) on block-8 feature maps of 224 images.
fn segment_step(row: &Row, runs: usize, dev: &Device) -> Result<Timing> {
    let (b, classes, width) = rows::SEGMENT;
    let size = rows::VISION.1;
    let mut params = ParamStore::new();
    params.top_depth = 1;
    let decoder = segment::model::Decoder::new(
        segment::model::DecoderKind::Progressive,
        &mut params,
        384,
        width,
        classes,
        0,
        dev,
    )?;
    let mut opt = AdamW::new(&params, AdamWConfig::default())?;
    let grid = size / 14;
    let features = randn(&[b, grid, grid, 384], dev)?;
    let labels: Vec<u32> = (0..b * size * size)
        .map(|i| ((i / size / 32 + i % size / 32) % classes) as u32)
        .collect();
    let labels = Tensor::from_vec(labels, (b, size, size), dev)?;
    time(row, runs, || {
        let logits = decoder.forward(&features, size)?;
        let loss = (CrossEntropy::default().sum(&logits, &labels)? / (b * size * size) as f64)?;
        update(&params, &mut opt, &loss)
    })
}
