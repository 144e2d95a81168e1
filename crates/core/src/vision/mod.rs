//! Images in and out of vision tasks, shared by every task that fine-tunes a vision backbone:
//! generated scenes with exact boxes and masks.

pub mod scene;
