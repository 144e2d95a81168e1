//! Run configuration: a TOML file, command-line overrides on top, and the resolved result
//! saved with the run; on `--resume`, the run's own saved configuration. What every task's
//! configuration shares is defined once: the engine's section and flags (`engine.rs`), the
//! data's (`data.rs`), and here the run folder's flags, the resolution of a whole
//! configuration (a task's own sections included) and its reading and writing.

mod data;
mod engine;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use data::{holdout, spread, DataArgs, DataConfig};
pub use engine::{TrainArgs, TrainConfig};

/// A task's whole run configuration, as its `config.toml` holds it.
pub trait RunConfig: Serialize + DeserializeOwned + Default {
    fn train_mut(&mut self) -> &mut TrainConfig;

    /// A configuration file; the fields it leaves out keep the task's defaults.
    fn load(path: &Path) -> Result<Self> {
        load_toml_over(path, &Self::default())
    }
}

/// Fields a resumed run may change: how long it goes on (extended only, in the same unit),
/// when it evaluates, stops early and saves; none of them changes what a step computes. (Not
/// the feature cache: with it off, a frozen backbone sees fresh augmented views instead of
/// the cached ones.) (A longer budget stretches the rest of the learning-rate schedule: that is what
/// extending asks for.)
pub const RESUME_SAFE: &[&str] = &[
    "train.epochs",
    "train.steps",
    "train.patience",
    "train.eval_every",
    "train.eval_every_steps",
    "train.eval_batch",
    "train.checkpoint_every",
];

/// The configuration a `train` command runs with. A new run: the `--config` file (or the task's
/// defaults), the engine's flags on top, then the task's own (`apply`). A resumed run: the
/// configuration saved in its folder, with the flags given on top only where they leave the
/// result as it was ([`RESUME_SAFE`], the budget only extended); any other difference is an
/// error naming the fields, since the run would silently become one that nobody asked for.
pub fn resolve<C: RunConfig>(
    train: &TrainArgs,
    run: &RunArgs,
    dir: &Path,
    apply: impl FnOnce(&mut C),
) -> Result<C> {
    let given = |base: Option<&Path>| -> Result<C> {
        let mut cfg = match base {
            Some(path) => C::load(path)?,
            None => C::default(),
        };
        train.apply(cfg.train_mut());
        Ok(cfg)
    };
    if !run.resume {
        let mut cfg = given(train.config.as_deref())?;
        apply(&mut cfg);
        return Ok(cfg);
    }
    let path = dir.join("config.toml");
    let load_saved = || {
        C::load(&path)
            .with_context(|| format!("--resume needs the run's configuration, {}", path.display()))
    };
    let mut saved = load_saved()?;
    let mut asked = given(Some(train.config.as_deref().unwrap_or(&path)))?;
    apply(&mut asked);
    let changed = differences(&saved, &asked)?;
    let unsafe_changes: Vec<&String> = changed
        .iter()
        .filter(|f| !RESUME_SAFE.contains(&f.as_str()))
        .collect();
    if !unsafe_changes.is_empty() {
        bail!(
            "--resume with a changed configuration: {} differ from the run's ({}), and would \
             change its result. Resume without them, or start a new run (another --name). \
             Only these may change on --resume: {}",
            list(&unsafe_changes),
            path.display(),
            RESUME_SAFE.join(", ")
        );
    }
    let (was, now) = (saved.train_mut().clone(), asked.train_mut().clone());
    let shorter = match (was.steps, now.steps) {
        (Some(a), Some(b)) => b < a,
        (None, None) => now.epochs < was.epochs,
        // A budget in steps for one in epochs (or back) is no extension of it.
        _ => true,
    };
    if shorter {
        bail!(
            "--resume can extend a run's budget in the unit it was given, not shorten or \
             replace it ({}: epochs {}, steps {:?})",
            path.display(),
            was.epochs,
            was.steps
        );
    }
    if !changed.is_empty() {
        eprintln!(
            "resuming with {} changed",
            list(&changed.iter().collect::<Vec<_>>())
        );
    }
    Ok(asked)
}

