//! Images in and out of vision tasks, shared by every task that fine-tunes a vision backbone:
//! image and mask files, model inputs (letterbox, tiles, normalisation) and the map back,
//! augmentations of an input with its target, drawing, and generated scenes with exact boxes
//! and masks.

pub mod augment;
pub mod draw;
pub mod generated;
pub mod input;
pub mod io;
pub mod mask;
pub mod scene;
