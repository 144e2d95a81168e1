//! Checkpoints: trainable weights, optimizer moments (and the weight average, where a run
//! keeps one) and the training position in one
//! safetensors file, with the position and resolved configuration in its metadata. Written
//! atomically, so a crash while saving leaves the previous checkpoint loadable. A weights-only
//! checkpoint (no moments) ships a trained model; it cannot resume a run.
//!
//! A file damaged on disk or in a copy (cut short, a byte flipped, a garbled header) must not
//! load as if it were whole: the metadata holds a CRC-32 of the tensors' bytes and of the
//! rest of the metadata, checked on every load, and a mismatch is an error naming the file.
//! (Checkpoints written before the checksum existed load unchecked.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::ema::Ema;
use super::optimizer::AdamW;
use crate::params::ParamStore;

/// Where a run stands: enough, with the seed, to continue it exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer updates done so far (also the scheduler's position).
    pub step: u64,
    /// The epoch the next update belongs to.
    pub epoch: usize,
    /// The index, within that epoch, of the next batch.
    pub batch: usize,
    /// The seed every random choice derives from (see [`super::rng`]).
    pub seed: u64,
    pub best_metric: Option<f64>,
    pub best_step: Option<u64>,
    /// Evaluations since the best one, for early stopping.
    pub evals_since_best: usize,
    /// Whether the run has ended (finished or stopped early).
    pub finished: bool,
    /// The step of the last evaluation the state includes.
    #[serde(default)]
    pub last_eval_step: Option<u64>,
    /// Records in `metrics.jsonl` when the checkpoint was saved: what a resumed run keeps.
    /// (Absent in checkpoints from before it was kept.)
    #[serde(default)]
    pub log_records: Option<u64>,
}

const STATE_KEY: &str = "downstream.state";
const CONFIG_KEY: &str = "downstream.config";
const CHECKSUM_KEY: &str = "downstream.crc32";

pub struct Checkpoint {
    pub tensors: HashMap<String, Tensor>,
    pub state: TrainState,
    /// The resolved run configuration, as JSON.
    pub config: serde_json::Value,
}

/// Saves the trainable parameters (`param.NAME`), the optimizer state, the weight average if
/// the run keeps one, and `state` to `path`.
pub fn save(
    path: &Path,
    params: &ParamStore,
    optimizer: &AdamW,
    ema: Option<&Ema>,
    state: &TrainState,
    config: &serde_json::Value,
) -> Result<()> {
    let mut extra = optimizer.state()?;
    if let Some(ema) = ema {
        extra.extend(ema.state()?);
    }
    write(path, params, extra, state, config)
}

/// Saves the trainable parameters and `state` without the optimizer's moments: a third of the
/// size, for shipping a trained model (it loads for inference like any checkpoint, but a run
/// cannot resume from it).
pub fn save_weights(
    path: &Path,
    params: &ParamStore,
    state: &TrainState,
    config: &serde_json::Value,
) -> Result<()> {
    write(path, params, Vec::new(), state, config)
}

fn write(
    path: &Path,
    params: &ParamStore,
    extra: Vec<(String, Tensor)>,
    state: &TrainState,
    config: &serde_json::Value,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = params
        .trainable()
        .map(|p| (format!("param.{}", p.name), p.tensor().clone()))
        .collect();
    tensors.extend(extra);
    let metadata = HashMap::from([
        (STATE_KEY.to_string(), serde_json::to_string(state)?),
        (CONFIG_KEY.to_string(), serde_json::to_string(config)?),
    ]);
    let bytes =
        safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
            .context("serialising the checkpoint")?;
    crate::atomic::write(path, &with_checksum(&bytes)?)
}

/// A safetensors file's header (JSON) and data section; an error if the length prefix does
/// not fit the file.
fn sections(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(n).ok()?)?;
    Some((bytes.get(8..end)?, &bytes[end..]))
}

/// The CRC-32 of the header's content without the checksum itself (in serde_json's canonical
/// form, so that whitespace does not count) followed by the data section.
fn checksum(header: &mut serde_json::Value, data: &[u8]) -> Result<u32> {
    if let Some(meta) = header
        .get_mut("__metadata__")
        .and_then(|m| m.as_object_mut())
    {
        meta.remove(CHECKSUM_KEY);
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&serde_json::to_vec(header)?);
    crc.update(data);
    Ok(crc.finalize())
}

