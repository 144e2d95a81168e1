//! Process-wide allocator settings for training.
//!
//! candle allocates a fresh buffer for every intermediate tensor, and a training step keeps
//! hundreds of them, many of several megabytes. glibc serves such buffers with `mmap` and hands
//! them back with `munmap`, so every step pays page faults, kernel page zeroing and TLB
//! shootdowns across threads: measured here, GELU, softmax and layer norm forward+backward ran
//! 3-8x slower than with these settings. Serving the buffers from the heap and keeping freed
//! memory for the next step removes that cost.

/// Call once at the start of a binary, before the first tensor.
pub fn tune_for_training() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's thresholds; it is called before any other thread
    // exists, and an out-of-range value is refused (returns 0) rather than misapplied.
    unsafe {
        // glibc refuses mmap thresholds above 32 MiB; every per-op buffer of the default
        // models fits under it.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // Freed memory stays with the process up to 1 GiB above the heap's top.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        // One heap for every thread. Work runs on pool workers ([`crate::threads`]), and
        // glibc gives each allocating thread an arena of its own whose freed buffers another
        // thread cannot reuse: measured, the peak of a ViT-S training step grew from 2.2 to
        // 3.0-3.4 GB and one step in five took twice as long. With two or a few threads the
        // shared heap's lock costs nothing measurable.
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
