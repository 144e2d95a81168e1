//! What the transfer study runs: for each task, its real data set, the training-set sizes
//! (nested subsets of the training split, fixed by the data's `subset_seed`, the same for
//! every training seed), the initialisations compared, and one budget of optimizer steps that
//! every cell of the task gets, whatever its size or initialisation. A cell is one training
//! run: (task, size, init, seed), with the arguments of the task's own `train` command, so
//! that any cell can be rerun by hand.

use std::fmt;

use anyhow::{bail, Result};

/// How the backbone starts and what trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Init {
    /// The same architecture with random weights, trained end to end.
    Scratch,
    /// The pretrained backbone frozen (features cached), the head trained.
    Frozen,
    /// The pretrained backbone's last N blocks and the head trained.
    Partial(usize),
    /// Everything trained, with the engine's recommended layer decay and backbone rate.
    Full,
}

impl Init {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "scratch" => Self::Scratch,
            "frozen" => Self::Frozen,
            "full" => Self::Full,
            _ => match s.strip_prefix("partial:").map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => Self::Partial(n),
                _ => bail!("unknown init `{s}`: scratch, frozen, full or partial:N (N >= 1)"),
            },
        })
    }

    /// The `train` flags that choose this initialisation for `backbone`.
    fn args(self, backbone: &str) -> Vec<String> {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            // Random weights need a larger backbone rate than a pretrained backbone tolerates:
            // the README's from-scratch recipe.
            Self::Scratch => {
                let mut a = v(&["--backbone", &format!("scratch:{backbone}")]);
                a.extend(v(&["--mode", "full", "--backbone-lr-scale", "0.25"]));
                a
            }
            Self::Frozen => v(&["--backbone", backbone, "--mode", "frozen"]),
            Self::Partial(n) => v(&["--backbone", backbone, "--mode", &format!("partial:{n}")]),
            Self::Full => v(&["--backbone", backbone, "--mode", "full"]),
        }
    }
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Scratch => write!(f, "scratch"),
            Self::Frozen => write!(f, "frozen"),
            Self::Partial(n) => write!(f, "partial:{n}"),
            Self::Full => write!(f, "full"),
        }
    }
}

/// A metric the study reports, as the run's `result.json` names it.
#[derive(Clone, Copy, Debug)]
pub struct Reported {
    pub name: &'static str,
    /// Multiplies the logged value into the unit shown (mIoU in percent, as mmsegmentation).
    pub scale: f64,
    pub decimals: usize,
}

/// One task's part of the study.
#[derive(Clone, Debug)]
pub struct TaskPlan {
    /// The task's binary and its runs folder.
    pub task: &'static str,
    pub dataset: &'static str,
    pub backbone: &'static str,
    /// The training split's size, and the sizes trained on (the last is all of it).
    pub train_total: usize,
    pub sizes: Vec<usize>,
    /// Optimizer steps of every cell, in batches of `batch`.
    pub steps: u64,
    pub batch: usize,
    /// Evaluate (and save the last checkpoint) every this many steps.
    pub eval_every: u64,
    /// Validate on this many validation examples (all of them if `None`).
    pub val_limit: Option<usize>,
    /// The first is the chart's; all land in the JSON.
    pub metrics: Vec<Reported>,
    /// Flags every cell of the task shares (data, input).
    pub common: Vec<String>,
}

/// One training run of the study.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub task: &'static str,
    pub train_size: usize,
    pub init: Init,
    pub seed: u64,
}

impl Cell {
    /// The run's name in the study's runs folder: `SIZE-INIT-sSEED`.
    pub fn name(&self) -> String {
        let init = self.init.to_string().replace(':', "");
        format!("{}-{init}-s{}", self.train_size, self.seed)
    }
}

