//! Faults for the tests, real ones: a training process killed at random moments
//! ([`drill`]), and hostile inputs for every parser of user files ([`mutate`]). Behind the
//! `faults` feature, which the task crates' tests turn on; nothing here ships in a binary.

pub mod drill;
pub mod mutate;

pub use drill::{config_command, drill, Drill};
