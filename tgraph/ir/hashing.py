"""Short deterministic content hashes of arrays, as dumps show constants."""

from __future__ import annotations

import hashlib
import itertools
import weakref

import numpy as np


def content_hash(array: np.ndarray) -> str:
    """A short, deterministic hash of an array's dtype, shape and bytes.

    Read-only arrays (the frontend's weights) are hashed once: the pass manager dumps the
    graph after every pass, and re-hashing BERT-base's 440 MB each time took seconds. The
    frontend's weights view the model's parameters; a model changed in place after tracing
    keeps its old hashes in later dumps (trace it again).
    """
    if array.flags.writeable:
        return _hash_bytes(array)
    return _per_array(_HASHES, array, _hash_bytes)


_HASHES: dict[int, tuple[weakref.ref, str]] = {}  # id(read-only array) -> (ref, digest)


def identity_token(array: np.ndarray) -> str:
    """A token that differs between any two arrays alive in this process, read no bytes.

    The pass manager compares the graph text before and after every pass to check that a
    pass reports ``changed`` truthfully; constants are read-only, so an array that kept its
    token kept its contents. Hashing the contents instead read every weight (2 GB for the
    336M Llama, 1.7 s) when no dump is kept. A token is never reused, even after its array
    dies and a new one takes its address.
    """
    return _per_array(_TOKENS, array, lambda _a: f"i{next(_COUNTER)}")


_TOKENS: dict[int, tuple[weakref.ref, str]] = {}  # id(array) -> (ref, token)
_COUNTER = itertools.count()


def _per_array(cache: dict, array: np.ndarray, make) -> str:
    """``make(array)``, computed once per array object while it lives (``cache`` maps its id
    to a weak reference and the value; the entry goes when the array dies, so a new array at
    the same address gets a value of its own). An array that takes no weak reference (an
    ndarray subclass with __slots__) gets its content hash, which is stable without a cache."""
    key = id(array)
    entry = cache.get(key)
    if entry is not None and entry[0]() is array:
        return entry[1]
    try:
        ref = weakref.ref(array, lambda _r, k=key: cache.pop(k, None))
    except TypeError:
        return _hash_bytes(array)
    value = make(array)
    cache[key] = (ref, value)
    return value


def _hash_bytes(array: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(array.dtype).encode())
    h.update(str(array.shape).encode())
    h.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)  # no tobytes() copy
    return h.hexdigest()[:8]
