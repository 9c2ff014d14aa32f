"""CLIP token ids as the app feeds them, one row per kind of prompt that tests a pooling rule.

The app pads CLIP-L's ids with EOS (49407) and CLIP-G's with "!" (0); each kind puts the pooled
position somewhere a tie or a missing EOS could move it.
"""

import numpy as np

from sd3coreml.contract import BOS, EOS, MAX_TOKENS

PROMPT = [320, 1125, 539, 320, 2368]  # "a photo of a cat"


def ids_of(kind: str) -> np.ndarray:
    ids = np.full((1, MAX_TOKENS), float(EOS), dtype=np.float32)
    words = PROMPT
    if kind == "unknown-character-mid-prompt":  # the app maps a character outside CLIP's 256 to EOS
        words = [320, EOS, 1125, 539]
    if kind == "eos-truncated":  # a long prompt loses its EOS: BOS and 76 words
        words = [320 + (index * 37) % 40000 for index in range(MAX_TOKENS - 1)]
    ids[0, : len(words) + 2] = [BOS, *words, EOS][:MAX_TOKENS]
    if kind == "zero-padded":
        ids[0, len(words) + 2 :] = 0.0
    return ids


KINDS = ["eos-padded", "zero-padded", "unknown-character-mid-prompt", "eos-truncated"]
