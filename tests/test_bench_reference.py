"""bench.reference: the plumbing against a stand-in reference, and (when a checkout of the
SparseGPT reference is named by ``TACO_SPARSEGPT_REFERENCE``) the comparison itself."""

import os
import re
import textwrap

import numpy as np
import pytest

from taco_jax.bench import reference

pytest.importorskip("torch")

STAND_IN = textwrap.dedent('''
    import torch

    class SparseGPT:
        """The reference's interface; magnitude pruning per block of 128 columns."""

        def __init__(self, layer):
            self.layer = layer

        def add_batch(self, inp, out):
            self.inp = inp

        def fasterprune(self, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=.01):
            W = self.layer.weight.data
            if prunen:
                groups = W.reshape(W.shape[0], -1, prunem).abs()
                drop = groups.argsort(-1)[..., :prunem - prunen]
                mask = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
                W *= mask.reshape(W.shape)
            else:
                W[W.abs() <= W.abs().flatten().kthvalue(int(W.numel() * sparsity)).values] = 0
            print("the reference prints; the bench must not")
''')


def test_compares_with_the_reference_interface(tmp_path, capsys):
    (tmp_path / "sparsegpt.py").write_text(STAND_IN)
    reference.main([f"--reference_dir={tmp_path}", "--shape=32x64", "--samples=256",
                    "--cases=0.5,2:4"])
    out = capsys.readouterr().out
    assert "the reference prints" not in out
    rows = {line.split()[0]: [float("nan" if v == "-" else v) for v in line.split()[1:]]
            for line in out.splitlines() if re.match(r"(0\.5|2:4) ", line)}
    assert set(rows) == {"0.5", "2:4"}
    for e_ref, e_ours, ratio, e_refit, ratio_refit, *_ in rows.values():
        # second order beats magnitude, and the re-solve beats SparseGPT alone
        assert 0 < e_refit <= e_ours < e_ref and ratio == pytest.approx(e_ours / e_ref, abs=1e-3)
        assert ratio_refit < 1
    for e_ref, e_ours, _, _, _, e_admm, ratio_admm, *_ in rows.values():
        # ADMM's re-solved mask: below SparseGPT alone and its ratio printed
        assert 0 < e_admm < e_ours and ratio_admm == pytest.approx(e_admm / e_ref, abs=1e-3)
    assert rows["0.5"][5] < rows["0.5"][3]  # unstructured: below SparseGPT + re-solve


def test_relative_error_is_float64_output_error():
    rng = np.random.default_rng(0)
    W, X = rng.normal(size=(4, 6)), rng.normal(size=(20, 6))
    W2 = W.copy()
    W2[:, 0] = 0
    assert reference.rel_error(W, W2, X) == pytest.approx(
        np.sum((X[:, :1] @ W[:, :1].T) ** 2) / np.sum((X @ W.T) ** 2))


@pytest.mark.skipif(not os.environ.get("TACO_SPARSEGPT_REFERENCE"),
                    reason="TACO_SPARSEGPT_REFERENCE names no checkout of the reference")
def test_ours_equals_the_reference_and_the_resolve_beats_it(capsys):
    reference.main([f"--reference_dir={os.environ['TACO_SPARSEGPT_REFERENCE']}",
                    "--shape=128x256", "--samples=1024", "--cases=0.5,0.9,2:4"])
    for line in capsys.readouterr().out.splitlines():
        if re.match(r"(0\.5|0\.9|2:4) ", line):
            ratio, ratio_refit = float(line.split()[3]), float(line.split()[5])
            assert 0.98 < ratio < 1.02 and ratio_refit < 0.95, line
