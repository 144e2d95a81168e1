//! One training process per run folder. Two processes training into one folder would
//! interleave their checkpoints and logs into a run that neither of them made, so `train`
//! holds `run.lock`, a file naming its process, for as long as it runs; a second process is
//! refused at once, naming the folder and the owner. A killed run cannot remove its lock, so
//! a lock whose process has ended (checked by process id and start time, so that a reused id
//! does not count as alive) is taken over with a warning.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The lock's file name in a run folder.
pub const LOCK_FILE: &str = "run.lock";

/// A held lock; dropping it removes the file, unless an outer holder in this process owns it.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    owned: bool,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if self.owned {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Who holds a lock: a process id and that process's start time (in clock ticks since boot,
/// where the system says; 0 where it does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    pid: u32,
    start: u64,
}

impl Owner {
    fn me() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    fn parse(text: &str) -> Option<Self> {
        let mut it = text.split_whitespace();
        Some(Self {
            pid: it.next()?.parse().ok()?,
            start: it.next()?.parse().ok()?,
        })
    }

    fn alive(self) -> bool {
        match start_time(self.pid) {
            Some(now) => self.start == 0 || now == self.start,
            None => process_exists(self.pid),
        }
    }
}

/// Field 22 of `/proc/PID/stat` (Linux); `None` where there is no such file.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn process_exists(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = i32::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Takes `dir`'s lock (creating the folder), or refuses if another live process holds it.
pub fn acquire(dir: &Path) -> Result<RunLock> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let me = Owner::me();
    // Two processes taking over the same stale lock race on `create_new`: the loser looks
    // again and finds the winner alive.
    for _ in 0..3 {
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                writeln!(f, "{} {}", me.pid, me.start)
                    .with_context(|| format!("writing {}", path.display()))?;
                return Ok(RunLock { path, owned: true });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            // Removed by its owner in the meantime: try again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        match Owner::parse(&text) {
            Some(owner) if owner == me => return Ok(RunLock { path, owned: false }),
            Some(owner) if owner.alive() => bail!(
                "{} is in use: process {} is training into it (lock {}). Wait for it to end, \
                 or give this run another --name",
                dir.display(),
                owner.pid,
                path.display()
            ),
            owner => {
                let who = owner.map_or("an unreadable owner".to_string(), |o| {
                    format!("process {}, which has ended", o.pid)
                });
                eprintln!(
                    "warning: taking over the lock of {} from {who}",
                    dir.display()
                );
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("removing {}", path.display()))
                    }
                }
            }
        }
    }
    bail!(
        "{}: could not take the lock {}",
        dir.display(),
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn lock_naming(dir: &Path, pid: u32) {
        let start = start_time(pid).unwrap_or(0);
        fs::write(dir.join(LOCK_FILE), format!("{pid} {start}\n")).unwrap();
    }

    #[test]
    fn a_folder_is_held_by_one_process_and_a_dead_owner_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let lock = acquire(&run).unwrap();
        let text = fs::read_to_string(run.join(LOCK_FILE)).unwrap();
        assert_eq!(Owner::parse(&text), Some(Owner::me()));
        // The same process again (a pipeline, then the engine inside it): re-entrant, and the
        // inner guard leaves the file to the outer one.
        drop(acquire(&run).unwrap());
        assert!(run.join(LOCK_FILE).is_file());
        drop(lock);
        assert!(!run.join(LOCK_FILE).exists(), "the lock outlived its run");

        // A live owner: refused at once, naming the folder and the process.
        let mut child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        lock_naming(&run, child.id());
        let err = format!("{:#}", acquire(&run).unwrap_err());
        assert!(err.contains(&run.display().to_string()), "{err}");
        assert!(err.contains(&child.id().to_string()), "{err}");
        // Once it has ended, its lock is taken over.
        child.kill().unwrap();
        child.wait().unwrap();
        let taken = acquire(&run).unwrap();
        let text = fs::read_to_string(run.join(LOCK_FILE)).unwrap();
        assert_eq!(Owner::parse(&text), Some(Owner::me()));
        drop(taken);

        // A reused process id is not the owner: the start time differs.
        fs::write(run.join(LOCK_FILE), format!("{} 1\n", std::process::id())).unwrap();
        drop(acquire(&run).unwrap());
        // Garbage in the lock is taken over too, not a panic.
        fs::write(run.join(LOCK_FILE), "not a lock").unwrap();
        drop(acquire(&run).unwrap());
    }
}
