//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub mod classify;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn load_reference(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn get<'a>(r: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    r.get(name)
        .unwrap_or_else(|| panic!("reference has no `{name}`"))
}

pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

pub fn max_abs(t: &Tensor) -> f32 {
    values(t).iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// Largest absolute difference; panics on a shape mismatch.
pub fn max_diff(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    values(got)
        .iter()
        .zip(values(want))
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
}

/// Asserts `got` equals `want` to `tol` in absolute terms.
pub fn assert_close(got: &Tensor, want: &Tensor, tol: f32, what: &str) {
    let d = max_diff(got, want);
    assert!(d <= tol, "{what}: max |diff| {d:e} > {tol:e}");
}

/// Asserts a gradient equals the reference to `rel` relative to its largest entry. Tensors
/// whose true gradient is zero (a key-projection bias: softmax ignores a shift) are compared
/// against a floor tied to the model's largest gradient instead, since both sides hold only
/// rounding noise there.
pub fn assert_grad_close(got: &Tensor, want: &Tensor, rel: f32, floor: f32, what: &str) {
    let d = max_diff(got, want);
    let scale = max_abs(want).max(floor);
    assert!(
        d <= rel * scale,
        "{what}: max |diff| {d:e} > {rel} x {scale:e}"
    );
}
