//! AdamW with parameter groups (layer-wise learning-rate decay, weight decay only where due),
//! gradient accumulation and clipping, and a state that checkpoints can save and restore
//! (candle's own AdamW exposes none).

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::params::{Depth, ParamStore};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only (see [`crate::params::decay_applies`]).
    pub weight_decay: f64,
    /// Each block's rate is the one above it times this factor (1.0: no decay).
    pub layer_decay: f64,
    /// Every parameter below the top depth (the backbone, bar its final norm) learns at this
    /// multiple of the head's rate, on top of `layer_decay`: a new head needs a rate that
    /// would wreck pretrained weights.
    pub backbone_lr_scale: f64,
}

/// The defaults are the recipe that works for fine-tuning a pretrained backbone with a new
/// head: the backbone at 0.05 times the head's rate, each block below at 0.8 times the one
/// above. At the head's own rate, full fine-tuning wrecked the pretrained weights: on a small
/// real detection set (21 microscopy crops, 175 boxes) it scored below training from random
/// weights (AP50 0.782 against 0.793, and 0.893 with this recipe). A backbone trained from
/// random weights wants a larger share (`backbone_lr_scale` 0.25 to 1).
impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
            layer_decay: 0.8,
            backbone_lr_scale: 0.05,
        }
    }
}

/// The learning-rate multiplier of a parameter at `depth` when the top (final norm and
/// heads) is `top`: `decay^(top - depth)`, as in BEiT and ViTDet fine-tuning.
pub fn layer_scale(depth: Depth, top: Depth, decay: f64) -> f64 {
    decay.powi(top.saturating_sub(depth) as i32)
}

/// A parameter's learning-rate multiplier under `config`.
pub fn lr_scale(depth: Depth, top: Depth, config: &AdamWConfig) -> f64 {
    let below_top = if depth < top {
        config.backbone_lr_scale
    } else {
        1.0
    };
    layer_scale(depth, top, config.layer_decay) * below_top
}

/// Summed gradients of the trainable parameters, by name.
#[derive(Default)]
pub struct Grads {
    by_name: BTreeMap<String, Tensor>,
}

impl Grads {
    /// Adds the gradients one backward pass produced for `params`' trainable parameters.
    pub fn accumulate(&mut self, params: &ParamStore, store: &GradStore) -> Result<()> {
        for p in params.trainable() {
            let var = p.var().expect("trainable");
            let Some(g) = store.get(var.as_tensor()) else {
                continue;
            };
            let g = g.detach();
            let sum = match self.by_name.remove(&p.name) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            self.by_name.insert(p.name.clone(), sum);
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.by_name.get(name)
    }

    /// Sets the gradient of parameter `name` (a test or a benchmark with gradients of its own).
    pub fn insert(&mut self, name: &str, grad: Tensor) {
        self.by_name.insert(name.to_string(), grad);
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The L2 norm of all gradients together.
    pub fn global_norm(&self) -> Result<f64> {
        let mut total = 0f64;
        for g in self.by_name.values() {
            total += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
        Ok(total.sqrt())
    }

    /// Scales all gradients so their global norm is at most `max_norm`, as PyTorch's
    /// `clip_grad_norm_` does; returns the norm before clipping.
    pub fn clip(&mut self, max_norm: f64) -> Result<f64> {
        let norm = self.global_norm()?;
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in self.by_name.values_mut() {
                *g = (&*g * coef)?;
            }
        }
        Ok(norm)
    }
}

struct Slot {
    name: String,
    var: Var,
    lr_scale: f64,
    weight_decay: f64,
    m: Tensor,
    v: Tensor,
}

/// Per-parameter settings, for inspection.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub name: String,
    pub lr_scale: f64,
    pub weight_decay: f64,
}

pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    /// Updates applied so far.
    step: u64,
}

impl AdamW {
    /// An optimizer over every trainable parameter of `params`.
    pub fn new(params: &ParamStore, config: AdamWConfig) -> Result<Self> {
        let top = params.top_depth;
        let mut slots = Vec::new();
        for p in params.trainable() {
            let var = p.var().expect("trainable").clone();
            slots.push(Slot {
                name: p.name.clone(),
                lr_scale: lr_scale(p.depth, top, &config),
                weight_decay: if p.decay { config.weight_decay } else { 0.0 },
                m: var.as_tensor().zeros_like()?,
                v: var.as_tensor().zeros_like()?,
                var,
            });
        }
        if slots.is_empty() {
            bail!("nothing to train: every parameter is frozen");
        }
        Ok(Self {
            config,
            slots,
            step: 0,
        })
    }

