//! The translator as an engine task: a pretrained BERT encoder (in any freeze mode) and a BERT
//! decoder with cross-attention, trained with teacher forcing, label smoothing and a loss
//! averaged over target tokens; translations generated through [`crate::search`].
//!
//! The decoder reads the encoder's middle block by default, and the blocks above it are not
//! loaded: all-MiniLM-L6-v2 was trained for a pooled sentence vector, and its last blocks keep
//! less of each word than its middle one (block 3 doubled the BLEU of block 6, README). The
//! other defaults (2 decoder layers, 4,000 target entries, batches of 16) are the demo's
//! recipe: with the decoder reading block 6, they scored 7.1 BLEU against 5.1 for 3 layers,
//! 8,000 entries and batches of 32 in less time.
//!
//! The engine's split at the backbone is the encoder's output: one example's features are its
//! hidden states `[len, D]` at its own length, so that frozen mode caches them without padding
//! and a batch pads only to its own longest source.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use downstream_core::backbone::bert_decoder::{decoder_config, warm_start};
use downstream_core::backbone::{self, Bert, BertDecoder, TextBatch};
use downstream_core::nn::loss::CrossEntropy;
use downstream_core::nn::Detach;
use downstream_core::params::WeightFile;
use downstream_core::tokenizer::TextTokenizer;
use downstream_core::train::{Features, Task, TrainConfig};
use downstream_core::{Freeze, ParamStore};
use serde::{Deserialize, Serialize};

use crate::dataset::Target;
use crate::metric::accumulate::TranslationMetric;
use crate::search::{self, SearchConfig, Special};

/// The `[model]` section of a translation run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// How many of the encoder's blocks run, counted from the bottom: the decoder reads the
    /// last of them, and the blocks above are not loaded (freeze modes and layer decay count
    /// from it). Absent, the lower half, rounded up; a run folder records the number. A
    /// sentence-embedding encoder's last blocks serve its pooled vector more than the words:
    /// on the LibreOffice help, MiniLM-L6 read at block 3 scored 15.1 BLEU, at block 6 7.1
    /// (README).
    pub encoder_blocks: Option<usize>,
    /// Layers of the decoder (as wide as the encoder, so that cross-attention reads it as is).
    pub decoder_layers: usize,
    /// Start the decoder's self-attention and feed-forward layers from the encoder's
    /// (BERT2BERT); cross-attention and the target vocabulary start new either way.
    pub warm_start: bool,
    /// Entries of the target vocabulary trained on the training targets.
    pub vocab_size: usize,
    /// Source tokens kept (longer sources are cut and counted).
    pub max_source_len: usize,
    /// Target tokens kept, `[CLS]` and `[SEP]` included.
    pub max_target_len: usize,
    /// Label smoothing of the cross-entropy.
    pub label_smoothing: f64,
    pub search: SearchConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            encoder_blocks: None,
            decoder_layers: 2,
            warm_start: true,
            vocab_size: 4000,
            max_source_len: 128,
            max_target_len: 128,
            label_smoothing: 0.1,
            search: SearchConfig::default(),
        }
    }
}

pub struct Translator {
    pub encoder: Bert,
    pub decoder: BertDecoder,
    pub params: ParamStore,
    pub frozen: bool,
    pub target_tokenizer: Arc<TextTokenizer>,
    pub special: Special,
    pub label_smoothing: f64,
    pub search: SearchConfig,
    pad_id: u32,
}

/// Label of a target position that counts for nothing (padding).
const IGNORED: u32 = u32::MAX;

impl Translator {
    /// The encoder `train` names (pretrained, or `scratch:NAME` for random weights) in its
    /// mode, with a new decoder for `target_tokenizer`'s vocabulary, seeded by `train.seed`.
    /// Returns the source tokenizer too.
    pub fn new(
        train: &TrainConfig,
        model: &ModelConfig,
        target_tokenizer: Arc<TextTokenizer>,
        device: &Device,
    ) -> Result<(Self, TextTokenizer)> {
        let (spec, mode) = (train.backbone.as_str(), train.mode);
        let context = || format!("encoder `{spec}` in mode {mode}");
        let blocks = match model.encoder_blocks {
            Some(n) => n,
            None => backbone::text_config(spec)
                .with_context(context)?
                .num_hidden_layers
                .div_ceil(2),
        };
        // partial:N counts from the block the decoder reads, not from the encoder's top.
        let (encoder, source_tokenizer, mut params) = backbone::load_text_limited(
            spec,
            mode,
            Some(model.max_source_len),
            Some(blocks),
            device,
        )
        .with_context(|| {
            format!(
                "{} reading {blocks} of its blocks (--encoder-blocks)",
                context()
            )
        })?;
        let config = decoder_config(
            &encoder.config,
            model.decoder_layers,
            target_tokenizer.vocab_size(),
        );
        let mut file = if model.warm_start {
            // A decoder layer without an encoder block to copy would start new while the
            // configuration says warm: refuse rather than train less warm than asked.
            if model.decoder_layers > blocks {
                bail!(
                    "a warm-started decoder copies the encoder's first blocks, but {} decoder \
                     layers are more than the {blocks} encoder blocks read: use \
                     --decoder-layers {blocks} or fewer, --encoder-blocks {} or more, or \
                     --no-warm-start",
                    model.decoder_layers,
                    model.decoder_layers
                );
            }
            warm_start(&params, "", model.decoder_layers, train.seed, device)?
        } else {
            WeightFile::fresh(train.seed, device)
        };
        let depth = params.top_depth;
        let decoder = BertDecoder::from_weights(config, &mut file, &mut params, "decoder.", depth)?;
        let special = Special {
            bos: target_tokenizer.require_id("[CLS]")?,
            eos: target_tokenizer.require_id("[SEP]")?,
        };
        let pad_id = target_tokenizer.require_id("[PAD]")?;
        Ok((
            Self {
                encoder,
                decoder,
                params,
                frozen: mode == Freeze::Frozen,
                target_tokenizer,
                special,
                label_smoothing: model.label_smoothing,
                search: model.search.clone(),
                pad_id,
            },
            source_tokenizer,
        ))
    }

