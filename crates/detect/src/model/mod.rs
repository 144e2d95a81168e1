//! The detector: pyramid and head ([`head`]), training targets ([`assign`]), how box outputs
//! encode the sides ([`coding`]), loss ([`loss`]), turning outputs into boxes
//! ([`postprocess`]) and the test-time views whose boxes join them ([`flip`]).

pub mod assign;
pub mod coding;
pub mod flip;
pub mod head;
pub mod loss;
pub mod postprocess;
