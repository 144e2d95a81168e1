//! Where training and validation data come from, and which part of them a run uses: the
//! `[data]` section every task's configuration holds, the flags that override it, and the
//! deterministic selections (a held-out share, nested training subsets, a spread validation
//! subset) that keep runs comparable.

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// Where training and validation data come from: the `[data]` section of every task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// The training data (a file, a folder or a named data set); the task's built-in set if
    /// absent.
    pub train: Option<PathBuf>,
    /// Validation data in the same forms; if absent, `val_fraction` of the training data.
    pub val: Option<PathBuf>,
    pub val_fraction: Option<f64>,
    /// Train on this many of the training examples: the first of a permutation fixed by
    /// `subset_seed`, so that growing limits give nested subsets (data-size studies).
    pub train_limit: Option<usize>,
    pub subset_seed: u64,
    /// Validate on this many of the validation examples, spread evenly over the set (the same
    /// ones every time): a quick check's budget, not a measurement. All of them if absent.
    pub val_limit: Option<usize>,
}

impl DataConfig {
    /// Which of `n` training items to keep under `train_limit`, in their original order
    /// (`None`: all of them).
    pub fn kept(&self, n: usize) -> Option<Vec<bool>> {
        let limit = self.train_limit?;
        let mut keep = vec![false; n];
        for i in crate::train::rng::epoch_order(self.subset_seed, 0, n)
            .into_iter()
            .take(limit)
        {
            keep[i] = true;
        }
        Some(keep)
    }

    /// Which of `n` validation items to keep under `val_limit`: evenly spread, as the engine's
    /// evaluation subset, so that a limited set still covers the whole split (`None`: all).
    pub fn val_kept(&self, n: usize) -> Option<Vec<bool>> {
        let limit = self.val_limit?;
        let mut keep = vec![false; n];
        for i in spread(n, limit) {
            keep[i] = true;
        }
        Some(keep)
    }

    /// The share of the training data held out when no validation set is given (default 0.2).
    pub fn holdout_fraction(&self) -> Result<f64> {
        let f = self.val_fraction.unwrap_or(0.2);
        anyhow::ensure!(
            f > 0.0 && f < 1.0,
            "val_fraction must be between 0 and 1, not {f}"
        );
        Ok(f)
    }
}

/// `k` indices spread evenly over `0..n` (all of them when `k >= n`), in order.
pub fn spread(n: usize, k: usize) -> Vec<usize> {
    if k >= n {
        (0..n).collect()
    } else {
        (0..k).map(|i| i * n / k).collect()
    }
}

/// Every `k`-th of `n` items in a stable order, `k = round(1 / fraction)`: which items validate
/// when no validation set is given, deterministic and spread over the whole set.
pub fn holdout(n: usize, fraction: f64) -> Vec<bool> {
    let k = (1.0 / fraction).round().max(2.0) as usize;
    (0..n).map(|i| (i + 1) % k == 0).collect()
}

/// Command-line flags for the data, shared by every task's `train` command.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct DataArgs {
    /// Training data: a file, a folder, or a named data set (default: the built-in set).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation data (default: a share of the training data, `val_fraction`).
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Train on N of the training examples (a fixed selection; growing N gives nested sets).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Validate on N of the validation examples, spread over the set (a quick check).
    #[arg(long)]
    pub val_limit: Option<usize>,
}

impl DataArgs {
    pub fn apply(&self, cfg: &mut DataConfig) {
        if self.data.is_some() {
            cfg.train = self.data.clone();
        }
        if self.val.is_some() {
            cfg.val = self.val.clone();
        }
        if self.train_limit.is_some() {
            cfg.train_limit = self.train_limit;
        }
        if self.val_limit.is_some() {
            cfg.val_limit = self.val_limit;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kth_item_is_held_out() {
        let held: Vec<usize> = holdout(10, 0.2)
            .into_iter()
            .enumerate()
            .filter_map(|(i, h)| h.then_some(i))
            .collect();
        assert_eq!(held, [4, 9]);
        assert_eq!(holdout(9, 0.34).iter().filter(|&&h| h).count(), 3);
        let bad = DataConfig {
            val_fraction: Some(1.0),
            ..Default::default()
        };
        assert!(bad.holdout_fraction().is_err());
        // Limits give nested subsets of the asked size.
        let limited = |k| DataConfig {
            train_limit: Some(k),
            subset_seed: 4,
            ..Default::default()
        };
        let small = limited(3).kept(20).unwrap();
        let large = limited(9).kept(20).unwrap();
        assert_eq!(small.iter().filter(|&&k| k).count(), 3);
        assert_eq!(large.iter().filter(|&&k| k).count(), 9);
        assert!(small.iter().zip(&large).all(|(s, l)| !s || *l));
        assert_eq!(DataConfig::default().kept(5), None);
        // A validation limit spreads over the whole set.
        let val = DataConfig {
            val_limit: Some(3),
            ..Default::default()
        };
        let kept: Vec<usize> = (val.val_kept(9).unwrap().into_iter().enumerate())
            .filter_map(|(i, k)| k.then_some(i))
            .collect();
        assert_eq!(kept, [0, 3, 6]);
        assert_eq!(DataConfig::default().val_kept(5), None);
    }
}