    /// Encoder outputs of a batch padded to its longest, `[B, S, D]`, with the padding mask
    /// `[B, S]` and each one's length.
    fn padded(&self, features: &[&Features]) -> Result<(Tensor, Tensor, Vec<usize>)> {
        let lens: Vec<usize> = features
            .iter()
            .map(|f| f[0].dim(0))
            .collect::<candle_core::Result<_>>()?;
        let s = lens.iter().copied().max().unwrap_or(0);
        let d = self.encoder.hidden_size();
        let device = features[0][0].device();
        let mut rows = Vec::with_capacity(features.len());
        let mut mask = Vec::with_capacity(features.len() * s);
        for (f, &len) in features.iter().zip(&lens) {
            let h = &f[0];
            rows.push(if len < s {
                Tensor::cat(&[h, &Tensor::zeros((s - len, d), h.dtype(), device)?], 0)?
            } else {
                h.clone()
            });
            mask.extend((0..s).map(|i| if i < len { 1f32 } else { 0.0 }));
        }
        let mask = Tensor::from_vec(mask, (features.len(), s), device)?;
        Ok((Tensor::stack(&rows, 0)?, mask, lens))
    }
}

impl Task for Translator {
    type Input = Vec<u32>;
    type Target = Target;
    type Output = String;
    type Metric = TranslationMetric;

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn backbone_frozen(&self) -> bool {
        self.frozen
    }

    fn encode(&self, inputs: &[Vec<u32>]) -> Result<Vec<Features>> {
        let b = inputs.len();
        let t = inputs.iter().map(Vec::len).max().unwrap_or(0);
        let device = self.params.device();
        let mut ids = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for input in inputs {
            ids.extend(
                input
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, t - input.len())),
            );
            mask.extend((0..t).map(|i| if i < input.len() { 1f32 } else { 0.0 }));
        }
        let batch = TextBatch {
            input_ids: Tensor::from_vec(ids, (b, t), &device)?,
            attention_mask: Tensor::from_vec(mask, (b, t), &device)?,
            token_type_ids: Tensor::zeros((b, t), DType::U32, &device)?,
        };
        let hidden = self.encoder.forward(&batch)?;
        inputs
            .iter()
            .enumerate()
            .map(|(i, input)| Ok(vec![hidden.get(i)?.narrow(0, 0, input.len())?]))
            .collect()
    }

    fn loss(&self, features: &[&Features], targets: &[&Target]) -> Result<Tensor> {
        let (encoder, encoder_mask, _) = self.padded(features)?;
        let b = targets.len();
        let t = targets
            .iter()
            .map(|x| x.label_count())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut inputs = Vec::with_capacity(b * t);
        let mut labels = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for target in targets {
            let n = target.label_count();
            for i in 0..t {
                let real = i < n;
                inputs.push(if real { target.ids[i] } else { self.pad_id });
                labels.push(if real { target.ids[i + 1] } else { IGNORED });
                mask.push(if real { 1f32 } else { 0.0 });
            }
        }
        let device = encoder.device();
        let inputs = Tensor::from_vec(inputs, (b, t), device)?;
        let mask = Tensor::from_vec(mask, (b, t), device)?;
        let labels = Tensor::from_vec(labels, b * t, device)?;
        let logits = self
            .decoder
            .forward(&inputs, Some(&mask), &encoder, Some(&encoder_mask))?;
        let v = self.decoder.vocab_size();
        let ce = CrossEntropy {
            ignore_index: Some(IGNORED),
            label_smoothing: self.label_smoothing,
        };
        Ok(ce.sum(&logits.reshape((b * t, v))?, &labels)?)
    }

    /// The mean is over target tokens.
    fn loss_weight(&self, targets: &[&Target]) -> f64 {
        targets.iter().map(|t| t.label_count()).sum::<usize>() as f64
    }

    fn predict(&self, features: &[&Features]) -> Result<Vec<String>> {
        let (encoder, mask, lens) = self.padded(features)?;
        let ids = search::generate(
            &self.decoder,
            &encoder,
            &mask,
            &lens,
            self.special,
            &self.search,
        )?;
        ids.iter()
            .map(|ids| self.target_tokenizer.decode(ids))
            .collect()
    }

    fn metric(&self) -> Result<TranslationMetric> {
        Ok(TranslationMetric::default())
    }

    fn main_metric(&self) -> &str {
        "bleu"
    }

    fn plotted_metrics(&self) -> Vec<String> {
        vec!["bleu".into(), "chrf".into()]
    }

    fn detached(&self) -> Result<Self> {
        Ok(Self {
            encoder: self.encoder.detached(),
            decoder: self.decoder.detached(),
            params: self.params.clone(),
            frozen: self.frozen,
            target_tokenizer: self.target_tokenizer.clone(),
            special: self.special,
            label_smoothing: self.label_smoothing,
            search: self.search.clone(),
            pad_id: self.pad_id,
        })
    }
}
