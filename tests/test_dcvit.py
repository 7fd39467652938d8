"""DC-ViT: the cut is what it claims (independent references), the compressed model is really
smaller, it round-trips through its checkpoint, and the frontier arithmetic is right."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from taco_jax import models
from taco_jax.methods import dcvit
from taco_jax.models import latency, stats
from taco_jax.models.layers import gelu
from taco_jax.run import dcvit as dcvit_run
from taco_jax.run import dcvit_sweep
from taco_jax.train import fit, losses

DEPTH, DIM, HIDDEN = 3, 96, 384


def _vit(seed=0, num_classes=5):
    model = models.create("vit_mini", num_classes=num_classes, depth=DEPTH, rngs=nnx.Rngs(seed))
    model.eval()
    return model


def _batches(seed=0, n=48, per=24):
    x = jax.random.normal(jax.random.key(seed), (n, 28, 28, 1))
    return [x[i:i + per] for i in range(0, n, per)]


def _zero(linear):
    linear.kernel.set_value(jnp.zeros_like(linear.kernel.get_value()))
    linear.bias.set_value(jnp.zeros_like(linear.bias.get_value()))


@pytest.mark.parametrize("blocks, mlp_keep", [([1], 1.0), ([0, 2], 1.0), ([1], 0.0),
                                              ([0, 1, 2], 0.0)])
def test_removed_branch_equals_a_zeroed_branch(blocks, mlp_keep):
    """Removing attention (and, for mlp_keep=0, the MLP) computes what zeroing that branch's
    output projection computes in the uncut model."""
    model, batches = _vit(), _batches()
    ref = nnx.clone(model)
    for b in blocks:
        _zero(ref.blocks[b].attn.proj)
        if mlp_keep == 0.0:
            _zero(ref.blocks[b].mlp.fc2)
    assert dcvit.apply_plan(model, dcvit.cut_plan(DEPTH, blocks, mlp_keep), batches) is None
    for b in blocks:
        assert model.blocks[b].attn is None and model.blocks[b].norm1 is None
        assert (model.blocks[b].mlp is None) == (mlp_keep == 0.0)
    x = batches[0]
    np.testing.assert_allclose(model(x), ref(x), rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(ref(x)) - np.asarray(_vit()(x))).max() > 1e-3  # the cut matters


def _hidden(model, block, batches):
    """fc2's inputs (N·T, HIDDEN) in float64: the block's MLP hidden activations on the tokens
    that reach it through ``model`` (already cut above ``block``)."""
    outs = []
    for x in batches:
        t = model.embed(x)
        for blk in model.blocks[:block]:
            t = blk(t)
        blk = model.blocks[block]
        if blk.attn is not None:
            t = t + blk.attn(blk.norm1(t))
        outs.append(np.asarray(gelu(blk.mlp.fc1(blk.norm2(t)))).reshape(-1, HIDDEN))
    return np.concatenate(outs).astype(np.float64)


def test_mlp_cut_keeps_fc1_weights_and_gives_fc2_its_least_squares_update():
    """After removing block 1's attention and keeping half its MLP neurons: fc1's kept columns
    are the original ones, and fc2's kept rows are the damped least-squares fit (float64 numpy)
    of the full MLP's output from the kept neurons, on the inputs of the *cut* model."""
    model, batches = _vit(1), _batches(1)
    W1 = np.asarray(model.blocks[1].mlp.fc1.kernel.get_value())
    W2 = np.asarray(model.blocks[1].mlp.fc2.kernel.get_value(), np.float64)  # (HIDDEN, DIM)
    cut_inputs = nnx.clone(model)
    dcvit.apply_plan(cut_inputs, dcvit.cut_plan(DEPTH, [1], 1.0), batches)
    X = _hidden(cut_inputs, 1, batches)

    result = dcvit.apply_plan(model, dcvit.cut_plan(DEPTH, [1], 0.5), batches)
    kept = result.kept["blocks.1.mlp.fc2"]
    assert len(kept) == HIDDEN // 2 and model.blocks[1].mlp.fc1.out_features == HIDDEN // 2
    np.testing.assert_array_equal(model.blocks[1].mlp.fc1.kernel.get_value(), W1[:, kept])

    H = X.T @ X
    H += 0.01 * np.mean(np.diag(H)) * np.eye(HIDDEN)  # the solver's damping (percdamp 0.01)
    expected = np.linalg.solve(H[np.ix_(kept, kept)], H[kept] @ W2)
    got = np.asarray(model.blocks[1].mlp.fc2.kernel.get_value(), np.float64)
    assert np.linalg.norm(got - expected) <= 2e-3 * np.linalg.norm(expected)
    # and the compensation is worth having: plain truncation reconstructs much worse
    err = lambda w: np.linalg.norm(X[:, kept] @ w - X @ W2)
    assert err(got) < 0.8 * err(W2[kept])


