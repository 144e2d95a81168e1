//! Semantic segmentation fine-tuned from a pretrained ViT backbone.

pub mod data;
pub mod dataset;
pub mod metric;
pub mod model;
pub mod pipeline;
pub mod segmenter;
pub mod synth;
