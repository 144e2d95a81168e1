//! Parallel text: pairs of a source sentence and its translation, read from a TSV file
//! (`source<TAB>target` per line), from two aligned files (line `i` of one translates line `i`
//! of the other), or from a named corpus prepared on first use ([`libreoffice`], [`ding`]).
//!
//! Every problem is an error naming the file and line: text that is not UTF-8, a line of more
//! than a megabyte, a TSV line without exactly one tab, an empty side, aligned files of
//! unequal length. Line endings may be
//! `\n` or `\r\n`; a final newline is optional.

pub mod ding;
pub mod libreoffice;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// One sentence and its translation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub source: String,
    pub target: String,
}

/// The lines of a text file, each checked to be UTF-8 and at most
/// [`downstream_core::limits::LINE_BYTES`] long;
/// an error names the file and line. Read line by line, so that an over-long line is refused
/// after the limit's worth of bytes, not after the whole of it.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    use std::io::{BufRead, Read};
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let limit = downstream_core::limits::LINE_BYTES;
    let cap = usize::try_from(limit.get()).unwrap_or(usize::MAX);
    // A byte-order mark is not part of the first line (nor counted against the cap).
    if reader
        .fill_buf()
        .with_context(|| format!("reading {}", path.display()))?
        .starts_with(b"\xef\xbb\xbf")
    {
        reader.consume(3);
    }
    let mut lines = Vec::new();
    let mut buf = Vec::new();
    for i in 0.. {
        buf.clear();
        let n = (&mut reader)
            .take(cap as u64 + 2)
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > cap {
            bail!(
                "{}:{}: a line longer than {cap} bytes: not a text of sentences (set {} to \
                 allow longer lines)",
                path.display(),
                i + 1,
                limit.var
            );
        }
        let text = std::str::from_utf8(line).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: not valid UTF-8 (at byte {} of the line)",
                path.display(),
                i + 1,
                e.valid_up_to()
            )
        })?;
        lines.push(text.to_string());
    }
    Ok(lines)
}

/// Pairs from a TSV file: `source<TAB>target` on every line.
pub fn read_tsv(path: &Path) -> Result<Vec<Pair>> {
    read_lines(path)?
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            let at = || format!("{}:{}", path.display(), i + 1);
            let mut parts = line.split('\t');
            let (Some(source), Some(target), None) = (parts.next(), parts.next(), parts.next())
            else {
                bail!(
                    "{}: expected `source<TAB>target`, found {} tab(s)",
                    at(),
                    line.matches('\t').count()
                );
            };
            pair(source, target).with_context(at)
        })
        .collect()
}

/// Pairs from two aligned files: line `i` of `target` translates line `i` of `source`.
pub fn read_aligned(source: &Path, target: &Path) -> Result<Vec<Pair>> {
    let (s, t) = (read_lines(source)?, read_lines(target)?);
    if s.len() != t.len() {
        bail!(
            "{} has {} lines but {} has {}: aligned files need one translation per line",
            source.display(),
            s.len(),
            target.display(),
            t.len()
        );
    }
    s.into_iter()
        .zip(t)
        .enumerate()
        .map(|(i, (a, b))| {
            pair(&a, &b).with_context(|| {
                format!(
                    "{}:{} and {}:{}",
                    source.display(),
                    i + 1,
                    target.display(),
                    i + 1
                )
            })
        })
        .collect()
}

fn pair(source: &str, target: &str) -> Result<Pair> {
    let (source, target) = (source.trim(), target.trim());
    if source.is_empty() {
        bail!("the source side is empty");
    }
    if target.is_empty() {
        bail!("the target side is empty");
    }
    Ok(Pair {
        source: source.to_string(),
        target: target.to_string(),
    })
}

/// Writes pairs as TSV (the format [`read_tsv`] reads), atomically.
pub fn write_tsv(path: &Path, pairs: &[Pair]) -> Result<()> {
    let mut text = String::new();
    for p in pairs {
        for side in [&p.source, &p.target] {
            if side.contains(['\t', '\n', '\r']) {
                bail!("cannot write {side:?} to TSV: it holds a tab or a line break");
            }
        }
        text.push_str(&p.source);
        text.push('\t');
        text.push_str(&p.target);
        text.push('\n');
    }
    downstream_core::atomic::write(path, text.as_bytes())
}

/// Where training data comes from: a TSV file or a named corpus (`--data`), or two aligned
/// files (`--source` and `--target`).
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Tsv(PathBuf),
    Aligned { source: PathBuf, target: PathBuf },
}

impl Source {
    pub fn read(&self) -> Result<Vec<Pair>> {
        match self {
            Self::Tsv(p) => read_tsv(p),
            Self::Aligned { source, target } => read_aligned(source, target),
        }
    }
}

/// A fixed split of a named corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    /// By a stable hash modulo 100: below `test` test, below `val` validation, else training.
    pub fn by_hash(hash: u64, test: u64, val: u64) -> Self {
        match hash % 100 {
            h if h < test => Self::Test,
            h if h < val => Self::Val,
            _ => Self::Train,
        }
    }

    pub fn file_name(self) -> &'static str {
        match self {
            Self::Train => "train.tsv",
            Self::Val => "val.tsv",
            Self::Test => "test.tsv",
        }
    }
}

/// A named corpus's folder of `train.tsv`, `val.tsv` and `test.tsv` under the data-set cache:
/// on first use (or when `version` changes) its raw files are fetched through the hub and
/// `build` turns them into the splits, written whole or not at all.
fn ensure_pairs(
    name: &str,
    version: u32,
    build: impl FnOnce(&Path) -> Result<BTreeMap<Split, Vec<Pair>>>,
) -> Result<PathBuf> {
    let root = downstream_hub::datasets_root();
    let dir = root.join(format!("{name}-pairs"));
    let stamp = format!("{name} v{version}");
    if downstream_hub::atomic::completed(&dir).as_deref() == Some(stamp.as_str()) {
        return Ok(dir);
    }
    let manifest = downstream_hub::manifest::find_dataset(name)?;
    let raw = downstream_hub::ensure(&manifest, &root)?;
    let splits = build(&raw)?;
    downstream_hub::atomic::build_dir(&dir, &stamp, |out| {
        for split in [Split::Train, Split::Val, Split::Test] {
            let pairs = splits.get(&split).map_or(&[][..], Vec::as_slice);
            write_tsv(&out.join(split.file_name()), pairs)?;
        }
        Ok(())
    })?;
    let n = |s| splits.get(&s).map_or(0, Vec::len);
    eprintln!(
        "{name}: {} train, {} validation, {} test pairs in {}",
        n(Split::Train),
        n(Split::Val),
        n(Split::Test),
        dir.display()
    );
    Ok(dir)
}
