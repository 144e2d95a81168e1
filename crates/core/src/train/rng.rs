//! Randomness that a resumed run can reproduce without saving generator internals.
//!
//! Every random choice is a pure function of the run seed and where it is made (epoch,
//! sample): the shuffle of epoch `e` is drawn from a generator seeded by `(seed, e)`, the
//! augmentation of sample `i` in epoch `e` by `(seed, e, i)`, the dropout mask of the `k`-th
//! dropout in a forward pass by `(seed, step, k)` and the example it falls on. A run resumed
//! at any step makes the same choices as one that never stopped, and the checkpoint needs only
//! the seed and the position. Dropout masks are drawn per example, so that a batch split into
//! micro-batches drops exactly what the whole batch would. Batches of text group examples of
//! similar length ([`epoch_batches`]) by the same rule: a pure function of seed and epoch.

use std::cell::RefCell;

use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a random choice is for; each purpose has streams of its own.
#[derive(Clone, Copy)]
enum Purpose {
    Shuffle = 0,
    Augment = 1,
    Dropout = 2,
}

/// ChaCha's 64-bit stream id gives every (purpose, epoch, sample) an independent generator
/// under one seed: 2 bits of purpose, 22 of epoch, 40 of sample index.
fn stream(seed: u64, purpose: Purpose, epoch: usize, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let id = (purpose as u64) << 62
        | ((epoch as u64) & ((1 << 22) - 1)) << 40
        | (index as u64 & ((1 << 40) - 1));
    rng.set_stream(id);
    rng
}

/// The order in which epoch `epoch` visits `n` samples.
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut stream(seed, Purpose::Shuffle, epoch, 0));
    order
}

/// Pools of this many batches are sorted by length before they are cut into batches.
const LENGTH_POOL: usize = 32;

/// The batches of epoch `epoch`: `n` samples in [`epoch_order`], cut into batches of `batch`.
/// With `lengths` (a text task's tokens per example), samples of similar length share a batch,
/// so that little is padding: the shuffled order is cut into pools of [`LENGTH_POOL`] batches,
/// each pool sorted by length and cut, and the batches shuffled again. The number of batches
/// is the same either way, and all of it is a pure function of the seed and the epoch.
pub fn epoch_batches(
    seed: u64,
    epoch: usize,
    n: usize,
    batch: usize,
    lengths: Option<&[usize]>,
) -> Vec<Vec<usize>> {
    let batch = batch.max(1);
    let order = epoch_order(seed, epoch, n);
    let Some(lengths) = lengths else {
        return order.chunks(batch).map(<[usize]>::to_vec).collect();
    };
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(n.div_ceil(batch));
    for pool in order.chunks(batch * LENGTH_POOL) {
        let mut pool = pool.to_vec();
        pool.sort_by_key(|&i| lengths[i]);
        batches.extend(pool.chunks(batch).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut stream(seed, Purpose::Shuffle, epoch, 1));
    batches
}

/// The augmentation view of sample `index` in epoch `epoch`: a value in `1..=u64::MAX` for
/// free augmentation, or in `0..views` when only `views` distinct views may exist (frozen
/// features are cached per view; view 0 is always the unaugmented input).
pub fn view(seed: u64, epoch: usize, index: usize, views: Option<u64>) -> u64 {
    let r = stream(seed, Purpose::Augment, epoch, index).next_u64();
    match views {
        Some(v) if v <= 1 => 0,
        Some(v) => r % v,
        None => r.max(1),
    }
}

/// Which part of a training step a forward pass belongs to: the backbone (`encode`) and the
/// head (`loss`) count their dropout calls separately, so each needs its own streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Backbone = 0,
    Head = 1,
}

/// Where dropout draws from while a training step runs on this thread.
struct DropoutScope {
    seed: u64,
    step: u64,
    phase: Phase,
    /// The examples of the batch being computed, as (index, view), in batch order.
    keys: Vec<(usize, u64)>,
    /// Dropout calls so far in this phase.
    calls: u64,
}

thread_local! {
    static DROPOUT: RefCell<Option<DropoutScope>> = const { RefCell::new(None) };
}

/// Runs `f` as the `phase` of training step `step` over the examples `keys`: dropout
/// ([`crate::nn::ops::dropout`]) inside it drops; outside any such scope (evaluation,
/// prediction) it is the identity.
pub fn training_pass<R>(
    seed: u64,
    step: u64,
    phase: Phase,
    keys: &[(usize, u64)],
    f: impl FnOnce() -> R,
) -> R {
    let scope = DropoutScope {
        seed,
        step,
        phase,
        keys: keys.to_vec(),
        calls: 0,
    };
    let outer = DROPOUT.with(|d| d.replace(Some(scope)));
    // Restored even if `f` panics, so that a later evaluation on this thread never drops.
    struct Restore(Option<DropoutScope>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            DROPOUT.with(|d| *d.borrow_mut() = outer);
        }
    }
    let _restore = Restore(outer);
    f()
}

