"""The intermediates of one prompt-to-image run, as both end-to-end sides record them."""

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ChainRecord:
    """Values by (step, name): `step` is None for the prompt encoding, the final latent and the image.

    Stage boundaries are named by the folder entry that produces them and hold the text
    tokens followed by the image tokens.
    """

    values: dict = field(default_factory=dict)

    def put(self, step, name: str, value) -> None:
        self.values[(step, name)] = np.asarray(value, dtype=np.float32)
