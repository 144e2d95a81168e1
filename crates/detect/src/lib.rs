//! Object detection fine-tuned from a pretrained ViT backbone.

pub mod data;
pub mod metric;