fn with_checksum(bytes: &[u8]) -> Result<Vec<u8>> {
    let (header, data) = sections(bytes).context("safetensors wrote a malformed file")?;
    let mut json: serde_json::Value = serde_json::from_slice(header)?;
    let sum = checksum(&mut json, data)?;
    json["__metadata__"][CHECKSUM_KEY] = format!("{sum:08x}").into();
    let mut header = serde_json::to_vec(&json)?;
    // safetensors pads its header with spaces so that the data stays 8-byte aligned.
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    Ok(out)
}

/// Checks the stored checksum of a file that safetensors has already parsed (`meta`: its
/// metadata).
fn verify(bytes: &[u8], meta: &HashMap<String, String>, path: &Path) -> Result<()> {
    let damaged = || format!("{} is damaged", path.display());
    let Some(stored) = meta.get(CHECKSUM_KEY) else {
        // The layout from before the checksum, exactly; anything else (a key name garbled,
        // say) is not a checkpoint this code wrote.
        if meta.keys().any(|k| k != STATE_KEY && k != CONFIG_KEY) {
            bail!(
                "{}: no checksum, and metadata no version of this program writes",
                damaged()
            );
        }
        return Ok(());
    };
    let (header, data) = sections(bytes).with_context(damaged)?;
    let mut json: serde_json::Value = serde_json::from_slice(header).with_context(damaged)?;
    let sum = checksum(&mut json, data)?;
    if format!("{sum:08x}") != *stored {
        bail!(
            "{} is damaged: its contents do not match the checksum written with it (the file \
             was changed or cut short after it was saved)",
            path.display()
        );
    }
    Ok(())
}

pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).with_context(|| {
        format!(
            "{}: not a safetensors checkpoint, or a damaged one",
            path.display()
        )
    })?;
    let meta = meta.metadata().clone().unwrap_or_default();
    verify(&bytes, &meta, path)?;
    let state: TrainState = serde_json::from_str(
        meta.get(STATE_KEY)
            .with_context(|| format!("{}: no training state in the checkpoint", path.display()))?,
    )
    .with_context(|| format!("{}: malformed training state", path.display()))?;
    let config = match meta.get(CONFIG_KEY) {
        Some(c) => serde_json::from_str(c)
            .with_context(|| format!("{}: malformed configuration", path.display()))?,
        None => serde_json::Value::Null,
    };
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .with_context(|| format!("{}: reading tensors", path.display()))?;
    Ok(Checkpoint {
        tensors,
        state,
        config,
    })
}

/// Where a run keeps the checkpoint of its last step.
pub fn last_path(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints").join("last.safetensors")
}

/// Where a run keeps the checkpoint of its best evaluation.
pub fn best_path(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints").join("best.safetensors")
}

/// The checkpoint a finished run is used with: its best, else (no validation) its last.
pub fn best_else_last(run_dir: &Path) -> PathBuf {
    let best = best_path(run_dir);
    if best.is_file() {
        best
    } else {
        last_path(run_dir)
    }
}

/// Loads a run's [`best_else_last`] checkpoint into `params`; returns its path.
pub fn restore_best_else_last(
    run_dir: &Path,
    params: &ParamStore,
    device: &Device,
) -> Result<PathBuf> {
    let path = best_else_last(run_dir);
    load(&path, device)?
        .restore_params(params)
        .with_context(|| format!("restoring {}", path.display()))?;
    Ok(path)
}

impl Checkpoint {
    /// Copies the saved weights into `params`' trainable parameters; every one must be present,
    /// and every saved weight must have a place: weights left over mean the checkpoint belongs
    /// to another model (more blocks, another head), which would otherwise load silently.
    pub fn restore_params(&self, params: &ParamStore) -> Result<()> {
        let names: std::collections::HashSet<String> = params
            .trainable()
            .map(|p| format!("param.{}", p.name))
            .collect();
        let mut extra: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| k.starts_with("param.") && !names.contains(*k))
            .collect();
        if !extra.is_empty() {
            extra.sort();
            bail!(
                "the checkpoint has {} weights this model does not (first: `{}`): it was saved by \
                 a model of another shape or mode",
                extra.len(),
                extra[0]
            );
        }
        for p in params.trainable() {
            let key = format!("param.{}", p.name);
            let t = self
                .tensors
                .get(&key)
                .with_context(|| format!("checkpoint has no `{key}`"))?;
            if t.dims() != p.tensor().dims() {
                bail!(
                    "checkpoint `{key}` has shape {:?}, the model {:?}",
                    t.dims(),
                    p.tensor().dims()
                );
            }
            p.var().expect("trainable").set(t)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_checkpoints_load_or_fail_never_panic_and_a_huge_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck.safetensors");
        let state = TrainState {
            step: 3,
            epoch: 0,
            batch: 3,
            seed: 1,
            best_metric: None,
            best_step: None,
            evals_since_best: 0,
            finished: false,
            last_eval_step: None,
            log_records: Some(3),
        };
        save_weights(&path, &store(&["w"], 1.5), &state, &serde_json::Value::Null).unwrap();
        let valid = std::fs::read(&path).unwrap();
        let loaded = crate::faults::mutate::never_panics(
            "checkpoint",
            "ck.safetensors",
            &valid,
            4,
            300,
            |p: &Path| load(p, &Device::Cpu),
        );
        // The checksum lets nothing changed through, bar whitespace in the header.
        assert!(loaded < 30, "{loaded} damaged checkpoints loaded");
        // A header that claims a terabyte: refused from its length, nothing allocated.
        let mut huge = (1u64 << 40).to_le_bytes().to_vec();
        huge.extend_from_slice(&valid[8..]);
        std::fs::write(&path, huge).unwrap();
        let err = format!("{:#}", load(&path, &Device::Cpu).err().unwrap());
        assert!(err.contains("ck.safetensors"), "{err}");
    }
    use candle_core::DType;

