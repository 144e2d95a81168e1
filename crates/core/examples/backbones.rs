//! Fetches the default backbones on first use, prints a summary of each, a sentence
//! embedding and an image feature map.
//!
//! `cargo run --release -p downstream-core --example backbones`

use anyhow::Result;
use candle_core::{Device, Tensor};
use downstream_core::backbone::{self, bert::mean_pool_normalized, IMAGENET_MEAN, IMAGENET_STD};
use downstream_core::{Freeze, ParamStore};

fn summary(name: &str, params: &ParamStore) {
    let (trainable, total) = params.counts();
    println!(
        "{name}: {} tensors, {:.2}M parameters ({:.2}M trainable)",
        params.len(),
        total as f64 / 1e6,
        trainable as f64 / 1e6
    );
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let (bert, tokenizer, params) =
        backbone::load_text(backbone::DEFAULT_TEXT, Freeze::Full, &dev)?;
    summary(backbone::DEFAULT_TEXT, &params);
    let text = "A pretrained backbone, fine-tuned downstream.";
    let batch = tokenizer.batch(&[text], &dev)?;
    let emb = mean_pool_normalized(&bert.forward(&batch)?, &batch.attention_mask)?;
    let v: Vec<f32> = emb.get(0)?.to_vec1()?;
    println!(
        "  embedding of {text:?}: dim {}, first values {:.4?}",
        v.len(),
        &v[..6]
    );

    let (vit, params) = backbone::load_vision(
        backbone::DEFAULT_VISION,
        Freeze::Full,
        backbone::Readout::Final,
        &dev,
    )?;
    summary(backbone::DEFAULT_VISION, &params);
    // A smooth synthetic RGB gradient, normalised as the backbone expects.
    let (h, w) = (224usize, 224usize);
    let mut px = vec![0f32; 3 * h * w];
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let v = [x as f32 / w as f32, y as f32 / h as f32, 0.5][c];
                px[(c * h + y) * w + x] = (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
    }
    let out = vit.forward(&Tensor::from_vec(px, (1, 3, h, w), &dev)?, &[8])?;
    println!(
        "  {h}x{w} image: feature map {:?}, CLS {:?}, block 8 map {:?}",
        out.feature_map()?.dims(),
        out.cls()?.dims(),
        out.block_map(8)?.dims()
    );
    Ok(())
}
