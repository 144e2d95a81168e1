//! `translate`: a BERT-initialised encoder-decoder translator fine-tuned through the shared
//! engine, scored with BLEU and chrF exactly as sacreBLEU scores them.

pub mod data;
pub mod dataset;
pub mod export;
pub mod metric;
pub mod pipeline;
pub mod search;
pub mod translator;
