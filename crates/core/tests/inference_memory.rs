//! Repeated evaluation in `full` mode keeps the process's memory flat: inference runs on
//! detached weights, so no backward graph (and no activation it would hold) outlives a batch.
//! One test in its own binary, so that no other test shares the process whose memory is read.

mod common;

use common::classify::*;
use downstream_core::train::evaluate;
use downstream_core::Freeze;

/// Resident memory of this process in KiB, from /proc (Linux).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn repeated_evaluation_in_full_mode_keeps_memory_flat() {
    let task = Classify::new(Freeze::Full);
    let data = Images::new(48);
    let mut samples = Vec::new();
    for round in 0..30 {
        let m = evaluate(&task, &data, 16, None, true).unwrap();
        assert!(m["accuracy"].is_finite());
        if round >= 5 {
            samples.push(rss_kib());
        }
    }
    let Some(samples) = samples.into_iter().collect::<Option<Vec<u64>>>() else {
        eprintln!("no /proc/self/status here: memory not measured");
        return;
    };
    let (first, last) = (samples[0], *samples.last().unwrap());
    let peak = *samples.iter().max().unwrap();
    eprintln!("RSS after round 5: {first} KiB, after round 30: {last} KiB, peak {peak} KiB");
    assert!(
        last <= first + 2048 && peak <= first + 4096,
        "memory grew over repeated evaluation: {samples:?} KiB"
    );
}
