//! The detector: pyramid and head ([`head`]), training targets ([`assign`]), loss ([`loss`])
//! and turning outputs into boxes ([`postprocess`]).

pub mod assign;
pub mod head;
pub mod loss;
pub mod postprocess;
