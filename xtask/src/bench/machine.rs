//! The machine record of a bench report: what the numbers were measured on, including which
//! matrix-product kernels the processor let run.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub logical_cores: usize,
    /// Threads each side was given.
    pub threads: usize,
    pub simd: Vec<String>,
    /// The widest matrix-product kernels available at run time (the `gemm` crate dispatches
    /// on the processor it finds).
    pub matmul_kernels: String,
    pub os: String,
    pub commit: String,
    /// UTC, `YYYY-MM-DD HH:MM`.
    pub date: String,
    pub rustc: String,
    /// PyTorch and transformers versions, when the PyTorch side ran.
    pub torch: Option<String>,
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[cfg(target_arch = "x86_64")]
fn simd() -> (Vec<String>, String) {
    let mut found = Vec::new();
    macro_rules! probe {
        ($($f:tt),*) => {$(
            if std::arch::is_x86_feature_detected!($f) {
                found.push($f.to_string());
            }
        )*};
    }
    probe!(
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512dq",
        "avx512vl",
        "avx512vnni",
        "avx512bf16"
    );
    let kernels = if found.iter().any(|f| f == "avx512f") {
        "x86-v4 (AVX-512)"
    } else if found.iter().any(|f| f == "fma") {
        "x86-v3 (AVX2 + FMA)"
    } else {
        "baseline x86-64"
    };
    (found, kernels.to_string())
}

#[cfg(not(target_arch = "x86_64"))]
fn simd() -> (Vec<String>, String) {
    (Vec::new(), std::env::consts::ARCH.to_string())
}

pub fn describe(threads: usize) -> Machine {
    let (simd, matmul_kernels) = simd();
    Machine {
        cpu: cpu_model(),
        logical_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        threads,
        simd,
        matmul_kernels,
        os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        commit: command_line("git", &["rev-parse", "--short", "HEAD"]),
        date: command_line("date", &["-u", "+%Y-%m-%d %H:%M"]),
        rustc: command_line("rustc", &["--version"]),
        torch: None,
    }
}
