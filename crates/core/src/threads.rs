//! Where a binary's work runs: on a worker of the thread pool that candle's kernels and the
//! matrix products split their work over, not beside it.
//!
//! Run from `main`, a program has one thread more than the machine has cores: the main thread
//! hands each parallel op to the pool's workers, and between ops (sequential kernels,
//! allocation, the backward graph's bookkeeping) the idle workers spin against it for the
//! same cores. Run on a worker, the thread that issues an op takes a share of it and no core
//! is oversubscribed. Measured with `cargo xtask bench` on the 2-core machine: a DINOv2
//! ViT-S/14 training step from 3.08-3.33 s to 2.79-2.87 s (median of 5, three runs each),
//! with the slowest step within 20% of the median instead of up to 100% above it.
//!
//! candle runs its element-wise kernels on a pool of its own whose idle workers spin 25,000
//! times before sleeping, against the same cores. Told not to spin
//! (`CANDLE_BARRIER_POOL_SPIN_LIMIT=0`, unless the environment says otherwise), the
//! `translate` decoder's training step went from 174-208 ms to 139-146 ms, the MiniLM step
//! from 1.03-1.08 s to 0.91-1.00 s (median of 9 and of 5, two runs each).

/// Runs `f` on a worker of a pool with one thread per core and returns what it returns.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    const SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN).is_none() {
        // Read once, when candle first starts its pool: that happens inside `f`, and this
        // runs before any thread of ours exists.
        std::env::set_var(SPIN, "0");
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(f),
        // Without a pool of its own the work still runs, as before, beside the global one.
        Err(_) => f(),
    }
}
