"""Token tile of the Hopper wgmma GEMMs (GPTQ and GGUF): the tile whose blocks finish in the least
estimated time, counted in whole waves of blocks over the SMs, or None where even the best leaves
so many SMs idle that dequantize + cuBLAS wins."""
from __future__ import annotations

from typing import Optional

# A block's time by token tile relative to 256 tokens, fitted to H100 runs at M = 512 where both tiles
# filled their waves: half the MMAs, the same weights to decode (GPTQ int4 0.58-0.61, GGUF Q6_K 0.62).
TILE_COST = {256: 1.0, 128: 0.6}
MIN_BUSY = 0.6               # below this share of the 256-token tile's ideal time, dequantize + cuBLAS


def best_tile(blocks: dict, sms: int) -> Optional[int]:
    """blocks: token tile -> blocks it launches (256 among them)."""
    time = {t: -(-b // sms) * TILE_COST[t] for t, b in blocks.items()}
    best = min(time, key=time.get)
    return best if blocks[256] / sms >= MIN_BUSY * time[best] else None
