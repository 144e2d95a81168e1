//! The detector on top of the backbone: a simple feature pyramid (ViTDet) and an anchor-free
//! dense head (FCOS).
//!
//! ViTDet showed that a plain ViT needs no hierarchical backbone: strides p/2, p and 2p built
//! from its single p-stride map are enough. FCOS was chosen over CenterNet because it assigns
//! each box to the pyramid level that suits its size, so small and large objects on the same
//! image (defects, tree crowns) are all found, and it needs no anchor tuning per data set.
//!
//! Reading several blocks, the head layer-norms each block's features before they are
//! concatenated: the residual stream grows with depth, and unnormalised the deepest block
//! would drown the others.
//!
//! With a pixel skip, the finest level (half the patch stride) also reads each patch's raw
//! pixels through a linear map of its own, added to the one from the backbone's features: a
//! ViT's features say where an object is to a patch, and box sides that must follow edges
//! finer than that (tree crowns 20 pixels across, at patch 14) can use the pixels directly.
//!
//! With a split tower, the box sides and the quality score read a tower of their own, as in
//! FCOS and YOLOX's decoupled head: what makes a location say "tree" (texture, colour) is not
//! what places a box side on an edge, and one shared tower must serve both.

use anyhow::Result;
use candle_core::{Device, Tensor};
use downstream_core::nn::conv::{pixel_shuffle2, pixel_unshuffle2, Conv3x3, Init};
use downstream_core::nn::{ops, Detach, LayerNorm, Linear};
use downstream_core::ParamStore;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::coding::BoxCoding;

struct Level {
    /// Into the level's resolution and width.
    proj: Linear,
    norm: LayerNorm,
}

/// Raw outputs for every location of every level, concatenated level by level.
pub struct HeadOutput {
    /// `[B, L, K]` class logits.
    pub class_logits: Tensor,
    /// `[B, L, C]` raw box outputs, which `coding` turns into distances to the sides.
    pub boxes: Tensor,
    /// The head's box coding, so that the loss and the boxes decode what it produced.
    pub coding: BoxCoding,
    /// `[B, L]` centre-ness logits.
    pub centerness: Tensor,
}

pub struct DetectionHead {
    /// One norm per block read, when the head reads more than one.
    inputs: Vec<LayerNorm>,
    levels: [Level; 3],
    /// The pixel skip into the finest level: each patch's pixels to its 2x2 cells.
    pixels: Option<Linear>,
    /// 3x3 convolutions, each followed by a norm, shared by all levels.
    tower: Vec<(Conv3x3, LayerNorm)>,
    /// The box and quality branches' own tower, when split; empty when they share `tower`.
    box_tower: Vec<(Conv3x3, LayerNorm)>,
    cls: Linear,
    reg: Linear,
    ctr: Linear,
    coding: BoxCoding,
}

impl Detach for Level {
    fn detached(&self) -> Self {
        Self {
            proj: self.proj.detached(),
            norm: self.norm.detached(),
        }
    }
}

impl Detach for DetectionHead {
    fn detached(&self) -> Self {
        Self {
            inputs: self.inputs.iter().map(Detach::detached).collect(),
            levels: self.levels.detached(),
            pixels: self.pixels.as_ref().map(Detach::detached),
            tower: detached_tower(&self.tower),
            box_tower: detached_tower(&self.box_tower),
            cls: self.cls.detached(),
            reg: self.reg.detached(),
            ctr: self.ctr.detached(),
            coding: self.coding,
        }
    }
}

fn detached_tower(tower: &[(Conv3x3, LayerNorm)]) -> Vec<(Conv3x3, LayerNorm)> {
    tower
        .iter()
        .map(|(c, n)| (c.detached(), n.detached()))
        .collect()
}

/// Convolutions through a tower, each followed by its norm and a GELU.
fn run_tower(tower: &[(Conv3x3, LayerNorm)], x: &Tensor) -> candle_core::Result<Tensor> {
    let mut x = x.clone();
    for (conv, norm) in tower {
        x = ops::gelu(&norm.forward(&conv.forward(&x)?)?)?;
    }
    Ok(x)
}

