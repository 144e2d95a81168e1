//! The fine-tuning engine every task shares. A task hands it a model (backbone + head, as a
//! [`Task`]), data sets and a configuration; the engine runs the loop, caches frozen
//! features, schedules, clips, accumulates, averages weights, checkpoints, resumes, evaluates (streaming, on
//! detached weights), predicts, stops early, logs, plots and writes the run's result; one process per run folder. One concept per module.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod ema;
pub mod feature_cache;
pub mod inference;
pub mod lock;
pub mod metrics_log;
pub mod optimizer;
pub mod plot;
pub mod progress;
pub mod result;
pub mod rng;
pub mod scheduler;
pub mod summary;
pub mod task;
pub mod trainer;

pub use config::TrainConfig;
pub use data::{Dataset, Subset};
pub use inference::{evaluate, predict_all, Predicted};
pub use task::{Features, Metric, Metrics, Task};
pub use trainer::{fit, FitReport};