    fn store(names: &[&str], value: f64) -> ParamStore {
        let mut s = ParamStore::new();
        for n in names {
            let t = (Tensor::ones(3, DType::F32, &Device::Cpu).unwrap() * value).unwrap();
            s.insert(n, t, 0, true).unwrap();
        }
        s
    }

    #[test]
    fn a_damaged_checkpoint_is_refused_naming_the_file_never_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.safetensors");
        let state = TrainState {
            step: 12,
            epoch: 3,
            batch: 1,
            seed: 5,
            best_metric: Some(0.5),
            best_step: Some(10),
            evals_since_best: 1,
            finished: false,
            last_eval_step: Some(10),
            log_records: Some(15),
        };
        let config = serde_json::json!({"lr": 0.001});
        save_weights(&path, &store(&["a", "b"], 2.0), &state, &config).unwrap();
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(load(&path, &Device::Cpu).unwrap().state, state);
        // Other readers still see a plain safetensors file.
        assert!(safetensors::SafeTensors::deserialize(&whole).is_ok());

        let refused = |bytes: &[u8], what: &str| {
            std::fs::write(&path, bytes).unwrap();
            let err = match load(&path, &Device::Cpu) {
                Ok(_) => panic!("{what}: loaded"),
                Err(e) => format!("{e:#}"),
            };
            assert!(err.contains("last.safetensors"), "{what}: {err}");
            err
        };
        // One bit flipped anywhere: in the length, the header (state, configuration, names,
        // shapes, offsets, the checksum itself) or the tensors.
        for i in 0..whole.len() {
            let mut bytes = whole.clone();
            bytes[i] ^= 0x01;
            refused(&bytes, &format!("byte {i} flipped"));
        }
        let err = refused(&whole[..whole.len() - 4], "cut short");
        assert!(err.contains("damaged"), "{err}");
        for n in [0, 7, 8, 100] {
            refused(&whole[..n], &format!("cut to {n} bytes"));
        }
        let mut garbage = whole.clone();
        garbage[8..40].fill(b'x');
        refused(&garbage, "header garbage");
        let mut data = whole.clone();
        let last = data.len() - 1;
        data[last] = data[last].wrapping_add(1);
        let err = refused(&data, "a tensor changed");
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn weights_only_checkpoints_restore_and_weights_without_a_place_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let state = TrainState {
            step: 7,
            epoch: 1,
            batch: 0,
            seed: 0,
            best_metric: None,
            best_step: None,
            evals_since_best: 0,
            finished: true,
            last_eval_step: None,
            log_records: None,
        };
        save_weights(
            &path,
            &store(&["a", "b"], 2.0),
            &state,
            &serde_json::Value::Null,
        )
        .unwrap();
        let saved = load(&path, &Device::Cpu).unwrap();
        assert_eq!(saved.state, state);
        assert!(saved.tensors.keys().all(|k| k.starts_with("param.")));

        let same = store(&["a", "b"], 0.0);
        saved.restore_params(&same).unwrap();
        let a: Vec<f32> = same.get("a").unwrap().tensor().to_vec1().unwrap();
        assert_eq!(a, vec![2.0; 3]);

        // A model with fewer weights (fewer blocks) must not take the checkpoint silently.
        let err = saved
            .restore_params(&store(&["a"], 0.0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`param.b`"), "{err}");
        // Nor one with more.
        assert!(saved.restore_params(&store(&["a", "b", "c"], 0.0)).is_err());
    }
}
