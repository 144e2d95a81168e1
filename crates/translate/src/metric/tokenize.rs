//! sacreBLEU's `13a` tokenisation (the default of its BLEU, after mteval-v13a), so that BLEU
//! computed here equals sacreBLEU's on the same text.
//!
//! Whitespace is Python's (`str.isspace`): Unicode's plus the four ASCII separators
//! U+001C..U+001F, because sacreBLEU splits with Python's `str.split`.

/// Whether Python's `str.isspace` holds for `c`.
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The characters the first 13a rule puts spaces around: `{|}~`, `` [\]^_` ``, space to `&`,
/// `(` to `+`, `:` to `@`, and `/`.
fn is_split_symbol(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// One pass of a two-character rule as Python's `re.sub` makes it: scanning left to right,
/// where `first` and `second` match at a position both characters are replaced by
/// `emit(a, b)` and the scan continues after them; elsewhere one character is copied.
fn pairwise(
    chars: &[char],
    first: impl Fn(char) -> bool,
    second: impl Fn(char) -> bool,
    emit: impl Fn(char, char, &mut Vec<char>),
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + chars.len() / 4);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && first(chars[i]) && second(chars[i + 1]) {
            emit(chars[i], chars[i + 1], &mut out);
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// `line` tokenised as sacreBLEU's `13a`, tokens joined by single spaces.
pub fn tokenize_13a(line: &str) -> String {
    let mut s = line
        .trim_end_matches(is_python_space)
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if s.contains('&') {
        s = s
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let padded: Vec<char> = std::iter::once(' ')
        .chain(s.chars())
        .chain(std::iter::once(' '))
        .collect();
    let digit = |c: char| c.is_ascii_digit();
    let period_or_comma = |c: char| c == '.' || c == ',';
    // Symbols: one at a time, a space on each side.
    let mut chars = Vec::with_capacity(padded.len() * 2);
    for c in padded {
        if is_split_symbol(c) {
            chars.extend([' ', c, ' ']);
        } else {
            chars.push(c);
        }
    }
    // A period or comma after a non-digit.
    let chars = pairwise(
        &chars,
        |a| !digit(a),
        period_or_comma,
        |a, b, out| out.extend([a, ' ', b, ' ']),
    );
    // A period or comma before a non-digit.
    let chars = pairwise(
        &chars,
        period_or_comma,
        |b| !digit(b),
        |a, b, out| out.extend([' ', a, ' ', b]),
    );
    // A dash after a digit.
    let chars = pairwise(
        &chars,
        digit,
        |b| b == '-',
        |a, b, out| out.extend([a, ' ', b, ' ']),
    );
    let joined: String = chars.into_iter().collect();
    joined
        .split(is_python_space)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
