//! Sentence pairs as engine examples: the source as the encoder's token ids, the target as the
//! decoder's ids from `[CLS]` to `[SEP]`, with the reference text kept for BLEU and chrF.
//!
//! Both sides are tokenised once, in parallel, when the set is built. A side longer than its
//! tokenizer's limit is cut to fit and counted ([`TranslationData::truncated`]), never an
//! error: the run says how many.

use anyhow::Result;
use downstream_core::tokenizer::TextTokenizer;
use downstream_core::train::Dataset;
use rayon::prelude::*;

use crate::data::Pair;

/// What a translation is trained toward and scored against.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// `[CLS] ... [SEP]` in the target vocabulary.
    pub ids: Vec<u32>,
    /// The reference translation as written.
    pub reference: String,
}

impl Target {
    /// Tokens the loss is taken over: every id after `[CLS]`.
    pub fn label_count(&self) -> usize {
        self.ids.len().saturating_sub(1)
    }
}

/// Token ids, and whether they were cut to fit.
type Encoded = (Vec<u32>, bool);

pub struct TranslationData {
    sources: Vec<Vec<u32>>,
    targets: Vec<Target>,
    /// Sources and targets cut to fit their tokenizer's limit.
    pub truncated: (usize, usize),
}

impl TranslationData {
    pub fn new(
        pairs: &[Pair],
        source_tokenizer: &TextTokenizer,
        target_tokenizer: &TextTokenizer,
    ) -> Result<Self> {
        let encoded: Vec<(Encoded, Encoded)> = pairs
            .par_iter()
            .map(|p| {
                Ok((
                    source_tokenizer.ids_truncated(&p.source)?,
                    target_tokenizer.ids_truncated(&p.target)?,
                ))
            })
            .collect::<Result<_>>()?;
        let mut truncated = (0, 0);
        let mut sources = Vec::with_capacity(pairs.len());
        let mut targets = Vec::with_capacity(pairs.len());
        for (((source, cut_source), (target, cut_target)), pair) in encoded.into_iter().zip(pairs) {
            truncated.0 += cut_source as usize;
            truncated.1 += cut_target as usize;
            sources.push(source);
            targets.push(Target {
                ids: target,
                reference: pair.target.clone(),
            });
        }
        Ok(Self {
            sources,
            targets,
            truncated,
        })
    }

    /// Examples to predict only (no reference): the sources of `lines`.
    pub fn sources_only(lines: &[String], source_tokenizer: &TextTokenizer) -> Result<Self> {
        let pairs: Vec<Pair> = lines
            .iter()
            .map(|l| Pair {
                source: l.clone(),
                target: String::new(),
            })
            .collect();
        let sources: Vec<(Vec<u32>, bool)> = pairs
            .par_iter()
            .map(|p| source_tokenizer.ids_truncated(&p.source))
            .collect::<Result<_>>()?;
        let truncated = (sources.iter().filter(|s| s.1).count(), 0);
        Ok(Self {
            sources: sources.into_iter().map(|s| s.0).collect(),
            targets: pairs
                .iter()
                .map(|_| Target {
                    ids: Vec::new(),
                    reference: String::new(),
                })
                .collect(),
            truncated,
        })
    }
}

impl Dataset for TranslationData {
    type Input = Vec<u32>;
    type Target = Target;

    fn len(&self) -> usize {
        self.sources.len()
    }

    fn input(&self, index: usize, _view: u64) -> Result<Vec<u32>> {
        Ok(self.sources[index].clone())
    }

    fn target(&self, index: usize, _view: u64) -> Result<Target> {
        Ok(self.targets[index].clone())
    }

    /// Source and target tokens: what a batch pads to.
    fn length(&self, index: usize) -> Option<usize> {
        Some(self.sources[index].len() + self.targets[index].ids.len())
    }
}
