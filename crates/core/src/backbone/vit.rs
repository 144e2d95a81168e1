//! Vision transformers in the Hugging Face `ViTModel` and `Dinov2Model` layouts, trainable end
//! to end, at any input size that is a multiple of the patch size.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::nn::interpolate::resize_bicubic;
use crate::nn::{ops, Attention, Detach, LayerNorm, Linear, Loader};
use crate::params::{Freeze, ParamStore, WeightFile};

/// Which of the two parameter layouts (and block designs) a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VitLayout {
    /// `ViTModel`: `layernorm_before/after`, `intermediate.dense`, `output.dense`.
    Vit,
    /// `Dinov2Model`: `norm1/norm2`, `mlp.fc1/fc2`, LayerScale after attention and MLP.
    Dinov2,
}

/// How much of the encoder a head reads, and so how much of it is loaded, computed and trained.
///
/// A head that reads the raw output of an intermediate block never reaches the blocks above
/// it, nor the final norm: loading them would cost a forward pass for nothing, and in `full`
/// or `partial:N` mode leave trainable parameters without a gradient (silently, before the
/// engine refused that). With [`Readout::UpTo`] those layers are not loaded at all, and the
/// block read becomes the top: `partial:N` counts down from it and layer-wise decay starts
/// at it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Readout {
    /// Every block and the final norm; the output is the final norm's.
    #[default]
    Final,
    /// Blocks `0..=b` only; the output is block `b`'s raw output (no final norm).
    UpTo(usize),
}

/// The fields of an HF `config.json` that the encoder needs (both `vit` and `dinov2`).
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct VitConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// ViT states it; DINOv2 derives it from `mlp_ratio`.
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    #[serde(default)]
    pub mlp_ratio: Option<f64>,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "three")]
    pub num_channels: usize,
    pub layer_norm_eps: f64,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default)]
    pub use_swiglu_ffn: bool,
}

fn three() -> usize {
    3
}
fn yes() -> bool {
    true
}
fn gelu() -> String {
    "gelu".into()
}

impl VitConfig {
    pub fn layout(&self) -> Result<VitLayout> {
        match self.model_type.as_str() {
            "vit" => Ok(VitLayout::Vit),
            "dinov2" => Ok(VitLayout::Dinov2),
            other => bail!("model_type `{other}` is neither `vit` nor `dinov2`"),
        }
    }

    pub fn mlp_size(&self) -> usize {
        match (self.intermediate_size, self.mlp_ratio) {
            (Some(n), _) if self.model_type == "vit" => n,
            (_, Some(r)) => (self.hidden_size as f64 * r) as usize,
            (Some(n), None) => n,
            (None, None) => 4 * self.hidden_size,
        }
    }

    /// Side of the square grid the position embeddings were trained for.
    pub fn base_grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

enum Mlp {
    Vit {
        intermediate: Linear,
        output: Linear,
    },
    Dinov2 {
        fc1: Linear,
        fc2: Linear,
    },
}

struct Block {
    norm1: LayerNorm,
    attention: Attention,
    scale1: Option<Tensor>,
    norm2: LayerNorm,
    mlp: Mlp,
    scale2: Option<Tensor>,
}

impl Detach for Mlp {
    fn detached(&self) -> Self {
        match self {
            Mlp::Vit {
                intermediate,
                output,
            } => Mlp::Vit {
                intermediate: intermediate.detached(),
                output: output.detached(),
            },
            Mlp::Dinov2 { fc1, fc2 } => Mlp::Dinov2 {
                fc1: fc1.detached(),
                fc2: fc2.detached(),
            },
        }
    }
}

impl Detach for Block {
    fn detached(&self) -> Self {
        Self {
            norm1: self.norm1.detached(),
            attention: self.attention.detached(),
            scale1: self.scale1.detached(),
            norm2: self.norm2.detached(),
            mlp: self.mlp.detached(),
            scale2: self.scale2.detached(),
        }
    }
}

impl Block {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let a = self.attention.forward(&self.norm1.forward(x)?, None)?;
        let x = ops::residual(x, &a, self.scale1.as_ref())?;
        let h = self.norm2.forward(&x)?;
        let m = match &self.mlp {
            Mlp::Vit {
                intermediate,
                output,
            } => output.forward(&ops::gelu(&intermediate.forward(&h)?)?)?,
            Mlp::Dinov2 { fc1, fc2 } => fc2.forward(&ops::gelu(&fc1.forward(&h)?)?)?,
        };
        ops::residual(&x, &m, self.scale2.as_ref())
    }
}

