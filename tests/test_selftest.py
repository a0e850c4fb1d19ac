"""The self-test's checks catch a wrong result (CPU reference path, deliberately broken reference)."""
import torch

from jitkern.selftest import check_dense_and_gguf, check_gptq


def test_selftest_passes_on_cpu_reference_and_fails_on_a_broken_one():
    good = check_gptq("cpu")
    assert good and all(ok for _, _, ok in good), good
    broken = check_gptq("cpu", reference=lambda x, w: x.double() @ (w.T * 1.01))
    assert broken and not any(ok for _, _, ok in broken)


def test_dense_and_gguf_checks_catch_a_broken_reference():
    good = check_dense_and_gguf("cpu")
    assert good and all(ok for _, _, ok in good), [g for g in good if not g[2]]
    broken = check_dense_and_gguf("cpu", reference=lambda x, w: x.double() @ (w.T * 1.01))
    assert not any(ok for _, _, ok in broken)
