"""scHelix ``nn.Module``s, one file per part in the paper's words.

- :mod:`.graph` learnable sparse gene–gene graph with stop-gradient caching (Alg. 3)
- :mod:`.streams` multi-scale low/high-pass diffusion encoders (Eq. 5) and decoders
- :mod:`.interaction` Align (Eq. 6) and bounded Refine (Eq. 7)
- :mod:`.fusion` HyperFusion (Eq. 8)
- :mod:`.losses` EMA teacher prototypes, connectivity and KD losses (Eq. 9–10)
- :mod:`.network` the whole network (:class:`SCHelixModule`)
"""

from schelix.module.network import LOSS_TERMS, STAGES, SCHelixModule

__all__ = ["LOSS_TERMS", "STAGES", "SCHelixModule"]
