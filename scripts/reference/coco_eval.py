#!/usr/bin/env python3
"""Reference fixtures for the Rust port of COCO bbox evaluation (crates/detect).

Builds a handful of small, deterministic COCO ground-truth / detection-result
pairs, evaluates each with pycocotools (``COCO`` + ``loadRes`` + ``COCOeval``
with iouType "bbox" and default params) and writes, per case NAME:

    NAME.gt.json     COCO ground truth (images, annotations, categories)
    NAME.dt.json     COCO results list (image_id, category_id, bbox, score)
    NAME.stats.json  {"stats": [12 floats of COCOeval.stats], "names": [...]}

into crates/detect/tests/fixtures/coco_eval/.

Run from the repository root:

    python3 scripts/reference/coco_eval.py

Requirements: pycocotools (fixtures made with 2.0.11) and numpy (2.4.6).
Everything is seeded; re-running produces byte-identical files.

Numeric conventions (so a Rust JSON parser reads exactly the same doubles):
box coordinates lie on a 1/4 pixel grid (so x+w, w*h are exact and short),
scores have at most 4 decimals.  GT ``area`` is w*h except in the ``areas``
case, where some annotations deliberately carry a different ``area`` (as
segmentation areas do in real COCO) -- pycocotools uses that field, not w*h,
for the small/medium/large split of ground truth.  Annotation ids start at 1
(pycocotools treats a matched GT id of 0 as "unmatched").
"""

import contextlib
import io
import json
import os
import random
import sys

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(REPO_ROOT, "crates", "detect", "tests", "fixtures", "coco_eval")

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def q(v):
    """Snap a coordinate to the 1/4 pixel grid (exact in binary, short in JSON)."""
    return round(v * 4) / 4


def box(x, y, w, h):
    return [q(x), q(y), q(w), q(h)]


def shift(b, dx=0.0, dy=0.0, dw=0.0, dh=0.0):
    """A box derived from ``b`` (used to dial in IoU levels)."""
    return box(b[0] + dx, b[1] + dy, b[2] + dw, b[3] + dh)


def score(s):
    return round(float(s), 4)


class Case:
    def __init__(self, name, categories, description):
        self.name = name
        self.description = description
        self.categories = [{"id": cid, "name": cname} for cid, cname in categories]
        self.images = []
        self.annotations = []
        self.results = []

    def image(self, image_id, width=640, height=480):
        self.images.append({"id": image_id, "width": width, "height": height,
                            "file_name": "%s_%06d.jpg" % (self.name, image_id)})
        return image_id

    def gt(self, image_id, category_id, b, iscrowd=0, area=None):
        b = [q(v) for v in b]
        ann = {
            "id": len(self.annotations) + 1,
            "image_id": image_id,
            "category_id": category_id,
            "bbox": b,
            "area": float(b[2] * b[3]) if area is None else float(area),
            "iscrowd": int(iscrowd),
        }
        self.annotations.append(ann)
        return b

    def dt(self, image_id, category_id, b, s):
        self.results.append({"image_id": image_id, "category_id": category_id,
                             "bbox": [q(v) for v in b], "score": score(s)})

    def gt_json(self):
        return {"images": self.images, "annotations": self.annotations,
                "categories": self.categories}


