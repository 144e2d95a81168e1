//! Translation quality as sacreBLEU scores it: corpus BLEU and chrF, from integer statistics
//! that add up segment by segment, and the engine's evaluation built on them.

pub mod accumulate;
pub mod bleu;
pub mod chrf;
pub mod tokenize;
