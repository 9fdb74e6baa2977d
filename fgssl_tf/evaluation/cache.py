"""Work the frozen-encoder protocols share instead of repeating, in one process.

- Embeddings: `tools/reproduce.py` evaluates each encoder by linear probe and kNN at
  several label fractions, each over several seeds; every one of those needs the same
  embeddings of the same train, val and test images. They are computed once per
  (encoder, images, batch size) and kept, read-only, for the next call.
- Fits: seeds whose label subsets are identical (every seed at label fraction 1.0) give
  identical fits, as neither protocol draws anything at random (the logistic regression's
  lbfgs solver ignores `random_state`; kNN has none), so the fit is reused.

The key of an encoder says everything its embeddings depend on: an export's resolved path
with the size and modification time of every file in it (a re-export invalidates it), or a
random network's architecture and seed. Images are keyed by a hash of their bytes, so a
changed split, subset or image size never reuses stale embeddings.

- Traces: fine-tuning builds each seed's model afresh (its weights, head, flip seed), then
  trains it in the first seed's compiled twin given all of its variables, so the train and
  predict steps are traced once per evaluation, not once per seed (protocols.py).

`disabled()` turns all three off: every call and seed recomputes everything, as before they
existed (the tests compare reports with and without; `tools/benchmark.py --evaluation` times both).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator

import numpy as np

MAX_ENCODERS_SPLITS = 12  # entries (one per encoder and split): the last four encoders' train, val and test

_embeddings: collections.OrderedDict = collections.OrderedDict()
_enabled = True


def enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Every embedding recomputed, every seed fitted and every fine-tuned model traced, as if no cache existed."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def clear() -> None:
    _embeddings.clear()


def export_key(version_dir: str) -> tuple:
    """An export's identity: its real path and the size and modification time of every file in it."""
    root = os.path.realpath(version_dir)
    files = []
    for folder, _, names in os.walk(root):
        for name in names:
            stat = os.stat(os.path.join(folder, name))
            files.append((os.path.relpath(os.path.join(folder, name), root), stat.st_size, stat.st_mtime_ns))
    return ("export", root, tuple(sorted(files)))


def images_digest(images: np.ndarray) -> str:
    digest = hashlib.blake2b(f"{images.shape}{images.dtype}".encode(), digest_size=16)
    digest.update(np.ascontiguousarray(images).data)
    return digest.hexdigest()


def embeddings(encoder_key: tuple, images: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`compute(images)`, or the array an earlier call with the same encoder key and images returned."""
    if not _enabled:
        return compute(images)
    key = (encoder_key, images_digest(images))
    if key in _embeddings:
        _embeddings.move_to_end(key)
        return _embeddings[key]
    features = np.asarray(compute(images))
    features.setflags(write=False)  # shared: a caller that changed it would change every later report
    _embeddings[key] = features
    while len(_embeddings) > MAX_ENCODERS_SPLITS:
        _embeddings.popitem(last=False)
    return features
