//! Files and folders that are either wholly written or not at all.
//!
//! A file (run output, a checkpoint) is written to a temporary file in the same folder, synced,
//! and renamed over the destination; the folder is synced too, so the rename survives a power
//! cut. A folder (a converted model, a generated or converted data set) is built in a sibling
//! `.NAME.partial` folder, marked complete and renamed into place. A crash at any point leaves
//! the previous file or folder intact, and at most a temporary that the next attempt removes.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `path` through `fill`; if `fill` fails, `path` is untouched and no temporary remains.
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = temp_path(path);
    let result = (|| -> Result<()> {
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        sync_parent(path);
        Ok(())
    })();
    if result.is_err() {
        fs::remove_file(&tmp).ok();
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |w| Ok(w.write_all(bytes)?))
}

/// The marker written last into a folder built by [`build_dir`]; it holds the build's stamp.
pub const COMPLETE: &str = ".complete";

/// The stamp of a complete folder built by [`build_dir`], `None` if `dir` is not one.
pub fn completed(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join(COMPLETE)).ok()
}

fn sync_parent(path: &Path) {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // The rename must reach the disk; failing to sync a folder is not fatal.
    if let Ok(d) = File::open(parent) {
        d.sync_all().ok();
    }
}

/// Builds the folder `dir`: `fill` writes into an empty sibling `.NAME.partial` folder, which
/// is then marked complete with `stamp` (say, what it was built from, so that a later build
/// can tell a stale folder) and renamed over `dir`. `dir` is therefore absent, a previous
/// complete build, or this one; whatever `fill` leaves after failing is removed. The caller
/// decides that `dir` may be replaced, and keeps two processes from building it at once.
pub fn build_dir(dir: &Path, stamp: &str, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir
        .file_name()
        .with_context(|| format!("{}: not a usable folder name", dir.display()))?
        .to_string_lossy()
        .into_owned();
    let partial = dir.with_file_name(format!(".{name}.partial"));
    if fs::symlink_metadata(&partial).is_ok() {
        fs::remove_dir_all(&partial)
            .or_else(|_| fs::remove_file(&partial))
            .with_context(|| format!("removing the stale {}", partial.display()))?;
    }
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let built = fill(&partial).and_then(|()| write(&partial.join(COMPLETE), stamp.as_bytes()));
    if let Err(e) = built {
        fs::remove_dir_all(&partial).ok();
        return Err(e.context(format!("building {}", dir.display())));
    }
    if fs::symlink_metadata(dir).is_ok() {
        fs::remove_dir_all(dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    fs::rename(&partial, dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    sync_parent(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.bin");
        write(&path, b"old contents").unwrap();
        let err = write_with(&path, |w| {
            w.write_all(b"half of the new")?;
            anyhow::bail!("killed mid-write")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("killed mid-write"));
        assert_eq!(fs::read(&path).unwrap(), b"old contents");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_folder_is_built_whole_or_not_at_all() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("set");
        assert_eq!(completed(&dir), None);
        // A crash of an earlier build left a partial folder behind.
        fs::create_dir_all(tmp.path().join(".set.partial/half")).unwrap();
        build_dir(&dir, "v1", |d| Ok(fs::write(d.join("a.txt"), "one")?)).unwrap();
        assert_eq!(completed(&dir).as_deref(), Some("v1"));
        assert_eq!(fs::read_to_string(dir.join("a.txt")).unwrap(), "one");
        assert!(!tmp.path().join(".set.partial").exists());
        // A failed rebuild keeps the previous folder and leaves nothing else.
        let err = build_dir(&dir, "v2", |d| {
            fs::write(d.join("a.txt"), "two")?;
            anyhow::bail!("disk full")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("disk full"));
        assert_eq!(completed(&dir).as_deref(), Some("v1"));
        assert_eq!(fs::read_to_string(dir.join("a.txt")).unwrap(), "one");
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["set"]);
        // A successful rebuild replaces it.
        build_dir(&dir, "v2", |d| Ok(fs::write(d.join("b.txt"), "two")?)).unwrap();
        assert_eq!(completed(&dir).as_deref(), Some("v2"));
        assert!(!dir.join("a.txt").exists());
    }
}