/// splitmix64: a bijective mix, so that distinct tuples give distinct, unrelated seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The keep-mask (scaled by `1 / (1 - p)`) of the next dropout call in the current training
/// pass, for a tensor of `len` values split evenly over the pass's examples; `None` outside a
/// training pass.
pub fn dropout_mask(p: f64, len: usize) -> Result<Option<Vec<f32>>, String> {
    DROPOUT.with(|d| {
        let mut d = d.borrow_mut();
        let Some(scope) = d.as_mut() else {
            return Ok(None);
        };
        let n = scope.keys.len();
        if n == 0 || !len.is_multiple_of(n) {
            return Err(format!(
                "dropout over {len} values cannot be split over the {n} examples of the batch"
            ));
        }
        let call = scope.calls;
        scope.calls += 1;
        let base = mix(mix(mix(scope.seed) ^ scope.step) ^ ((scope.phase as u64) << 32 | call));
        let keep = 1.0 / (1.0 - p) as f32;
        let per = len / n;
        let mut mask = Vec::with_capacity(len);
        for &(index, view) in &scope.keys {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(base ^ view));
            rng.set_stream((Purpose::Dropout as u64) << 62 | (index as u64 & ((1 << 62) - 1)));
            mask.extend((0..per).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep }));
        }
        Ok(Some(mask))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_permutations_that_depend_on_seed_and_epoch() {
        let by_length = epoch_batches(
            3,
            2,
            1000,
            16,
            Some(&(0..1000).map(|i| (i * 37) % 101).collect::<Vec<_>>()),
        );
        assert_eq!(by_length.len(), 1000usize.div_ceil(16));
        let mut all: Vec<usize> = by_length.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..1000).collect::<Vec<_>>(), "every sample once");
        // Batches hold similar lengths: the spread within a batch is far below the range.
        let spread: usize = by_length
            .iter()
            .map(|b| {
                let l: Vec<usize> = b.iter().map(|&i| (i * 37) % 101).collect();
                l.iter().max().unwrap() - l.iter().min().unwrap()
            })
            .sum::<usize>()
            / by_length.len();
        assert!(spread < 20, "mean spread {spread}");
        assert_eq!(
            by_length,
            epoch_batches(
                3,
                2,
                1000,
                16,
                Some(&(0..1000).map(|i| (i * 37) % 101).collect::<Vec<_>>())
            )
        );
        let a = epoch_order(7, 0, 50);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(7, 0, 50));
        assert_ne!(a, epoch_order(7, 1, 50));
        assert_ne!(a, epoch_order(8, 0, 50));
    }

    #[test]
    fn views_stay_in_range() {
        for i in 0..100 {
            assert!(view(3, 2, i, Some(3)) < 3);
            assert_eq!(view(3, 2, i, Some(1)), 0);
            assert_ne!(view(3, 2, i, None), 0);
        }
        let distinct: std::collections::BTreeSet<u64> =
            (0..100).map(|i| view(3, 2, i, Some(3))).collect();
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn dropout_masks_are_per_example_and_only_inside_a_training_pass() {
        assert_eq!(dropout_mask(0.5, 8).unwrap(), None);
        let draw = |keys: &[(usize, u64)], step| {
            training_pass(9, step, Phase::Head, keys, || {
                (
                    dropout_mask(0.5, keys.len() * 1000).unwrap().unwrap(),
                    dropout_mask(0.5, keys.len() * 1000).unwrap().unwrap(),
                )
            })
        };
        let (a, a2) = draw(&[(3, 0), (5, 1)], 4);
        assert_ne!(a, a2, "two calls draw different masks");
        // Each example's part depends on that example only: a micro-batch of one matches.
        let (b, _) = draw(&[(5, 1)], 4);
        assert_eq!(&a[1000..], &b[..]);
        assert_ne!(&a[..1000], &a[1000..]);
        assert_ne!(draw(&[(5, 1)], 5).0, b, "another step, another mask");
        let kept = a.iter().filter(|&&v| v != 0.0).count();
        assert!(
            (800..1200).contains(&kept),
            "{kept} of 2000 kept at p = 0.5"
        );
        assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
        assert!(
            training_pass(1, 0, Phase::Backbone, &[(0, 0), (1, 0)], || dropout_mask(
                0.1, 3
            ))
            .is_err()
        );
        assert_eq!(dropout_mask(0.5, 8).unwrap(), None, "the scope ended");
    }
}
