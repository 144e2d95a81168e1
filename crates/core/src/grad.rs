//! Checks that training reaches every parameter it should.
//!
//! A model whose backward pass stops early (an op without a backward, a detached tensor, a
//! head that reads a block below parameters still loaded as trainable) still trains the
//! parameters after the break, so the loss still falls and nothing looks wrong. The optimizer
//! refuses a step in which a trainable parameter has no gradient; [`coverage`] classifies
//! every parameter after one backward pass, and [`check_task`] runs one step of any
//! [`Task`] and fails naming what the loss does not reach, for each task crate's tests.

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

use crate::params::{Param, ParamStore};
use crate::train::optimizer::Grads;
use crate::train::trainer::batch_gradients;
use crate::train::{Dataset, Task};

/// A gradient whose true value is zero (see [`Param::zero_grad`]) may hold rounding noise up
/// to this fraction of the model's largest gradient entry; more means the model is wrong.
const ZERO_GRAD_NOISE: f32 = 1e-4;

/// Per-parameter gradient health after one backward pass.
#[derive(Debug, Default)]
pub struct Coverage {
    pub ok: Vec<String>,
    /// Trainable, but no gradient reached it.
    pub missing: Vec<String>,
    /// A gradient of exact zeros where the true gradient is not identically zero.
    pub zero: Vec<String>,
    pub non_finite: Vec<String>,
    /// Declared identically zero, yet holding more than rounding noise.
    pub not_zero: Vec<String>,
}

impl Coverage {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
            && self.zero.is_empty()
            && self.non_finite.is_empty()
            && self.not_zero.is_empty()
    }

    /// Fails with every incomplete class named.
    pub fn ensure_complete(self) -> Result<Self> {
        if !self.is_complete() {
            let list =
                |v: &Vec<String>| name_list(&v.iter().map(String::as_str).collect::<Vec<_>>());
            bail!(
                "gradient coverage incomplete ({} parameters fine): no gradient: [{}]; all zero: \
                 [{}]; not finite: [{}]; should be zero but are not: [{}]",
                self.ok.len(),
                list(&self.missing),
                list(&self.zero),
                list(&self.non_finite),
                list(&self.not_zero)
            );
        }
        Ok(self)
    }
}

/// Names for a message: all of them when few, else the first ones and a count.
pub fn name_list(names: &[&str]) -> String {
    const SHOWN: usize = 12;
    let mut text = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

fn classify<'a>(
    params: &'a ParamStore,
    grad_of: impl Fn(&Param) -> Option<&'a Tensor>,
) -> Result<Coverage> {
    let mut found = Vec::new();
    for p in params.trainable() {
        let values = match grad_of(p) {
            Some(g) => Some(g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        found.push((p, values));
    }
    let largest = found
        .iter()
        .filter_map(|(_, v)| v.as_ref())
        .flatten()
        .filter(|x| x.is_finite())
        .fold(0f32, |m, x| m.max(x.abs()));
    let mut c = Coverage::default();
    for (p, values) in found {
        let name = p.name.clone();
        match values {
            None => c.missing.push(name),
            Some(v) if v.iter().any(|x| !x.is_finite()) => c.non_finite.push(name),
            Some(v) if p.zero_grad => {
                let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
                if max <= ZERO_GRAD_NOISE * largest {
                    c.ok.push(name);
                } else {
                    c.not_zero.push(name);
                }
            }
            Some(v) if v.iter().all(|&x| x == 0.0) => c.zero.push(name),
            Some(_) => c.ok.push(name),
        }
    }
    Ok(c)
}

/// Classifies every trainable parameter of `params` by the gradient a backward pass gave it.
pub fn coverage(params: &ParamStore, grads: &GradStore) -> Result<Coverage> {
    classify(params, |p| {
        grads.get(p.var().expect("trainable").as_tensor())
    })
}

/// [`coverage`] of gradients summed by the engine.
pub fn coverage_of(params: &ParamStore, grads: &Grads) -> Result<Coverage> {
    classify(params, |p| grads.get(&p.name))
}

/// Fails unless every trainable parameter has a finite gradient, non-zero unless its true
/// gradient is identically zero.
pub fn assert_full_coverage(params: &ParamStore, grads: &GradStore) -> Result<()> {
    coverage(params, grads)?.ensure_complete().map(|_| ())
}

/// Runs one training step's forward and backward pass of `task` on the first `batch` examples
/// of `data` (unaugmented, no feature cache) and fails naming every trainable parameter the
/// loss does not reach. Each task crate's tests call this for every fine-tuning mode.
pub fn check_task<T, D>(task: &T, data: &D, batch: usize) -> Result<Coverage>
where
    T: Task,
    D: Dataset<Input = T::Input, Target = T::Target>,
{
    let n = batch.min(data.len());
    if n == 0 {
        bail!("check_task needs at least one example");
    }
    let keys: Vec<(usize, u64)> = (0..n).map(|i| (i, 0)).collect();
    let mut inputs = keys
        .iter()
        .map(|&(i, v)| data.input(i, v).map(Some))
        .collect::<Result<Vec<_>>>()?;
    let targets = keys
        .iter()
        .map(|&(i, v)| data.target(i, v))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&T::Target> = targets.iter().collect();
    let (_, grads) = batch_gradients(task, None, &keys, &mut inputs, &refs, n, 0, 0)?;
    coverage_of(task.params(), &grads)?.ensure_complete()
}
