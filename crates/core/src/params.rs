//! Parameters of a model: which are trained, which are frozen, and how deep each one sits.
//!
//! Freezing is decided when weights are loaded. A frozen weight is a plain tensor: candle never
//! builds a backward graph through it, so frozen layers cost nothing in the backward pass. A
//! trainable weight is a [`Var`]; the model holds a clone of its tensor, which shares storage,
//! so optimizer updates are seen by the model without any copying.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};

/// How much of a backbone is fine-tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Freeze {
    /// Backbone weights are constants; only what is added on top trains.
    Frozen,
    /// Every backbone weight trains.
    Full,
    /// The last `N` blocks and the final norm train; embeddings and earlier blocks are frozen.
    Partial(usize),
}

impl FromStr for Freeze {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "frozen" => Ok(Self::Frozen),
            "full" => Ok(Self::Full),
            _ => match s.strip_prefix("partial:") {
                Some(n) => Ok(Self::Partial(n.parse().with_context(|| {
                    format!("`{s}`: the N of partial:N must be a whole number")
                })?)),
                None => bail!("unknown fine-tuning mode `{s}`: expected frozen, full or partial:N"),
            },
        }
    }
}

impl TryFrom<String> for Freeze {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Freeze> for String {
    fn from(f: Freeze) -> String {
        f.to_string()
    }
}

impl fmt::Display for Freeze {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Frozen => write!(f, "frozen"),
            Self::Full => write!(f, "full"),
            Self::Partial(n) => write!(f, "partial:{n}"),
        }
    }
}

/// Where a parameter sits in the network, counted from the input.
///
/// For a backbone with `L` blocks: depth 0 is the embeddings, depth `i + 1` is block `i`, and
/// depth `L + 1` is the final norm and anything added after it (task heads). Layer-wise
/// learning-rate decay scales the rate of depth `d` by `decay^(L + 1 - d)`.
pub type Depth = usize;

impl Freeze {
    /// Whether a parameter at `depth` trains, in a backbone of `num_blocks` blocks.
    pub fn trains(self, depth: Depth, num_blocks: usize) -> bool {
        match self {
            Self::Frozen => false,
            Self::Full => true,
            Self::Partial(n) => depth > num_blocks.saturating_sub(n) && depth > 0,
        }
    }

    /// Refuses a `partial:N` that could not train N blocks of a backbone that uses
    /// `num_blocks`: with N above it, fewer blocks would train than asked, silently.
    pub fn check(self, num_blocks: usize) -> Result<()> {
        match self {
            Self::Partial(0) => bail!("partial:0 trains no block: use `frozen`"),
            Self::Partial(n) if n > num_blocks => bail!(
                "partial:{n} asks for {n} trainable blocks, but the backbone uses {num_blocks} \
                 (blocks above the one the head reads are not loaded): use partial:{num_blocks} \
                 or `full`"
            ),
            _ => Ok(()),
        }
    }
}

/// One named parameter.
#[derive(Clone)]
pub struct Param {
    pub name: String,
    pub depth: Depth,
    /// Whether weight decay applies (not to norms, biases, position and class tokens).
    pub decay: bool,
    /// Whether the true gradient is identically zero (an attention key bias: softmax ignores a
    /// shift shared by a whole row), so that gradient checks accept a present gradient that
    /// holds only rounding noise.
    pub zero_grad: bool,
    tensor: Tensor,
    var: Option<Var>,
}

impl Param {
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }
    pub fn var(&self) -> Option<&Var> {
        self.var.as_ref()
    }
    pub fn trainable(&self) -> bool {
        self.var.is_some()
    }
}

impl fmt::Debug for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} depth={} {}",
            self.name,
            self.tensor.dims(),
            self.depth,
            if self.trainable() {
                "trainable"
            } else {
                "frozen"
            }
        )
    }
}

/// Whether weight decay is due for a parameter of this name and rank.
///
/// Decay is skipped for anything one-dimensional (biases, norm scales, layer scales) and for
/// learned position and class tokens, as in BEiT, ViTDet and the Hugging Face Trainer.
pub fn decay_applies(name: &str, rank: usize) -> bool {
    rank > 1
        && !name.contains("position_embeddings")
        && !name.contains("cls_token")
        && !name.contains("mask_token")
        && !name.to_ascii_lowercase().contains("norm")
}

