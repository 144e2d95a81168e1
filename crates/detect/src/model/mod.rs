//! The detector: pyramid and head ([`head`]), training targets ([`assign`]), how box outputs
//! encode the sides ([`coding`]), loss ([`loss`]) and turning outputs into boxes
//! ([`postprocess`]).

pub mod assign;
pub mod coding;
pub mod head;
pub mod loss;
pub mod postprocess;
