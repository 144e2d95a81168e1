//! Object detection fine-tuned from a pretrained ViT backbone.

pub mod data;
pub mod dataset;
pub mod detector;
pub mod metric;
pub mod model;
pub mod pipeline;
pub mod synth;