/// All parameters of a model, in a stable (name) order.
#[derive(Default, Clone)]
pub struct ParamStore {
    params: BTreeMap<String, Param>,
    /// The depth of the final norm and of heads (`L + 1`); 0 while no backbone is loaded.
    pub top_depth: Depth,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a parameter; it trains if `trainable`.
    pub fn insert(
        &mut self,
        name: &str,
        tensor: Tensor,
        depth: Depth,
        trainable: bool,
    ) -> Result<Tensor> {
        if self.params.contains_key(name) {
            bail!("parameter `{name}` is defined twice");
        }
        // Detached first, so that a tensor that is already some model's variable (a warm
        // start copying one layer into another) becomes a new variable, not a shared one.
        let tensor = tensor.to_dtype(DType::F32)?.detach();
        let (tensor, var) = if trainable {
            let var = Var::from_tensor(&tensor)?;
            (var.as_tensor().clone(), Some(var))
        } else {
            (tensor.detach(), None)
        };
        let param = Param {
            name: name.to_string(),
            depth,
            decay: decay_applies(name, tensor.rank()),
            zero_grad: false,
            tensor: tensor.clone(),
            var,
        };
        self.params.insert(name.to_string(), param);
        Ok(tensor)
    }

    pub fn get(&self, name: &str) -> Option<&Param> {
        self.params.get(name)
    }

