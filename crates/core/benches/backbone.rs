//! Backbone and op timings, the Rust side of `cargo xtask bench`.
//!
//! `cargo bench -p downstream-core --bench backbone -- [--quick] [--json FILE] [--only NAME]`
//!
//! Each case runs once to warm up, then `runs` times; the median, minimum and maximum wall
//! times are reported. A training step is the forward pass, a scalar loss and the backward
//! pass (no optimizer update, which is the same for every model of a given size).

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, D};
use downstream_core::backbone::{self, TextBatch};
use downstream_core::nn::ops;
use downstream_core::Freeze;
use serde::Serialize;

#[derive(Serialize)]
struct Record {
    name: String,
    shape: String,
    runs: usize,
    median_s: f64,
    min_s: f64,
    max_s: f64,
}

struct Bench {
    runs: usize,
    only: Option<String>,
    records: Vec<Record>,
}

impl Bench {
    fn wanted(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|o| name.contains(o))
    }

    /// Whether any of a group's cases is wanted, so a group skips its set-up otherwise.
    fn any_wanted(&self, names: &[&str]) -> bool {
        names.iter().any(|n| self.wanted(n))
    }

    fn time(&mut self, name: &str, shape: &str, mut f: impl FnMut() -> Result<()>) -> Result<()> {
        if !self.wanted(name) {
            return Ok(());
        }
        f().with_context(|| format!("bench {name}"))?;
        let mut times = Vec::with_capacity(self.runs);
        for _ in 0..self.runs {
            let t = Instant::now();
            f()?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let rec = Record {
            name: name.to_string(),
            shape: shape.to_string(),
            runs: self.runs,
            median_s: times[times.len() / 2],
            min_s: times[0],
            max_s: times[times.len() - 1],
        };
        println!(
            "{:<28} {:<22} median {:>9.4} s  (min {:.4}, max {:.4}, {} runs)",
            rec.name, rec.shape, rec.median_s, rec.min_s, rec.max_s, rec.runs
        );
        self.records.push(rec);
        Ok(())
    }
}

/// Forward then backward of `sum(f(x) * g)` for a fixed random `g`, so every output element
/// carries a distinct gradient.
fn fwd_bwd(
    x: &candle_core::Var,
    g: &Tensor,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<()> {
    let y = f(x.as_tensor())?;
    let loss = (y * g)?.sum_all()?;
    let grads = loss.backward()?;
    grads
        .get(x.as_tensor())
        .context("no gradient for the input")?;
    Ok(())
}

fn ops_cases(b: &mut Bench, dev: &Device) -> Result<()> {
    if !b.any_wanted(&[
        "op layer_norm fwd+bwd",
        "op gelu fwd+bwd",
        "op softmax fwd+bwd",
        "op matmul (linear)",
    ]) {
        return Ok(());
    }
    let (n, t, d) = (8usize, 257usize, 384usize);
    let shape = format!("{n}x{t}x{d}");
    let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, t, d), dev)?)?;
    let w = Tensor::randn(1f32, 0.1, d, dev)?;
    let bias = Tensor::randn(0f32, 0.1, d, dev)?;
    let g = Tensor::randn(0f32, 1.0, (n, t, d), dev)?;
    b.time("op layer_norm fwd", &shape, || {
        ops::layer_norm(x.as_tensor(), &w, &bias, 1e-6)?;
        Ok(())
    })?;
    b.time("op layer_norm fwd+bwd", &shape, || {
        fwd_bwd(&x, &g, |x| ops::layer_norm(x, &w, &bias, 1e-6))
    })?;

    let shape = format!("{n}x{t}x{}", 4 * d);
    let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, t, 4 * d), dev)?)?;
    let g = Tensor::randn(0f32, 1.0, (n, t, 4 * d), dev)?;
    b.time("op gelu fwd", &shape, || {
        ops::gelu(x.as_tensor())?;
        Ok(())
    })?;
    b.time("op gelu fwd+bwd", &shape, || fwd_bwd(&x, &g, ops::gelu))?;

    let heads = 6;
    let shape = format!("{n}x{heads}x{t}x{t}");
    let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, heads, t, t), dev)?)?;
    let g = Tensor::randn(0f32, 1.0, (n, heads, t, t), dev)?;
    b.time("op softmax fwd", &shape, || {
        ops::softmax_last_dim(x.as_tensor())?;
        Ok(())
    })?;
    b.time("op softmax fwd+bwd", &shape, || {
        fwd_bwd(&x, &g, ops::softmax_last_dim)
    })?;

    let (m, k, o) = (n * t, d, 4 * d);
    let shape = format!("{m}x{k} @ {k}x{o}");
    let a = Tensor::randn(0f32, 1.0, (m, k), dev)?;
    let wt = Tensor::randn(0f32, 1.0, (o, k), dev)?;
    b.time("op matmul (linear)", &shape, || {
        ops::linear(&a, &wt, None)?;
        Ok(())
    })?;
    Ok(())
}