/// What one forward pass gives.
#[derive(Clone, Debug)]
pub struct VitOutput {
    /// The encoder's output `[B, 1 + h*w, D]`, the CLS token, then patches in row-major order:
    /// the final norm's output, or with [`Readout::UpTo`] the raw output of the block read.
    pub last_hidden_state: Tensor,
    /// The patch grid `(h, w)`.
    pub grid: (usize, usize),
    /// Raw outputs (before the final norm) of the blocks asked for, as `(index, [B, 1 + h*w, D])`.
    pub blocks: Vec<(usize, Tensor)>,
}

impl VitOutput {
    /// The CLS token `[B, D]`.
    pub fn cls(&self) -> candle_core::Result<Tensor> {
        self.last_hidden_state.narrow(1, 0, 1)?.squeeze(1)
    }

    /// Patch features as a map `[B, D, h, w]`.
    pub fn feature_map(&self) -> candle_core::Result<Tensor> {
        tokens_to_map(&self.last_hidden_state, self.grid)
    }

    /// The map `[B, D, h, w]` of block `index`, which must have been asked for.
    pub fn block_map(&self, index: usize) -> Result<Tensor> {
        let (_, t) = self
            .blocks
            .iter()
            .find(|(i, _)| *i == index)
            .with_context(|| format!("block {index} was not requested in the forward pass"))?;
        Ok(tokens_to_map(t, self.grid)?)
    }
}

/// `[B, 1 + h*w, D]` tokens (CLS first) to a `[B, D, h, w]` patch map.
pub fn tokens_to_map(tokens: &Tensor, (h, w): (usize, usize)) -> candle_core::Result<Tensor> {
    let (b, n, d) = tokens.dims3()?;
    tokens
        .narrow(1, n - h * w, h * w)?
        .transpose(1, 2)?
        .reshape((b, d, h, w))
}

/// A ViT or DINOv2 encoder. Its parameters live in the [`ParamStore`] returned by [`Vit::load`].
pub struct Vit {
    pub config: VitConfig,
    pub layout: VitLayout,
    patch_weight: Tensor,
    patch_bias: Tensor,
    cls_token: Tensor,
    position_embeddings: Tensor,
    blocks: Vec<Block>,
    /// Absent when the head reads an intermediate block ([`Readout::UpTo`]).
    final_norm: Option<LayerNorm>,
}

impl Detach for Vit {
    fn detached(&self) -> Self {
        Self {
            config: self.config.clone(),
            layout: self.layout,
            patch_weight: self.patch_weight.detached(),
            patch_bias: self.patch_bias.detached(),
            cls_token: self.cls_token.detached(),
            position_embeddings: self.position_embeddings.detached(),
            blocks: self.blocks.detached(),
            final_norm: self.final_norm.detached(),
        }
    }
}

impl Vit {
    /// Loads `config.json` and `model.safetensors` from an HF-layout directory, whole.
    pub fn load(dir: &Path, freeze: Freeze, device: &Device) -> Result<(Self, ParamStore)> {
        Self::load_with(dir, freeze, Readout::Final, None, device)
    }