def test_compressed_model_is_smaller_and_round_trips(tmp_path):
    model, batches = _vit(2), _batches(2)
    dense_params, dense_macs = stats.param_count(model), stats.forward_macs(model, (1, 28, 28, 1))
    dcvit.apply_plan(model, dcvit.cut_plan(DEPTH, [0, 2], 0.25), batches)
    kept = HIDDEN // 4
    attn = 2 * DIM + (DIM * 3 * DIM + 3 * DIM) + (DIM * DIM + DIM)  # norm1, qkv, proj
    mlp = (DIM + 1) * (HIDDEN - kept) + DIM * (HIDDEN - kept)  # fc1 columns+bias, fc2 rows
    assert stats.param_count(model) == dense_params - 2 * (attn + mlp)
    assert stats.forward_macs(model, (1, 28, 28, 1)) < 0.6 * dense_macs
    assert dcvit.structure(model)["blocks"] == [
        {"attn": False, "mlp_hidden": kept}, {"attn": True, "mlp_hidden": HIDDEN},
        {"attn": False, "mlp_hidden": kept}]

    dcvit.save(tmp_path / "c", model)
    fresh = dcvit.load(tmp_path / "c", _vit(seed=7))
    x = batches[0]
    np.testing.assert_array_equal(np.asarray(fresh(x)), np.asarray(model(x)))
    with pytest.raises(FileNotFoundError, match=r"structure\.json"):
        dcvit.load(tmp_path, _vit())


def test_block_scores_rank_a_disabled_block_first():
    """A block whose branches output zero changes nothing when removed: score 0, ranked first."""
    model, batches = _vit(3), _batches(3)
    _zero(model.blocks[1].attn.proj)
    _zero(model.blocks[1].mlp.fc2)
    for drop in (False, True):
        scores = dcvit.block_scores(model, batches, drop_block=drop)
        assert scores.shape == (DEPTH,) and scores[1] < 1e-10 < scores.min(initial=1, where=(
            np.arange(DEPTH) != 1))


def test_feature_distillation_pulls_the_student_to_the_teacher():
    teacher, batches = _vit(4), _batches(4)
    student = nnx.clone(teacher)
    dcvit.apply_plan(student, dcvit.cut_plan(DEPTH, [0], 1.0), batches)
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28, 1), np.uint8)
    norm = lambda x: (x.astype(jnp.float32) / 255.0 - 0.5) / 0.5

    def loss(s):
        x = norm(images)
        return float(losses.normalized_feature_mse(dcvit.block_features(s, x, blocks=True),
                                                   dcvit.block_features(teacher, x, blocks=True)))

    before = loss(student)
    cfg = fit.FitConfig(steps=30, batch_size=32, learning_rate=2e-3, ce_weight=0.0,
                        weight_decay=0.0)
    head = np.asarray(student.head.kernel.get_value())
    dcvit.recover(student, teacher, images, cfg, norm, block_outputs=True)
    assert loss(student) < 0.7 * before
    np.testing.assert_array_equal(student.head.kernel.get_value(), head)  # no gradient reaches it
    with pytest.raises(ValueError, match="ce_weight must be 0"):
        dcvit.recover(student, teacher, images, fit.FitConfig(steps=1), norm)


