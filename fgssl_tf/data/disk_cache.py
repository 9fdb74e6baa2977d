"""Decoded images kept on disk between runs, so a second run (or a test) does not decode again.

Decoding elpv's 2,624 PNGs and resizing them takes several seconds per process; every run,
evaluation and tool pays it. `joblib.Memory` stores the resized arrays under
`$FGSSL_CACHE_DIR` (default `~/.cache/fgssl_tf`; set it empty to turn the cache off), keyed
by the arguments that decide them (the source's version, the image size), the loader's code and
this module's format version. Its writes are atomic, so two processes filling it at once do not corrupt it.
"""

from __future__ import annotations

import functools
import logging
import os

import joblib

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "FGSSL_CACHE_DIR"
# Raise when what a cached loader returns changes for the same arguments (e.g. another resize method).
FORMAT_VERSION = 1


def cache_dir() -> str | None:
    """Where decoded images are kept: $FGSSL_CACHE_DIR, or ~/.cache/fgssl_tf; None when set empty."""
    value = os.environ.get(CACHE_DIR_ENV)
    if value is None:
        return os.path.join(os.path.expanduser("~"), ".cache", "fgssl_tf")
    return value or None


@functools.cache
def _memorized(location: str, function):
    """joblib's cached form of `function` under `location`, made once per process, not per call."""
    return joblib.Memory(os.path.join(location, f"decoded-v{FORMAT_VERSION}"), verbose=0).cache(function)


def cached(function):
    """`function(*args)` from the disk cache when one is set, computed (and stored) otherwise.
    joblib keys an entry by the arguments and by `function`'s code; a cache that cannot be
    created (read-only home) costs only the speed-up."""

    @functools.wraps(function)
    def wrapper(*args):
        location = cache_dir()
        if location is not None:
            try:
                os.makedirs(location, exist_ok=True)
            except OSError as err:
                log.warning("decoded-image cache at %s not usable (%s); decoding without it", location, err)
                location = None
        if location is None:
            return function(*args)
        return _memorized(location, function)(*args)

    return wrapper
