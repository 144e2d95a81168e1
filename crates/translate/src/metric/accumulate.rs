//! The engine's evaluation of a translator: BLEU and chrF statistics added batch by batch, the
//! scores computed once at the end.

use anyhow::Result;
use downstream_core::train::{Metric, Metrics};

use super::bleu::{self, BleuStats};
use super::chrf::{self, ChrfStats};
use crate::dataset::Target;

#[derive(Default)]
pub struct TranslationMetric {
    bleu: BleuStats,
    chrf: ChrfStats,
    sentences: usize,
}

impl Metric for TranslationMetric {
    type Output = String;
    type Target = Target;

    fn add(&mut self, outputs: Vec<String>, targets: &[&Target]) -> Result<()> {
        anyhow::ensure!(
            outputs.len() == targets.len(),
            "{} translations for {} references",
            outputs.len(),
            targets.len()
        );
        for (hypothesis, target) in outputs.iter().zip(targets) {
            let refs = [target.reference.as_str()];
            self.bleu += bleu::segment_stats(hypothesis, &refs);
            self.chrf += chrf::segment_stats(hypothesis, &refs);
        }
        self.sentences += outputs.len();
        Ok(())
    }

    fn finish(self) -> Result<Metrics> {
        let b = self.bleu.score(false);
        let mut m = Metrics::new();
        m.insert("bleu".into(), b.score);
        m.insert("chrf".into(), self.chrf.score());
        m.insert("bp".into(), b.bp);
        for (n, p) in b.precisions.iter().enumerate() {
            m.insert(format!("precision{}", n + 1), *p);
        }
        m.insert("sys_len".into(), b.sys_len as f64);
        m.insert("ref_len".into(), b.ref_len as f64);
        m.insert("sentences".into(), self.sentences as f64);
        Ok(m)
    }
}
