//! downstream-core: pretrained backbones that load Hugging Face checkpoints, match the
//! reference implementation, and train for real.

pub mod atomic;
pub mod backbone;
pub mod grad;
pub mod memory;
pub mod nn;
pub mod params;
pub mod tokenizer;
pub mod train;

pub use params::{Freeze, ParamStore};