def test_bad_plans_are_rejected():
    with pytest.raises(ValueError, match=r"\[5\] out of range"):
        dcvit.cut_plan(DEPTH, [5], 0.5)
    with pytest.raises(ValueError, match=r"\[1.5\]"):
        dcvit.Plan((True,), (1.5,))
    with pytest.raises(ValueError, match="plan is for 2 blocks"):
        dcvit.apply_plan(_vit(), dcvit.Plan.dense(2), _batches())
    with pytest.raises(TypeError, match="VisionTransformer"):
        dcvit.apply_plan(models.create("resnet_mini", num_classes=2, rngs=nnx.Rngs(0)),
                         dcvit.Plan.dense(1), _batches())


def test_frontier_and_interpolation_match_brute_force():
    rng = np.random.default_rng(0)
    pts = [(float(r), float(a)) for r, a in zip(rng.uniform(0, 0.8, 30), rng.uniform(40, 90, 30),
                                                 strict=True)]
    front = dcvit_sweep.frontier(pts)
    brute = sorted(p for p in pts if not any(q != p and q[0] >= p[0] and q[1] >= p[1]
                                             for q in pts))
    assert front == brute
    assert all(a[1] > b[1] for a, b in itertools.pairwise(front))  # faster = less accurate
    f = [(0.0, 90.0), (0.25, 80.0), (0.5, 60.0)]
    assert dcvit_sweep.accuracy_at(f, 0.4) == pytest.approx(68.0)
    assert dcvit_sweep.accuracy_at(f, 0.25) == pytest.approx(80.0)
    assert dcvit_sweep.accuracy_at(f, 0.6) is None
    assert dcvit_sweep.accuracy_at([(0.3, 78.0), (0.5, 70.0)], 0.2) == 78.0  # dense beaten


def test_paired_latency_times_every_model_against_the_dense_one():
    model = _vit()
    small = nnx.clone(model)
    dcvit.apply_plan(small, dcvit.cut_plan(DEPTH, [0, 1, 2], 0.0), _batches())
    x = jnp.concatenate(_batches(n=256, per=256))
    out = latency.paired_latency(model, [small, model], x, repeats=7, warmup=1)
    assert len(out) == 2
    assert all(o["dense"] > 0 and o["compressed"] > 0 and o["batch"] == 256 for o in out)
    # no block left: only the patch embedding and head, far less than a tenth of the work
    assert out[0]["reduction"] > 0.5
    assert all(o["spread"][0] <= o["reduction"] <= o["spread"][1] for o in out)
    # the dense model against itself: zero up to timing noise (0.3 was once exceeded at load 4)
    assert abs(out[1]["reduction"]) < 0.4


def test_ranked_plan_matches_a_direct_construction():
    order = [2, 3, 0, 1]
    plan = dcvit.ranked_plan(order, 2, (0.25, 0.5, 0.75))
    assert plan == dcvit.Plan((True, True, False, False), (0.75, 1.0, 0.25, 0.5))
    assert plan.label() == "A.75|A1|-.25|-.50"
    assert dcvit.ranked_plan(order, 0, ()) == dcvit.Plan.dense(4)
    with pytest.raises(ValueError, match="not a permutation"):
        dcvit.ranked_plan([0, 0, 1, 2], 1, ())
    with pytest.raises(ValueError, match="attn_free=5"):
        dcvit.ranked_plan(order, 5, ())


