"""Images that two splits share: the same file, or files with the same bytes.

A model validated on its own training images looks better than it is, and nothing in its
metrics says so. `retinanet train` refuses such splits (unless `data.allow_overlap`) and
`retinanet doctor` reports them.
"""

from __future__ import annotations

import collections
import os

from retinanet.data.image_files import file_digest


def overlapping_images(train_records, val_records) -> list:
    """`(train file, val file, how)` for each val image that is also a training image.

    `how` is "same file" (one path, after resolving links) or "same bytes". Only files are
    compared (records without a path, the shapes set or TFDS, are not); bytes are hashed
    only for files whose sizes occur in both splits.
    """
    train = [r.path for r in train_records if r.path]
    val = [r.path for r in val_records if r.path]
    by_real_path = {os.path.realpath(path): path for path in train}
    pairs, rest = [], []
    for path in val:
        twin = by_real_path.get(os.path.realpath(path))
        if twin:
            pairs.append((twin, path, "same file"))
        else:
            rest.append(path)

    def sizes(paths):
        grouped = collections.defaultdict(list)
        for path in paths:
            try:
                grouped[os.path.getsize(path)].append(path)
            except OSError:
                pass  # unreadable files are the readers' to report
        return grouped

    train_sizes, val_sizes = sizes(train), sizes(rest)
    for size in train_sizes.keys() & val_sizes.keys():
        digests = {file_digest(path): path for path in train_sizes[size]}
        for path in val_sizes[size]:
            twin = digests.get(file_digest(path))
            if twin:
                pairs.append((twin, path, "same bytes"))
    return sorted(pairs, key=lambda pair: pair[1])
