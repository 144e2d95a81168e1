//! Hostile inputs for the tests of every parser of user files: seeded mutations of a valid
//! file (bits flipped; bytes replaced by structural characters, huge or negative numbers;
//! spans cut, repeated or inserted; the file truncated), each handed to the parser, which must
//! return a value or an error: never panic, and never take long (a watchdog aborts the test
//! process, naming the case, if one case runs for more than a minute). A failing case is
//! written to a file that is kept and named with its seed and index, so that it can be
//! replayed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};

/// Bytes that steer a parser into its rarer paths: JSON, XML, TOML and TSV punctuation, digits
/// and signs, a line end, a byte that is never UTF-8.
const STRUCTURAL: &[u8] = b"{}[]<>\"':,=\t\n\r0123456789-+.eE\\/#& \xff\x00";

/// Text that replaces a run of digits: sizes and counts a file should never be trusted with.
const NUMBERS: [&str; 8] = [
    "0",
    "-1",
    "4294967296",
    "18446744073709551615",
    "99999999999999999999999",
    "1e308",
    "NaN",
    "-0.0",
];

fn mutate_once(bytes: &mut Vec<u8>, rng: &mut impl Rng) {
    if bytes.is_empty() {
        bytes.push(rng.random());
        return;
    }
    let at = rng.random_range(0..bytes.len());
    match rng.random_range(0..8) {
        0 => bytes[at] ^= 1 << rng.random_range(0..8),
        1 => bytes[at] = rng.random(),
        2 => bytes[at] = STRUCTURAL[rng.random_range(0..STRUCTURAL.len())],
        3 => bytes.truncate(at),
        4 => {
            let end = (at + rng.random_range(1..=16)).min(bytes.len());
            bytes.drain(at..end);
        }
        5 => {
            let end = (at + rng.random_range(1..=64)).min(bytes.len());
            let span = bytes[at..end].to_vec();
            let to = rng.random_range(0..=bytes.len());
            bytes.splice(to..to, span);
        }
        6 => {
            let n = rng.random_range(1..=8);
            let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            bytes.splice(at..at, junk);
        }
        _ => {
            // The run of digits around `at`, if any, becomes an absurd number.
            let digit = |b: &u8| b.is_ascii_digit();
            let Some(start) = (at..bytes.len()).find(|&i| digit(&bytes[i])) else {
                return;
            };
            let end = (start..bytes.len())
                .find(|&i| !digit(&bytes[i]))
                .unwrap_or(bytes.len());
            let number = NUMBERS[rng.random_range(0..NUMBERS.len())];
            bytes.splice(start..end, number.bytes());
        }
    }
}

/// `count` mutants of `valid`, each one to three mutations away from it; the same for the same
/// seed.
pub fn mutants(valid: &[u8], seed: u64, count: usize) -> Vec<Vec<u8>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let mut m = valid.to_vec();
            for _ in 0..rng.random_range(1..=3) {
                mutate_once(&mut m, &mut rng);
            }
            m
        })
        .collect()
}

/// Writes each of `count` mutants of `valid` to a file named `file_name` in a fresh folder and
/// runs `parse` on it; panics (failing the test) naming the case if `parse` panics. Returns how
/// many mutants `parse` accepted, for a test to see that the mutants are not all trivially
/// rejected.
pub fn never_panics<T, E>(
    what: &str,
    file_name: &str,
    valid: &[u8],
    seed: u64,
    count: usize,
    parse: impl Fn(&Path) -> Result<T, E>,
) -> usize {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join(file_name);
    let done = Arc::new(AtomicBool::new(false));
    let mut accepted = 0;
    for (i, m) in mutants(valid, seed, count).into_iter().enumerate() {
        std::fs::write(&path, &m).expect("writing a mutant");
        let watchdog = watchdog(format!("{what}: case {i} of seed {seed}"), done.clone());
        let outcome = catch_unwind(AssertUnwindSafe(|| parse(&path).is_ok()));
        done.store(true, Ordering::SeqCst);
        watchdog.join().ok();
        done.store(false, Ordering::SeqCst);
        match outcome {
            Ok(ok) => accepted += ok as usize,
            Err(_) => {
                let kept =
                    std::env::temp_dir().join(format!("{what}-seed{seed}-case{i}-{file_name}"));
                std::fs::write(&kept, &m).ok();
                panic!(
                    "{what}: the parser panicked on case {i} of seed {seed} (kept as {})",
                    kept.display()
                );
            }
        }
    }
    accepted
}

/// Aborts the process if `done` is not set within a minute: a parser that hangs must fail the
/// suite, not stall it.
fn watchdog(case: String, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let step = Duration::from_millis(5);
        for _ in 0..12_000 {
            if done.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(step);
        }
        eprintln!("{case}: still parsing after a minute: a hang");
        std::process::abort();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_are_seeded_varied_and_different_from_the_original() {
        let valid = br#"{"images": [{"id": 1, "width": 640}], "n": 12345}"#;
        let a = mutants(valid, 7, 200);
        assert_eq!(a, mutants(valid, 7, 200), "not reproducible from the seed");
        assert_ne!(a, mutants(valid, 8, 200));
        let distinct: std::collections::HashSet<&Vec<u8>> = a.iter().collect();
        assert!(
            distinct.len() > 150,
            "only {} distinct mutants",
            distinct.len()
        );
        assert!(a.iter().filter(|m| m.as_slice() == valid).count() < 10);
        assert!(a.iter().any(|m| m.len() < valid.len() / 2), "no truncation");
        assert!(a.iter().any(|m| m.len() > valid.len()), "no insertion");
        let huge = a
            .iter()
            .any(|m| String::from_utf8_lossy(m).contains("18446744073709551615"));
        assert!(huge, "no absurd number");
    }

    #[test]
    #[should_panic(expected = "panicked on case")]
    fn a_parser_that_panics_is_caught_and_named() {
        never_panics(
            "demo",
            "x.txt",
            b"abc",
            1,
            20,
            |p: &Path| -> Result<(), ()> {
                assert!(std::fs::read(p).unwrap().len() < 2);
                Ok(())
            },
        );
    }
}