impl DetectionHead {
    /// New randomly initialised parameters in `store` (at the top depth), from `seed`, for
    /// `blocks` concatenated maps of `block_dim` channels each, followed by `pixel_dim`
    /// channels of raw patch pixels (0: no pixel skip), with `tower` convolutions (twice over
    /// when `split_tower`: one tower for the classes, one for the box and quality), and box
    /// outputs for `coding`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &mut ParamStore,
        block_dim: usize,
        blocks: usize,
        pixel_dim: usize,
        width: usize,
        tower: usize,
        split_tower: bool,
        coding: BoxCoding,
        classes: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xde7ec7);
        let depth = store.top_depth;
        let mut init = Init {
            store,
            rng: &mut rng,
            depth,
            device: device.clone(),
        };
        let in_dim = block_dim * blocks;
        let inputs = if blocks > 1 {
            (0..blocks)
                .map(|i| init.layer_norm(&format!("head.in{i}.norm"), block_dim, 1e-6))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let mut level = |name: &str, proj_in: usize, proj_out: usize| -> Result<Level> {
            Ok(Level {
                proj: init.linear(&format!("head.{name}.proj"), proj_in, proj_out)?,
                norm: init.layer_norm(&format!("head.{name}.norm"), width, 1e-6)?,
            })
        };
        let levels = [
            level("p3", in_dim, 4 * width)?,
            level("p4", in_dim, width)?,
            level("p5", 4 * in_dim, width)?,
        ];
        let pixels = (pixel_dim > 0)
            .then(|| init.linear("head.p3.pixels", pixel_dim, 4 * width))
            .transpose()?;
        let depth = tower.max(1);
        let mut build_tower = |prefix: &str, count: usize| {
            (0..count)
                .map(|i| {
                    // The first keeps the name it had when the tower was one convolution, so
                    // that older checkpoints load.
                    let name = match i {
                        0 => format!("head.{prefix}"),
                        i => format!("head.{prefix}{i}"),
                    };
                    Ok((
                        init.conv3x3(&name, width, width)?,
                        init.layer_norm(&format!("{name}_norm"), width, 1e-6)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()
        };
        let tower = build_tower("tower", depth)?;
        let box_tower = build_tower("box_tower", if split_tower { depth } else { 0 })?;
        // Every class starts at probability 0.01 so that the many background locations do
        // not swamp the first steps (FCOS, RetinaNet).
        let prior = -((1.0f64 - 0.01) / 0.01).ln() as f32;
        let cls = init.linear_with_bias("head.cls", width, classes, prior)?;
        let reg = init.linear("head.reg", width, coding.channels())?;
        let ctr = init.linear("head.ctr", width, 1)?;
        Ok(Self {
            inputs,
            levels,
            pixels,
            tower,
            box_tower,
            cls,
            reg,
            ctr,
            coding,
        })
    }

    /// `features` is the backbone's patch map, channels-last `[B, h, w, D]` (h, w even); with
    /// several blocks, their maps concatenated along `D`; with the pixel skip, each patch's
    /// pixels ([`patch_pixels`]) last.
    pub fn forward(&self, features: &Tensor) -> candle_core::Result<HeadOutput> {
        let (features, pixels) = match &self.pixels {
            Some(skip) => {
                let (all, p) = (features.dim(3)?, skip.weight.dim(1)?);
                (
                    features.narrow(3, 0, all - p)?,
                    Some(features.narrow(3, all - p, p)?),
                )
            }
            None => (features.clone(), None),
        };
        let features = &features;
        let normed;
        let features = if self.inputs.is_empty() {
            features
        } else {
            let d = features.dim(3)? / self.inputs.len();
            let parts = self
                .inputs
                .iter()
                .enumerate()
                .map(|(i, norm)| norm.forward(&features.narrow(3, i * d, d)?))
                .collect::<candle_core::Result<Vec<_>>>()?;
            normed = Tensor::cat(&parts, 3)?;
            &normed
        };
        let [p3, p4, p5] = &self.levels;
        let mut fine = p3.proj.forward(features)?;
        if let (Some(skip), Some(pixels)) = (&self.pixels, &pixels) {
            fine = (fine + skip.forward(pixels)?)?;
        }
        let maps = [
            pixel_shuffle2(&fine)?,
            p4.proj.forward(features)?,
            p5.proj.forward(&pixel_unshuffle2(features)?)?,
        ];
        let mut cls = Vec::with_capacity(3);
        let mut reg = Vec::with_capacity(3);
        let mut ctr = Vec::with_capacity(3);
        for (level, x) in [p3, p4, p5].iter().zip(maps) {
            // The towers are shared by all levels and short by default (one convolution): the
            // ViT features already carry global context, and on a CPU the convolutions
            // dominate the head's cost. A frozen backbone leaves more to the head, hence
            // `tower`.
            let x = ops::gelu(&level.norm.forward(&x)?)?;
            let (b, h, w, c) = x.dims4()?;
            let classes = run_tower(&self.tower, &x)?.reshape((b, h * w, c))?;
            let boxes = if self.box_tower.is_empty() {
                classes.clone()
            } else {
                run_tower(&self.box_tower, &x)?.reshape((b, h * w, c))?
            };
            cls.push(self.cls.forward(&classes)?);
            reg.push(self.reg.forward(&boxes)?);
            ctr.push(self.ctr.forward(&boxes)?.squeeze(2)?);
        }
        Ok(HeadOutput {
            class_logits: Tensor::cat(&cls, 1)?,
            boxes: Tensor::cat(&reg, 1)?,
            coding: self.coding,
            centerness: Tensor::cat(&ctr, 1)?,
        })
    }
}

/// Each patch's pixels as channels: `[B, C, H, W]` to channels-last `[B, H/p, W/p, C*p*p]`,
/// channel `(c*p + dy)*p + dx` of patch `(i, j)` holding pixel `(i*p + dy, j*p + dx)` of `c`.
pub fn patch_pixels(x: &Tensor, patch: usize) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (gh, gw) = (h / patch, w / patch);
    x.reshape(vec![b, c, gh, patch, gw, patch])?
        .permute(vec![0, 2, 4, 1, 3, 5])?
        .contiguous()?
        .reshape((b, gh, gw, c * patch * patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn patch_pixels_puts_each_patch_in_its_channels() {
        // Pixel value = 1000c + 100y + x, two patches of 2 per side, two channels.
        let v: Vec<f32> = (0..2)
            .flat_map(|c| {
                (0..4).flat_map(move |y| (0..4).map(move |x| (1000 * c + 100 * y + x) as f32))
            })
            .collect();
        let x = Tensor::from_vec(v, (1, 2, 4, 4), &Device::Cpu).unwrap();
        let p = patch_pixels(&x, 2).unwrap();
        assert_eq!(p.dims(), &[1, 2, 2, 8]);
        let p = p.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, j, c, dy, dx) in [
            (0, 0, 0, 0, 0),
            (1, 0, 1, 1, 0),
            (0, 1, 0, 0, 1),
            (1, 1, 1, 1, 1),
        ] {
            let want = (1000 * c + 100 * (2 * i + dy) + 2 * j + dx) as f32;
            assert_eq!(
                p[(i * 2 + j) * 8 + (c * 2 + dy) * 2 + dx],
                want,
                "patch {i},{j} c{c} {dy},{dx}"
            );
        }
    }

    #[test]
    fn the_pixel_skip_reaches_the_finest_level_alone_and_learns() {
        let dev = Device::Cpu;
        let mut store = ParamStore::new();
        let head = DetectionHead::new(
            &mut store,
            8,
            1,
            12,
            16,
            1,
            false,
            BoxCoding::Exp,
            2,
            0,
            &dev,
        )
        .unwrap();
        // 4x4 patches of 8 feature channels, then 12 pixel channels.
        let features = Tensor::randn(0f32, 1.0, (1, 4, 4, 8), &dev).unwrap();
        let pixels = Tensor::randn(0f32, 1.0, (1, 4, 4, 12), &dev).unwrap();
        let run = |pixels: &Tensor| {
            head.forward(&Tensor::cat(&[&features, pixels], 3).unwrap())
                .unwrap()
        };
        let (a, b) = (run(&pixels), run(&pixels.zeros_like().unwrap()));
        // Level sizes 64 (stride p/2), 16, 4: only the first 64 locations may differ.
        let diff = (a.boxes - b.boxes)
            .unwrap()
            .abs()
            .unwrap()
            .sum(2)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(diff[0][..64].iter().all(|&d| d > 0.0));
        assert!(diff[0][64..].iter().all(|&d| d == 0.0));
        let loss = a.class_logits.sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let skip = store.get("head.p3.pixels.weight").unwrap();
        assert!(magnitude(grads.get(skip.tensor()).unwrap()) > 0.0);
    }

    /// The summed absolute value of a gradient.
    fn magnitude(g: &Tensor) -> f32 {
        g.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn a_split_tower_keeps_the_box_branch_apart_from_the_classes() {
        let dev = Device::Cpu;
        let features = Tensor::randn(0f32, 1.0, (1, 4, 4, 8), &dev).unwrap();
        // Shared: both outputs reach the one tower.
        let mut store = ParamStore::new();
        let head = DetectionHead::new(
            &mut store,
            8,
            1,
            0,
            16,
            2,
            false,
            BoxCoding::Exp,
            2,
            0,
            &dev,
        )
        .unwrap();
        assert!(store.get("head.box_tower.weight").is_none());
        let out = head.forward(&features).unwrap();
        let grads = out.boxes.sum_all().unwrap().backward().unwrap();
        let shared = store.get("head.tower1.weight").unwrap();
        assert!(magnitude(grads.get(shared.tensor()).unwrap()) > 0.0);
        // Split: the boxes and quality train the box tower alone, the classes the other.
        let mut store = ParamStore::new();
        let head = DetectionHead::new(&mut store, 8, 1, 0, 16, 2, true, BoxCoding::Exp, 2, 0, &dev)
            .unwrap();
        let (classes, boxes) = (
            store.get("head.tower1.weight").unwrap(),
            store.get("head.box_tower1.weight").unwrap(),
        );
        assert_eq!(classes.tensor().dims(), boxes.tensor().dims());
        let out = head.forward(&features).unwrap();
        for (output, own, other) in [
            (&out.class_logits, &classes, &boxes),
            (&out.boxes, &boxes, &classes),
            (&out.centerness, &boxes, &classes),
        ] {
            let grads = output.sum_all().unwrap().backward().unwrap();
            assert!(magnitude(grads.get(own.tensor()).unwrap()) > 0.0);
            assert!(grads
                .get(other.tensor())
                .is_none_or(|g| magnitude(g) == 0.0));
        }
    }
}
