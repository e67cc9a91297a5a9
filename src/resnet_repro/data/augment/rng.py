"""The per-sample random generator of the augmentation, geometry and colour alike.

Every random choice comes from ``sample_rng(seed, epoch, index, stream)``, so what a sample becomes is a pure
function of those numbers, whichever worker or rank handles it.
"""
from __future__ import annotations

import numpy as np

# Random streams per sample: geometry and colour draw from separate Philox keys, so switching colour
# augmentation on or off never changes the crops a run sees. FLIP_STREAM: the one coin of an alternating flip
# schedule (geometry.alternating_flip), drawn at epoch 0 only.
GEOMETRY_STREAM, COLOR_STREAM, FLIP_STREAM = 0, 1, 2


_RNGS: dict[int, tuple[np.random.Philox, np.random.Generator]] = {}


def sample_rng(seed: int, epoch: int, index: int, stream: int = GEOMETRY_STREAM) -> np.random.Generator:
    """The random generator of one sample: Philox keyed by (seed, epoch, index), so every sample has its own
    independent stream and no state is carried between samples. `stream` is mixed into the key's first word
    (golden-ratio multiplier); stream 0 is the plain seed.

    The Generator object is reused per stream within a process: building a Philox costs ~40 us (2 % of a
    JPEG decode, twice per sample), resetting its state ~5 us, and the numbers are the same. So the generator
    is valid until the next ``sample_rng`` call for the same stream: draw what the sample needs, then move on.
    """
    s = (seed ^ (stream * 0x9E3779B97F4A7C15)) & 0xFFFFFFFFFFFFFFFF
    key = np.array([s, ((epoch & 0xFFFFFFFF) << 32) | (index & 0xFFFFFFFF)], np.uint64)
    cached = _RNGS.get(stream)
    if cached is None:
        bits = np.random.Philox(key=key)
        cached = _RNGS[stream] = (bits, np.random.Generator(bits))
    else:
        # The state of a freshly built Philox(key=key): counter 0, empty output buffer.
        cached[0].state = {"bit_generator": "Philox", "state": {"counter": np.zeros(4, np.uint64), "key": key},
                           "buffer": np.zeros(4, np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
    return cached[1]
