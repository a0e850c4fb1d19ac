"""Bad inputs across the public API and the CLI: one table, each row a clear error that names the
tensor or argument, raised before anything is compiled or launched.

API rows run on the CPU here and (marked gpu) with the layers on the GPU, where the kernels are
compiled when a layer moves to the device and the bad call must still fail before any launch.
CLI rows run ``jitkern.cli.main`` in-process: exit status != 0 and one stderr line naming the
argument (argparse's own errors end with that line, after the usage).  Errors already covered by
tests/test_cli.py (unknown preset, missing files, bad --arch, unknown family) are not repeated.
"""
from __future__ import annotations

import re

import pytest
import torch

from jitkern import QuantLinear, cache, runtime
from jitkern.formats.gptq import quantize_gptq
from jitkern.spec import KernelSpec

N, K, G = 16, 64, 32


def _forbid(monkeypatch):
    """Any kernel launch or compile from here on fails the test (not a ValueError: not absorbed)."""
    def launched(*a, **k):
        raise AssertionError("a kernel was launched")

    def compiled(spec, *a, **k):
        raise AssertionError(f"{spec.uri} was compiled")

    monkeypatch.setattr(runtime.Kernel, "__call__", launched)
    monkeypatch.setattr(cache, "_compile", compiled)


def api_table(dev: str, gen: torch.Generator) -> list:
    """(id, thunk, name the message must start with).  Valid objects are built here, first."""
    from jitkern.formats import gguf as G_
    from jitkern.formats.awq import quantize_awq
    from jitkern.nn import quant_linear
    from jitkern.nn_dense import DenseLinear, dense_linear
    from jitkern.nn_gguf import GGUFLinear
    from jitkern.ops import dense as dense_ops
    from jitkern.ops import gguf as gguf_ops

    ck = {k: v.to(dev) for k, v in quantize_gptq(torch.randn(N, K, generator=gen), 4, G).items()}
    aw = {k: v.to(dev) for k, v in quantize_awq(torch.randn(N, K, generator=gen), G).items()}
    q = QuantLinear.from_gptq(ck["qweight"], ck["qzeros"], ck["scales"], ck["g_idx"], bits=4, group_size=G).to(dev)
    w = torch.randn(N, K, generator=gen).half().to(dev)
    dense = DenseLinear(w)
    raw = G_.random_blocks("Q4_0", N, K, generator=gen).to(dev)
    gg = GGUFLinear.from_raw(raw, "q4_0", name="blk.0.attn_q.weight")
    x = torch.randn(2, K, generator=gen).half().to(dev)
    other = "meta" if dev == "cpu" else "cpu"

    def gptq(**change):
        kw = dict(qweight=ck["qweight"], qzeros=ck["qzeros"], scales=ck["scales"], g_idx=ck["g_idx"], bits=4,
                  group_size=G)
        kw.update(change)
        return lambda: QuantLinear.from_gptq(**kw)

    return [
        ("gptq bits=5", gptq(bits=5), "bits"),
        ("gptq group_size=96", gptq(group_size=96), "group_size"),
        ("gptq checkpoint_format", gptq(checkpoint_format="gptq_v3"), "checkpoint_format"),
        ("gptq qweight float", gptq(qweight=ck["qweight"].float()), "qweight"),
        ("gptq qweight K not whole units", gptq(qweight=ck["qweight"][:3]), "qweight"),
        ("gptq qzeros shape", gptq(qzeros=ck["qzeros"][:, :1]), "qzeros"),
        ("gptq scales dtype", gptq(scales=ck["scales"].float()), "scales"),
        ("gptq g_idx out of range", gptq(g_idx=ck["g_idx"] + 5), "g_idx"),
        ("gptq g_idx length", gptq(g_idx=ck["g_idx"][:-1]), "g_idx"),
        ("awq group_size=100", lambda: QuantLinear.from_awq(aw["qweight"], aw["qzeros"], aw["scales"],
                                                           group_size=100), "group_size"),
        ("awq scales shape", lambda: QuantLinear.from_awq(aw["qweight"], aw["qzeros"], aw["scales"][:, :8],
                                                         group_size=G), "scales"),
        ("x last dimension", lambda: q(x[:, :32]), "x"),
        ("x integer dtype", lambda: q(x.int()), "x"),
        ("x not contiguous", lambda: q(torch.randn(2 * K, 2, generator=gen).half().to(dev).t()[:, :K]), "x"),
        ("x on another device", lambda: q(x.to(other)), "x"),
        ("x not a tensor", lambda: q(x.tolist()), "x"),
        ("bias shape", lambda: quant_linear(x, q.layout, torch.zeros(N + 1, dtype=torch.float16, device=dev)),
         "bias"),
        ("dense weight 1-D", lambda: DenseLinear(w[0]), "weight"),
        ("dense in_features % 8", lambda: DenseLinear(torch.zeros(4, 12, dtype=torch.float16)), "weight"),
        ("dense bias dtype", lambda: dense_linear(x, w, torch.zeros(N, dtype=torch.bfloat16, device=dev)), "bias"),
        ("dense x float64", lambda: dense(x.double()), "x"),
        ("dense GEMV 17 rows", lambda: dense_ops.gemv(torch.zeros(17, K, dtype=torch.float16, device=dev), w), "x"),
        ("gguf unknown type", lambda: GGUFLinear.from_raw(raw, "q9_9"), "weight"),
        ("gguf partial block bytes", lambda: GGUFLinear.from_raw(raw[:, :-1].contiguous(), "q4_0"), "weight"),
        ("gguf K not whole blocks", lambda: GGUFLinear.from_raw(raw, "q4_0", shape=(N, 48)), "weight"),
        ("gguf x last dimension", lambda: gg(x[:, :32]), "blk.0.attn_q.weight: x"),
        ("gguf GEMV 9 rows", lambda: gguf_ops.gemv(torch.zeros(9, K, dtype=torch.float16, device=dev), gg.layout),
         "x"),
        ("spec bits=5", lambda: KernelSpec("gptq_gemv", "gptq", bits=5, group=128, arch="gfx906"), "gptq_gemv: bits"),
        ("spec m=9", lambda: KernelSpec("gptq_gemv", "gptq", bits=4, group=128, m=9, arch="gfx906"), "gptq_gemv: m"),
        ("spec arch", lambda: KernelSpec("gptq_gemv", "gptq", bits=4, group=128, arch="gfx9x"), "arch 'gfx9x'"),
        ("cache.get of a non-spec", lambda: cache.get("gptq_gemv_w4_g128_m1_f16_gfx906"), "spec"),
    ]


