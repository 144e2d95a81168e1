//! The arithmetic of the fused kernels ([`super::fused`]) over whole rows, written for the
//! compiler to vectorise and compiled three times: for AVX-512, for AVX2 with FMA, and for the
//! baseline, the widest the processor has being chosen at run time (`multiversion`).
//!
//! What stops a loop from vectorising is a call per element (libm's `expf`, `erff`) or a
//! reduction into one accumulator (floating-point addition is not reassociated). So `exp` is
//! a polynomial inlined into the loop, and every sum, maximum and dot product keeps 16
//! partial results that the vector registers hold.

use multiversion::multiversion;

/// Partial results per reduction: one AVX-512 register of f32.
const LANES: usize = 16;

/// `e^x` to about 2 ulp for `x` up to 88, 0 below -87 (a masked attention score).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two, so that `n * LN2_HI` is exact for the `n` that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(-87.0, 88.0);
    let t = clamped * LOG2E + ROUND;
    let n = t - ROUND;
    let bits = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    // Minimax polynomial for e^r on [-ln2/2, ln2/2] (Cephes' expf coefficients).
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    let scaled = p * f32::from_bits(((bits + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        scaled
    }
}

const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// The standard normal distribution function `Phi(x)` and density `phi(x)` at `x`.
///
/// erf by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7, under f32's resolution
/// of values near 1). The formula's `exp(-z^2)` with `z = x / sqrt(2)` is the density's own
/// exponential, so the backward pass gets both for one `exp`.
#[inline(always)]
pub fn normal(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let e = exp(-z * z);
    let erf = (1.0 - poly * e).copysign(x);
    (0.5 * (1.0 + erf), FRAC_1_SQRT_2PI * e)
}

#[inline(always)]
fn lanes(partial: [f32; LANES]) -> f32 {
    partial.iter().sum()
}

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    lanes(acc) + rest
}

/// `sum((x - mean)^2)`.
#[inline(always)]
fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest: f32 = chunks
        .remainder()
        .iter()
        .map(|&v| (v - mean) * (v - mean))
        .sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v - mean) * (v - mean);
        }
    }
    lanes(acc) + rest
}

#[inline(always)]
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (cx, cy) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let rest: f32 = cx
        .remainder()
        .iter()
        .zip(cy.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in cx.zip(cy) {
        for ((acc, &a), &b) in acc.iter_mut().zip(a).zip(b) {
            *acc += a * b;
        }
    }
    lanes(acc) + rest
}

#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let mut m = f32::NEG_INFINITY;
    for &v in chunks.remainder() {
        m = if v > m { v } else { m };
    }
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().fold(m, |m, &v| if v > m { v } else { m })
}

/// Mean and `1 / sqrt(var + eps)` (biased variance) of one row.
#[inline(always)]
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    (mean, 1.0 / (sum_sq_dev(x, mean) / n + eps).sqrt())
}

/// `o = x * Phi(x)`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
pub fn gelu(o: &mut [f32], x: &[f32]) {
    for (o, &x) in o.iter_mut().zip(x) {
        *o = x * normal(x).0;
    }
}

/// `o = g * (Phi(x) + x * phi(x))`, GELU's derivative times the output gradient.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
pub fn gelu_grad(o: &mut [f32], x: &[f32], g: &[f32]) {
    for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
        let (cdf, density) = normal(x);
        *o = g * (cdf + x * density);
    }
}

/// Softmax of each row of `n` values. A row whose maximum is -inf (nothing to attend to) gives
/// zeros, not the NaN that -inf - -inf would.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
pub fn softmax(o: &mut [f32], x: &[f32], n: usize) {
    for (o, x) in o.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
        let m = max(x);
        if m == f32::NEG_INFINITY {
            o.fill(0.0);
            continue;
        }
        for (o, &x) in o.iter_mut().zip(x) {
            *o = exp(x - m);
        }
        let inv = 1.0 / sum(o);
        for o in o.iter_mut() {
            *o *= inv;
        }
    }
}

/// [`softmax`] of each row of `n` values of `x`, in place.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
pub fn softmax_in_place(x: &mut [f32], n: usize) {
    for x in x.chunks_exact_mut(n) {
        let m = max(x);
        if m == f32::NEG_INFINITY {
            x.fill(0.0);
            continue;
        }
        for x in x.iter_mut() {
            *x = exp(*x - m);
        }
        let inv = 1.0 / sum(x);
        for x in x.iter_mut() {
            *x *= inv;
        }
    }
}

/// The maximum of a row and the logarithm of `sum(exp(x - max))`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
pub fn log_sum_exp(x: &[f32]) -> (f32, f32) {
    let m = max(x);
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().map(|&v| exp(v - m)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += exp(v - m);
        }
    }
    (m, (lanes(acc) + rest).ln())
}

/// `o = scale * (exp(x - shift) - off)`: a cross-entropy row's gradient before its target's
/// term, with `shift` the row's maximum plus its log-sum-exp.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
pub fn scaled_probs(o: &mut [f32], x: &[f32], shift: f32, scale: f32, off: f32) {
    for (o, &x) in o.iter_mut().zip(x) {
        *o = scale * (exp(x - shift) - off);
    }
}

/// From each softmax row `y` and its output gradient `g`: `y * (g - dot(g, y))`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
pub fn softmax_grad(o: &mut [f32], y: &[f32], g: &[f32], n: usize) {
    for ((o, y), g) in o
        .chunks_exact_mut(n)
        .zip(y.chunks_exact(n))
        .zip(g.chunks_exact(n))
    {
        let d = dot(y, g);
        for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
            *o = y * (g - d);
        }
    }
}