fn list(fields: &[&String]) -> String {
    fields
        .iter()
        .map(|f| format!("`{f}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The dotted names of the fields whose values differ between two configurations (a field
/// absent on one side differs from any value on the other).
pub fn differences<C: Serialize>(a: &C, b: &C) -> Result<Vec<String>> {
    let a = toml::Table::try_from(a).context("serialising the configuration")?;
    let b = toml::Table::try_from(b).context("serialising the configuration")?;
    let mut out = Vec::new();
    diff_tables("", &a, &b, &mut out);
    out.sort();
    Ok(out)
}

fn diff_tables(prefix: &str, a: &toml::Table, b: &toml::Table, out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let name = format!("{prefix}{k}");
        match (a.get(k), b.get(k)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                diff_tables(&format!("{name}."), x, y, out)
            }
            (x, y) if x == y => {}
            _ => out.push(name),
        }
    }
}

/// Where a run's folder is and whether it continues an earlier one.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Run name: output goes to RUNS_DIR/<task>/<name>/.
    #[arg(long, default_value = "default")]
    pub name: String,
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Continue the run from its last checkpoint, with the configuration it was started with.
    #[arg(long)]
    pub resume: bool,
}

impl RunArgs {
    /// The run a task's binary makes when called without arguments: `runs/<task>/demo`.
    pub fn demo() -> Self {
        Self {
            name: "demo".into(),
            runs_dir: "runs".into(),
            resume: false,
        }
    }

    pub fn dir(&self, task: &str) -> PathBuf {
        self.runs_dir.join(task).join(&self.name)
    }
}