    pub fn groups(&self) -> Vec<Group> {
        self.slots
            .iter()
            .map(|s| Group {
                name: s.name.clone(),
                lr_scale: s.lr_scale,
                weight_decay: s.weight_decay,
            })
            .collect()
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// One update at base rate `lr`, in PyTorch's AdamW order: decay, moments, bias-corrected
    /// step. Every trainable parameter must have a gradient: one without would silently stay
    /// at its initial value while the run claims to train it.
    pub fn step(&mut self, grads: &Grads, lr: f64) -> Result<()> {
        let missing: Vec<&str> = self
            .slots
            .iter()
            .filter(|s| grads.get(&s.name).is_none())
            .map(|s| s.name.as_str())
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} of {} trainable parameters received no gradient: the loss does not reach \
                 {}. Freeze them, or do not load them (a head that reads an intermediate block \
                 loads nothing above it)",
                missing.len(),
                self.slots.len(),
                crate::grad::name_list(&missing)
            );
        }
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for s in &mut self.slots {
            let g = grads.get(&s.name).expect("checked above");
            let lr = lr * s.lr_scale;
            let mut p = s.var.as_tensor().detach();
            if s.weight_decay != 0.0 {
                p = (p * (1.0 - lr * s.weight_decay))?;
            }
            s.m = ((&s.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            s.v = ((&s.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((s.v.sqrt()? / bc2.sqrt())? + c.eps)?;
            let update = (s.m.div(&denom)? * (lr / bc1))?;
            s.var.set(&(p - update)?)?;
        }
        Ok(())
    }

    /// Moments as named tensors (`adamw.m.NAME`, `adamw.v.NAME`), for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            out.push((format!("adamw.m.{}", s.name), s.m.clone()));
            out.push((format!("adamw.v.{}", s.name), s.v.clone()));
        }
        out
    }

    /// Restores moments and the step count saved by [`AdamW::state`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for s in &mut self.slots {
            for (kind, slot) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("adamw.{kind}.{}", s.name);
                let t = tensors
                    .get(&key)
                    .with_context(|| format!("checkpoint has no optimizer state `{key}`"))?;
                if t.dims() != slot.dims() {
                    bail!(
                        "optimizer state `{key}` has shape {:?}, the parameter {:?}",
                        t.dims(),
                        slot.dims()
                    );
                }
                *slot = t.to_device(slot.device())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn three_steps_match_pytorch_adamw() {
        // torch.optim.AdamW, betas (0.9, 0.999), eps 1e-8; the matrix with lr 0.1 and weight
        // decay 0.1, the bias with lr 0.05 and none. Values printed by torch 2.15.
        let dev = Device::Cpu;
        let mut params = ParamStore::new();
        params.top_depth = 1;
        let w = Tensor::new(&[[1.0f32, -2.0], [0.5, 3.0]], &dev).unwrap();
        let b = Tensor::new(&[0.25f32, -0.75], &dev).unwrap();
        params.insert("layer.weight", w, 1, true).unwrap();
        params.insert("layer.bias", b, 0, true).unwrap();
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            layer_decay: 0.5,
            backbone_lr_scale: 1.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(&params, cfg).unwrap();
        let steps = [
            ([[0.5f32, 0.1], [-0.3, 2.0]], [1.0f32, -0.2]),
            ([[-0.5, 0.4], [0.0, 1.0]], [0.3, 0.3]),
            ([[0.2, 0.2], [0.7, -1.0]], [-1.0, 0.1]),
        ];
        for (gw, gb) in steps {
            let mut grads = Grads::default();
            grads
                .by_name
                .insert("layer.weight".into(), Tensor::new(&gw, &dev).unwrap());
            grads
                .by_name
                .insert("layer.bias".into(), Tensor::new(&gb, &dev).unwrap());
            opt.step(&grads, 0.1).unwrap();
        }
        let got_w: Vec<Vec<f32>> = params
            .get("layer.weight")
            .unwrap()
            .tensor()
            .to_vec2()
            .unwrap();
        let got_b: Vec<f32> = params
            .get("layer.bias")
            .unwrap()
            .tensor()
            .to_vec1()
            .unwrap();
        let want_w = [[0.8640158f32, -2.2155554], [0.611156, 2.680931]];
        let want_b = [0.15544675f32, -0.7301518];
        for i in 0..2 {
            assert!((got_b[i] - want_b[i]).abs() < 1e-6, "bias {got_b:?}");
            for j in 0..2 {
                assert!(
                    (got_w[i][j] - want_w[i][j]).abs() < 1e-6,
                    "weight {got_w:?}"
                );
            }
        }
        assert_eq!(opt.steps_taken(), 3);
    }

    #[test]
    fn the_default_is_the_fine_tuning_recipe() {
        let c = AdamWConfig::default();
        assert_eq!((c.backbone_lr_scale, c.layer_decay), (0.05, 0.8));
        // The block just below the head learns at 0.05 x 0.8 of the head's rate.
        assert!((lr_scale(12, 13, &c) - 0.04).abs() < 1e-12);
        assert_eq!(lr_scale(13, 13, &c), 1.0);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let dev = Device::Cpu;
        let mut grads = Grads::default();
        grads
            .by_name
            .insert("a".into(), Tensor::new(&[3.0f32, 0.0], &dev).unwrap());
        grads
            .by_name
            .insert("b".into(), Tensor::new(&[4.0f32], &dev).unwrap());
        let before = grads.clip(1.0).unwrap();
        assert!((before - 5.0).abs() < 1e-9);
        assert!((grads.global_norm().unwrap() - 1.0).abs() < 1e-5);
        // Under the limit nothing changes.
        assert!((grads.clip(10.0).unwrap() - grads.global_norm().unwrap()).abs() < 1e-12);
    }
}
