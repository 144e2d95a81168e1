//! downstream-core: pretrained backbones that load Hugging Face checkpoints, match the
//! reference implementation, and train for real.

pub mod backbone;
pub mod grad;
pub mod nn;
pub mod params;
pub mod tokenizer;

pub use params::{Freeze, ParamStore};
