//! Segmentation metrics: the confusion matrix and mmsegmentation's mIoU convention, and the
//! engine's batch-by-batch form, which maps predictions back to each image's own resolution.

pub mod accumulate;
pub mod confusion;
