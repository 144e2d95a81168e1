//! Core's own differentiable ops against PyTorch: the cross-entropy kernel (ignore index, label
//! smoothing, rows and dense maps, a large vocabulary) and the batched bilinear resize (both
//! `align_corners`, up and down), in values and gradients. Fixtures from
//! `scripts/reference/ops.py`.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use downstream_core::nn::interpolate::resize_bilinear;
use downstream_core::nn::loss::CrossEntropy;

fn reference() -> std::collections::HashMap<String, Tensor> {
    load_reference(&fixtures().join("ops/reference.safetensors"))
}

fn scalar_i64(t: &Tensor) -> i64 {
    t.to_vec1::<i64>().unwrap()[0]
}

#[test]
fn cross_entropy_matches_pytorch_in_loss_and_gradient() {
    let r = reference();
    for case in [
        "ce_rows",
        "ce_rows_smooth",
        "ce_dense",
        "ce_vocab",
        "ce_ignored",
    ] {
        let at = |k: &str| get(&r, &format!("{case}.{k}")).clone();
        let ce = CrossEntropy {
            ignore_index: Some(scalar_i64(&at("ignore_index")) as u32),
            label_smoothing: at("label_smoothing").to_vec1::<f32>().unwrap()[0] as f64,
        };
        let targets = at("target").to_dtype(DType::U32).unwrap();
        for on_cpu_kernel in [true, false] {
            // The composed form runs for anything but f32 on the CPU: f64 takes it here.
            let dtype = if on_cpu_kernel {
                DType::F32
            } else {
                DType::F64
            };
            let x = Var::from_tensor(&at("logits").to_dtype(dtype).unwrap()).unwrap();
            let loss = ce.sum(x.as_tensor(), &targets).unwrap();
            let grads = (&loss * 0.7).unwrap().backward().unwrap();
            let got = loss.to_dtype(DType::F32).unwrap();
            let want = at("loss");
            let tol = 1e-5 * max_abs(&want).max(1.0);
            assert_close(&got, &want, tol, &format!("{case} loss ({dtype:?})"));
            let g = grads
                .get(x.as_tensor())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            assert_close(
                &g,
                &at("grad_logits"),
                1e-5,
                &format!("{case} gradient ({dtype:?})"),
            );
        }
    }
}

#[test]
fn bilinear_resize_matches_pytorch_in_values_and_gradients() {
    let r = reference();
    for case in [
        "bl_mixed",
        "bl_mixed_ac",
        "bl_up4",
        "bl_up4_ac",
        "bl_down",
        "bl_one",
    ] {
        let at = |k: &str| get(&r, &format!("{case}.{k}")).clone();
        let want = at("out");
        let (_, _, h, w) = want.dims4().unwrap();
        let align = scalar_i64(&at("align_corners")) == 1;
        let x = Var::from_tensor(&at("x")).unwrap();
        let y = resize_bilinear(x.as_tensor(), h, w, align).unwrap();
        assert_close(&y, &want, 1e-5, &format!("{case} values"));
        let grads = (&y * at("weight"))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        assert_close(g, &at("grad_x"), 1e-5, &format!("{case} gradient"));
    }
    let x = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(resize_bilinear(&x, 0, 3, false).is_err());
}