    /// [`Vit::load`] up to what a head reads, or with `scratch_seed` the same architecture
    /// randomly initialised.
    pub fn load_with(
        dir: &Path,
        freeze: Freeze,
        readout: Readout,
        scratch_seed: Option<u64>,
        device: &Device,
    ) -> Result<(Self, ParamStore)> {
        let config_path = dir.join("config.json");
        let config: VitConfig = super::read_config(&config_path, "ViT/DINOv2")?;
        let mut file =
            WeightFile::load(&dir.join("model.safetensors"), &["vit.", "dinov2."], device)?;
        if let Some(seed) = scratch_seed {
            file = file.randomized(seed)?;
        }
        let mut store = ParamStore::new();
        let model = Self::from_weights(config, &mut file, &mut store, freeze, readout)
            .with_context(|| format!("loading vision backbone from {}", dir.display()))?;
        Ok((model, store))
    }

    pub fn from_weights(
        config: VitConfig,
        file: &mut WeightFile,
        store: &mut ParamStore,
        freeze: Freeze,
        readout: Readout,
    ) -> Result<Self> {
        let layout = config.layout()?;
        if config.hidden_act != "gelu" {
            bail!(
                "hidden_act `{}` is not supported (only exact gelu)",
                config.hidden_act
            );
        }
        if config.use_swiglu_ffn {
            bail!("SwiGLU feed-forward blocks (DINOv2 giant) are not supported");
        }
        if !config.qkv_bias {
            bail!("attention without qkv bias is not supported");
        }
        let d = config.hidden_size;
        let n = match readout {
            Readout::Final => config.num_hidden_layers,
            Readout::UpTo(b) if b < config.num_hidden_layers => b + 1,
            Readout::UpTo(b) => bail!(
                "block {b} is read, but the backbone has {} blocks (0 to {})",
                config.num_hidden_layers,
                config.num_hidden_layers.saturating_sub(1)
            ),
        };
        freeze.check(n)?;
        let p = config.patch_size;
        let c = config.num_channels;
        let eps = config.layer_norm_eps;
        let mlp = config.mlp_size();
        let grid = config.base_grid();
        store.top_depth = n + 1;
        let mut ld = Loader::new(file, store, freeze, n);
        let patch_weight = ld.param(
            "embeddings.patch_embeddings.projection.weight",
            &[d, c, p, p],
            0,
        )?;
        let patch_bias = ld.param("embeddings.patch_embeddings.projection.bias", &[d], 0)?;
        let cls_token = ld.param("embeddings.cls_token", &[1, 1, d], 0)?;
        let position_embeddings = ld.param(
            "embeddings.position_embeddings",
            &[1, 1 + grid * grid, d],
            0,
        )?;
        let mut blocks = Vec::with_capacity(n);
        for i in 0..n {
            let pre = format!("encoder.layer.{i}");
            let depth = i + 1;
            let attention = ld.attention(
                [
                    &format!("{pre}.attention.attention.query"),
                    &format!("{pre}.attention.attention.key"),
                    &format!("{pre}.attention.attention.value"),
                    &format!("{pre}.attention.output.dense"),
                ],
                d,
                config.num_attention_heads,
                depth,
            )?;
            let block = match layout {
                VitLayout::Vit => Block {
                    norm1: ld.layer_norm(&format!("{pre}.layernorm_before"), d, eps, depth)?,
                    attention,
                    scale1: None,
                    norm2: ld.layer_norm(&format!("{pre}.layernorm_after"), d, eps, depth)?,
                    mlp: Mlp::Vit {
                        intermediate: ld.linear(
                            &format!("{pre}.intermediate.dense"),
                            d,
                            mlp,
                            depth,
                        )?,
                        output: ld.linear(&format!("{pre}.output.dense"), mlp, d, depth)?,
                    },
                    scale2: None,
                },
                VitLayout::Dinov2 => Block {
                    norm1: ld.layer_norm(&format!("{pre}.norm1"), d, eps, depth)?,
                    attention,
                    scale1: Some(ld.param(&format!("{pre}.layer_scale1.lambda1"), &[d], depth)?),
                    norm2: ld.layer_norm(&format!("{pre}.norm2"), d, eps, depth)?,
                    mlp: Mlp::Dinov2 {
                        fc1: ld.linear(&format!("{pre}.mlp.fc1"), d, mlp, depth)?,
                        fc2: ld.linear(&format!("{pre}.mlp.fc2"), mlp, d, depth)?,
                    },
                    scale2: Some(ld.param(&format!("{pre}.layer_scale2.lambda1"), &[d], depth)?),
                },
            };
            blocks.push(block);
        }
        let final_norm = match readout {
            Readout::Final => Some(ld.layer_norm("layernorm", d, eps, n + 1)?),
            Readout::UpTo(_) => None,
        };
        Ok(Self {
            config,
            layout,
            patch_weight,
            patch_bias,
            cls_token,
            position_embeddings,
            blocks,
            final_norm,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    pub fn patch_size(&self) -> usize {
        self.config.patch_size
    }

    /// The blocks loaded: all of them, or those up to the block a head reads.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Position embeddings for an `h x w` patch grid `[1, 1 + h*w, D]`, resized from the trained
    /// grid as the reference implementation of each layout does.
    fn positions(&self, h: usize, w: usize) -> candle_core::Result<Tensor> {
        let s = self.config.base_grid();
        if (h, w) == (s, s) {
            return Ok(self.position_embeddings.clone());
        }
        let d = self.hidden_size();
        let cls = self.position_embeddings.narrow(1, 0, 1)?;
        let grid = self
            .position_embeddings
            .narrow(1, 1, s * s)?
            .reshape((s, s, d))?
            .permute((2, 0, 1))?;
        let resized = resize_bicubic(&grid.contiguous()?, h, w)?;
        let resized = resized.permute((1, 2, 0))?.reshape((1, h * w, d))?;
        Tensor::cat(&[cls, resized], 1)
    }

    /// Patch embedding as one matrix product: a stride-p, kernel-p convolution is a linear map
    /// of each flattened patch (and candle's conv backward is much slower).
    fn embed(&self, pixels: &Tensor) -> Result<(Tensor, (usize, usize))> {
        let (b, c, hh, ww) = pixels.dims4()?;
        let p = self.patch_size();
        if c != self.config.num_channels {
            bail!(
                "input has {c} channels, the model expects {}",
                self.config.num_channels
            );
        }
        if !hh.is_multiple_of(p) || !ww.is_multiple_of(p) || hh == 0 || ww == 0 {
            bail!("input size {hh}x{ww} is not a positive multiple of the patch size {p}");
        }
        let (h, w) = (hh / p, ww / p);
        let patches = pixels
            .reshape((b, c, h, p, w, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, h * w, c * p * p))?;
        let weight = self.patch_weight.reshape((self.hidden_size(), c * p * p))?;
        let x = ops::linear(&patches, &weight, Some(&self.patch_bias))?;
        let cls = self.cls_token.broadcast_as((b, 1, self.hidden_size()))?;
        let x = Tensor::cat(&[cls, x], 1)?.broadcast_add(&self.positions(h, w)?)?;
        Ok((x, (h, w)))
    }

    /// Encodes `[B, C, H, W]` normalised pixels; `keep` lists block indices whose raw outputs
    /// should be returned as well.
    pub fn forward(&self, pixels: &Tensor, keep: &[usize]) -> Result<VitOutput> {
        if let Some(&bad) = keep.iter().find(|&&i| i >= self.blocks.len()) {
            bail!(
                "block {bad} requested, the model has {} blocks",
                self.blocks.len()
            );
        }
        let (mut x, grid) = self.embed(pixels)?;
        let mut blocks = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x)?;
            if keep.contains(&i) {
                blocks.push((i, x.clone()));
            }
        }
        let last_hidden_state = match &self.final_norm {
            Some(norm) => norm.forward(&x)?,
            None => x,
        };
        Ok(VitOutput {
            last_hidden_state,
            grid,
            blocks,
        })
    }
}
