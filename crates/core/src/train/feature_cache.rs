//! Frozen-backbone feature cache.
//!
//! With the backbone frozen, its output for a given input never changes, so each distinct
//! input view goes through it once; later epochs cost only the head. Features are kept in
//! memory, or on disk under the run folder when a data set's features would not fit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::rng::{self, Phase};
use super::task::{Features, Task};

/// Where cached features live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CacheKind {
    /// In memory, for the length of the run.
    #[default]
    Memory,
    /// As files under the run folder; they also survive a resume.
    Disk,
    /// No caching: every epoch runs the backbone again.
    Off,
}

/// A key: (example index, augmentation view).
pub type Key = (usize, u64);

pub struct FeatureCache {
    kind: CacheKind,
    dir: Option<PathBuf>,
    memory: Mutex<HashMap<Key, Features>>,
    device: Device,
    /// Examples that went through the backbone, whether cached or not.
    encoded: AtomicUsize,
}

impl FeatureCache {
    /// A cache of `kind`; `dir` is used for [`CacheKind::Disk`] and emptied on a fresh start.
    pub fn new(kind: CacheKind, dir: PathBuf, fresh: bool, device: &Device) -> Result<Self> {
        let dir = if kind == CacheKind::Disk {
            if fresh && dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("clearing {}", dir.display()))?;
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Some(dir)
        } else {
            None
        };
        Ok(Self {
            kind,
            dir,
            memory: Mutex::new(HashMap::new()),
            device: device.clone(),
            encoded: AtomicUsize::new(0),
        })
    }

    pub fn kind(&self) -> CacheKind {
        self.kind
    }

    fn file(&self, key: Key) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{}-{}.safetensors", key.0, key.1)))
    }

    pub fn contains(&self, key: Key) -> bool {
        match self.kind {
            CacheKind::Memory => self.memory.lock().expect("cache lock").contains_key(&key),
            CacheKind::Disk => self.file(key).is_some_and(|f| f.is_file()),
            CacheKind::Off => false,
        }
    }

    pub fn get(&self, key: Key) -> Result<Option<Features>> {
        match self.kind {
            CacheKind::Memory => Ok(self.memory.lock().expect("cache lock").get(&key).cloned()),
            CacheKind::Disk => {
                let file = self.file(key).expect("disk cache has a folder");
                if !file.is_file() {
                    return Ok(None);
                }
                let mut t = candle_core::safetensors::load(&file, &self.device)
                    .with_context(|| format!("reading cached features {}", file.display()))?;
                (0..t.len())
                    .map(|i| {
                        t.remove(&i.to_string())
                            .with_context(|| format!("{}: no tensor {i}", file.display()))
                    })
                    .collect::<Result<Features>>()
                    .map(Some)
            }
            CacheKind::Off => Ok(None),
        }
    }

    pub fn put(&self, key: Key, features: &Features) -> Result<()> {
        match self.kind {
            CacheKind::Memory => {
                self.memory
                    .lock()
                    .expect("cache lock")
                    .insert(key, features.iter().map(Tensor::detach).collect());
            }
            CacheKind::Disk => {
                let file = self.file(key).expect("disk cache has a folder");
                let named: Vec<(String, &Tensor)> = features
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (i.to_string(), t))
                    .collect();
                let bytes = safetensors::serialize(named, None).context("serialising features")?;
                crate::atomic::write(&file, &bytes)?;
            }
            CacheKind::Off => {}
        }
        Ok(())
    }

    /// Records that `n` examples went through the backbone.
    pub fn count_encoded(&self, n: usize) {
        self.encoded.fetch_add(n, Ordering::Relaxed);
    }

    pub fn encoded(&self) -> usize {
        self.encoded.load(Ordering::Relaxed)
    }
}

/// Backbone features for `keys`: from the cache where present, otherwise by running the
/// backbone on the inputs (and caching them when the cache keeps anything). `training` names
/// the run's seed and step when this is a training step of a backbone that trains, so that
/// its dropout drops; a frozen backbone, like inference, runs without.
pub fn features_for<T: Task>(
    task: &T,
    cache: Option<&FeatureCache>,
    keys: &[Key],
    inputs: &mut [Option<T::Input>],
    training: Option<(u64, u64)>,
) -> Result<Vec<Features>> {
    let mut out: Vec<Option<Features>> = Vec::with_capacity(keys.len());
    let mut missing = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let hit = match cache {
            Some(c) => c.get(*key)?,
            None => None,
        };
        if hit.is_none() {
            missing.push(i);
        }
        out.push(hit);
    }
    if !missing.is_empty() {
        let to_encode: Vec<T::Input> = missing
            .iter()
            .map(|&i| {
                inputs[i]
                    .take()
                    .context("internal error: input not loaded for an uncached example")
            })
            .collect::<Result<_>>()?;
        let encoded = match training.filter(|_| !task.backbone_frozen()) {
            Some((seed, step)) => {
                let encoded_keys: Vec<Key> = missing.iter().map(|&i| keys[i]).collect();
                rng::training_pass(seed, step, Phase::Backbone, &encoded_keys, || {
                    task.encode(&to_encode)
                })?
            }
            None => task.encode(&to_encode)?,
        };
        if encoded.len() != missing.len() {
            bail!(
                "the task encoded {} inputs into {} feature sets",
                missing.len(),
                encoded.len()
            );
        }
        if let Some(c) = cache {
            c.count_encoded(missing.len());
        }
        for (&i, f) in missing.iter().zip(encoded) {
            if let Some(c) = cache {
                c.put(keys[i], &f)?;
            }
            out[i] = Some(f);
        }
    }
    Ok(out.into_iter().map(|f| f.expect("filled")).collect())
}