/// Reads a TOML configuration; errors name the file and the offending line.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Reads a TOML configuration whose missing fields, at any depth, keep their values in
/// `defaults`: a task's own defaults (a detector's learning rate, say) survive a file that sets
/// only some fields of a section, where plain deserialisation would fall back to the generic
/// defaults of that section's type.
pub fn load_toml_over<T: Serialize + DeserializeOwned>(path: &Path, defaults: &T) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let err = |e: toml::de::Error| anyhow::anyhow!("{}: {e}", path.display());
    // Parsed once as written, so that a mistake is reported with its line.
    toml::from_str::<T>(&text).map_err(err)?;
    let given: toml::Table = toml::from_str(&text).map_err(err)?;
    let mut merged = toml::Table::try_from(defaults).context("serialising the defaults")?;
    overlay(&mut merged, given);
    merged
        .try_into()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn overlay(base: &mut toml::Table, given: toml::Table) {
    for (key, value) in given {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(v)) => overlay(inner, v),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

/// Writes the resolved configuration as TOML, atomically.
pub fn save_toml<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = toml::to_string_pretty(value).context("serialising the configuration")?;
    crate::atomic::write(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::train::optimizer::AdamWConfig;

    #[test]
    fn hostile_configurations_load_or_fail_never_panic() {
        let valid = toml::to_string_pretty(&TrainConfig::default()).unwrap();
        crate::faults::mutate::never_panics(
            "config",
            "config.toml",
            valid.as_bytes(),
            3,
            400,
            |p: &Path| load_toml_over(p, &TrainConfig::default()),
        );
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "epochs = 3\nlearning_rate = 0.1\n").unwrap();
        let err = load_toml::<TrainConfig>(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.toml") && err.contains("learning_rate"),
            "{err}"
        );
    }

    #[test]
    fn a_partial_file_keeps_the_given_defaults_at_every_depth() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial.toml");
        std::fs::write(&path, "epochs = 3\n[optimizer]\nlayer_decay = 0.7\n").unwrap();
        let task_defaults = TrainConfig {
            lr: 0.02,
            batch: 5,
            optimizer: AdamWConfig {
                weight_decay: 0.3,
                ..Default::default()
            },
            ..Default::default()
        };
        let cfg = load_toml_over(&path, &task_defaults).unwrap();
        assert_eq!((cfg.epochs, cfg.lr, cfg.batch), (3, 0.02, 5));
        assert_eq!(
            (cfg.optimizer.layer_decay, cfg.optimizer.weight_decay),
            (0.7, 0.3)
        );
        // Mistakes are still reported with the file's name.
        std::fs::write(&path, "epochs = 3\n[optimizer]\nlayer_decai = 0.7\n").unwrap();
        let err = load_toml_over(&path, &task_defaults)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("partial.toml") && err.contains("layer_decai"),
            "{err}"
        );
    }

    #[derive(Default, Serialize, Deserialize, PartialEq, Debug)]
    #[serde(default)]
    struct Whole {
        data: DataConfig,
        train: TrainConfig,
        width: usize,
    }

    impl RunConfig for Whole {
        fn train_mut(&mut self) -> &mut TrainConfig {
            &mut self.train
        }
    }

    #[test]
    fn a_new_run_takes_file_and_flags_a_resumed_one_refuses_changes_to_its_result() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("given.toml");
        std::fs::write(&file, "width = 7\n[train]\nepochs = 3\n").unwrap();
        let args = TrainArgs {
            config: Some(file),
            lr: Some(0.5),
            ..Default::default()
        };
        let fresh = RunArgs {
            name: "x".into(),
            runs_dir: dir.path().into(),
            resume: false,
        };
        let data = DataArgs {
            data: Some("here".into()),
            val: None,
            train_limit: None,
            val_limit: None,
        };
        let cfg: Whole = resolve(&args, &fresh, dir.path(), |c: &mut Whole| {
            data.apply(&mut c.data)
        })
        .unwrap();
        assert_eq!((cfg.width, cfg.train.epochs, cfg.train.lr), (7, 3, 0.5));
        assert_eq!(cfg.data.train.as_deref(), Some(Path::new("here")));
        save_toml(&dir.path().join("config.toml"), &cfg).unwrap();
        // Resuming with no flags, or the same ones: the run as it was started.
        let resume = RunArgs {
            resume: true,
            ..fresh
        };
        let none = TrainArgs::default();
        let again: Whole = resolve(&none, &resume, dir.path(), |_: &mut Whole| {}).unwrap();
        assert_eq!(again, cfg);
        let same: Whole = resolve(&args, &resume, dir.path(), |c: &mut Whole| {
            data.apply(&mut c.data)
        })
        .unwrap();
        assert_eq!(same, cfg);
        // Flags that change the result are refused, each named.
        let other = TrainArgs {
            lr: Some(9.0),
            ..Default::default()
        };
        let err = resolve(&other, &resume, dir.path(), |c: &mut Whole| c.width = 1).unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("`train.lr`, `width`"), "{err}");
        // A longer budget and a patience are accepted, and used; a shorter one is not.
        let longer = TrainArgs {
            epochs: Some(5),
            patience: Some(2),
            ..Default::default()
        };
        let extended: Whole = resolve(&longer, &resume, dir.path(), |_: &mut Whole| {}).unwrap();
        assert_eq!(
            (extended.train.epochs, extended.train.patience),
            (5, Some(2))
        );
        assert_eq!(
            differences(&cfg, &extended).unwrap(),
            ["train.epochs", "train.patience"]
        );
        let shorter = TrainArgs {
            epochs: Some(2),
            ..Default::default()
        };
        let err = resolve::<Whole>(&shorter, &resume, dir.path(), |_| {}).unwrap_err();
        assert!(format!("{err:#}").contains("not shorten"), "{err:#}");
        // A budget in steps does not extend one in epochs.
        let in_steps = TrainArgs {
            steps: Some(1000),
            ..Default::default()
        };
        assert!(resolve::<Whole>(&in_steps, &resume, dir.path(), |_| {}).is_err());
        let err = resolve::<Whole>(&other, &resume, &dir.path().join("none"), |_| {}).unwrap_err();
        assert!(format!("{err:#}").contains("config.toml"), "{err:#}");
    }
}
