//! Randomness that a resumed run can reproduce without saving generator internals.
//!
//! Every random choice is a pure function of the run seed and where it is made (epoch,
//! sample): the shuffle of epoch `e` is drawn from a generator seeded by `(seed, e)`, the
//! augmentation of sample `i` in epoch `e` by `(seed, e, i)`. A run resumed at any step makes
//! the same choices as one that never stopped, and the checkpoint needs only the seed and the
//! position.

use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a random choice is for; each purpose has streams of its own.
#[derive(Clone, Copy)]
enum Purpose {
    Shuffle = 0,
    Augment = 1,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_permutations_that_depend_on_seed_and_epoch() {
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
}
