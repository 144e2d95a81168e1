#!/usr/bin/env python3
"""Reference fixtures for segment's mIoU: numpy, following mmsegmentation's convention
(`intersect_and_union` summed over the data set, then `total_area_to_metrics`).

Run from the repository root:

    python3 scripts/reference/miou.py

It (re)writes crates/segment/tests/fixtures/miou.json: a list of cases, each with
  num_classes, ignore_index, reduce_zero_label,
  pairs: [{"gt": [[...]], "pred": [[...]]}, ...]   (masks of any size, one pair per image)
  expected: {"aAcc", "mIoU", "mAcc", "IoU": [...], "Acc": [...]}  (NaN written as null)

The convention, per image, then summed:
  - with reduce_zero_label, label 0 becomes the ignore index and every other label drops by
    one (255 stays 255); predictions are already in the reduced label space;
  - pixels whose label is the ignore index are left out;
  - areas are histograms over [0, num_classes - 1] (a prediction outside that range counts
    in no bin), intersection = pixels where prediction equals label;
  - IoU = intersect / (pred + label - intersect), Acc = intersect / label, both NaN where the
    denominator is zero; mIoU and mAcc are means over the classes that are not NaN;
    aAcc = total intersect / total label.
"""

import json
import os

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "crates", "segment", "tests", "fixtures", "miou.json")


def intersect_and_union(pred, label, num_classes, ignore_index, reduce_zero_label):
    label = label.astype(np.int64).copy()
    pred = pred.astype(np.int64)
    if reduce_zero_label:
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]
    inter = pred[pred == label]
    bins = np.arange(num_classes + 1) - 0.5

    def hist(v):
        v = v[(v >= 0) & (v < num_classes)]
        return np.histogram(v, bins=bins)[0].astype(np.float64)

    a_i, a_p, a_l = hist(inter), hist(pred), hist(label)
    return a_i, a_p + a_l - a_i, a_p, a_l


def metrics(pairs, num_classes, ignore_index, reduce_zero_label):
    ti = np.zeros(num_classes)
    tu = np.zeros(num_classes)
    tl = np.zeros(num_classes)
    for gt, pred in pairs:
        i, u, _, l = intersect_and_union(pred, gt, num_classes, ignore_index, reduce_zero_label)
        ti += i
        tu += u
        tl += l
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = ti / tu
        acc = ti / tl
    return {
        "aAcc": float(ti.sum() / tl.sum()),
        "mIoU": float(np.nanmean(iou)),
        "mAcc": float(np.nanmean(acc)),
        "IoU": [None if np.isnan(v) else float(v) for v in iou],
        "Acc": [None if np.isnan(v) else float(v) for v in acc],
    }


def case(name, pairs, num_classes, ignore_index=255, reduce_zero_label=False):
    return {
        "name": name,
        "num_classes": num_classes,
        "ignore_index": ignore_index,
        "reduce_zero_label": reduce_zero_label,
        "pairs": [{"gt": gt.tolist(), "pred": pred.tolist()} for gt, pred in pairs],
        "expected": metrics(pairs, num_classes, ignore_index, reduce_zero_label),
    }


def main():
    rng = np.random.default_rng(20261129)
    cases = []

    # Images of different sizes, some pixels ignored, predictions right about 70% of the time.
    pairs = []
    for h, w in [(5, 7), (9, 4), (6, 6)]:
        gt = rng.integers(0, 4, (h, w))
        gt[rng.random((h, w)) < 0.15] = 255
        pred = np.where(rng.random((h, w)) < 0.7, np.where(gt == 255, 0, gt), rng.integers(0, 4, (h, w)))
        pairs.append((gt, pred))
    cases.append(case("sizes_and_ignore", pairs, 4))

    # Class 3 is nowhere (NaN IoU and Acc, left out of the means); class 2 is predicted but
    # never in the ground truth (IoU 0, Acc NaN).
    gt = np.array([[0, 0, 1, 1], [0, 1, 1, 255], [0, 0, 1, 1]])
    pred = np.array([[0, 2, 1, 1], [0, 1, 2, 2], [0, 0, 0, 1]])
    cases.append(case("absent_and_unseen_classes", [(gt, pred)], 4))

    # reduce_zero_label: 0 is "other" (ignored), labels 1..3 become 0..2.
    gt = np.array([[0, 1, 1, 2], [3, 3, 0, 2], [1, 2, 3, 255]])
    pred = np.array([[2, 0, 0, 1], [2, 1, 0, 1], [0, 1, 2, 0]])
    cases.append(case("reduce_zero_label", [(gt, pred)], 3, reduce_zero_label=True))

    # Another ignore index, and predictions outside the class range counted nowhere.
    gt = rng.integers(0, 3, (8, 8))
    gt[0, :] = 9
    pred = rng.integers(0, 4, (8, 8))
    cases.append(case("other_ignore_and_out_of_range_prediction", [(gt, pred)], 3, ignore_index=9))

    # One perfect image of a single class.
    gt = np.ones((4, 4), dtype=np.int64)
    cases.append(case("perfect_single_class", [(gt, gt.copy())], 2))

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(cases, f)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
