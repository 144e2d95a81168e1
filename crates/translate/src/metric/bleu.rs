//! Corpus BLEU as sacreBLEU computes it by default: `13a` tokens, n-grams up to 4 clipped by
//! their largest count in any reference, the closest reference length (the shorter on a
//! tie), the brevity penalty on corpus sums, and exponential smoothing of orders without a
//! match (the NIST `mteval` method: 100 / (2^k * total) for the k-th such order).
//!
//! Statistics are integers summed over segments ([`BleuStats`]), so that evaluation can add
//! them batch by batch and the score is computed once at the end.

use std::collections::HashMap;

use serde::Serialize;

use super::tokenize::tokenize_13a;

/// The largest n-gram order.
pub const MAX_ORDER: usize = 4;

/// What BLEU is computed from, summed over segments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BleuStats {
    pub sys_len: u64,
    pub ref_len: u64,
    /// Clipped n-gram matches per order.
    pub correct: [u64; MAX_ORDER],
    /// Hypothesis n-grams per order.
    pub total: [u64; MAX_ORDER],
}

/// A BLEU score with what it is made of, as sacreBLEU reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bleu {
    pub score: f64,
    pub precisions: [f64; MAX_ORDER],
    pub bp: f64,
    pub sys_len: u64,
    pub ref_len: u64,
    pub counts: [u64; MAX_ORDER],
    pub totals: [u64; MAX_ORDER],
}

/// The statistics of one hypothesis against its references (any number, at least one).
pub fn segment_stats(hypothesis: &str, references: &[&str]) -> BleuStats {
    let hyp = tokenize_13a(hypothesis);
    let hyp: Vec<&str> = hyp.split(' ').filter(|t| !t.is_empty()).collect();
    let refs: Vec<String> = references.iter().map(|r| tokenize_13a(r)).collect();
    let refs: Vec<Vec<&str>> = refs
        .iter()
        .map(|r| r.split(' ').filter(|t| !t.is_empty()).collect())
        .collect();
    let h = hyp.len();
    let mut closest = refs.first().map_or(0, Vec::len);
    for r in &refs {
        let (d, best) = (r.len().abs_diff(h), closest.abs_diff(h));
        if d < best || (d == best && r.len() < closest) {
            closest = r.len();
        }
    }
    let mut stats = BleuStats {
        sys_len: h as u64,
        ref_len: closest as u64,
        ..Default::default()
    };
    for n in 1..=MAX_ORDER {
        let hyp_counts = count_ngrams(&hyp, n);
        let mut max_ref: HashMap<Vec<&str>, u64> = HashMap::new();
        for r in &refs {
            for (g, c) in count_ngrams(r, n) {
                let e = max_ref.entry(g).or_insert(0);
                *e = (*e).max(c);
            }
        }
        stats.correct[n - 1] = hyp_counts
            .iter()
            .map(|(g, &c)| c.min(max_ref.get(g).copied().unwrap_or(0)))
            .sum();
        stats.total[n - 1] = h.saturating_sub(n - 1) as u64;
    }
    stats
}

fn count_ngrams<'a>(tokens: &[&'a str], n: usize) -> HashMap<Vec<&'a str>, u64> {
    let mut counts = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *counts.entry(w.to_vec()).or_insert(0) += 1;
        }
    }
    counts
}

impl std::ops::AddAssign for BleuStats {
    fn add_assign(&mut self, o: Self) {
        self.sys_len += o.sys_len;
        self.ref_len += o.ref_len;
        for n in 0..MAX_ORDER {
            self.correct[n] += o.correct[n];
            self.total[n] += o.total[n];
        }
    }
}

impl BleuStats {
    /// The score, with sacreBLEU's effective order off (corpus BLEU: every order counts, and
    /// a corpus without any 4-gram scores 0) or on (sentence BLEU: the orders the hypothesis
    /// has).
    pub fn score(&self, effective_order: bool) -> Bleu {
        let bp = if self.sys_len >= self.ref_len {
            1.0
        } else if self.sys_len > 0 {
            (1.0 - self.ref_len as f64 / self.sys_len as f64).exp()
        } else {
            0.0
        };
        let mut precisions = [0.0; MAX_ORDER];
        let mut result = Bleu {
            score: 0.0,
            precisions,
            bp,
            sys_len: self.sys_len,
            ref_len: self.ref_len,
            counts: self.correct,
            totals: self.total,
        };
        if self.correct.iter().all(|&c| c == 0) {
            return result;
        }
        let mut smooth = 1.0;
        let mut order = MAX_ORDER;
        for (n, p) in precisions.iter_mut().enumerate() {
            let (correct, total) = (self.correct[n], self.total[n]);
            if total == 0 {
                break;
            }
            if effective_order {
                order = n + 1;
            }
            *p = if correct == 0 {
                smooth *= 2.0;
                100.0 / (smooth * total as f64)
            } else {
                100.0 * correct as f64 / total as f64
            };
        }
        let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
        let sum: f64 = precisions[..order].iter().map(|&p| log(p)).sum();
        result.score = bp * (sum / order as f64).exp();
        result.precisions = precisions;
        result
    }
}