impl TaskPlan {
    /// The `train` arguments of `cell` (the run folder's flags are the runner's).
    pub fn args(&self, cell: &Cell) -> Vec<String> {
        let mut a = vec!["train".to_string()];
        a.extend(self.common.iter().cloned());
        a.extend(cell.init.args(self.backbone));
        // Every evaluation at the same steps whatever the size (epochs differ in length),
        // and the last checkpoint saved on that schedule rather than at every epoch's end.
        let every = self.eval_every.to_string();
        let mut flags = vec![
            ("--train-limit", cell.train_size.to_string()),
            ("--steps", self.steps.to_string()),
            ("--batch", self.batch.to_string()),
            ("--seed", cell.seed.to_string()),
            ("--eval-every", "1000000".to_string()),
            ("--eval-every-steps", every.clone()),
            ("--checkpoint-every", every),
        ];
        if let Some(v) = self.val_limit {
            flags.push(("--val-limit", v.to_string()));
        }
        for (flag, value) in flags {
            a.push(flag.into());
            a.push(value);
        }
        a
    }
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

const fn reported(name: &'static str, scale: f64, decimals: usize) -> Reported {
    Reported {
        name,
        scale,
        decimals,
    }
}

const AP: Reported = reported("AP", 1.0, 3);
const AP50: Reported = reported("AP50", 1.0, 3);
const MIOU: Reported = reported("mIoU", 100.0, 1);
const BLEU: Reported = reported("bleu", 1.0, 2);
const CHRF: Reported = reported("chrf", 1.0, 2);

/// The full study: about 10%, 30% and 100% of each training split.
pub fn full() -> Vec<TaskPlan> {
    vec![
        TaskPlan {
            task: "detect",
            dataset: "deepforest",
            backbone: "dinov2-s14",
            train_total: 38,
            sizes: vec![4, 11, 38],
            steps: 200,
            batch: 8,
            eval_every: 25,
            val_limit: None,
            metrics: vec![AP, AP50],
            // The recipe of the study's first run (block-8 features, the narrow head, 224 pixels),
            // pinned in a file of its own so that a resumed study stays on it.
            common: strings(&["--config", "crates/detect/configs/deepforest-block8.toml"]),
        },
        TaskPlan {
            task: "segment",
            dataset: "fashion-scenes",
            backbone: "dinov2-s14",
            train_total: 3000,
            sizes: vec![300, 900, 3000],
            steps: 200,
            batch: 16,
            eval_every: 25,
            val_limit: None,
            metrics: vec![MIOU],
            // The README's fashion-scenes recipe: 112 pixels, 200 validation scenes during
            // training and all 500 for the best checkpoint.
            common: strings(&[
                "--data",
                "fashion-scenes",
                "--size",
                "112",
                "--eval-subset",
                "200",
            ]),
        },
        TaskPlan {
            task: "translate",
            dataset: "libreoffice-help-de-en",
            backbone: "minilm-l6",
            train_total: 20542,
            sizes: vec![2054, 6163, 20542],
            steps: 800,
            batch: 16,
            eval_every: 200,
            val_limit: None,
            metrics: vec![BLEU, CHRF],
            common: strings(&["--data", "libreoffice-help-de-en"]),
        },
    ]
}

/// `--quick`: one small size per task, a handful of steps and a few validation examples: a
/// check that every cell still runs end to end, not a measurement.
pub fn quick() -> Vec<TaskPlan> {
    full()
        .into_iter()
        .map(|mut p| {
            let (size, steps, batch, val) = match p.task {
                "detect" => (4, 6, 4, 4),
                "segment" => (32, 6, 8, 16),
                _ => (256, 8, 16, 16),
            };
            p.sizes = vec![size];
            p.steps = steps;
            p.batch = batch;
            p.eval_every = steps / 2;
            p.val_limit = Some(val);
            p
        })
        .collect()
}

/// The cells to run, seed by seed (a study stopped half-way has whole tables for its first
/// seeds), then task by task, size by size.
pub fn cells(plans: &[TaskPlan], inits: &[Init], seeds: u64) -> Vec<Cell> {
    let mut out = Vec::new();
    for seed in 0..seeds {
        for p in plans {
            for &train_size in &p.sizes {
                for &init in inits {
                    out.push(Cell {
                        task: p.task,
                        train_size,
                        init,
                        seed,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inits_parse_and_print_back() {
        for s in ["scratch", "frozen", "full", "partial:4"] {
            assert_eq!(Init::parse(s).unwrap().to_string(), s);
        }
        for bad in ["partial:0", "partial:x", "half", ""] {
            assert!(Init::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_are_about_a_tenth_a_third_and_all_of_each_split() {
        for p in full() {
            assert_eq!(p.sizes.last(), Some(&p.train_total), "{}", p.task);
            assert!(p.sizes.windows(2).all(|w| w[0] < w[1]), "{}", p.task);
            let first = p.sizes[0] as f64 / p.train_total as f64;
            assert!((0.09..=0.12).contains(&first), "{}: {first}", p.task);
        }
    }

    #[test]
    fn a_cell_gets_its_task_flags_its_init_and_its_budget() {
        let plans = full();
        let detect = &plans[0];
        let cell = Cell {
            task: "detect",
            train_size: 11,
            init: Init::Scratch,
            seed: 1,
        };
        let a = detect.args(&cell).join(" ");
        for want in [
            "train --config crates/detect/configs/deepforest-block8.toml",
            "--backbone scratch:dinov2-s14 --mode full --backbone-lr-scale 0.25",
            "--train-limit 11 --steps 200 --batch 8 --seed 1",
        ] {
            assert!(a.contains(want), "`{want}` not in `{a}`");
        }
        assert_eq!(cell.name(), "11-scratch-s1");
        let partial = Cell {
            init: Init::Partial(4),
            ..cell
        };
        assert_eq!(partial.name(), "11-partial4-s1");
        assert!(detect.args(&partial).join(" ").contains("--mode partial:4"));
        // Every cell of a task gets the same budget, at every size.
        let quick = quick();
        assert!(quick.iter().all(|p| p.sizes.len() == 1));
        let order = cells(&plans, &[Init::Frozen, Init::Full], 2);
        assert_eq!(order.len(), 2 * 3 * 3 * 2);
        assert!(order[..18].iter().all(|c| c.seed == 0));
    }
}
