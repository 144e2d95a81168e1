//! An exponential moving average of the trainable weights (Polyak averaging), evaluated and
//! kept in place of the weights themselves.
//!
//! On a small data set each step's weights carry the noise of its few examples, and the
//! best checkpoint is picked among evaluations that differ by that noise: the average over the
//! last hundred or so steps is a steadier model (detectors such as YOLOX and the timm image
//! models train with one). The decay ramps up as `min(decay, (1 + t) / (10 + t))` after `t`
//! updates, so that the first steps' random head does not dominate a short run's average.
//!
//! Training itself never sees the average: the optimizer steps the raw weights. An evaluation
//! swaps the average in, evaluates and saves the best checkpoint from it, and swaps the raw
//! weights back; the last checkpoint holds both (`ema.NAME` beside `param.NAME`), so that a
//! resumed run continues exactly.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use crate::params::ParamStore;

pub struct Ema {
    decay: f64,
    /// Updates averaged so far.
    updates: u64,
    /// The average of each trainable parameter, in the store's order.
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// An average starting at the current weights.
    pub fn new(params: &ParamStore, decay: f64) -> Result<Self> {
        if !(decay > 0.0 && decay < 1.0) {
            bail!("ema must be a decay in (0, 1), got {decay}");
        }
        let shadow = params
            .trainable()
            // A copy: the parameter's own storage changes in place at every step.
            .map(|p| Ok((p.name.clone(), p.tensor().detach().copy()?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            decay,
            updates: 0,
            shadow,
        })
    }

    /// The weight the average keeps at the next update.
    pub fn current_decay(&self) -> f64 {
        let t = self.updates as f64;
        self.decay.min((1.0 + t) / (10.0 + t))
    }

    /// Folds the weights after an optimizer step into the average.
    pub fn update(&mut self, params: &ParamStore) -> Result<()> {
        let d = self.current_decay();
        for (name, avg) in &mut self.shadow {
            let p = param(params, name)?.tensor().detach();
            *avg = ((&*avg * d)? + (p * (1.0 - d))?)?.detach();
        }
        self.updates += 1;
        Ok(())
    }

    /// Runs `f` with the averaged weights in the parameters, then puts the raw ones back
    /// (also when `f` fails).
    pub fn with_averaged<R>(
        &self,
        params: &ParamStore,
        f: impl FnOnce() -> Result<R>,
    ) -> Result<R> {
        let mut raw = Vec::with_capacity(self.shadow.len());
        for (name, avg) in &self.shadow {
            let var = var(params, name)?;
            raw.push(var.as_tensor().detach().copy()?);
            var.set(avg)?;
        }
        let out = f();
        for ((name, _), w) in self.shadow.iter().zip(&raw) {
            var(params, name)?.set(w)?;
        }
        out
    }

    /// The average as named tensors (`ema.NAME`) and the update count, for a checkpoint.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out: Vec<(String, Tensor)> = self
            .shadow
            .iter()
            .map(|(n, t)| (format!("ema.{n}"), t.clone()))
            .collect();
        let updates = Tensor::new(&[self.updates as f64], &candle_core::Device::Cpu)?;
        out.push((UPDATES_KEY.to_string(), updates));
        Ok(out)
    }

    /// Restores an average saved by [`Ema::state`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let missing = "the checkpoint has no weight average (`ema.*`): the run was started \
                       without `ema`";
        let updates = tensors.get(UPDATES_KEY).context(missing)?;
        self.updates = updates
            .to_dtype(candle_core::DType::F64)?
            .to_vec1::<f64>()?
            .first()
            .copied()
            .context(missing)? as u64;
        for (name, avg) in &mut self.shadow {
            let key = format!("ema.{name}");
            let t = tensors
                .get(&key)
                .with_context(|| format!("{missing}: no `{key}`"))?;
            if t.dims() != avg.dims() {
                bail!(
                    "`{key}` has shape {:?}, the parameter {:?}",
                    t.dims(),
                    avg.dims()
                );
            }
            *avg = t.to_device(avg.device())?.to_dtype(avg.dtype())?;
        }
        Ok(())
    }
}

