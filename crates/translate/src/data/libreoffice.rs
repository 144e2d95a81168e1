//! `libreoffice-help-de-en` (the default corpus): English -> German pairs from the LibreOffice
//! 7.4 help, which Debian ships as HTML pages in both languages (`libreoffice-help-en-us`,
//! `libreoffice-help-de`, MPL-2.0). Every paragraph and heading carries the same `id` in both.
//!
//! - Pages: the `text/**.html` paths both languages have, in byte order of their paths.
//! - Segments: `p`, `h1`..`h6` (and the help's stray `h`) with an `id`, except the empty
//!   footer paragraphs `bm_module`, `bm_system`, `bm_HID`. Their text is every text node in
//!   document order, `br` a space, images nothing; inline switches keep their default branch
//!   (an element marked `hidden` is skipped unless its id starts with `default`), so "Tools -
//!   Options" stays and the macOS "LibreOffice - Preferences" goes. Entities are decoded; soft
//!   hyphens and zero-width characters deleted; whitespace runs become one space.
//! - Alignment by (page, id). An id repeated within a page (snippets embedded from other pages)
//!   makes one pair when all its occurrences read the same in each language, and none
//!   otherwise: section order differs between the languages, so occurrences cannot be paired
//!   by position.
//! - Kept: both sides non-empty, different from each other, at least 6 English words; the
//!   first pair of each English sentence (pages in order, segments in English document order),
//!   so that no English sentence is in two splits.
//! - Splits by page (no page in two): FNV-1a of the page path modulo 100, below 5 test, below
//!   10 validation, else training. Measured on 4:7.4.7-1+deb12u14: 23,072 pairs, 20,542 /
//!   1,267 / 1,263.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use downstream_core::hash::fnv1a64;
use scraper::node::Node;
use scraper::{ElementRef, Html, Selector};

use super::{ensure_pairs, Pair, Split};

/// The corpus's name (`--data libreoffice-help-de-en`, `translate fetch ...`).
pub const NAME: &str = "libreoffice-help-de-en";

/// Footer paragraphs of every page, empty in the shipped help.
const FOOTER_IDS: [&str; 3] = ["bm_module", "bm_system", "bm_HID"];

/// Changes whenever the pairs change.
const VERSION: u32 = 1;

/// The split of a page: FNV-1a of its path modulo 100, below 5 test, below 10 validation.
pub fn split_of_page(page: &str) -> Split {
    Split::by_hash(fnv1a64(page.as_bytes()), 5, 10)
}

/// The segments of one page: `(id, text)` in document order.
pub fn segments(html: &str) -> Vec<(String, String)> {
    let document = Html::parse_document(html);
    let selector = Selector::parse("p[id], h1[id], h2[id], h3[id], h4[id], h5[id], h6[id], h[id]")
        .expect("a valid selector");
    document
        .select(&selector)
        .filter_map(|e| {
            let id = e.value().id()?.trim();
            if id.is_empty() || FOOTER_IDS.contains(&id) {
                return None;
            }
            let mut raw = String::new();
            collect_text(e, &mut raw);
            Some((id.to_string(), normalise(&raw)))
        })
        .collect()
}

fn collect_text(element: ElementRef, out: &mut String) {
    for child in element.children() {
        match child.value() {
            Node::Text(t) => out.push_str(t),
            Node::Element(e) => {
                if e.name() == "br" {
                    out.push(' ');
                    continue;
                }
                let hidden = e.attr("hidden").is_some()
                    && !e.id().is_some_and(|id| id.starts_with("default"));
                if hidden {
                    continue;
                }
                if let Some(child) = ElementRef::wrap(child) {
                    collect_text(child, out);
                }
            }
            _ => {}
        }
    }
}

fn normalise(raw: &str) -> String {
    raw.chars()
        .filter(|c| !matches!(c, '\u{ad}' | '\u{200b}' | '\u{feff}'))
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// One text per id of a page: an id whose occurrences differ is left out.
fn by_id(segments: Vec<(String, String)>) -> (Vec<String>, BTreeMap<String, String>) {
    let mut order = Vec::new();
    let mut texts: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (id, text) in segments {
        match texts.get_mut(&id) {
            None => {
                order.push(id.clone());
                texts.insert(id, Some(text));
            }
            Some(seen) => {
                if seen.as_deref() != Some(text.as_str()) {
                    *seen = None;
                }
            }
        }
    }
    let texts = texts
        .into_iter()
        .filter_map(|(id, t)| t.map(|t| (id, t)))
        .collect();
    (order, texts)
}

/// What aligning the pages found, for the log and the README.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub pages: usize,
    pub aligned: usize,
    pub kept: usize,
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

/// All `.html` files under `dir`, as paths relative to `base` with `/`.
fn pages(dir: &Path, base: &Path, out: &mut BTreeSet<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            pages(&path, base, out)?;
        } else if path.extension().is_some_and(|e| e == "html") {
            let rel = path.strip_prefix(base)?;
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .collect();
            out.insert(parts.join("/"));
        }
    }
    Ok(())
}

/// The pairs of each split from the two languages' help folders (`en`, `de`, each holding
/// `text/`).
pub fn align(en: &Path, de: &Path) -> Result<(BTreeMap<Split, Vec<Pair>>, Counts)> {
    let (mut en_pages, mut de_pages) = (BTreeSet::new(), BTreeSet::new());
    pages(&en.join("text"), en, &mut en_pages)?;
    pages(&de.join("text"), de, &mut de_pages)?;
    let both: Vec<&String> = en_pages.intersection(&de_pages).collect();
    let read = |dir: &Path, page: &str| -> Result<String> {
        let path = dir.join(page);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8", path.display()))
    };
    let mut counts = Counts {
        pages: both.len(),
        ..Counts::default()
    };
    let mut seen_english = HashSet::new();
    let mut splits: BTreeMap<Split, Vec<Pair>> = BTreeMap::new();
    for page in both {
        let (order, english) = by_id(segments(&read(en, page)?));
        let (_, german) = by_id(segments(&read(de, page)?));
        let split = split_of_page(page);
        for id in order {
            let (Some(source), Some(target)) = (english.get(&id), german.get(&id)) else {
                continue;
            };
            counts.aligned += 1;
            if source.is_empty()
                || target.is_empty()
                || source == target
                || source.split_whitespace().count() < 6
                || !seen_english.insert(source.clone())
            {
                continue;
            }
            splits.entry(split).or_default().push(Pair {
                source: source.clone(),
                target: target.clone(),
            });
        }
    }
    let n = |s| splits.get(&s).map_or(0, Vec::len);
    counts.train = n(Split::Train);
    counts.val = n(Split::Val);
    counts.test = n(Split::Test);
    counts.kept = counts.train + counts.val + counts.test;
    Ok((splits, counts))
}

/// The corpus's folder with `train.tsv`, `val.tsv` and `test.tsv`, fetching the help pages and
/// aligning them on first use.
pub fn ensure() -> Result<PathBuf> {
    ensure_pairs(NAME, VERSION, |raw| {
        eprintln!("aligning the English and German help pages");
        let (splits, counts) = align(&raw.join("en-US"), &raw.join("de"))?;
        eprintln!(
            "{NAME}: {} pages, {} aligned segments, {} pairs kept",
            counts.pages, counts.aligned, counts.kept
        );
        Ok(splits)
    })
}
