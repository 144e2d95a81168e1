//! Checks that training reaches every parameter it should.
//!
//! A model whose backward pass stops early (an op without a backward, a detached tensor) still
//! trains the parameters after the break, so the loss still falls and nothing looks wrong.
//! [`coverage`] makes that failure loud.

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;

use crate::params::ParamStore;

/// Per-parameter gradient health after one backward pass.
#[derive(Debug, Default)]
pub struct Coverage {
    pub ok: Vec<String>,
    pub missing: Vec<String>,
    pub zero: Vec<String>,
    pub non_finite: Vec<String>,
}

impl Coverage {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.zero.is_empty() && self.non_finite.is_empty()
    }
}

/// Classifies every trainable parameter of `params` by the gradient `grads` holds for it.
pub fn coverage(params: &ParamStore, grads: &GradStore) -> Result<Coverage> {
    let mut c = Coverage::default();
    for p in params.trainable() {
        let var = p.var().expect("trainable");
        match grads.get(var.as_tensor()) {
            None => c.missing.push(p.name.clone()),
            Some(g) => {
                let v: Vec<f32> = g
                    .flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?;
                if v.iter().any(|x| !x.is_finite()) {
                    c.non_finite.push(p.name.clone());
                } else if v.iter().all(|&x| x == 0.0) {
                    c.zero.push(p.name.clone());
                } else {
                    c.ok.push(p.name.clone());
                }
            }
        }
    }
    Ok(c)
}

/// Fails unless every trainable parameter has a finite, non-zero gradient.
pub fn assert_full_coverage(params: &ParamStore, grads: &GradStore) -> Result<()> {
    let c = coverage(params, grads)?;
    if !c.is_complete() {
        bail!(
            "gradient coverage incomplete: {} ok, missing {:?}, all-zero {:?}, non-finite {:?}",
            c.ok.len(),
            c.missing,
            c.zero,
            c.non_finite
        );
    }
    Ok(())
}
