"""Anchor fitting: the `anchor_size`, `scales` and `aspect_ratios` that cover a dataset best.

The objective is the best-possible recall at `positive_iou` (the share of boxes with some
anchor at IoU >= positive_iou, see `retinanet.diagnostics.coverage`), with the mean best IoU
breaking ties.

Why it is fast: the best IoU of every box against every candidate anchor shape is a closed
formula over the nearest grid centre (`coverage.analytic_best_iou`): no anchor tensors, exact
up to float rounding. The search runs it on a
subsample of the boxes; the best few candidates are then confirmed with the real coverage
function (`anchor_coverage`, i.e. `AnchorGenerator` and `ops.box_iou`) on every box.

Search: for each (number of scales, number of ratios), a grid of anchor sizes (1/6 octave
steps) times candidate ratio sets (the current one, geometric spreads around 1 and around the
median box ratio, the ratio quantiles, 1-D k-means of the log ratios) times candidate scale
sets (the current one and geometric steps), then coordinate descent in log space from the
best few. Aspect ratio is height / width, as in `AnchorGenerator`.
"""

from __future__ import annotations

import itertools
import shlex

import numpy as np

from retinanet.diagnostics.coverage import analytic_best_iou, anchor_coverage
from retinanet.diagnostics.scaling import scaled_boxes

OVERRIDE_PREFIX = "--config.model.anchors."
SIGNIFICANT_DIGITS = 4
# Among candidates with more anchors per location, a larger one must gain at least this much
# best-possible recall to be preferred (more anchors cost compute in the heads and NMS).
RECALL_TOLERANCE = 0.002


def _score(best_iou, positive_iou):
    """(recall, mean best IoU) per column of `best_iou [N, G]`."""
    return (best_iou >= positive_iou).mean(axis=0), best_iou.mean(axis=0)


def _round(values):
    return tuple(float(f"{v:.{SIGNIFICANT_DIGITS}g}") for v in np.atleast_1d(values))


def _kmeans_1d(values, count, iterations=20):
    centres = np.quantile(values, (np.arange(count) + 0.5) / count)
    for _ in range(iterations):
        nearest = np.abs(values[:, None] - centres[None]).argmin(axis=1)
        centres = np.array([values[nearest == k].mean() if np.any(nearest == k) else centres[k]
                            for k in range(count)])
    return np.sort(centres)


def _ratio_candidates(log2_ratios, count, current):
    """Candidate aspect-ratio sets of `count` ratios each (log2 of height / width)."""
    candidates = []
    if len(current) == count:
        candidates.append(np.log2(current))
    centres = {0.0, float(np.median(log2_ratios))}
    spreads = (0.5, 0.75, 1.0, 1.5, 2.0) if count > 1 else (0.0,)
    for centre, spread in itertools.product(sorted(centres), spreads):
        candidates.append(centre + spread * (np.arange(count) - (count - 1) / 2))
    candidates.append(np.quantile(log2_ratios, (np.arange(count) + 0.5) / count))
    candidates.append(_kmeans_1d(log2_ratios, count))
    unique = {tuple(np.round(np.sort(c), 3)): np.sort(c) for c in candidates}
    return list(unique.values())


def _scale_candidates(count, current):
    """Candidate scale sets of `count` scales each, as log2 values starting at 0."""
    candidates = []
    if len(current) == count:
        candidates.append(np.log2(current) - np.log2(current[0]))
    steps = (1.0, 0.75, 0.5, 1.25) if count > 1 else (1.0,)
    for step in steps:
        candidates.append(step / count * np.arange(count))
    unique = {tuple(np.round(c, 3)): c for c in candidates}
    return list(unique.values())


def _refine(evaluate, start, moves=(0.125, -0.125, 0.03125, -0.03125), max_rounds=12):
    """Coordinate descent on a log2 parameter vector; `evaluate` returns a sort key."""
    best, best_key = np.array(start, np.float64), evaluate(start)
    for _ in range(max_rounds):
        improved = False
        for index, move in itertools.product(range(best.size), moves):
            trial = best.copy()
            trial[index] += move
            key = evaluate(trial)
            if key > best_key:
                best, best_key, improved = trial, key, True
        if not improved:
            break
    return best, best_key