fn vision_cases(b: &mut Bench, dev: &Device, batch: usize, size: usize) -> Result<()> {
    if !b.any_wanted(&["dinov2-s14 forward", "dinov2-s14 train step"]) {
        return Ok(());
    }
    let shape = format!("{batch}x3x{size}x{size}");
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, size, size), dev)?;
    let (frozen, _) = backbone::load_vision(
        backbone::DEFAULT_VISION,
        Freeze::Frozen,
        backbone::Readout::Final,
        dev,
    )?;
    b.time("dinov2-s14 forward", &shape, || {
        frozen.forward(&pixels, &[])?;
        Ok(())
    })?;
    drop(frozen);
    let (full, _) = backbone::load_vision(
        backbone::DEFAULT_VISION,
        Freeze::Full,
        backbone::Readout::Final,
        dev,
    )?;
    b.time("dinov2-s14 train step", &shape, || {
        let out = full.forward(&pixels, &[])?;
        let loss = out.last_hidden_state.sqr()?.mean_all()?;
        loss.backward()?;
        Ok(())
    })?;
    Ok(())
}

fn text_cases(b: &mut Bench, dev: &Device, batch: usize, len: usize) -> Result<()> {
    if !b.any_wanted(&["minilm-l6 forward", "minilm-l6 train step"]) {
        return Ok(());
    }
    let shape = format!("{batch}x{len} tokens");
    // Fixed in-vocabulary ids with no padding: the timing does not depend on the text.
    let ids: Vec<u32> = (0..batch * len)
        .map(|i| 1000 + (i * 7919 % 20000) as u32)
        .collect();
    let input = TextBatch {
        input_ids: Tensor::from_vec(ids, (batch, len), dev)?,
        attention_mask: Tensor::ones((batch, len), DType::U32, dev)?,
        token_type_ids: Tensor::zeros((batch, len), DType::U32, dev)?,
    };
    let (frozen, _, _) = backbone::load_text(backbone::DEFAULT_TEXT, Freeze::Frozen, dev)?;
    b.time("minilm-l6 forward", &shape, || {
        frozen.forward(&input)?;
        Ok(())
    })?;
    drop(frozen);
    let (full, _, _) = backbone::load_text(backbone::DEFAULT_TEXT, Freeze::Full, dev)?;
    b.time("minilm-l6 train step", &shape, || {
        let out = full.forward(&input)?;
        let loss = out.sqr()?.mean(D::Minus1)?.mean_all()?;
        loss.backward()?;
        Ok(())
    })?;
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut quick = false;
    let mut json = None;
    let mut only = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--json" => json = Some(args.next().context("--json needs a file")?),
            "--only" => only = Some(args.next().context("--only needs a name")?),
            // cargo passes `--bench` to every bench target.
            "--bench" => {}
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let mut b = Bench {
        runs: if quick { 3 } else { 7 },
        only,
        records: Vec::new(),
    };
    downstream_core::memory::tune_for_training();
    let dev = Device::Cpu;
    println!(
        "downstream-core {} bench: {} threads",
        env!("CARGO_PKG_VERSION"),
        candle_core::utils::get_num_threads()
    );
    ops_cases(&mut b, &dev)?;
    vision_cases(&mut b, &dev, 8, 224)?;
    text_cases(&mut b, &dev, 16, 128)?;
    if let Some(path) = json {
        let mut text = String::new();
        for r in &b.records {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        downstream_core::atomic::write(std::path::Path::new(&path), text.as_bytes())?;
    }
    Ok(())
}
