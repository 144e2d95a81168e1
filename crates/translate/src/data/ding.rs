//! `ding-de-en`: the example sentences of Ding, the German-English dictionary of TU Chemnitz
//! (Debian's `trans-de-en`, GPL-2+: fetched, never committed). Its lines read
//! `German :: English`; sub-entries split by ` | ` align on both sides, and within one, `; `
//! separates alternatives.
//!
//! - Sub-entries whose English ends a sentence (`.`, `?`, `!`, perhaps with a closing quote)
//!   are split into alternatives at `; ` when the next word does not start in lower case
//!   (which keeps a semicolon inside a sentence).
//! - Annotations are removed: `{f}`, `[Br.]`, `<aufregen>`, `(optional words)` and markers
//!   such as `/KIT/`; spaces before punctuation go.
//! - Alternatives pair one to one when both sides have as many, else each English one with the
//!   first German one (they are synonyms).
//! - Kept: English that starts with a capital or digit (after at most one opening quote), ends a
//!   sentence and has at least 5 words (dictionary phrases such as "to be liable for sth." do
//!   not start with a capital); German that starts and ends the same way (`…` ends it too);
//!   the two sides different; the first pair of each English sentence.
//! - Splits by the German sentence (so every English paraphrase of one German sentence is in
//!   one split): FNV-1a modulo 100, below 6 test, below 12 validation, else training. Measured
//!   on 1.9-6: 17,066 pairs, 15,020 / 1,033 / 1,013.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Result;
use downstream_core::hash::fnv1a64;

use super::{ensure_pairs, read_lines, Pair, Split};

/// The corpus's name (`--data ding-de-en`, `translate fetch ding-de-en`).
pub const NAME: &str = "ding-de-en";

/// Changes whenever the pairs change.
const VERSION: u32 = 1;

const CLOSING_QUOTES: &[char] = &['"', '\'', '“', '”', '‘', '’', '»', '«'];
const OPENING_QUOTES: &[char] = &['"', '\'', '“', '„', '‘', '‚', '»', '«', '¿', '¡'];

fn ends_sentence(s: &str, enders: &[char]) -> bool {
    let s = s.strip_suffix(CLOSING_QUOTES).unwrap_or(s);
    s.ends_with(enders)
}

fn starts_sentence(s: &str) -> bool {
    let s = s.strip_prefix(OPENING_QUOTES).unwrap_or(s);
    s.chars()
        .next()
        .is_some_and(|c| c.is_uppercase() || c.is_ascii_digit())
}

/// Splits at `;` plus whitespace unless the next word starts in lower case.
fn alternatives(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == ';' && chars.get(i + 1).is_some_and(|c| c.is_whitespace()) {
            let mut j = i + 1;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let lower = chars
                .get(j)
                .is_some_and(|&c| c.is_ascii_lowercase() || matches!(c, 'ä' | 'ö' | 'ü' | 'ß'));
            if !lower {
                parts.push(std::mem::take(&mut current));
                i = j;
                continue;
            }
        }
        current.push(c);
        i += 1;
    }
    parts.push(current);
    parts
}

