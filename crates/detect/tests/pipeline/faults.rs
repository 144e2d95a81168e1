//! Runs hit by the machine: a full disk while saving, a read-only run folder, kills at random
//! moments; the last checkpoint stays loadable and a resumed run ends on the same bits.

use super::*;

/// A run of one epoch on the rectangles set, trained by the binary into `runs/detect/NAME`:
/// the annotations and the run folder.
fn one_epoch_run(data: &Path, runs: &Path, name: &str) -> (PathBuf, PathBuf) {
    let ann = rectangles(data, 8, 64, 64);
    succeeded(&mut train_command(&ann, runs, name, "1"));
    (ann, runs.join("detect").join(name))
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_during_a_checkpoint_stops_the_run_and_keeps_the_last_one_loadable() {
    use std::os::unix::process::CommandExt;
    let (data, runs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ann, dir) = one_epoch_run(data.path(), runs.path(), "disk");
    let last = downstream_core::train::checkpoint::last_path(&dir);
    let before = downstream_core::train::checkpoint::load(&last, &candle_core::Device::Cpu)
        .unwrap()
        .state;

    // Resumed for two more epochs where no file may grow past half a checkpoint, as on a
    // disk that fills up: the next checkpoint cannot be written.
    let limit = std::fs::metadata(&last).unwrap().len() / 2;
    let mut resumed = train_command(&ann, runs.path(), "disk", "3");
    resumed.arg("--resume");
    // SAFETY: setrlimit and signal are async-signal-safe; they change only the child.
    unsafe {
        resumed.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            // Without this the kernel kills the writer (SIGXFSZ) instead of failing the write.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = resumed.output().unwrap();
    assert!(
        !out.status.success(),
        "the run went on without its checkpoint"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(".safetensors") && err.contains("writing") && !err.contains("panicked"),
        "{err}"
    );
    // What was there is intact: the checkpoint loads as it was, the log parses, and no
    // temporary file is left behind.
    let after = downstream_core::train::checkpoint::load(&last, &candle_core::Device::Cpu)
        .unwrap()
        .state;
    assert_eq!(before, after);
    let log = dir.join(downstream_core::train::metrics_log::METRICS_FILE);
    assert!(!downstream_core::train::metrics_log::read_records(&log)
        .unwrap()
        .is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[cfg(target_os = "linux")]
#[test]
fn a_read_only_run_folder_stops_the_run_with_an_error_and_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    let data = tempfile::tempdir().unwrap();
    let runs = tempfile::tempdir().unwrap();
    // Readable by the unprivileged user the resumed run may become.
    mode(data.path(), 0o755);
    mode(runs.path(), 0o755);
    let (ann, dir) = one_epoch_run(data.path(), runs.path(), "ro");
    let last = downstream_core::train::checkpoint::last_path(&dir);
    let log = dir.join(downstream_core::train::metrics_log::METRICS_FILE);
    let (ck_before, log_before) = (std::fs::read(&last).unwrap(), std::fs::read(&log).unwrap());
    for d in [dir.clone(), dir.join("checkpoints")] {
        mode(&d, 0o555);
    }
    let mut resumed = train_command(&ann, runs.path(), "ro", "3");
    resumed.arg("--resume");
    // SAFETY: geteuid and the set*id calls are async-signal-safe and change only the child.
    unsafe {
        resumed.pre_exec(|| {
            // Root writes through any permission: a root run becomes `nobody`, for whom the
            // folder is what it is to any user, read-only.
            if libc::geteuid() == 0
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = resumed.output().unwrap();
    for d in [dir.clone(), dir.join("checkpoints")] {
        mode(&d, 0o755);
    }
    assert!(
        !out.status.success(),
        "the run went on in a read-only folder"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&dir.display().to_string()) && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&last).unwrap(),
        ck_before,
        "the checkpoint changed"
    );
    assert_eq!(std::fs::read(&log).unwrap(), log_before, "the log changed");
    downstream_core::train::checkpoint::load(&last, &candle_core::Device::Cpu).unwrap();
}

#[test]
fn a_run_killed_at_random_moments_resumes_to_the_same_bits() {
    let data = tempfile::tempdir().unwrap();
    let ann = rectangles(data.path(), 12, 64, 64);
    // Full fine-tuning (backbone moments in the checkpoint), a checkpoint after every step and
    // an evaluation every other one, so that kills also land in writes and evaluations.
    let command = |runs: &Path, name: &str| {
        let mut cmd = train_command(&ann, runs, name, "6");
        cmd.args(["--mode", "full", "--batch", "4"]).args([
            "--checkpoint-every",
            "1",
            "--eval-every-steps",
            "2",
        ]);
        cmd
    };
    let drill = downstream_core::faults::Drill {
        task: "detect",
        command: &command,
        kills: 5,
        seeds: &[11, 12],
    };
    downstream_core::faults::drill(&drill).unwrap();
}