def evaluate(case):
    """COCO(gt) / loadRes(dt) / COCOeval(..., "bbox") with default params."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(case.gt_json()))  # deep copy
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(json.loads(json.dumps(case.results)))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats]


def dump_rows(rows):
    """A JSON list with one compact element per line (diff-friendly, small)."""
    if not rows:
        return "[]"
    return "[\n" + ",\n".join("  " + json.dumps(r, separators=(", ", ": ")) for r in rows) + "\n]"


def write_case(case):
    stats = evaluate(case)
    gt = case.gt_json()
    gt_text = "{\n" + ",\n".join(
        '"%s": %s' % (key, dump_rows(gt[key])) for key in ("images", "annotations", "categories")
    ) + "\n}\n"
    with open(os.path.join(OUT_DIR, case.name + ".gt.json"), "w") as f:
        f.write(gt_text)
    with open(os.path.join(OUT_DIR, case.name + ".dt.json"), "w") as f:
        f.write(dump_rows(case.results) + "\n")
    with open(os.path.join(OUT_DIR, case.name + ".stats.json"), "w") as f:
        f.write(json.dumps({"stats": stats, "names": STAT_NAMES}) + "\n")
    print("%-14s images=%-3d gt=%-4d dt=%-5d" % (case.name, len(case.images),
                                                len(case.annotations), len(case.results)))
    print("    " + "  ".join("%s=%.6f" % (n, s) for n, s in zip(STAT_NAMES, stats)))
    return stats


# ---------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------
# For a w x w box shifted by dx along x, IoU = (w - dx) / (w + dx):
# dx/w = 0.02 -> 0.96, 0.05 -> 0.905, 0.1 -> 0.818, 0.2 -> 0.667, 0.25 -> 0.6,
# 0.3 -> 0.538, 0.35 -> 0.481.

def case_basic():
    c = Case("basic", [(1, "person"), (7, "car"), (42, "dog")],
             "5 images (ids 1,2,3,10,11), 3 categories with non-contiguous ids 1/7/42; "
             "TPs at IoU from ~0.5 to 1, duplicates, FPs, missed GT.")
    for i in (1, 2, 3, 10, 11):
        c.image(i)
    # image 1
    p1 = c.gt(1, 1, box(10, 10, 100, 200))
    p2 = c.gt(1, 1, box(300, 50, 80, 160))
    car1 = c.gt(1, 7, box(200, 300, 150, 100))
    c.dt(1, 1, shift(p1, 3, 0), 0.95)            # IoU ~0.94
    c.dt(1, 1, shift(p2, 16, 0), 0.80)           # IoU ~0.67
    c.dt(1, 1, box(500, 400, 50, 50), 0.60)      # FP
    c.dt(1, 7, shift(car1, 10, 5), 0.90)         # IoU ~0.82
    c.dt(1, 42, box(50, 50, 60, 60), 0.30)       # FP: no dog in image 1
    # image 2
    dog1 = c.gt(2, 42, box(100, 100, 200, 150))
    dog2 = c.gt(2, 42, box(350, 120, 120, 120))
    c.gt(2, 7, box(20, 20, 40, 30))              # missed car
    c.dt(2, 42, shift(dog1, 2, 2, -4, -4), 0.85)   # IoU ~0.95
    c.dt(2, 42, shift(dog1, 50, 0), 0.70)          # duplicate of dog1 -> FP
    c.dt(2, 42, shift(dog2, 30, 10), 0.40)         # IoU ~0.5
    c.dt(2, 7, box(400, 400, 30, 30), 0.55)        # FP
    c.dt(2, 7, shift(dog2, 0, 0), 0.35)            # a car on the dog: FP for car
    # image 3: small person + huge FP
    sp = c.gt(3, 1, box(600, 10, 20, 25))
    c.dt(3, 1, shift(sp, 2, 2), 0.50)            # IoU ~0.66
    c.dt(3, 1, box(0, 0, 640, 480), 0.20)        # FP, large
    # image 10: three cars, two detected
    cars = [c.gt(10, 7, box(30 + 200 * k, 200, 120 + 10 * k, 80)) for k in range(3)]
    c.dt(10, 7, shift(cars[0], 1, -1), 0.97)     # IoU ~0.98
    c.dt(10, 7, shift(cars[2], 0, 0, 20, 0), 0.65)  # IoU 0.875
    c.dt(10, 7, box(100, 0, 400, 180), 0.25)     # large FP
    c.dt(10, 42, shift(cars[1], 0, 0), 0.45)     # wrong class FP
    # image 11: person missed, top-scored FP
    c.gt(11, 1, box(100, 100, 150, 300))
    c.dt(11, 1, box(400, 100, 150, 300), 0.99)   # FP with the highest score
    c.dt(11, 1, box(130, 110, 150, 300), 0.15)   # IoU ~0.77, low score
    md = c.gt(11, 42, box(400, 350, 60, 50))     # medium dog
    c.dt(11, 42, shift(md, 5, 3), 0.75)          # IoU ~0.77
    return c


def case_empty_images():
    c = Case("empty_images", [(1, "cat"), (2, "dog")],
             "8 images: 1, 2, 6 have neither GT nor detections; 3 and 8 have GT but no "
             "detections; 5 has GT of one class and only detections of the other.")
    for i in range(1, 9):
        c.image(i)
    c.gt(3, 1, box(10, 10, 50, 50))
    c.gt(3, 1, box(100, 100, 80, 60))
    a = c.gt(4, 1, box(200, 200, 100, 100))
    b = c.gt(4, 1, box(20, 300, 40, 40))
    c.dt(4, 1, shift(a, 5, 0), 0.9)
    c.dt(4, 1, shift(b, 8, 0), 0.6)              # IoU ~0.67
    c.dt(4, 1, box(400, 10, 60, 60), 0.7)        # FP
    c.gt(5, 2, box(300, 300, 90, 90))            # missed dog
    c.dt(5, 1, box(302, 300, 90, 90), 0.8)       # cat on the dog -> FP for cat
    d = c.gt(7, 2, box(50, 50, 200, 120))
    c.dt(7, 2, shift(d, 0, 10), 0.75)
    c.dt(7, 2, box(400, 300, 20, 20), 0.3)       # small FP
    c.gt(8, 1, box(500, 20, 100, 200))
    return c


def case_dt_without_gt():
    c = Case("dt_without_gt", [(1, "a"), (2, "b"), (3, "c")],
             "images 1-2 have GT and detections; images 3-5 have detections but no GT at "
             "all (pure FPs, some with the highest scores); image 6 is empty.")
    for i in range(1, 7):
        c.image(i)
    g1 = c.gt(1, 1, box(10, 10, 100, 100))
    g2 = c.gt(1, 2, box(200, 50, 60, 120))
    g3 = c.gt(2, 1, box(300, 300, 150, 120))
    g4 = c.gt(2, 3, box(40, 400, 20, 20))
    c.dt(1, 1, shift(g1, 5, 5), 0.8)
    c.dt(1, 2, shift(g2, 0, 10), 0.7)
    c.dt(2, 1, shift(g3, 20, 0), 0.6)
    c.dt(2, 3, shift(g4, 1, 1), 0.5)
    # detections on images without any GT
    c.dt(3, 1, box(10, 10, 100, 100), 0.95)
    c.dt(3, 1, box(300, 200, 50, 40), 0.65)
    c.dt(4, 2, box(100, 100, 200, 200), 0.9)
    c.dt(4, 3, box(5, 5, 10, 10), 0.85)
    c.dt(5, 3, box(500, 300, 120, 150), 0.4)
    c.dt(5, 1, box(50, 60, 30, 30), 0.55)
    c.dt(5, 2, box(0, 0, 640, 480), 0.1)
    return c


def case_crowd():
    c = Case("crowd", [(1, "person"), (2, "bicycle"), (3, "crowd_only")],
             "crowd GT regions (iscrowd=1): several detections inside one crowd region "
             "(ignored, not FP), detections that match a regular GT at low IoU thresholds "
             "and fall back to the crowd region at high ones, a duplicate outside any crowd "
             "(FP) vs a duplicate inside a crowd (ignored), a detection half inside a crowd "
             "(crowd IoU 0.5), and a category whose only GT is crowd (excluded, -1).")
    for i in (1, 2, 3):
        c.image(i)
    # image 1: person A (regular) + crowd region on the right
    a = c.gt(1, 1, box(50, 50, 100, 200))
    c.gt(1, 1, box(300, 0, 300, 400), iscrowd=1)
    c.dt(1, 1, shift(a, 2, 0), 0.90)             # TP
    c.dt(1, 1, shift(a, 4, 0), 0.85)             # duplicate, no crowd overlap -> FP
    c.dt(1, 1, box(320, 20, 50, 100), 0.80)      # inside crowd -> ignored
    c.dt(1, 1, box(400, 100, 60, 120), 0.75)     # inside crowd -> ignored
    c.dt(1, 1, box(500, 250, 80, 100), 0.70)     # inside crowd -> ignored
    c.dt(1, 1, box(560, 300, 80, 100), 0.65)     # crowd IoU = 0.5 exactly
    c.dt(1, 1, box(200, 420, 40, 40), 0.30)      # FP
    # image 2: two regular persons inside a crowd region; bicycles
    b1 = c.gt(2, 1, box(100, 100, 120, 120))
    b2 = c.gt(2, 1, box(250, 250, 100, 100))
    c.gt(2, 1, box(80, 80, 300, 300), iscrowd=1)
    c.dt(2, 1, shift(b1, 0, 0), 0.95)            # TP (IoU 1)
    c.dt(2, 1, shift(b2, 25, 0), 0.60)           # IoU 0.6 with b2; crowd IoU 1
    c.dt(2, 1, shift(b1, 10, 0), 0.50)           # duplicate inside crowd -> ignored
    c.gt(2, 2, box(0, 0, 200, 200), iscrowd=1)
    bk = c.gt(2, 2, box(400, 300, 100, 80))
    c.dt(2, 2, box(10, 10, 40, 40), 0.9)         # inside bicycle crowd
    c.dt(2, 2, box(100, 120, 60, 50), 0.8)       # inside bicycle crowd
    c.dt(2, 2, shift(bk, 10, 0), 0.7)            # TP
    c.dt(2, 2, box(150, 150, 100, 100), 0.6)     # crowd IoU 0.25 -> FP
    # image 3: category 3 only has a crowd GT
    c.gt(3, 3, box(10, 10, 200, 200), iscrowd=1)
    c.dt(3, 3, box(20, 20, 50, 50), 0.9)
    c.dt(3, 3, box(400, 300, 50, 50), 0.8)
    c.dt(3, 1, box(20, 20, 50, 50), 0.7)         # person over a cat-3 crowd -> FP
    return c


def case_score_ties():
    c = Case("score_ties", [(1, "a"), (2, "b")],
             "detections with exactly equal scores, within an image and across images, "
             "including TP/FP ties in both orders; the results file lists image 9 before 5 "
             "before 2, so tie order depends on the stable (mergesort) sorts: within an "
             "image by file order, across images by ascending image id.")
    for i in (2, 5, 9):
        c.image(i)
    ga = c.gt(2, 1, box(10, 10, 100, 100))
    gb = c.gt(2, 1, box(200, 10, 100, 100))
    gc = c.gt(5, 1, box(50, 50, 80, 80))
    gd = c.gt(9, 1, box(100, 100, 60, 60))
    ge = c.gt(9, 2, box(300, 200, 100, 100))
    gf = c.gt(5, 2, box(20, 300, 100, 100))
    # image 9 first in the file
    c.dt(9, 1, box(500, 400, 50, 50), 0.7)       # FP, tied with the TP below
    c.dt(9, 1, shift(gd, 0, 0), 0.7)             # TP
    c.dt(9, 2, shift(ge, 25, 0), 0.5)            # IoU 0.6, listed first
    c.dt(9, 2, shift(ge, 5, 0), 0.5)             # IoU ~0.9, same score
    # image 5
    c.dt(5, 1, shift(gc, 2, 0), 0.7)             # TP
    c.dt(5, 1, box(400, 50, 80, 80), 0.7)        # FP
    c.dt(5, 2, box(300, 400, 50, 50), 0.8)       # FP
    c.dt(5, 2, shift(gf, 10, 0), 0.8)            # TP
    # image 2
    c.dt(2, 1, box(400, 300, 50, 50), 0.5)       # FP
    c.dt(2, 1, shift(ga, 0, 5), 0.5)             # TP
    c.dt(2, 1, shift(gb, 20, 0), 0.5)            # TP at IoU <= 0.65
    c.dt(2, 1, box(500, 300, 60, 60), 0.5)       # FP
    c.dt(2, 1, box(10, 400, 60, 60), 0.3)        # FP
    return c


def case_many_dets():
    rng = random.Random(1234)
    c = Case("many_dets", [(1, "a"), (2, "b"), (3, "c")],
             "image 1: 150 detections of category 1 and 120 of category 2 (per-image, "
             "per-category maxDets=100 truncation drops the true positives ranked > 100); "
             "image 2: 60 + 60 detections of categories 1 and 3 (120 on the image, but <= 100 "
             "per category, so nothing is dropped, including TPs with the lowest scores).")
    c.image(1, 1000, 1000)
    c.image(2, 1000, 1000)

    def fp_box(k):
        # FPs on a grid in the right half, away from every GT
        return box(520 + 45 * (k % 10), 20 + 45 * ((k // 10) % 20), 30 + (k % 7), 30 + (k % 5))

    def gts(image_id, cat, n):
        return [c.gt(image_id, cat, box(20 + 90 * (k % 5), 20 + 150 * (k // 5) + 10 * cat, 70, 110))
                for k in range(n)]

    dets = []
    # image 1, category 1: 150 dets; GT 0..2 hit in the top 100, GT 3..5 only below rank 100
    g = gts(1, 1, 6)
    scores = [0.99 - 0.006 * k for k in range(150)]   # distinct, descending
    tp_rank = {5: 0, 40: 1, 90: 2, 105: 3, 120: 4, 149: 5}
    for r, s in enumerate(scores):
        b = shift(g[tp_rank[r]], 3, 2) if r in tp_rank else fp_box(r)
        dets.append((1, 1, b, s))
    # image 1, category 2: 120 dets; TPs at ranks 0, 99 (kept) and 100, 119 (dropped)
    g = gts(1, 2, 4)
    tp_rank = {0: 0, 99: 1, 100: 2, 119: 3}
    for r in range(120):
        s = 0.95 - 0.007 * r
        b = shift(g[tp_rank[r]], 0, 4) if r in tp_rank else fp_box(r + 3)
        dets.append((1, 2, b, s))
    # image 2: 60 dets of category 1 and 60 of category 3; TPs at the lowest scores
    for cat in (1, 3):
        g = gts(2, cat, 3)
        for r in range(60):
            s = 0.9 - 0.0125 * r - 0.001 * cat
            b = shift(g[r - 57], 2, 0) if r >= 57 else fp_box(r + 7 * cat)
            dets.append((2, cat, b, s))
    rng.shuffle(dets)            # file order must not matter here (scores are distinct)
    for image_id, cat, b, s in dets:
        c.dt(image_id, cat, b, s)
    return c


def case_cat_no_gt():
    c = Case("cat_no_gt", [(1, "a"), (2, "b"), (3, "dt_only"), (4, "nothing")],
             "category 3 has detections (high scores) but no GT anywhere -> its precision/"
             "recall stay -1 and it is excluded from every average; category 4 is listed "
             "in categories but has neither GT nor detections.")
    for i in (1, 2, 3):
        c.image(i)
    a = c.gt(1, 1, box(10, 10, 100, 100))
    b = c.gt(2, 2, box(200, 200, 50, 80))
    a2 = c.gt(3, 1, box(300, 100, 200, 150))
    c.dt(1, 1, shift(a, 10, 0), 0.8)
    c.dt(2, 2, shift(b, 0, 8), 0.6)
    c.dt(3, 1, shift(a2, 0, 0, -30, 0), 0.5)
    c.dt(3, 1, box(10, 400, 40, 40), 0.7)
    for k, img in enumerate((1, 2, 3, 3)):
        c.dt(img, 3, box(50 + 100 * k, 300, 60, 60), 0.99 - 0.01 * k)
    c.dt(1, 3, shift(a, 0, 0), 0.9)              # on a category-1 box, but category 3
    return c


def case_areas():
    c = Case("areas", [(1, "a"), (2, "b")],
             "GT and detections in all three area ranges, boxes exactly on 32^2=1024 and "
             "96^2=9216 (ranges are inclusive at both ends, so such a box counts in both "
             "neighbouring ranges) and just either side of them, and GT whose area field "
             "differs from w*h (the field decides the GT's range; detections use w*h).")
    c.image(1, 1000, 1000)
    c.image(2, 1000, 1000)
    c.image(3, 800, 600)
    # image 1, category 1: boxes with area = w*h around the boundaries
    s1 = c.gt(1, 1, box(10, 10, 20, 20))              # 400 small
    s2 = c.gt(1, 1, box(40, 10, 31.75, 32))           # 1016 small
    s3 = c.gt(1, 1, box(100, 10, 32, 32))             # 1024 small AND medium
    m1 = c.gt(1, 1, box(150, 10, 32.25, 32))          # 1032 medium
    s4 = c.gt(1, 1, box(200, 10, 16, 64))             # 1024 small AND medium
    m2 = c.gt(1, 1, box(300, 10, 50, 50))             # 2500 medium
    m3 = c.gt(1, 1, box(400, 10, 96, 96))             # 9216 medium AND large
    l1 = c.gt(1, 1, box(520, 10, 96.25, 96))          # 9240 large
    m4 = c.gt(1, 1, box(650, 10, 95.75, 96))          # 9192 medium
    l2 = c.gt(1, 1, box(10, 200, 200, 150))           # large
    c.dt(1, 1, shift(s1, 1, 1), 0.9)
    c.dt(1, 1, shift(s2, 0, 0, 0.25, 0), 0.85)        # det area 1024 on a 1016 GT
    c.dt(1, 1, shift(s3, 0, 0, 1, 1), 0.8)            # det area 1089 on a 1024 GT
    c.dt(1, 1, shift(m1, 0, 0, -0.5, 0), 0.75)        # det area 1016 on a 1032 GT
    # s4 missed
    c.dt(1, 1, shift(m2, 8, 0), 0.7)
    c.dt(1, 1, shift(m3, 0, 0, 0.25, 0), 0.65)        # det 9240 on a 9216 GT
    c.dt(1, 1, shift(l1, 0, 0, -0.5, 0), 0.6)         # det 9192 on a 9240 GT
    c.dt(1, 1, shift(m4, 12, 0), 0.55)
    c.dt(1, 1, shift(l2, 20, 20), 0.5)
    # unmatched detections on and around the boundaries
    c.dt(1, 1, box(800, 800, 32, 32), 0.88)           # 1024
    c.dt(1, 1, box(850, 850, 31.75, 32), 0.45)        # 1016
    c.dt(1, 1, box(700, 700, 96, 96), 0.62)           # 9216
    c.dt(1, 1, box(600, 600, 96.25, 96), 0.4)         # 9240
    c.dt(1, 1, box(500, 800, 10, 10), 0.35)           # 100
    c.dt(1, 1, box(100, 600, 300, 300), 0.3)          # large
    # image 2, category 2: GT whose area field differs from w*h
    x1 = c.gt(2, 2, box(300, 200, 40, 40), area=900.0)     # box medium, field small
    x2 = c.gt(2, 2, box(400, 200, 20, 20), area=2000.0)    # box small, field medium
    x3 = c.gt(2, 2, box(500, 200, 100, 100), area=5000.0)  # box large, field medium
    x4 = c.gt(2, 2, box(700, 200, 60, 60), area=9216.0)    # field exactly 96^2
    x5 = c.gt(2, 2, box(100, 500, 120, 130), area=1024.0)  # field exactly 32^2
    x6 = c.gt(2, 2, box(400, 500, 30, 30), area=12000.5)   # box small, field large
    c.dt(2, 2, shift(x1, 1, 0), 0.9)
    c.dt(2, 2, shift(x2, 1, 1), 0.8)
    c.dt(2, 2, shift(x3, 10, 0), 0.7)
    c.dt(2, 2, shift(x4, 0, 3), 0.6)
    c.dt(2, 2, shift(x5, 20, 0), 0.5)
    c.dt(2, 2, shift(x6, 2, 0), 0.45)
    c.dt(2, 2, box(900, 900, 20, 20), 0.85)           # small FP
    c.dt(2, 2, box(800, 600, 60, 60), 0.65)           # medium FP
    # image 3: both categories, mixed
    y1 = c.gt(3, 1, box(10, 10, 25, 25))
    y2 = c.gt(3, 2, box(100, 100, 200, 200), area=30000.0)
    c.gt(3, 2, box(400, 100, 50, 50), area=800.0)     # box medium, field small; missed
    c.dt(3, 1, shift(y1, 3, 3), 0.7)                  # IoU ~0.62 on a small GT
    c.dt(3, 2, shift(y2, 30, 0), 0.6)
    c.dt(3, 2, box(600, 400, 33, 33), 0.95)           # medium FP (1089)
    return c


def case_all_negative():
    c = Case("all_negative", [(1, "a"), (2, "b")],
             "no small GT anywhere (only medium and large), but small detections exist: "
             "APs = ARs = -1 while the other stats are normal.")
    c.image(1)
    c.image(2)
    a = c.gt(1, 1, box(10, 10, 50, 50))
    b = c.gt(1, 2, box(200, 100, 150, 200))
    d = c.gt(2, 1, box(300, 300, 100, 100))
    c.dt(1, 1, shift(a, 5, 0), 0.9)
    c.dt(1, 1, box(400, 10, 10, 10), 0.95)            # small FP
    c.dt(1, 2, shift(b, 0, 30), 0.8)
    c.dt(2, 1, shift(d, 0, 0), 0.7)
    c.dt(2, 2, box(10, 10, 20, 20), 0.85)             # small FP
    c.dt(2, 1, box(500, 50, 60, 60), 0.6)             # medium FP
    return c


def case_all_crowd():
    c = Case("all_crowd", [(1, "a"), (2, "b")],
             "every GT is a crowd region: no category has a non-ignored GT, so all 12 "
             "stats are -1.")
    c.image(1)
    c.image(2)
    c.gt(1, 1, box(10, 10, 200, 200), iscrowd=1)
    c.gt(2, 2, box(100, 100, 300, 200), iscrowd=1)
    c.dt(1, 1, box(20, 20, 50, 50), 0.9)
    c.dt(1, 1, box(400, 300, 50, 50), 0.8)
    c.dt(2, 2, box(150, 150, 100, 100), 0.7)
    c.dt(2, 1, box(150, 150, 100, 100), 0.6)
    return c


def case_random_large():
    rng = random.Random(20240607)
    cats = [(1, "person"), (2, "car"), (3, "dog"), (5, "bike")]
    c = Case("random_large", cats,
             "generated (seeded): 30 images, 4 categories (ids 1,2,3,5), random GT in all "
             "size ranges (about 5% crowd), detections derived from GT with jitter "
             "(duplicates included), random FPs, scores with 4 decimals plus forced ties.")
    W, H = 640, 480
    tie_scores = [0.5, 0.75, 0.3125]
    for img in range(1, 31):
        c.image(img, W, H)
        if img in (7, 19):
            continue                                   # empty images
        n_gt = rng.randint(0, 12)
        for _ in range(n_gt):
            cat = rng.choice(cats)[0]
            w = q(min(W - 1, np.exp(rng.uniform(np.log(6), np.log(400)))))
            h = q(min(H - 1, w * rng.uniform(0.5, 2.0)))
            x = q(rng.uniform(0, W - w))
            y = q(rng.uniform(0, max(0.0, H - h)))
            crowd = 1 if rng.random() < 0.05 else 0
            g = c.gt(img, cat, box(x, y, w, h), iscrowd=crowd)
            # detections derived from this GT
            n_det = 0 if rng.random() < 0.15 else rng.choice([1, 1, 1, 2, 3])
            if crowd:
                n_det = rng.randint(1, 4)
            for _ in range(n_det):
                if crowd:
                    dw = q(g[2] * rng.uniform(0.1, 0.5))
                    dh = q(g[3] * rng.uniform(0.1, 0.5))
                    b = box(g[0] + rng.uniform(0, g[2] - dw), g[1] + rng.uniform(0, g[3] - dh), dw, dh)
                else:
                    j = rng.uniform(0.0, 0.3)
                    b = box(g[0] + rng.gauss(0, j) * g[2], g[1] + rng.gauss(0, j) * g[3],
                            g[2] * (1 + rng.gauss(0, j)), g[3] * (1 + rng.gauss(0, j)))
                    if b[2] <= 0.25 or b[3] <= 0.25:
                        continue
                dcat = cat if rng.random() > 0.05 else rng.choice(cats)[0]
                s = rng.uniform(0.05, 1.0) if rng.random() > 0.08 else rng.choice(tie_scores)
                c.dt(img, dcat, b, s)
        # random false positives
        for _ in range(rng.randint(10, 50)):
            w = q(np.exp(rng.uniform(np.log(4), np.log(300))))
            h = q(w * rng.uniform(0.5, 2.0))
            b = box(rng.uniform(0, W - 10), rng.uniform(0, H - 10), w, h)
            s = rng.uniform(0.01, 0.7) if rng.random() > 0.08 else rng.choice(tie_scores)
            c.dt(img, rng.choice(cats)[0], b, s)
    # image 23 gets a burst of >100 detections of one category
    for k in range(110):
        c.dt(23, 2, box(rng.uniform(0, 600), rng.uniform(0, 440), 20 + k % 17, 15 + k % 13),
             rng.uniform(0.0, 0.4))
    order = list(range(len(c.results)))
    rng.shuffle(order)
    c.results = [c.results[i] for i in order]
    return c


CASES = [case_basic, case_empty_images, case_dt_without_gt, case_crowd, case_score_ties,
         case_many_dets, case_cat_no_gt, case_areas, case_all_negative, case_all_crowd,
         case_random_large]


def main():
    import pycocotools
    os.makedirs(OUT_DIR, exist_ok=True)
    try:
        from importlib.metadata import version
        pc_version = version("pycocotools")
    except Exception:  # pragma: no cover
        pc_version = getattr(pycocotools, "__version__", "unknown")
    print("pycocotools %s, numpy %s, python %s" % (pc_version, np.__version__, sys.version.split()[0]))
    for make in CASES:
        write_case(make())


if __name__ == "__main__":
    main()