/// Removes the innermost `open ... close` groups (no `open` or `close` inside), each replaced by
/// a space; whether any was found.
fn strip_groups(s: &mut String, open: char, close: char) -> bool {
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    let mut rest = s.as_str();
    while let Some(start) = rest.find(open) {
        let after = &rest[start + open.len_utf8()..];
        match after.find([open, close]) {
            Some(k) if after[k..].starts_with(close) => {
                out.push_str(&rest[..start]);
                out.push(' ');
                rest = &after[k + close.len_utf8()..];
                changed = true;
            }
            _ => {
                out.push_str(&rest[..start + open.len_utf8()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    *s = out;
    changed
}

/// Removes `/ABBR/` markers: a slash at the start or after a space, then a non-space, no slash
/// inside, and a closing slash before a space, the end or `;,.!?`.
fn strip_markers(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut at_word_start = true;
    while let Some(c) = rest.chars().next() {
        if c == '/' && at_word_start {
            let inner = &rest[1..];
            if let Some(end) = inner.find('/') {
                let body = &inner[..end];
                let next = inner[end + 1..].chars().next();
                if body.chars().next().is_some_and(|b| !b.is_whitespace())
                    && next.is_none_or(|n| n.is_whitespace() || ";,.!?".contains(n))
                {
                    out.push(' ');
                    rest = &inner[end + 1..];
                    at_word_start = false;
                    continue;
                }
            }
        }
        out.push(c);
        at_word_start = c.is_whitespace();
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// An alternative without its annotations, spaced as a sentence.
pub fn clean(s: &str) -> String {
    let mut s = s.to_string();
    loop {
        let mut changed = false;
        for (open, close) in [('{', '}'), ('[', ']'), ('<', '>'), ('(', ')')] {
            changed |= strip_groups(&mut s, open, close);
        }
        if !changed {
            break;
        }
    }
    let s = strip_markers(&s);
    let words: Vec<&str> = s.split_whitespace().collect();
    let mut out = String::with_capacity(s.len());
    for (i, w) in words.iter().enumerate() {
        // A lone punctuation mark joins the previous word ("Hallo !" -> "Hallo!"; "Nun ..."
        // stays, an ellipsis).
        let mut chars = w.chars();
        let punctuation =
            matches!((chars.next(), chars.next()), (Some(c), None) if ".,;:!?".contains(c));
        if i > 0 && !punctuation {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

/// The pairs one line gives, in order.
pub fn line_pairs(line: &str) -> Vec<Pair> {
    let Some((german, english)) = line.split_once(" :: ") else {
        return Vec::new();
    };
    if english.contains(" :: ") {
        return Vec::new();
    }
    let (de_parts, en_parts): (Vec<&str>, Vec<&str>) = (
        german.split(" | ").collect(),
        english.split(" | ").collect(),
    );
    if de_parts.len() != en_parts.len() {
        return Vec::new();
    }
    let mut pairs = Vec::new();
    for (de, en) in de_parts.iter().zip(&en_parts) {
        let en = en.trim();
        if !ends_sentence(en, &['.', '?', '!']) {
            continue;
        }
        let en_alts: Vec<String> = alternatives(en).iter().map(|a| clean(a)).collect();
        let de_alts: Vec<String> = alternatives(de.trim()).iter().map(|a| clean(a)).collect();
        for (k, source) in en_alts.iter().enumerate() {
            let target = if en_alts.len() == de_alts.len() {
                &de_alts[k]
            } else {
                &de_alts[0]
            };
            let english_ok = starts_sentence(source)
                && ends_sentence(source, &['.', '?', '!'])
                && source.split_whitespace().count() >= 5;
            let german_ok = starts_sentence(target) && ends_sentence(target, &['.', '?', '!', '…']);
            if english_ok && german_ok && source != target {
                pairs.push(Pair {
                    source: source.clone(),
                    target: target.clone(),
                });
            }
        }
    }
    pairs
}

/// The pairs of each split from the dictionary file.
pub fn extract(path: &Path) -> Result<BTreeMap<Split, Vec<Pair>>> {
    let mut seen = HashSet::new();
    let mut splits: BTreeMap<Split, Vec<Pair>> = BTreeMap::new();
    for line in read_lines(path)? {
        if line.starts_with('#') {
            continue;
        }
        for pair in line_pairs(&line) {
            if !seen.insert(pair.source.clone()) {
                continue;
            }
            let split = Split::by_hash(fnv1a64(pair.target.as_bytes()), 6, 12);
            splits.entry(split).or_default().push(pair);
        }
    }
    Ok(splits)
}

/// The corpus's folder with `train.tsv`, `val.tsv` and `test.tsv`, fetched and extracted on
/// first use.
pub fn ensure() -> Result<PathBuf> {
    ensure_pairs(NAME, VERSION, |raw| extract(&raw.join("de-en")))
}
