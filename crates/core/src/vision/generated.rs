//! Built-in data sets made of generated scenes ([`super::scene`]), written once to a folder of
//! the data-set cache so that a demo needs no download. A task says what to write per scene
//! (an image and its mask, an image and its boxes) and per split (an annotation file, a class
//! list).
//!
//! The folder is built in a temporary sibling and renamed into place
//! ([`crate::atomic::build_dir`]); its completion stamp holds the kind of export, the
//! renderer's version and the spec, so that a set from an older renderer or another spec is
//! rebuilt instead of mixed with new images. An existing folder is replaced only if it holds
//! nothing but what the export writes.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::scene::{self, Scene, Split};
use crate::atomic;

/// Changes whenever the pictures change.
const RENDERER: u32 = 1;

/// Sizes of a generated set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SceneSpec {
    pub train: usize,
    pub val: usize,
    pub seed: u64,
    /// Side of the square images, in pixels.
    pub size: u32,
}

impl Default for SceneSpec {
    fn default() -> Self {
        Self {
            train: 320,
            val: 80,
            seed: 0,
            size: 224,
        }
    }
}

#[derive(Serialize, Deserialize, PartialEq)]
struct Stamp<'a> {
    kind: &'a str,
    renderer: u32,
    spec: SceneSpec,
}

/// How a task writes a generated set.
pub trait Export: Sync {
    /// What one scene leaves for its split's files (its boxes, nothing).
    type Record: Send;

    /// Names the export and is part of the stamp.
    fn kind(&self) -> &str;

    /// The entries a finished folder may hold besides the stamp.
    fn own_names(&self) -> &[&str];

    /// Writes scene `index` of `split` under `root`.
    fn scene(&self, root: &Path, split: Split, index: usize, scene: Scene) -> Result<Self::Record>;

    /// Writes what covers a whole split, from its scenes' records in order.
    fn split(&self, root: &Path, split: Split, records: Vec<Self::Record>) -> Result<()>;
}

/// Builds `dir` with `export` unless it already holds this very set. Two processes must not
/// build the same folder at the same time.
pub fn ensure<E: Export>(dir: &Path, spec: &SceneSpec, export: &E) -> Result<()> {
    let stamp = serde_json::to_string_pretty(&Stamp {
        kind: export.kind(),
        renderer: RENDERER,
        spec: spec.clone(),
    })?;
    if atomic::completed(dir).as_deref() == Some(stamp.as_str()) {
        return Ok(());
    }
    if spec.size < scene::MIN_SIZE {
        bail!(
            "generated images must be at least {} pixels wide, not {}",
            scene::MIN_SIZE,
            spec.size
        );
    }
    if dir.exists() {
        check_replaceable(dir, export.own_names())?;
    }
    atomic::build_dir(dir, &stamp, |root| {
        for (split, count) in [(Split::Train, spec.train), (Split::Val, spec.val)] {
            let records = (0..count)
                .into_par_iter()
                .map(|index| {
                    let scene = scene::render(spec.seed, spec.size, split, index)?;
                    export.scene(root, split, index, scene)
                })
                .collect::<Result<Vec<_>>>()?;
            export.split(root, split, records)?;
        }
        Ok(())
    })
}

fn check_replaceable(dir: &Path, own: &[&str]) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "{} exists and is not a folder; refusing to replace it with a generated set",
            dir.display()
        );
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name();
        if name != atomic::COMPLETE && !own.iter().any(|o| name == *o) {
            bail!(
                "{} holds `{}`, which the generated set did not write; refusing to replace it",
                dir.display(),
                name.to_string_lossy()
            );
        }
    }
    Ok(())
}