const UPDATES_KEY: &str = "ema_updates";

fn param<'a>(params: &'a ParamStore, name: &str) -> Result<&'a crate::params::Param> {
    params
        .get(name)
        .with_context(|| format!("the weight average has `{name}`, the model does not"))
}

fn var<'a>(params: &'a ParamStore, name: &str) -> Result<&'a candle_core::Var> {
    param(params, name)?
        .var()
        .with_context(|| format!("`{name}` is averaged but does not train"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn store(w: &[f32]) -> ParamStore {
        let mut s = ParamStore::new();
        s.insert("w", Tensor::new(w, &Device::Cpu).unwrap(), 0, true)
            .unwrap();
        s.insert(
            "frozen",
            Tensor::new(&[9f32], &Device::Cpu).unwrap(),
            0,
            false,
        )
        .unwrap();
        s
    }

    fn values(s: &ParamStore) -> Vec<f32> {
        s.get("w").unwrap().tensor().to_vec1().unwrap()
    }

    #[test]
    fn the_average_follows_the_ramped_decay_and_swaps_in_and_back() {
        let params = store(&[0.0, 10.0]);
        let mut ema = Ema::new(&params, 0.5).unwrap();
        let var = params.get("w").unwrap().var().unwrap().clone();
        // Update 0 keeps 1/10 of the average, update 1 2/11, from update 8 on the decay 0.5.
        var.set(&Tensor::new(&[10f32, 0.0], &Device::Cpu).unwrap())
            .unwrap();
        ema.update(&params).unwrap();
        let want = [9.0f32, 1.0];
        var.set(&Tensor::new(&[20f32, 20.0], &Device::Cpu).unwrap())
            .unwrap();
        ema.update(&params).unwrap();
        let want = want.map(|a| a * 2.0 / 11.0 + 20.0 * 9.0 / 11.0);
        ema.updates = 8;
        assert_eq!(ema.current_decay(), 0.5);
        let seen = ema.with_averaged(&params, || Ok(values(&params))).unwrap();
        for (s, w) in seen.iter().zip(want) {
            assert!((s - w).abs() < 1e-5, "{seen:?} against {want:?}");
        }
        assert_eq!(values(&params), [20.0, 20.0], "the raw weights are back");
        // Back also after a failure inside.
        let err = ema.with_averaged(&params, || -> Result<()> { bail!("inside") });
        assert!(err.is_err());
        assert_eq!(values(&params), [20.0, 20.0]);
    }

    #[test]
    fn the_state_round_trips_and_a_checkpoint_without_it_is_an_error() {
        let params = store(&[1.0, 2.0]);
        let mut ema = Ema::new(&params, 0.9).unwrap();
        params
            .get("w")
            .unwrap()
            .var()
            .unwrap()
            .set(&Tensor::new(&[3f32, 5.0], &Device::Cpu).unwrap())
            .unwrap();
        ema.update(&params).unwrap();
        ema.update(&params).unwrap();
        let saved: HashMap<String, Tensor> = ema.state().unwrap().into_iter().collect();
        assert!(!saved.contains_key("ema.frozen"), "only what trains");
        let mut back = Ema::new(&params, 0.9).unwrap();
        back.load_state(&saved).unwrap();
        assert_eq!(back.updates, 2);
        assert_eq!(
            back.shadow[0].1.to_vec1::<f32>().unwrap(),
            ema.shadow[0].1.to_vec1::<f32>().unwrap()
        );
        let err = back.load_state(&HashMap::new()).unwrap_err().to_string();
        assert!(err.contains("without `ema`"), "{err}");
        assert!(Ema::new(&params, 1.0).is_err() && Ema::new(&params, 0.0).is_err());
    }
}
