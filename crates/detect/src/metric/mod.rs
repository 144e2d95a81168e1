//! Detection metrics: COCO bbox evaluation equal to pycocotools, and its batch-by-batch form
//! for the engine.

pub mod accumulate;
pub mod coco_eval;