API_IDS = [row[0] for row in api_table("cpu", torch.Generator().manual_seed(0))]


def _expect_named_error(thunk, name: str) -> str:
    with pytest.raises(ValueError) as info:
        thunk()
    msg = str(info.value)
    assert msg.startswith(name), f"message should name {name!r} first: {msg!r}"
    assert "expected" in msg or "supported" in msg, f"message should say what is expected: {msg!r}"
    assert "\n" not in msg, msg
    return msg


def test_table_is_large_enough():
    assert len(API_IDS) + len(CLI) >= 20 and len(set(API_IDS)) == len(API_IDS)


@pytest.mark.parametrize("case", API_IDS)
def test_api_bad_input(case, gen, monkeypatch, fresh_cache):
    thunk, name = {i: (t, n) for i, t, n in api_table("cpu", gen)}[case]
    _forbid(monkeypatch)
    _expect_named_error(thunk, name)


@pytest.mark.gpu
@pytest.mark.parametrize("case", API_IDS)
def test_api_bad_input_gpu(case, gen, monkeypatch):
    thunk, name = {i: (t, n) for i, t, n in api_table("cuda", gen)}[case]   # compiles layer kernels
    _forbid(monkeypatch)
    _expect_named_error(thunk, name)


# ---------------------------------------------------------------------------------------------
# CLI

WARM = ["warmup", "--preset", "llama-3-8b", "--arch", "gfx906", "--dry-run"]
CLI = [
    ("max-batch 0", WARM + ["--max-batch", "0"], {}, "--max-batch 0"),
    ("max-batch not an int", WARM + ["--max-batch", "two"], {}, "argument --max-batch"),
    ("bits 5", WARM + ["--bits", "5"], {}, "bits=5"),
    ("group 96", WARM + ["--group", "96"], {}, "group=96"),
    ("quant unknown", WARM + ["--quant", "nonsense"], {}, "--quant 'nonsense'"),
    ("quant unknown gguf type", WARM + ["--quant", "gguf-q9_k"], {}, "Q9_K"),
    ("preset and gguf together", WARM + ["--gguf", "x.gguf"], {}, "argument --gguf: not allowed with argument --preset"),
    ("JITKERN_GEMV_MAX_M not an int", WARM, {"JITKERN_GEMV_MAX_M": "abc"}, "JITKERN_GEMV_MAX_M='abc'"),
    ("JITKERN_ARCH unknown", ["warmup", "--preset", "llama-3-8b", "--dry-run"], {"JITKERN_ARCH": "gfx9x"}, "JITKERN_ARCH: "),
    ("jobs zero", WARM + ["--jobs", "0"], {}, "argument --jobs/-j: '0'"),
    ("gguf file not GGUF", ["warmup", "--gguf", "{not_gguf}", "--arch", "gfx906"], {}, "not a readable GGUF file"),
    ("prune without limits", ["cache", "prune"], {}, "--older-than"),
    ("prune negative size", ["cache", "prune", "--max-size", "-5"], {}, "--max-size -5"),
    ("prune negative age", ["cache", "prune", "--older-than", "-1"], {}, "--older-than -1"),
    ("clear without --yes", ["cache", "clear"], {}, "--yes"),
    ("inspect spec word", ["inspect", "--spec", "gptq_gemv", "bits4", "--arch", "gfx906"], {}, "--spec: 'bits4'"),
    ("inspect spec value", ["inspect", "--spec", "gptq_gemv", "bits=4", "group=96", "--arch", "gfx906"], {},
     "group=96"),
    ("inspect nothing", ["inspect", "--arch", "gfx906"], {}, "--spec"),
]


@pytest.mark.parametrize("case", [c[0] for c in CLI])
def test_cli_bad_input(case, fresh_cache, monkeypatch, capsys, tmp_path):
    from jitkern import cli

    _, argv, env, name = next(c for c in CLI if c[0] == case)
    for var in ("JITKERN_ARCH", "JITKERN_GEMV_MAX_M", "JITKERN_NO_COMPILE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("this is not a GGUF file")
    argv = [a.replace("{not_gguf}", str(not_gguf)) for a in argv]
    _forbid(monkeypatch)
    try:
        rc = cli.main(argv)
    except SystemExit as e:           # argparse: usage, then one error line
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc not in (0, None), err
    assert err and name in err[-1], err
    assert "Traceback" not in "\n".join(err)
    if rc == 1:                       # our own errors: exactly one line
        assert len(err) == 1 and re.match(r"^jitkern [a-z]+: error: ", err[0]), err