/// Layer norm of each row of `w.len()` values.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
pub fn layer_norm(o: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
    let n = w.len();
    for (o, x) in o.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
        let (mean, rstd) = moments(x, eps);
        for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
            *o = (x - mean) * rstd * w + b;
        }
    }
}

/// Layer norm's input gradient per row, with `h` the standardised `x` and `u = g * w`:
/// `rstd * (u - mean(u) - h * mean(u * h))`. The moments are recomputed rather than kept,
/// which costs one pass over `x` and no memory between forward and backward.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
pub fn layer_norm_grad_input(o: &mut [f32], x: &[f32], g: &[f32], w: &[f32], eps: f32) {
    let n = w.len();
    for ((o, x), g) in o
        .chunks_exact_mut(n)
        .zip(x.chunks_exact(n))
        .zip(g.chunks_exact(n))
    {
        let (mean, rstd) = moments(x, eps);
        // `o` holds u first, then the result.
        for ((o, &g), &w) in o.iter_mut().zip(g).zip(w) {
            *o = g * w;
        }
        let mean_u = sum(o) / n as f32;
        // sum(u * h) = rstd * (sum(u * x) - mean * sum(u))
        let mean_uh = rstd * (dot(o, x) - mean * sum(o)) / n as f32;
        for (o, &x) in o.iter_mut().zip(x) {
            let h = (x - mean) * rstd;
            *o = rstd * (*o - mean_u - h * mean_uh);
        }
    }
}

/// Adds each row's weight and bias gradient, `g * h` and `g`, to `dw` and `db`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
pub fn layer_norm_grad_affine(dw: &mut [f32], db: &mut [f32], x: &[f32], g: &[f32], eps: f32) {
    let n = dw.len();
    for (x, g) in x.chunks_exact(n).zip(g.chunks_exact(n)) {
        let (mean, rstd) = moments(x, eps);
        for (((dw, db), &x), &g) in dw.iter_mut().zip(db.iter_mut()).zip(x).zip(g) {
            *dw += g * (x - mean) * rstd;
            *db += g;
        }
    }
}

/// `o = x + a * s` for each row of `s.len()` values.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
pub fn scaled_add(o: &mut [f32], x: &[f32], a: &[f32], s: &[f32]) {
    let n = s.len();
    for ((o, x), a) in o
        .chunks_exact_mut(n)
        .zip(x.chunks_exact(n))
        .zip(a.chunks_exact(n))
    {
        for (((o, &x), &a), &s) in o.iter_mut().zip(x).zip(a).zip(s) {
            *o = x + a * s;
        }
    }
}

/// Adds every row of `x * y` to `acc`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
pub fn sum_rows_product(acc: &mut [f32], x: &[f32], y: &[f32]) {
    let n = acc.len();
    for (x, y) in x.chunks_exact(n).zip(y.chunks_exact(n)) {
        for ((a, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *a += x * y;
        }
    }
}

/// Adds every row of `x` to `acc`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
pub fn sum_rows(acc: &mut [f32], x: &[f32]) {
    for x in x.chunks_exact(acc.len()) {
        for (a, &x) in acc.iter_mut().zip(x) {
            *a += x;
        }
    }
}

/// The scalars of one AdamW update of one parameter, each rounded to f32 from its f64 value
/// as PyTorch's Python-side arithmetic does (`1 - beta1` computed in f32 would differ).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    /// `1 - beta1`, the first moment's interpolation weight.
    pub w1: f32,
    pub beta2: f32,
    /// `1 - beta2`.
    pub w2: f32,
    pub eps: f32,
    /// `1 - lr * weight_decay`.
    pub decay: f32,
    /// The learning rate over the first moment's bias correction.
    pub step: f32,
    /// The square root of the second moment's bias correction.
    pub bc2_sqrt: f32,
}

/// One AdamW update of a parameter `p` with gradient `g`, moments `m` and `v` updated in
/// place, with `torch.optim.AdamW`'s arithmetic in its order (the first moment as a linear
/// interpolation, the denominator divided by `bc2_sqrt`), so that the two agree to the bit.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: AdamWStep) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m += h.w1 * (g - *m);
        *v = *v * h.beta2 + h.w2 * (g * g);
        let denom = v.sqrt() / h.bc2_sqrt + h.eps;
        *p = *p * h.decay + -h.step * (*m / denom);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_two_ulp_over_the_range_and_zero_below_it() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (super::exp(x), (x as f64).exp());
            let rel = ((got as f64 - want) / want).abs() as f32;
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "largest relative error {worst}");
        assert_eq!(super::exp(-1e30), 0.0);
        assert_eq!(super::exp(f32::MIN), 0.0);
        assert_eq!(super::exp(0.0), 1.0);
    }

    #[test]
    fn reductions_equal_plain_sums_at_every_length() {
        for n in [1usize, 15, 16, 17, 33, 384] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.25)
                .collect();
            let y: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
            let plain_sum: f32 = x.iter().sum();
            let plain_dot: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
            let plain_max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert!((super::sum(&x) - plain_sum).abs() < 1e-4, "sum, n = {n}");
            assert!(
                (super::dot(&x, &y) - plain_dot).abs() < 1e-4,
                "dot, n = {n}"
            );
            assert_eq!(super::max(&x), plain_max, "max, n = {n}");
        }
    }
}
