//! Caps on the sizes a user's file may claim, checked before memory is spent on them: a
//! decompression bomb, a damaged header or a binary given as text must be an error naming the
//! file, not an allocation of what it claims. Each cap is generous for real data and raised
//! by an environment variable for data that needs more.

/// The longest image side decoded, in pixels (aerial tiles and scans of this size load).
pub const IMAGE_SIDE: Cap = Cap {
    var: "DOWNSTREAM_MAX_IMAGE_SIDE",
    default: 20_000,
};

/// The longest line of a text corpus, in bytes: a sentence pair is a few hundred.
pub const LINE_BYTES: Cap = Cap {
    var: "DOWNSTREAM_MAX_LINE_BYTES",
    default: 1 << 20,
};

/// A cap and the environment variable that overrides it.
#[derive(Clone, Copy, Debug)]
pub struct Cap {
    pub var: &'static str,
    pub default: u64,
}

impl Cap {
    /// The value in force: the variable's if it is set to a number, else the default.
    pub fn get(self) -> u64 {
        std::env::var(self.var)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(self.default)
    }
}