def override_flags(anchor_size, scales, aspect_ratios) -> list:
    """The command-line overrides of the anchor fields, one argv entry each.

    Tuples are written as ml_collections' `config_flags` parses them (`ast.literal_eval`),
    without spaces: `--config.model.anchors.scales=(1.0,1.26,1.587)`; a single value keeps
    its trailing comma, `(2.0,)`.
    """
    def as_tuple(values):
        text = ",".join(repr(float(v)) for v in values)
        return f"({text},)" if len(values) == 1 else f"({text})"

    return [f"{OVERRIDE_PREFIX}anchor_size={float(anchor_size)!r}",
            f"{OVERRIDE_PREFIX}scales={as_tuple(scales)}",
            f"{OVERRIDE_PREFIX}aspect_ratios={as_tuple(aspect_ratios)}"]


# Fewer boxes than this would fit the anchors to a handful of shapes, not to the data.
MIN_FIT_BOXES = 20


def fit_anchors(data, anchor_generator, image_size, positive_iou=0.5, negative_iou=0.4, *,
                max_anchors_per_location=None, max_search_boxes=2000, num_confirm=2,
                seed=0, before=None, scaled=None) -> dict:
    """Searches anchor_size, scales and aspect_ratios for the best-possible recall.

    Args:
        data: a `DetectionDataset` or a list of `Record`.
        anchor_generator: the current `AnchorGenerator` (its levels are kept).
        image_size: the pipeline's `image_size`: None, int S or (min_side, max_side).
        positive_iou, negative_iou: the matching thresholds.
        max_anchors_per_location: None keeps `len(scales) * len(aspect_ratios)`; a larger
            int also tries up to two more scales and two more ratios within that number.
        max_search_boxes: boxes sampled (with `seed`) for the search.
        num_confirm: candidates confirmed with `anchor_coverage` on all boxes (plus the best
            of each other number of anchors per location).
        before: optional `Coverage` of the current anchors, to avoid computing it again.
        scaled: optional `ScaledBoxes` of `data` for `image_size`.

    Returns:
        A dict: `before` and `after`, each `{"anchor_size", "scales", "aspect_ratios",
        "num_anchors_per_location", "recall", "recall_low_quality", "mean_best_iou"}` (from
        `anchor_coverage`); `improved` (bool; when False `after` is `before`);
        `overrides` (argv strings, see `override_flags`); `command_line` (the same,
        shell-quoted, on one line); `num_boxes` and `num_search_boxes`.

    Raises:
        ValueError: the data has fewer than `MIN_FIT_BOXES` boxes, or
            `max_anchors_per_location` is below the
            current number of anchors per location.
    """
    from retinanet.anchors import AnchorGenerator

    records = list(data.records) if hasattr(data, "records") else list(data)
    if scaled is None:
        scaled = scaled_boxes(records, image_size, anchor_generator.stride_multiple)
    if len(scaled) < MIN_FIT_BOXES:
        raise ValueError(f"fit_anchors: {len(scaled)} boxes are too few to fit anchors to "
                         f"(at least {MIN_FIT_BOXES})")
    num_scales = len(anchor_generator.scales)
    num_ratios = len(anchor_generator.aspect_ratios)
    current_count = num_scales * num_ratios
    limit = current_count if max_anchors_per_location is None else int(max_anchors_per_location)
    if limit < current_count:
        raise ValueError(f"`max_anchors_per_location` ({limit}) is below the current "
                         f"{current_count} anchors per location")
    levels = (anchor_generator.min_level, anchor_generator.max_level)

    rng = np.random.default_rng(seed)
    sample = np.arange(len(scaled))
    if sample.size > max_search_boxes:
        sample = np.sort(rng.choice(sample.size, max_search_boxes, replace=False))
    boxes, canvas = scaled.boxes[sample], scaled.canvas[sample]
    log2_ratios = np.log2(np.maximum(scaled.heights[sample], 1e-6) /
                          np.maximum(scaled.widths[sample], 1e-6))
    size_grid = np.concatenate([2.0 ** np.arange(-1.5, 4.5 + 1e-9, 1 / 6),
                                [anchor_generator.anchor_size]])

    def key_of(recall, mean_iou):
        return (float(recall), float(mean_iou))

    candidates = []  # (key, anchor_size, scales, ratios)
    shapes = [(k, r) for k in range(num_scales, num_scales + 3)
              for r in range(num_ratios, num_ratios + 3) if k * r <= limit]
    for count_scales, count_ratios in shapes:
        starts = []
        for ratios_log2 in _ratio_candidates(log2_ratios, count_ratios,
                                             anchor_generator.aspect_ratios):
            for scales_log2 in _scale_candidates(count_scales, anchor_generator.scales):
                best = analytic_best_iou(boxes, canvas, *levels, size_grid, 2.0 ** scales_log2,
                                         2.0 ** ratios_log2)
                recall, mean_iou = _score(best, positive_iou)
                for g in np.lexsort((-mean_iou, -recall))[:2]:
                    starts.append((key_of(recall[g], mean_iou[g]),
                                   np.concatenate([[np.log2(size_grid[g])], scales_log2[1:],
                                                   ratios_log2])))
        starts.sort(key=lambda item: item[0], reverse=True)

        def unpack(vector, count_scales=count_scales):
            scales = 2.0 ** np.concatenate([[0.0], vector[1:count_scales]])
            return 2.0 ** vector[0], scales, 2.0 ** vector[count_scales:]

        def evaluate(vector, unpack=unpack):
            size, scales, ratios = unpack(vector)
            best = analytic_best_iou(boxes, canvas, *levels, [size], scales, ratios)
            recall, mean_iou = _score(best, positive_iou)
            return key_of(recall[0], mean_iou[0])

        for _, start in starts[:3]:
            vector, key = _refine(evaluate, start)
            size, scales, ratios = unpack(vector)
            candidates.append((key, _round(size)[0], _round(np.sort(scales)),
                               _round(np.sort(ratios))))

    # Rank the rounded candidates on every box, analytically, then confirm the best few.
    ranked = []
    seen = set()
    for _, size, scales, ratios in candidates:
        if (size, scales, ratios) in seen:
            continue
        seen.add((size, scales, ratios))
        best = analytic_best_iou(scaled.boxes, scaled.canvas, *levels, [size], scales, ratios)
        recall, mean_iou = _score(best, positive_iou)
        ranked.append((key_of(recall[0], mean_iou[0]), size, scales, ratios))
    ranked.sort(key=lambda item: item[0], reverse=True)

    def summary_of(generator, coverage):
        return {"anchor_size": generator.anchor_size, "scales": list(generator.scales),
                "aspect_ratios": list(generator.aspect_ratios),
                "num_anchors_per_location": generator.num_anchors_per_location,
                "recall": coverage.summary["recall"],
                "recall_low_quality": coverage.summary["recall_low_quality"],
                "mean_best_iou": coverage.summary["mean_best_iou"]}

    if before is None:
        before = anchor_coverage(records, anchor_generator, image_size, positive_iou,
                                 negative_iou, scaled=scaled)
    before_summary = summary_of(anchor_generator, before)
    # Confirmation needs only the best IoUs; the matcher runs once more for the winner.
    # The best few overall, and the best of each number of anchors per location, so that a
    # smaller head can win when it covers as well (see `_choose`).
    to_confirm = ranked[:num_confirm]
    for count in sorted({len(c[2]) * len(c[3]) for c in ranked}):
        best_of_count = next(c for c in ranked if len(c[2]) * len(c[3]) == count)
        if not any(best_of_count is c for c in to_confirm):
            to_confirm.append(best_of_count)
    confirmed = []
    for _, size, scales, ratios in to_confirm:
        generator = AnchorGenerator(*levels, anchor_size=size, scales=scales,
                                    aspect_ratios=ratios)
        coverage = anchor_coverage(records, generator, image_size, positive_iou,
                                   negative_iou, scaled=scaled, low_quality=False)
        confirmed.append(summary_of(generator, coverage))
    after = _choose([before_summary] + confirmed)
    improved = after is not before_summary
    if improved:
        generator = AnchorGenerator(*levels, anchor_size=after["anchor_size"],
                                    scales=after["scales"], aspect_ratios=after["aspect_ratios"])
        after = summary_of(generator, anchor_coverage(records, generator, image_size,
                                                      positive_iou, negative_iou,
                                                      scaled=scaled))
    overrides = override_flags(after["anchor_size"], after["scales"], after["aspect_ratios"])
    return {"before": before_summary, "after": after, "improved": improved,
            "overrides": overrides,
            "command_line": " ".join(shlex.quote(flag) for flag in overrides),
            "positive_iou": float(positive_iou), "num_boxes": len(scaled),
            "num_search_boxes": int(sample.size)}


def _choose(summaries):
    """The best summary: highest recall, then mean best IoU; more anchors per location only
    where they gain more than RECALL_TOLERANCE. The first (current) one wins exact ties."""
    def key(summary):
        return (summary["recall"], summary["mean_best_iou"])

    best = max(summaries, key=key)  # max keeps the first of equals
    fewer = [s for s in summaries
             if s["num_anchors_per_location"] < best["num_anchors_per_location"]
             and s["recall"] >= best["recall"] - RECALL_TOLERANCE]
    return max(fewer, key=key) if fewer else best
