//! Learning-rate schedule: linear warm-up, then cosine decay to a floor.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosine {
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// The rate at the end, as a fraction of `base_lr`.
    pub min_lr_ratio: f64,
}

impl WarmupCosine {
    /// The rate used for optimizer step `step` (0-based).
    ///
    /// Warm-up counts from `1/warmup` of the base rate at step 0 (a first step at rate zero
    /// would be wasted) up to the full rate at step `warmup - 1`; cosine decay then runs from
    /// the base rate at step `warmup` to `min_lr_ratio * base_lr` at the last step.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self
            .total_steps
            .saturating_sub(self.warmup_steps)
            .saturating_sub(1);
        let progress = if decay_steps == 0 {
            0.0
        } else {
            ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0)
        };
        let floor = self.base_lr * self.min_lr_ratio;
        floor + (self.base_lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_then_cosine_values() {
        let s = WarmupCosine {
            base_lr: 1e-3,
            warmup_steps: 4,
            total_steps: 14,
            min_lr_ratio: 0.1,
        };
        assert!(close(s.lr(0), 0.25e-3));
        assert!(close(s.lr(1), 0.5e-3));
        assert!(close(s.lr(3), 1e-3));
        assert!(close(s.lr(4), 1e-3));
        // Decay runs over steps 4..=12 when there are 13 steps: step 8 is halfway, where the
        // rate is the mean of base and floor.
        let mid = WarmupCosine {
            total_steps: 13,
            ..s.clone()
        }
        .lr(8);
        assert!(close(mid, (1e-3 + 1e-4) / 2.0), "{mid}");
        assert!(close(s.lr(13), 1e-4));
        assert!(close(s.lr(100), 1e-4));
        for t in 4..13 {
            assert!(s.lr(t + 1) < s.lr(t));
        }
    }

    #[test]
    fn no_warmup_starts_at_the_base_rate() {
        let s = WarmupCosine {
            base_lr: 0.1,
            warmup_steps: 0,
            total_steps: 1,
            min_lr_ratio: 0.0,
        };
        assert!(close(s.lr(0), 0.1));
    }
}
