"""The kernel families jitkern can build: template, entry point and the values each was written for."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .formats.layout import SUPPORTED_BITS


@dataclass(frozen=True)
class Family:
    name: str
    template: str                                  # file under templates/
    fmts: tuple
    bits: tuple = (0,)
    groups: tuple = (0,)
    ms: tuple = (1,)
    acts: tuple = ("f16",)
    options: dict = field(default_factory=dict)    # name -> allowed values (first = default)
    consts: Callable = lambda spec: {}             # launch constants shared by template and op
    sms: tuple = ()                                # NVIDIA compute capabilities only (empty: any target)
    arch_suffix: str = ""                          # compiled for arch + suffix ("a": sm_90a's wgmma)

    @property
    def entry(self) -> str:
        return f"jk_{self.name}"

    def supports(self, arch: str) -> bool:
        """Whether the family builds for `arch` (some are limited to NVIDIA compute capabilities)."""
        from .arch import Target

        target = Target(arch)
        return not self.sms or (target.vendor == "nvidia" and target.sm in self.sms)

    def validate(self, spec) -> None:
        def bad(what, value, allowed):
            raise ValueError(f"{spec.family}: {what}={value!r} is not supported; expected one of {list(allowed)}")

        if self.sms and spec.target.sm not in self.sms:
            bad("arch", spec.arch, [f"sm_{sm}" for sm in self.sms])
        for what, allowed in (("fmt", self.fmts), ("bits", self.bits), ("group", self.groups),
                              ("m", self.ms), ("act", self.acts)):
            if getattr(spec, what) not in allowed:
                bad(what, getattr(spec, what), allowed)
        given = dict(spec.options)
        for name, value in given.items():
            if name not in self.options:
                bad("option", name, self.options)
            if value not in self.options[name]:
                bad(name, value, self.options[name])
        full = {name: given.get(name, allowed[0]) for name, allowed in self.options.items()}
        object.__setattr__(spec, "options", tuple(sorted(full.items())))


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown kernel family {name!r}; known: {sorted(FAMILIES)}") from None


GROUPS = (32, 64, 128, -1)
GEMV_MS = tuple(range(1, 9))

# Dequantize the int layout to fp16 W^T [K, N]: the prefill path (then a BLAS GEMM).
register(Family("gptq_dequant", "gptq_dequant.hip.j2", fmts=("gptq",), bits=SUPPORTED_BITS,
                groups=GROUPS, acts=("f16",), options={"sym": (False, True), "act_order": (False, True)},
                consts=lambda spec: {"threads": 256}))


def _dependent_launch(spec, waits: bool) -> bool:
    """Launch with programmatic dependent launch where the build waits for the prior grid
    (jk_wait_prior_grid, prelude: the tensor-core GEMVs and the act-order gather), which PTX has from sm_90."""
    return waits and spec.target.sm >= 90


# `trigger_early`: a tensor-core GEMV lets the next kernel launch (griddepcontrol.launch_dependents)
# as soon as it has requested its first weights, not after its main loop: the next GEMV's blocks then
# take SM slots as this one's free them and request their own first weights while this one streams
# (templates/prelude.h.j2).  Fractions of fp16 F.linear, geomean of the 8 Llama-3 shapes, before ->
# after, same run (2026-11-27; two H100 runs, two H200 runs):
#     GPTQ int4 M=1   H100 0.826 -> 0.840, 0.822 -> 0.824   H200 0.664 -> 0.682, 0.667 -> 0.680
#     GPTQ int4 M=8   H100 0.786 -> 0.792, 0.783 -> 0.782   H200 0.640 -> 0.652, 0.638 -> 0.642
#     Q4_1 M=1        H100 0.817 -> 0.839                   H200 0.715 -> 0.733, 0.720 -> 0.734
#     Q4_K M=1        H100 0.751 -> 0.769, 0.748 -> 0.766   H200 0.601 -> 0.617, 0.603 -> 0.616
#     Q4_0 M=1        H100 0.839 -> 0.850, 0.840 -> 0.847   H200 0.727 -> 0.726, 0.733 -> 0.725
# It helps most on layers that leave SM slots free (8B qkv int4 M=1 0.67 -> 0.77 on the H100) and
# costs the 70B qkv (0.78 -> 0.71), whose many small blocks per SM let the next kernel's blocks pile
# onto the SMs that free first.  Not kept where it measured worse: the Q8_0 GEMV at M > 1 (H200 M=8
# 0.908 -> 0.878, 0.909 -> 0.888) and the dense GEMV (1.107 -> 1.091).  Always using the largest
# block with it was worse (int4 M=1 0.680 -> 0.612).


def _gemv_consts(spec) -> dict:
    if spec.target.vendor == "nvidia":
        # sm_80+: tensor-core MMAs (the op picks 128..512 threads a block).
        # A tensor-core step is `unroll` 32-row units: 2 where an octet takes two words (3- and 8-bit;
        # 3-bit steps of 4 spilled 48-144 bytes past 128 registers on sm_90), else 4.  Act-order
        # layers get x already in layout order (x_gather) rather than gathering it in every block.
        if spec.target.sm >= 80:
            unroll = 2 if spec.bits in (3, 8) else 4
            pdl = _dependent_launch(spec, True)
            return {"threads": 512, "msplit": 1, "mpl": spec.m, "occupancy": 1, "mma": True, "gathers_x": False,
                    "unroll": unroll, "pdl": pdl, "trigger_early": pdl}
    # CUDA-core builds (gfx906; NVIDIA before sm_80): lanes sharing one 128-bit weight load (same
    # address, one request) split the M rows so that a lane stays within 64 VGPRs on gfx906 (4 waves
    # per SIMD) without scratch, and within 128 registers on NVIDIA (one lane keeping all 8 rows
    # spilled 196 bytes on sm_75): at most 2 rows a lane for plain int4, one row a lane where decoding
    # needs more registers (8-bit words come in pairs; the act-order gather holds its indices).  A
    # power of two, and at most a wave's lanes (wave32: 4 lanes a load), so slots tile a wave exactly.
    # NVIDIA keeps 512 threads a block: small-N layers need the loads in flight.
    rows_per_lane = 1 if spec.bits == 8 or spec.opts.get("act_order") else 2
    msplit = 1
    while msplit * rows_per_lane < spec.m and 16 * msplit <= spec.wave:
        msplit *= 2
    return {"threads": 512 if spec.target.vendor == "nvidia" else 256, "msplit": msplit,
            "mpl": (spec.m + msplit - 1) // msplit, "occupancy": 4, "mma": False, "gathers_x": True}


# Activation columns gathered through an act-order permutation, for GEMVs that read x in layout order.
register(Family("x_gather", "x_gather.hip.j2", fmts=("f16",), acts=("f16",),
                consts=lambda spec: {"threads": 128, "pdl": _dependent_launch(spec, spec.target.vendor == "nvidia")}))

# GEMV for 1..8 rows over the int layout, FP32 accumulation.
register(Family("gptq_gemv", "gptq_gemv.hip.j2", fmts=("gptq",), bits=SUPPORTED_BITS, groups=GROUPS,
                ms=GEMV_MS, acts=("f16",), options={"sym": (False, True), "act_order": (False, True)},
                consts=_gemv_consts))


def _dense_consts(spec) -> dict:
    # NVIDIA sm_80+ multiplies on tensor cores (mma m16n8k16, fp32 accumulate): fp32 CUDA-core FMAs
    # plus half->float conversions cannot keep up with HBM3 at M = 8..16.  Everything else uses jk_dot2.
    # Blocks of at most 256 threads at M <= 4 on tensor cores: more, smaller blocks resident (H100:
    # M=1 0.94 -> 0.97, M=4 0.92 -> 1.00 of cuBLAS; M = 8, 16 do better with 512).
    # Tensor cores keep two steps of U units in flight (weights + x).  H100, ratio to cuBLAS with U = 2:
    # M=1 0.96 -> 1.06, M=2 0.92 -> 1.04, M=8 0.94 -> 0.99 (U = 4: ~160 registers, one block an SM,
    # 0.98-0.99).  M > 8 holds x rows g + 8 as well: U = 1 (M=12 0.95 -> 1.04; U = 2: M=16 0.92).
    mma = spec.target.vendor == "nvidia" and spec.target.sm >= 80
    unroll = (2 if spec.m <= 8 else 1) if mma else 4
    return {"max_threads": 256 if mma and spec.m <= 4 else 512, "rows": 8 if mma else spec.wave // 8, "mma": mma,
            "unroll": unroll, "occupancy": 4, "pdl": _dependent_launch(spec, mma)}


def _gemm_consts(spec) -> dict:
    # Two consumer warpgroups (64 output columns each, `m` tokens) and a producer warpgroup a block,
    # one block an SM; a stage is 64 rows of K: the activation tile (shared by the warpgroups), four
    # tiles' words, and 2 units' scales and zero points.  H100, int4 M = 512, geomean of the Llama-3
    # shapes, all through this GEMM, measured while ptxas still serialized the wgmmas: 256 tokens by
    # 128 columns 0.57 of fp16's throughput, 128 x 128 0.47, 64 x 256 (4 warpgroups) 0.32, 256 x 64
    # 0.50; with the MMAs overlapping, 256 x 128 reaches 0.67, and 0.77 with three copies a stage
    # instead of seven (the tile shapes were not measured again since).
    wgs = 2
    stage = spec.m * 128 + wgs * (4 * spec.bits * 128 + 2 * 64 * 3)
    stage = (stage + 1023) // 1024 * 1024
    stages = min(8, (200 * 1024) // stage)
    return {"threads": 128 * wgs + 128, "warpgroups": wgs, "tokens": spec.m, "columns": 64 * wgs, "stages": stages,
            "stage_bytes": stage, "shared": stages * stage + 1024 + 16 * stages}


GEMM_TOKENS = (256, 128)
# Prefill GEMM over the int layout on Hopper tensor cores (wgmma, A = weights unpacked in registers),
# `m` tokens a block.
register(Family("gptq_gemm", "gptq_gemm.hip.j2", fmts=("gptq",), bits=SUPPORTED_BITS, groups=GROUPS,
                ms=GEMM_TOKENS, acts=("f16",), options={"sym": (False, True), "act_order": (False, True)},
                consts=_gemm_consts, sms=(90,), arch_suffix="a"))
# The GEMM's activation tiles, gathered into its k order.
register(Family("x_pack", "x_pack.hip.j2", fmts=("f16",), ms=GEMM_TOKENS, acts=("f16",),
                consts=lambda spec: {"threads": 256, "tokens": spec.m,
                                     "pdl": _dependent_launch(spec, spec.target.vendor == "nvidia")}))


# Unquantized fp16 GEMV for 1..16 rows over PyTorch-layout weights [N, K] (lm_head, dense layers).
register(Family("dense_gemv", "dense_gemv.hip.j2", fmts=("f16",), ms=tuple(range(1, 17)), acts=("f16",),
                consts=_dense_consts))


# GGUF (ggml block types) over the SoA layout of jitkern/formats/gguf.py.
GGUF_FMTS = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs")


# The GEMVs that compute their fp16 (a, c) in fp16: same values as the fp32 way, fewer conversions.
# H100, same-run A/B against the fp32 way, geomean of fp16 F.linear, M = 1 / 8 (2026-11-27 14:02Z):
# Q4_0 0.858 -> 0.881 / 0.762 -> 0.770, Q4_K 0.774 -> 0.787 / 0.736 -> 0.736, Q8_0 1.031 -> 1.038 /
# 0.957 -> 0.981.  With every type in it (13:46Z, another H100) Q4_1 went 0.854 -> 0.840 at M = 1 and
# Q6_K 0.950 -> 0.923 / 0.839 -> 0.782.  Q5_0, IQ4_NL, Q5_K and Q2_K (98 conversions a GEMV before)
# follow the measured type of their form; Q5_1, Q3_K and IQ4_XS stay with Q4_1 and Q6_K.  The wgmma
# GEMM keeps the fp32 way (the fp16 one not measured there).
F16_SCALE_TYPES = ("q4_0", "q5_0", "iq4_nl", "q8_0", "q4_k", "q5_k", "q2_k")


def _gguf_consts(spec) -> dict:
    from .formats.gguf_quants import TYPES

    qt = TYPES[spec.fmt.upper()]
    planes, off = {}, 0
    for f in qt.header_fields:                  # plane f starts at byte nb * planes[f] of a header row
        planes[f.name] = off
        off += f.size
    # NVIDIA sm_80+ GEMV: tensor cores on fp16 activations (no quantize launch).  A warp owns one 16-row
    # tile, or two for the 256-element block types from M = 3 and for Q4_K at any M (each x load
    # then serves 32 rows: half the x traffic; H100: Q6_K M=8 0.66 -> 0.75, Q4_K 0.64 -> 0.67 of fp16,
    # and Q4_K M=1, one step of a block a row, 0.807 -> 0.819 in three same-run rounds; Q5_K's M = 1
    # step, with its high bits, then spills; Q4_0 and Q8_0 gained nothing from M = 3, Q4_0 M=1 lost
    # 0.874 -> 0.858), in blocks of up to 256 / 512 threads (<= 128 registers).  A lane loads `unroll` slices
    # of each of its rows before decoding: 8 slices (4 of 2 rows, 2 of 4) where a slice is one 16-byte
    # vector, half that for the two- and three-vector slices of Q3_K, Q5_K and Q6_K.
    mma = spec.family == "gguf_gemv" and spec.target.vendor == "nvidia" and spec.target.sm >= 80
    tiles = 2 if qt.block == 256 and (spec.m >= 3 or spec.fmt == "q4_k") else 1
    unroll = (4 if spec.fmt not in ("q3_k", "q5_k", "q6_k") else 2) // tiles
    if spec.fmt in ("q4_k", "q5_k", "iq4_xs"):      # a step covers whole 8-slice blocks
        unroll = max(unroll, 2)
    # integer path (gfx906 first): 8 rows of 32 lanes a block; activation vectors of `token_batch`
    # rows are loaded together.  `early`: the one-step tensor-core GEMV requests its first step of
    # weights before waiting for the prior grid, at M = 1 only (H100, geomean of fp16 F.linear, one
    # run: Q4_0 M=1 0.817 -> 0.834, M=8 0.744 -> 0.665; Q4_K 0.729 -> 0.741, 0.706 -> 0.693).
    # `pipelined`: two steps of slices in flight, Q8_0 only (H100: M=1 0.96 -> 0.99 of fp16): Q4_0
    # and Q4_1 measured slower with it (M=1 0.81 -> 0.74, 0.80 -> 0.69; with half the slices a step,
    # 0.84 -> 0.77 on 2026-11-27) and most other types spill past 128 registers with two steps (a
    # step of Q5_1, Q2_K, Q4_K, Q6_K takes 52+ of them).  sm_100+ keeps one step until checked.
    # `trigger_early` (sm_90, M = 1): the next kernel may launch once the first weights are requested
    # (the note above _gemv_consts).
    # `f16_scales`: the tensor-core GEMV computes its fp16 (a, c) in fp16 (gguf_types.h.j2,
    # jk_group_ac_f16) for the types in F16_SCALE_TYPES, else in fp32 and converts them.
    # `lean_tail` (Q4_K): steps of exactly one block drop the tail clamps and selects, and activation
    # loads drop their predicate (lanes past M load the last token's row).  H100, same-run A/B, two
    # rounds, M = 1 / 8: Q4_K 0.804 / 0.801 -> 0.815 / 0.817, 0.743 / 0.744 -> 0.756 / 0.759; the same
    # for Q6_K measured slower (M = 1 0.927 / 0.924 -> 0.917 / 0.918, M = 8 0.810 / 0.809 -> 0.776 /
    # 0.777, its 70B gate_up 151 -> 172 us), so the other types keep the general form until measured.
    return {"f16_scales": mma and spec.fmt in F16_SCALE_TYPES,
            "threads": 256, "block": qt.block, "qb": qt.quant_bytes, "planes": planes, "mma": mma,
            "token_batch": 2, "tiles": tiles, "max_threads": 256 * tiles, "min_blocks": 3 - tiles,
            "unroll": unroll, "pdl": _dependent_launch(spec, mma), "early": mma and spec.m == 1,
            "pipelined": mma and spec.target.sm < 100 and spec.fmt == "q8_0",
            "trigger_early": mma and spec.m == 1 and _dependent_launch(spec, mma),
            "lean_tail": mma and spec.fmt == "q4_k"}


# Activations -> int8 planes (Q8_1 quants + residual) and per-16 (d/254, sum) for the GGUF GEMV.
register(Family("q8_1_quantize", "q8_1_quantize.hip.j2", fmts=("q8_1",), acts=("f16",),
                consts=lambda spec: {"threads": 256}))
# GEMV for 1..8 rows, integer dot products (jk_dot4_i8), fp32 accumulation.
register(Family("gguf_gemv", "gguf_gemv.hip.j2", fmts=GGUF_FMTS, ms=GEMV_MS, acts=("f16",), consts=_gguf_consts))
# Dequantize rows to fp16 (prefill, then a BLAS GEMM) or fp32 (bit-exact with gguf.quants).
register(Family("gguf_dequant", "gguf_dequant.hip.j2", fmts=GGUF_FMTS, acts=("f16", "f32"), consts=_gguf_consts))


# Where each 16-element group a lane decodes sits in its block (gguf_types.h.j2's jk_group returns):
# (slices a block, groups a slice, element offset of group gi of slice ts).
GGUF_GROUPS = {
    **{f: (1, 2, lambda ts, gi: 16 * gi) for f in ("q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")},
    "q8_0": (2, 1, lambda ts, gi: 16 * ts),
    **{f: (4, 4, lambda ts, gi: 128 * (ts >> 1) + 32 * gi + 16 * (ts & 1)) for f in ("q2_k", "q3_k", "q6_k")},
    **{f: (8, 2, lambda ts, gi: 64 * (ts >> 1) + 32 * gi + 16 * (ts & 1)) for f in ("q4_k", "q5_k")},
    "iq4_xs": (8, 2, lambda ts, gi: 32 * ts + 16 * gi),
}
GGUF_GEMM_TOKENS = GEMM_TOKENS      # the same tiles as the GPTQ GEMM: x_pack serves both
SMEM_LIMIT = 227 * 1024          # H100's dynamic shared memory a block


def _gguf_gemm_consts(spec) -> dict:
    # Two consumer warpgroups (128 weight rows = output columns) and a producer warpgroup a block, one
    # block an SM, `m` tokens.  K goes by 256-element windows: a window's quants (one superblock, or 8
    # blocks of 32) in a ring of two, its activations in stages of `xk` elements (256 tokens: 128, so
    # that two stages fit), at most three in flight (with four, ptxas serialized the MMAs).  Headers
    # come in chunks of `chunk` blocks, the fewest that make every plane's run a multiple of 16 bytes
    # (a TMA box's row), double-buffered.
    from .formats.gguf_quants import TYPES

    base = _gguf_consts(spec)
    qt = TYPES[spec.fmt.upper()]
    rows, per_stage, xk = 128, 256 // qt.block, 256 if spec.m <= 128 else 128
    chunk = per_stage
    while any(chunk * f.size % 16 for f in qt.header_fields):
        chunk += per_stage
    kb = lambda n: -(-n // 1024) * 1024                                  # noqa: E731
    stage, qslot = kb(spec.m * xk * 2), kb(rows * per_stage * qt.quant_bytes)
    chunk_bytes = kb(rows * chunk * qt.header_bytes)
    stages = min(3, (SMEM_LIMIT - 2048 - 2 * chunk_bytes - 2 * qslot) // stage)
    slices, groups, _ = GGUF_GROUPS[spec.fmt]
    runs = [(f.name, base["planes"][f.name], f.size, chunk * f.size) for f in qt.header_fields]
    # Quants in shared memory by columns of `qcol` bytes (gguf_gemm.hip.j2): what a sub-step's lanes
    # read of a row at once, 64 bytes for Q8_0; 32 for the rest, as every window's row is whole 32s.
    qcol = 64 if spec.fmt == "q8_0" else 32
    return {"threads": 384, "warpgroups": 2, "rows": rows, "tokens": spec.m, "block": qt.block,
            "qb": qt.quant_bytes, "planes": base["planes"], "per_stage": per_stage, "chunk": chunk,
            "runs": runs, "xk": xk, "stage_bytes": stage, "qslot_bytes": qslot, "chunk_bytes": chunk_bytes,
            "stages": stages, "slices": slices, "groups": groups, "qcol": qcol, "f16_scales": False,
            "shared": stages * stage + 2 * qslot + 2 * chunk_bytes + 1024 + 256}


# Prefill GEMM over the GGUF layout on Hopper tensor cores (wgmma, weights decoded in registers).
register(Family("gguf_gemm", "gguf_gemm.hip.j2", fmts=GGUF_FMTS, ms=GGUF_GEMM_TOKENS, acts=("f16",),
                consts=_gguf_gemm_consts, sms=(90,), arch_suffix="a"))
