//! downstream-core: pretrained backbones that load Hugging Face checkpoints, match the
//! reference implementation, and train for real.

pub mod backbone;
#[cfg(any(test, feature = "faults"))]
pub mod faults;
pub mod grad;
pub mod hash;
pub mod limits;
pub mod memory;
pub mod nn;
pub mod params;
pub mod threads;
pub mod tokenizer;
pub mod train;
pub mod vision;

pub use downstream_hub::atomic;
pub use params::{Freeze, ParamStore};
