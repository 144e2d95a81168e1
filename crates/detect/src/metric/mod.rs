pub mod coco_eval;
