//! Repository chores: `cargo xtask <command>` (an alias in `.cargo/config.toml`).

mod bench;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Repository chores for downstream")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Named pretrained models (manifests under models/).
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Named data sets (manifests under datasets/).
    Datasets {
        #[command(subcommand)]
        command: DatasetsCommand,
    },
    /// Time the backbones, task heads, optimizer and hot ops, side by side with PyTorch with
    /// --vs-torch (writes target/bench/latest.json and report.md); `bench transfer`: what
    /// pretraining buys on every task's real data.
    Bench(bench::BenchArgs),
    /// One bench row, in a process of its own (started by `bench`).
    #[command(hide = true)]
    BenchRow {
        id: String,
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
}

#[derive(Subcommand)]
enum DatasetsCommand {
    /// List the named data sets.
    List,
    /// Fetch, verify and convert a data set into datasets/cache/.
    Fetch { name: String },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List the named models and whether each is in the cache.
    List,
    /// Fetch, verify and convert models into the cache (all of them if none is named).
    Fetch { names: Vec<String> },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(args)?,
        Command::BenchRow { id, runs } => bench::run_row(&id, runs)?,
        Command::Models {
            command: ModelsCommand::List,
        } => {
            let root = downstream_hub::root();
            for m in downstream_hub::manifest::all()? {
                let cached = root.join(&m.name).join(".complete").is_file();
                println!(
                    "{:<12} {:<7} {}  [{}]",
                    m.name,
                    m.family,
                    m.summary,
                    if cached { "cached" } else { "not fetched" }
                );
            }
        }
        Command::Models {
            command: ModelsCommand::Fetch { names },
        } => {
            let all = downstream_hub::manifest::all()?;
            let chosen: Vec<_> = if names.is_empty() {
                all
            } else {
                names
                    .iter()
                    .map(|n| downstream_hub::manifest::find(n))
                    .collect::<Result<_>>()?
            };
            for m in chosen {
                let dir = downstream_hub::ensure(&m, &downstream_hub::root())?;
                println!("{}: {}", m.name, dir.display());
            }
        }
        Command::Datasets {
            command: DatasetsCommand::List,
        } => {
            for m in downstream_hub::manifest::datasets()? {
                println!("{:<12} {:<10} {}", m.name, m.family, m.summary);
            }
        }
        Command::Datasets {
            command: DatasetsCommand::Fetch { name },
        } => {
            let m = downstream_hub::manifest::find_dataset(&name)?;
            // The raw files come through the hub; the task crate that owns the format turns
            // them into its training and validation sets.
            let dir = downstream_hub::ensure(&m, &downstream_hub::datasets_root())?;
            println!("{name}: raw files in {}", dir.display());
            let task = match m.family.as_str() {
                "detection" => "detect",
                "segmentation" => "segment",
                "translation" => "translate",
                other => anyhow::bail!("no task crate converts `{other}` data sets yet"),
            };
            let status = std::process::Command::new(
                std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            )
            .args([
                "run",
                "--release",
                "--quiet",
                "--package",
                task,
                "--",
                "fetch",
                &name,
            ])
            .status()?;
            anyhow::ensure!(status.success(), "`{task} fetch {name}` failed");
        }
    }
    Ok(())
}
