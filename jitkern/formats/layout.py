"""The one K-major integer layout that every GPTQ / AWQ checkpoint is converted to at load.

Kernels (``templates/gptq_gemv.hip.j2``, ``templates/gptq_dequant.hip.j2``) read only this layout, so
AWQ, GPTQ v1/v2, symmetric/asymmetric and act-order checkpoints all share one kernel per bit width.

Shapes (``K`` = in_features after act-order padding, ``N`` = out_features, ``TN`` = 32 columns a tile):

``qweight``  int32 ``[N_pad / TN, K * bits / 32, TN]``
    Tile-major so that one workgroup streams one contiguous strip.  ``K`` is cut into *units* of 32
    rows; unit ``u`` occupies word rows ``u*bits … u*bits + bits - 1`` of every tile.  Inside a word the
    values are stored *even/odd split*: a word holding ``P`` values keeps value ``i`` at field
    ``i // 2`` when ``i`` is even and at field ``P/2 + i // 2`` when odd.  So
    ``(word >> (b*j)) & mask2`` (``mask2`` = the field mask in both 16-bit halves) yields the pair
    ``(v[2j], v[2j+1])`` in the low / high half — ready for the fp16 magic-number trick and a
    ``dot2`` against two consecutive activations.

    * bits 2, 4, 8: word ``w`` of a unit holds rows ``32u + w*P … + P - 1`` (``P = 32 / bits``).
    * bits 3: words 0 and 1 are a 2-bit plane (the low two bits of rows ``32u + 16w …``, as bits 2);
      word 2 is a 1-bit plane holding bit 2 of all 32 rows (even/odd split with ``P = 32``).

``scales``  fp16  ``[G, N_pad]``  (padded columns hold 0)
``zeros``   uint8 ``[G, N_pad]``  exact zero points (GPTQ v2 semantics), or ``None`` when every zero is
            ``2**(bits-1)`` (symmetric: the kernel folds the constant in).
``perm``    int32 ``[K]`` or ``None``: act-order.  Layout row ``r`` multiplies activation column
            ``perm[r]``.  Rows are sorted by group and every group's run is padded to a whole unit with
            rows whose weight is exactly zero (q == z) and ``perm`` pointing at column 0.
``unit_group`` int32 ``[K / 32]`` or ``None``: act-order only, the scales row of each unit.  Without
            act-order the group of unit ``u`` is ``u * 32 // group_size``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

TILE_N = 32          # columns per tile (8 lanes x 4 columns of 128-bit loads)
UNIT_K = 32          # rows per unit: every supported group size is a multiple of it
SUPPORTED_BITS = (2, 3, 4, 8)


def round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def settle(tensors) -> None:
    """Wait for the kernels that just wrote freshly converted weights.  The tensor-core GEMVs request
    their first weights before waiting for the previous kernel (programmatic dependent launch, see
    jk_two_steps_in_flight in templates/prelude.h.j2), and that wait is what makes a previous kernel's
    writes visible; conversion is a load-time step, so one synchronization here is cheap."""
    for t in tensors:
        if t is not None and t.is_cuda:
            if not torch.cuda.is_current_stream_capturing():
                torch.cuda.current_stream(t.device).synchronize()
            return


@dataclass
class IntLayout:
    """A converted GPTQ/AWQ weight.  ``k_in`` is the activation width the caller passes."""

    bits: int
    group_size: int          # rows per group in layout order (K when the checkpoint had -1)
    k_in: int                # in_features of the checkpoint (activation width)
    k: int                   # rows in the layout (k_in, or more when act-order runs were padded)
    n: int                   # out_features
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: Optional[torch.Tensor] = None
    perm: Optional[torch.Tensor] = None
    unit_group: Optional[torch.Tensor] = None

    @property
    def n_pad(self) -> int:
        return round_up(self.n, TILE_N)

    @property
    def groups(self) -> int:
        return self.scales.shape[0]

    @property
    def symmetric(self) -> bool:
        return self.zeros is None

    @property
    def act_order(self) -> bool:
        return self.perm is not None

    def tensors(self):
        return [t for t in (self.qweight, self.scales, self.zeros, self.perm, self.unit_group) if t is not None]

    def to(self, device) -> "IntLayout":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return IntLayout(self.bits, self.group_size, self.k_in, self.k, self.n, move(self.qweight),
                         move(self.scales), move(self.zeros), move(self.perm), move(self.unit_group))

    def nbytes(self) -> int:
        """Bytes a kernel must read (padding excluded from nothing: it is really read)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())