def test_compare_counts_strict_frontier_and_points_within_one_standard_error():
    def pt(r, a, se):
        return {"latency": {"reduction": r}, "top1": a, "top1_se": se, "plan": f"{r:.2f}"}

    points = {"dcvit": [pt(0.05, 76.0, 0.2), pt(0.15, 75.0, 0.2), pt(0.20, 74.5, 0.3),
                        pt(0.30, 73.0, 0.5), pt(0.35, 74.0, 0.1), pt(0.45, 72.0, 0.1),
                        pt(0.60, 65.0, 0.5)],
              "block_drop": [pt(0.25, 72.0, 0.4), pt(0.45, 70.0, 0.4)]}
    c = dcvit_run.compare(points, 77.0, (0.25, 0.40))
    # strict frontier: 0, .05, .15, .20, .35, .45, .60 (0.30 is beaten by 0.35)
    assert c["dcvit_frontier_points_10_50"] == 4 and c["dcvit_points_10_50"] == 5
    # 0.30: frontier between (.20, 74.5) and (.35, 74.0) gives 74.17 > 73.0 + 0.5
    assert c["dcvit_within_one_se_of_frontier_10_50"] == 4
    assert c["accuracy_at"]["0.25"]["dcvit"] == pytest.approx(74.5 - 0.5 * 5 / 15)
    assert c["accuracy_at"]["0.40"]["block_drop"] == pytest.approx(72.0 - 2.0 * 15 / 20)
    # no spreads recorded: the clear frontier is the strict one without the dense point
    assert c["clear_frontier"]["dcvit"] == ["0.05", "0.15", "0.20", "0.35", "0.45", "0.60"]
    assert c["dcvit_clear_frontier_10_50"] == 4


def test_clear_frontier_drops_only_models_beaten_beyond_the_timing_spread():
    def pt(plan, r, spread, a):
        return {"latency": {"reduction": r, "spread": spread}, "top1": a, "plan": plan}

    points = {"dcvit": [pt("a", 0.30, [0.25, 0.35], 73.0),  # strictly beaten by b, within noise
                        pt("b", 0.33, [0.29, 0.37], 74.0),
                        pt("c", 0.20, [0.18, 0.22], 72.0),  # b is as accurate and clearly faster
                        pt("d", -0.02, [-0.05, 0.01], 76.0),  # not clearly slower than dense
                        pt("e", -0.10, [-0.12, -0.08], 76.0)],  # clearly slower, dense as good
              "block_drop": [pt("x", 0.25, [0.2, 0.3], 70.0)]}
    c = dcvit_run.compare(points, 76.0, (0.25,))
    assert c["clear_frontier"] == {"dcvit": ["a", "b", "d"], "block_drop": ["x"]}
    assert c["dcvit_clear_frontier_10_50"] == 2
    # (accuracy, low, high): the third is beaten by the first beyond both spreads
    assert dcvit_sweep.clear_frontier([(1.0, 0.1, 0.2), (1.0, 0.15, 0.3), (0.5, 0.0, 0.05)]) \
        == [0, 1]


def test_interleaved_latency_times_each_model_in_turn():
    model = _vit()
    outs = latency.interleaved_latency([model, model], _batches()[0], repeats=3, warmup=0)
    for o in outs:
        assert len(o["times"]) == 3 and o["min"] <= o["median"] <= o["max"]
    with pytest.raises(ValueError, match="repeats"):
        latency.interleaved_latency([model], _batches()[0], repeats=0)