    /// Declares that `name`'s true gradient is identically zero (see [`Param::zero_grad`]).
    pub fn mark_zero_grad(&mut self, name: &str) -> Result<()> {
        match self.params.get_mut(name) {
            Some(p) => {
                p.zero_grad = true;
                Ok(())
            }
            None => bail!("no parameter `{name}` to mark"),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.params.values()
    }

    pub fn trainable(&self) -> impl Iterator<Item = &Param> {
        self.params.values().filter(|p| p.trainable())
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Where the parameters live (the CPU for an empty store).
    pub fn device(&self) -> candle_core::Device {
        self.iter()
            .next()
            .map(|p| p.tensor.device().clone())
            .unwrap_or(candle_core::Device::Cpu)
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Number of scalars, trainable and in all.
    pub fn counts(&self) -> (usize, usize) {
        let total = self.iter().map(|p| p.tensor.elem_count()).sum();
        let trainable = self.trainable().map(|p| p.tensor.elem_count()).sum();
        (trainable, total)
    }

    /// Writes every parameter (trainable or not) to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self
            .iter()
            .map(|p| (p.name.clone(), p.tensor.clone()))
            .collect();
        candle_core::safetensors::save(&tensors.into_iter().collect(), path)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Tensors read from one or more safetensors files, with a name prefix stripped if present;
/// or, for a layer built new, made on demand with Hugging Face's initialisation
/// ([`WeightFile::fresh`]). Both go through [`WeightFile::take`], so one loading path builds a
/// layer from pretrained weights, from fresh ones, or from a mix (a warm start that copies
/// some tensors and initialises the rest).
pub struct WeightFile {
    tensors: std::collections::HashMap<String, Tensor>,
    path: String,
    /// Seed and device of tensors made on demand, by name, when absent.
    fresh: Option<(u64, Device)>,
}

/// Values as Hugging Face initialises a new model, by what the name says the tensor is: biases
/// zero; norm scales and layer scales one; matrices, embeddings and tokens from N(0, 0.02)
/// truncated at two standard deviations.
fn initial_values(name: &str, n: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
    use rand::Rng;
    let last = name.rsplit('.').next().unwrap_or_default();
    let is_norm = name.contains("norm") || name.contains("LayerNorm");
    if last == "bias" || last == "beta" {
        vec![0.0; n]
    } else if (is_norm && (last == "weight" || last == "gamma")) || last == "lambda1" {
        vec![1.0; n]
    } else {
        (0..n)
            .map(|_| loop {
                // Box-Muller, redrawn beyond two standard deviations.
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                if z.abs() <= 2.0 {
                    break (0.02 * z) as f32;
                }
            })
            .collect()
    }
}

impl WeightFile {
    /// Loads every tensor of `path` to `device`; names starting with one of `strip_prefixes`
    /// lose that prefix (checkpoints saved from a task model carry e.g. `bert.`).
    pub fn load(path: &Path, strip_prefixes: &[&str], device: &Device) -> Result<Self> {
        let raw = candle_core::safetensors::load(path, device)
            .with_context(|| format!("reading weights from {}", path.display()))?;
        let prefix = strip_prefixes
            .iter()
            .find(|p| raw.keys().any(|k| k.starts_with(*p)));
        let tensors = raw
            .into_iter()
            .map(|(k, v)| match prefix.and_then(|p| k.strip_prefix(p)) {
                Some(stripped) => (stripped.to_string(), v),
                None => (k, v),
            })
            .collect();
        Ok(Self {
            tensors,
            path: path.display().to_string(),
            fresh: None,
        })
    }

    /// No stored tensors: each one asked for is made new ([`initial_values`]), seeded by
    /// `seed` and a stable hash of its name, so that the values do not depend on the order in
    /// which a model asks for its tensors. [`WeightFile::insert`] adds tensors to copy instead.
    pub fn fresh(seed: u64, device: &Device) -> Self {
        Self {
            tensors: Default::default(),
            path: "a new layer".into(),
            fresh: Some((seed, device.clone())),
        }
    }

    /// Adds (or replaces) a stored tensor.
    pub fn insert(&mut self, name: &str, tensor: Tensor) {
        self.tensors.insert(name.to_string(), tensor);
    }

    /// The same names and shapes with fresh values, as Hugging Face initialises a new model
    /// ([`initial_values`]). For from-scratch baselines.
    pub fn randomized(self, seed: u64) -> Result<Self> {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut names: Vec<String> = self.tensors.keys().cloned().collect();
        names.sort();
        let mut tensors = std::collections::HashMap::new();
        for name in names {
            let t = &self.tensors[&name];
            let values = initial_values(&name, t.elem_count(), &mut rng);
            let fresh = if t.dtype().is_int() {
                t.clone()
            } else {
                Tensor::from_vec(values, t.shape(), t.device())?
            };
            tensors.insert(name, fresh);
        }
        Ok(Self {
            tensors,
            path: format!("{} (randomly initialised)", self.path),
            fresh: None,
        })
    }

    /// The tensor `name`, checked to have `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = match (self.tensors.remove(name), &self.fresh) {
            (Some(t), _) => t,
            (None, Some((seed, device))) => {
                use rand::SeedableRng;
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                    seed ^ crate::hash::fnv1a64(name.as_bytes()),
                );
                let n = shape.iter().product();
                return Ok(Tensor::from_vec(
                    initial_values(name, n, &mut rng),
                    shape,
                    device,
                )?);
            }
            (None, None) => bail!("{}: tensor `{name}` is missing", self.path),
        };
        if t.dims() != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, expected {:?}",
                self.path,
                t.dims(),
                shape
            );
        }
        Ok(t)
    }

    /// The first of `names` that exists (old BERT checkpoints say `gamma`/`beta` for norms).
    pub fn take_any(&mut self, names: &[String], shape: &[usize]) -> Result<(String, Tensor)> {
        for n in names {
            if self.tensors.contains_key(n) {
                return Ok((n.clone(), self.take(n, shape)?));
            }
        }
        if let (Some(first), Some(_)) = (names.first(), &self.fresh) {
            return Ok((first.clone(), self.take(first, shape)?));
        }
        bail!("{}: none of the tensors {:?} is present", self.path, names)
    }

    /// Whether `name` is stored (a fresh file makes any name, but stores only those inserted).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn hostile_weight_files_load_or_fail_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ParamStore::new();
        for (name, n) in [("embeddings.weight", 12), ("encoder.layer.0.bias", 4)] {
            let t = Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap();
            store
                .insert(name, t.to_dtype(DType::F32).unwrap(), 0, true)
                .unwrap();
        }
        let path = dir.path().join("model.safetensors");
        store.save(&path).unwrap();
        let valid = std::fs::read(&path).unwrap();
        crate::faults::mutate::never_panics(
            "weights",
            "model.safetensors",
            &valid,
            61,
            300,
            |p: &Path| WeightFile::load(p, &["bert."], &Device::Cpu).map(|w| w.tensors.len()),
        );
    }
}
