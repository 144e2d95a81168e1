//! Generating translations from the decoder: greedy (the default) and beam search with a
//! length penalty. Both run the decoder one token per step against its key/value cache, so a
//! sentence of `n` tokens costs `n` single-token steps, not `n` re-runs of its prefix.

use anyhow::Result;
use candle_core::{Tensor, D};
use downstream_core::backbone::{BertDecoder, DecodeState};
use serde::{Deserialize, Serialize};

/// How translations are generated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Hypotheses kept per sentence; 1 is greedy search.
    pub beam: usize,
    /// The most tokens generated per sentence (also bounded by the decoder's positions and by
    /// twice the source's length plus 10).
    pub max_len: usize,
    /// A finished hypothesis scores its summed log-probability divided by its length to this
    /// power: 0 favours short outputs, 1 is the mean per token.
    pub length_penalty: f64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            beam: 1,
            max_len: 128,
            length_penalty: 1.0,
        }
    }
}

/// The ids that begin and end a target.
#[derive(Clone, Copy, Debug)]
pub struct Special {
    pub bos: u32,
    pub eos: u32,
}

fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let rows: Vec<Vec<f32>> = logits.to_vec2()?;
    Ok(rows
        .into_iter()
        .map(|mut r| {
            let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = r.iter().map(|v| (v - max).exp()).sum();
            let log_sum = max + sum.ln();
            r.iter_mut().for_each(|v| *v -= log_sum);
            r
        })
        .collect())
}

/// Token ids (without `[CLS]` and `[SEP]`) for each sentence of an encoder output
/// `[B, S, D]` with its padding mask and each sentence's source length.
pub fn generate(
    decoder: &BertDecoder,
    encoder: &Tensor,
    encoder_mask: &Tensor,
    source_lens: &[usize],
    special: Special,
    config: &SearchConfig,
) -> Result<Vec<Vec<u32>>> {
    let limit = config
        .max_len
        .min(decoder.config.max_position_embeddings.saturating_sub(1));
    let limits: Vec<usize> = source_lens.iter().map(|&s| limit.min(2 * s + 10)).collect();
    if config.beam <= 1 {
        greedy(decoder, encoder, encoder_mask, &limits, special)
    } else {
        (0..source_lens.len())
            .map(|i| {
                beam(
                    decoder,
                    &encoder.narrow(0, i, 1)?,
                    &encoder_mask.narrow(0, i, 1)?,
                    limits[i],
                    special,
                    config,
                )
            })
            .collect()
    }
}

fn greedy(
    decoder: &BertDecoder,
    encoder: &Tensor,
    encoder_mask: &Tensor,
    limits: &[usize],
    special: Special,
) -> Result<Vec<Vec<u32>>> {
    let b = limits.len();
    let device = encoder.device();
    let mut state = decoder.start(encoder, Some(encoder_mask))?;
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut done = vec![false; b];
    let mut next = vec![special.bos; b];
    let longest = limits.iter().copied().max().unwrap_or(0);
    for step in 0..longest {
        let ids = Tensor::from_vec(next.clone(), (b, 1), device)?;
        let logits = decoder.step(&mut state, &ids)?.squeeze(1)?;
        let best: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
        for i in 0..b {
            if done[i] {
                continue;
            }
            if best[i] == special.eos || step + 1 >= limits[i] {
                done[i] = true;
                if best[i] != special.eos {
                    outputs[i].push(best[i]);
                }
            } else {
                outputs[i].push(best[i]);
            }
            next[i] = best[i];
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(outputs)
}

struct Hypothesis {
    tokens: Vec<u32>,
    score: f64,
}

fn beam(
    decoder: &BertDecoder,
    encoder: &Tensor,
    encoder_mask: &Tensor,
    limit: usize,
    special: Special,
    config: &SearchConfig,
) -> Result<Vec<u32>> {
    let k = config.beam;
    let device = encoder.device();
    let normalised =
        |score: f64, len: usize| score / (len.max(1) as f64).powf(config.length_penalty);
    let mut state: DecodeState = decoder.start(encoder, Some(encoder_mask))?;
    let mut alive = vec![Hypothesis {
        tokens: Vec::new(),
        score: 0.0,
    }];
    let mut finished: Vec<(f64, Vec<u32>)> = Vec::new();
    let mut last = vec![special.bos];
    for step in 0..limit {
        let ids = Tensor::from_vec(last.clone(), (alive.len(), 1), device)?;
        let logits = decoder.step(&mut state, &ids)?.squeeze(1)?;
        let rows = log_softmax_rows(&logits)?;
        let mut candidates: Vec<(f64, usize, u32)> = Vec::new();
        for (h, (hyp, row)) in alive.iter().zip(&rows).enumerate() {
            // The best 2k continuations of each hypothesis are enough for the best 2k overall.
            let mut best: Vec<(f32, u32)> = row
                .iter()
                .enumerate()
                .map(|(t, &p)| (p, t as u32))
                .collect();
            let cut = (2 * k).min(best.len());
            best.select_nth_unstable_by(cut - 1, |a, b| b.0.total_cmp(&a.0));
            for &(p, t) in &best[..cut] {
                candidates.push((hyp.score + p as f64, h, t));
            }
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut next_alive = Vec::new();
        let mut rows_kept = Vec::new();
        for (score, h, t) in candidates {
            if t == special.eos || step + 1 >= limit {
                let mut tokens = alive[h].tokens.clone();
                if t != special.eos {
                    tokens.push(t);
                }
                let len = tokens.len() + 1;
                finished.push((normalised(score, len), tokens));
            } else {
                let mut tokens = alive[h].tokens.clone();
                tokens.push(t);
                next_alive.push(Hypothesis { tokens, score });
                rows_kept.push(h as u32);
            }
            if next_alive.len() == k {
                break;
            }
        }
        // Done once k hypotheses have finished and none alive scores better now than the best
        // finished one (the heuristic of transformers' beam search without early stopping).
        let best_finished = finished
            .iter()
            .map(|f| f.0)
            .fold(f64::NEG_INFINITY, f64::max);
        let best_alive = next_alive
            .iter()
            .map(|h| normalised(h.score, h.tokens.len() + 1))
            .fold(f64::NEG_INFINITY, f64::max);
        if next_alive.is_empty() || (finished.len() >= k && best_finished >= best_alive) {
            break;
        }
        state.select(&Tensor::from_vec(
            rows_kept.clone(),
            rows_kept.len(),
            device,
        )?)?;
        last = next_alive
            .iter()
            .map(|h| *h.tokens.last().expect("a hypothesis alive has a token"))
            .collect();
        alive = next_alive;
    }
    let best = finished
        .into_iter()
        .chain(
            alive
                .into_iter()
                .map(|h| (normalised(h.score, h.tokens.len() + 1), h.tokens)),
        )
        .max_by(|a, b| a.0.total_cmp(&b.0));
    Ok(best.map(|b| b.1).unwrap_or_default())
}