def test_library_compress_cuts_recovers_and_reports_without_a_workdir(monkeypatch):
    """methods.dcvit.compress on in-memory data, no workdir: the student has the cut it reports
    (one block without attention, MLPs at their fractions), is smaller than the teacher,
    then_prune leaves masks at its sparsity, the baseline and latency are reported, and the
    input model is left as it was."""
    from taco_jax.data.task import TaskData
    from taco_jax.prune import sequential

    rng = np.random.default_rng(0)
    model = _vit(3, num_classes=8)
    x = rng.integers(0, 255, (60, 28, 28, 1), dtype=np.uint8)
    y = np.repeat(np.arange(3), 20)
    data = TaskData(x, y, x[:30], y[:30], np.array([1, 4, 6]), ("a", "b", "c"),
                    lambda im: jnp.asarray(im, jnp.float32) / 255.0)
    config = dcvit.DcvitConfig(
        shots=4, recover=fit.FitConfig(steps=2, batch_size=8, ce_weight=0.0),
        calibration_batch=6, attn_blocks=1, mlp_keep=(0.5, 0.25),
        then_prune=sequential.PruneConfig(sparsity=0.5), then_recover_steps=1,
        baseline_drop_blocks=1, latency_batch=4, latency_repeats=2)
    sessions, paired = [], latency.paired_latency
    monkeypatch.setattr(latency, "paired_latency",
                        lambda dense, models, *a, **k: sessions.append(len(models))
                        or paired(dense, models, *a, **k))
    out = dcvit.compress(model, data, config)
    r = out.report
    structure = dcvit.structure(out.model)["blocks"]
    assert sum(not b["attn"] for b in structure) == 1
    assert sorted(b["mlp_hidden"] for b in structure) == [HIDDEN // 4, HIDDEN // 2, HIDDEN]
    assert r["compressed"]["attn"] == [b["attn"] for b in structure]
    assert r["params"]["compressed"] == stats.param_count(out.model) < r["params"]["dense"]
    assert len(r["task"]["few_shot_ids"]) == 12 and r["dense"]["n"] == 30
    assert set(out.masks) and r["then_prune"]["sparsity"] == 0.5
    assert 0.45 <= r["sparsity"]["pruned_layers"]["sparsity"] <= 0.55  # zeros: then_prune's
    kept = np.mean([np.asarray(m).mean() for m in out.masks.values()])
    assert 0.45 <= kept <= 0.55
    assert set(r["baselines"]) == {"block_drop"} and "latency" in r
    assert sessions == [2]  # DC-ViT and the baseline timed in one session against one dense
    assert r["latency"] is r["compressed"]["latency"] and "latency" in r["baselines"]["block_drop"]
    assert model.head.kernel.value.shape[1] == 8  # the input model is not modified


def test_plan_at_macs_finds_a_known_cut_and_keeps_the_least_feature_error():
    """Asked for the MACs of a known cut (1 block without attention, half of every MLP), the
    candidate with 1 such block is that cut; every feasible candidate stays within the MACs,
    and the choice is the one whose final features are nearest the teacher's (recomputed here
    in float64 NumPy)."""
    model, batches = _vit(5), _batches(5)
    shape = (1, 28, 28, 1)
    order = np.argsort(dcvit.block_scores(model, batches, drop_block=False), kind="stable")
    known = nnx.clone(model)
    dcvit.apply_plan(known, dcvit.ranked_plan(order, 1, 0.5), batches)
    macs = stats.forward_macs(known, shape)
    plan, cut, candidates = dcvit.plan_at_macs(model, batches, macs, shape, choices=4)
    assert [c["attn_removed"] for c in candidates] == [0, 1, 2, 3]
    assert candidates[1]["mlp_keep"] == 0.5 and candidates[1]["macs"] == macs
    feasible = [c for c in candidates if c["feasible"]]
    assert len(feasible) == 4 and all(c["macs"] <= macs for c in feasible)
    assert [c["mlp_keep"] for c in feasible] == sorted(c["mlp_keep"] for c in feasible)

    def error(c):
        cut = nnx.clone(model)
        dcvit.apply_plan(cut, dcvit.ranked_plan(order, c["attn_removed"], c["mlp_keep"]),
                         batches)
        errs = []
        for b in batches:
            s, t = (np.asarray(dcvit.block_features(m, b)[0], np.float64) for m in (cut, model))
            errs.append(np.mean(np.sum((s - t) ** 2, 1) / np.sum(t**2, 1)))
        return np.mean(errs)

    errors = [error(c) for c in feasible]
    np.testing.assert_allclose([c["feature_error"] for c in feasible], errors, rtol=1e-4)
    best = feasible[int(np.argmin(errors))]
    assert plan.label() == best["plan"]
    # The model returned is that plan's cut: its MACs, and features as the candidate scored.
    assert stats.forward_macs(cut, shape) == best["macs"]
    x = batches[0]
    again = nnx.clone(model)
    dcvit.apply_plan(again, plan, batches)
    np.testing.assert_allclose(np.asarray(dcvit.block_features(cut, x)[0]),
                               np.asarray(dcvit.block_features(again, x)[0]), rtol=1e-4,
                               atol=1e-5)
    none, no_cut, tried = dcvit.plan_at_macs(model, batches, macs // 1000, shape, choices=2)
    assert none is None and no_cut is None and not any(c["feasible"] for c in tried)
