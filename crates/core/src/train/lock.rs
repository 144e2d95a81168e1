//! One training process per run folder. Two processes training into one folder would
//! interleave their checkpoints and logs into a run that neither of them made, so `train`
//! holds an exclusive lock on `run.lock` for as long as it runs, and a second process is
//! refused at once, naming the folder and the owner the file names. The lock is the kernel's
//! (`flock`): it ends with its process however that ends, so a killed run leaves no stale
//! lock, only the file naming it, and the next run takes over with a warning that says so.
//! Within one process the lock is re-entrant (a pipeline holds it, and the engine inside).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};

/// The lock's file name in a run folder.
pub const LOCK_FILE: &str = "run.lock";

/// Locks this process holds: the file (its `flock` lives as long as it is open) and how many
/// guards share it.
fn held() -> &'static Mutex<HashMap<PathBuf, (File, usize)>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, (File, usize)>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

/// A held lock; the last guard of this process for a folder releases it.
#[derive(Debug)]
pub struct RunLock {
    key: PathBuf,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let mut held = held().lock().unwrap_or_else(|e| e.into_inner());
        if let Some((file, count)) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                // Emptied, so that the next run knows this one ended cleanly; closing the file
                // releases the lock.
                let _ = file.set_len(0);
                held.remove(&self.key);
            }
        }
    }
}

/// Tries the kernel's exclusive lock on `file` without waiting; `Ok(false)` if another
/// process holds it.
fn try_lock(file: &File) -> std::io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor this function borrows; it changes no memory.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(false);
        }
        Err(e)
    }
    #[cfg(not(unix))]
    {
        // No advisory locks here: a run is not guarded against a second process.
        let _ = file;
        Ok(true)
    }
}

/// Takes `dir`'s lock (creating the folder), or refuses if another process holds it.
pub fn acquire(dir: &Path) -> Result<RunLock> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let key = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut held = held().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, count)) = held.get_mut(&key) {
        *count += 1;
        return Ok(RunLock { key });
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let mut previous = String::new();
    let _ = file.read_to_string(&mut previous);
    let owner = previous.trim();
    if !try_lock(&file).with_context(|| format!("locking {}", path.display()))? {
        bail!(
            "{} is in use: {} is training into it (lock {}). Wait for it to end, or give this \
             run another --name",
            dir.display(),
            if owner.is_empty() {
                "another process".to_string()
            } else {
                format!("process {owner}")
            },
            path.display()
        );
    }
    if !owner.is_empty() {
        eprintln!(
            "warning: {} was left by process {owner}, which ended without finishing; taking it over",
            dir.display()
        );
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())
        .and_then(|()| file.flush())
        .with_context(|| format!("writing {}", path.display()))?;
    held.insert(key.clone(), (file, 1));
    Ok(RunLock { key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    /// Set in the child process of the test: the folder it locks before it sleeps.
    const HOLDER: &str = "DOWNSTREAM_TEST_LOCK_HOLDER";

    #[cfg(unix)]
    #[test]
    fn a_folder_is_held_by_one_process_and_a_dead_owner_is_taken_over() {
        if let Ok(dir) = std::env::var(HOLDER) {
            let _lock = acquire(Path::new(&dir)).unwrap();
            println!("held");
            std::thread::sleep(std::time::Duration::from_secs(60));
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let lock = acquire(&run).unwrap();
        let text = fs::read_to_string(run.join(LOCK_FILE)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // The same process again (a pipeline, then the engine inside it): re-entrant.
        drop(acquire(&run).unwrap());
        assert_eq!(
            held().lock().unwrap()[&fs::canonicalize(&run).unwrap()].1,
            1
        );
        drop(lock);
        assert!(
            fs::read_to_string(run.join(LOCK_FILE)).unwrap().is_empty(),
            "a clean end leaves an empty lock file"
        );

        // Another process holds it: refused at once, naming the folder and the process.
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "train::lock::tests::a_folder_is_held_by_one_process_and_a_dead_owner_is_taken_over"])
            .arg("--nocapture")
            .env(HOLDER, &run)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("held") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "the holder ended");
        }
        let err = format!("{:#}", acquire(&run).unwrap_err());
        assert!(err.contains(&run.display().to_string()), "{err}");
        assert!(err.contains(&child.id().to_string()), "{err}");
        // Killed, it leaves its id in the file but no lock: the next run takes over.
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            fs::read_to_string(run.join(LOCK_FILE)).unwrap().trim(),
            child.id().to_string()
        );
        let taken = acquire(&run).unwrap();
        let text = fs::read_to_string(run.join(LOCK_FILE)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        drop(taken);
    }
}
