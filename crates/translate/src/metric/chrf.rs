//! chrF as sacreBLEU computes it by default (chrF2: character n-grams of orders 1 to 6,
//! whitespace removed, recall weighted by beta = 2).
//!
//! Per segment and order: the hypothesis's n-grams (counted as none where the reference is too
//! short to have any of that order), the reference's, and their clipped matches. With several
//! references a segment keeps the statistics of its best one. Corpus statistics are the sums;
//! the score averages precision and recall over the orders present on both sides, then takes
//! one F-beta of the averages.

use std::collections::HashMap;

use super::tokenize::is_python_space;

/// Character n-gram orders.
pub const CHAR_ORDER: usize = 6;
/// Recall counts beta^2 times as much as precision.
pub const BETA: f64 = 2.0;

/// `[hypothesis n-grams, reference n-grams, matches]` per order, summed over segments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChrfStats(pub [[u64; 3]; CHAR_ORDER]);

fn char_ngrams(chars: &[char], n: usize) -> HashMap<&[char], u64> {
    let mut counts = HashMap::new();
    if chars.len() >= n {
        for w in chars.windows(n) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

fn stripped(s: &str) -> Vec<char> {
    s.chars().filter(|&c| !is_python_space(c)).collect()
}

fn against(hyp: &[char], reference: &str) -> ChrfStats {
    let reference = stripped(reference);
    let mut stats = ChrfStats::default();
    for n in 1..=CHAR_ORDER {
        let r = char_ngrams(&reference, n);
        let ref_total: u64 = r.values().sum();
        if ref_total == 0 {
            continue;
        }
        let h = char_ngrams(hyp, n);
        let matches = h
            .iter()
            .map(|(g, &c)| c.min(r.get(g).copied().unwrap_or(0)))
            .sum();
        stats.0[n - 1] = [h.values().sum(), ref_total, matches];
    }
    stats
}

/// The statistics of one hypothesis against the best of its references.
pub fn segment_stats(hypothesis: &str, references: &[&str]) -> ChrfStats {
    let hyp = stripped(hypothesis);
    let mut best = (-1.0, ChrfStats::default());
    for r in references {
        let stats = against(&hyp, r);
        let f = stats.score();
        if f > best.0 {
            best = (f, stats);
        }
    }
    best.1
}

impl std::ops::AddAssign for ChrfStats {
    fn add_assign(&mut self, o: Self) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            for k in 0..3 {
                a[k] += b[k];
            }
        }
    }
}

impl ChrfStats {
    /// chrF on sacreBLEU's 0-100 scale.
    pub fn score(&self) -> f64 {
        let (mut precision, mut recall, mut orders) = (0.0, 0.0, 0);
        for &[hyp, reference, matches] in &self.0 {
            if hyp > 0 && reference > 0 {
                precision += matches as f64 / hyp as f64;
                recall += matches as f64 / reference as f64;
                orders += 1;
            }
        }
        if orders == 0 {
            return 0.0;
        }
        precision /= orders as f64;
        recall /= orders as f64;
        if precision + recall == 0.0 {
            return 0.0;
        }
        let factor = BETA * BETA;
        100.0 * ((1.0 + factor) * precision * recall / (factor * precision + recall))
    }
}
