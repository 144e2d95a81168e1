//! What every task's binary does around its commands: the allocator tuned for training, the
//! work run on the thread pool ([`crate::threads`]), and a failure printed as `error: ...` with its causes and a non-zero exit, never a panic's trace.

use std::process::ExitCode;

use anyhow::Result;

/// Runs a binary's commands and turns the outcome into its exit code.
pub fn main_with(run: impl FnOnce() -> Result<()> + Send) -> ExitCode {
    crate::memory::tune_for_training();
    match crate::threads::on_pool(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
