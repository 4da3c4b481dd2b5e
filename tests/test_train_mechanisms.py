"""Unit tests for stage-1 mechanisms: clip policies, SupCon, adversarial KL, NEFTune (no model needed)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from mixtune.errors import CheckpointError, ConfigError, DataError
from mixtune.train.adversarial import response_kl, response_positions, should_pay
from mixtune.train.clip import ClipSchedule
from mixtune.train.neftune import add_neftune, neftune
from mixtune.train.supcon import compose_consistency_batch, cosine_gap, pool_instruction, supcon_loss

# ---------------------------------------------------------------------------------------- clip


@pytest.mark.parametrize("schedule", ["linear", "cosine", "exponential"])
def test_decay_endpoints_exact_and_monotone(schedule):
    pol = ClipSchedule("decay", schedule, start=5.0, end=0.5, total_steps=100)
    values = [pol.threshold(s) for s in range(0, 121)]
    assert values[0] == 5.0 and values[100] == 0.5 and values[120] == 0.5
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert all(a > b for a, b in zip(values[:100], values[1:101], strict=False))  # strictly decreasing inside
    rising = ClipSchedule("decay", schedule, start=0.5, end=5.0, total_steps=10)
    up = [rising.threshold(s) for s in range(11)]
    assert up[0] == 0.5 and up[10] == 5.0 and all(a < b for a, b in zip(up, up[1:], strict=False))


def test_decay_midpoints_follow_their_formula():
    mid = {s: ClipSchedule("decay", s, start=4.0, end=1.0, total_steps=10).threshold(5)
           for s in ("linear", "cosine", "exponential")}
    assert mid["linear"] == pytest.approx(2.5)
    assert mid["cosine"] == pytest.approx(2.5)  # cosine crosses the middle at half time ...
    assert ClipSchedule("decay", "cosine", start=4.0, end=1.0, total_steps=10).threshold(2) > \
        ClipSchedule("decay", "linear", start=4.0, end=1.0, total_steps=10).threshold(2)  # ... but starts slower
    assert mid["exponential"] == pytest.approx(2.0)  # geometric mean


def test_none_and_constant_thresholds():
    assert ClipSchedule("none").threshold(3) is None
    assert ClipSchedule("constant", start=2.0).threshold(999) == 2.0


def _param_with_grad(*values: float) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros(len(values)))
    p.grad = torch.tensor(values)
    return p


def test_clip_flag_and_effect_on_gradients():
    pol = ClipSchedule("constant", start=1.0)
    p = _param_with_grad(3.0, 4.0)
    rec = pol.clip([p], step=0)
    assert rec["grad_norm"] == pytest.approx(5.0) and rec["clipped"] is True and rec["clip_threshold"] == 1.0
    assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-4)
    q = _param_with_grad(0.3, 0.4)
    rec = pol.clip([q], step=1)
    assert rec["clipped"] is False and torch.allclose(q.grad, torch.tensor([0.3, 0.4]))
    assert rec["clip_fraction"] == 0.5
    # policy none never clips, even huge gradients
    r = _param_with_grad(300.0, 400.0)
    assert ClipSchedule("none").clip([r], 0)["clipped"] is False and r.grad.norm().item() == pytest.approx(500.0)


def test_accelerate_style_contract_threshold_then_record():
    pol = ClipSchedule("decay", "linear", start=2.0, end=1.0, total_steps=2)
    p = _param_with_grad(1.2, 1.6)  # norm 2.0
    thr = pol.threshold(2)
    norm = torch.nn.utils.clip_grad_norm_([p], thr if thr is not None else float("inf"))
    rec = pol.record(norm, 2)
    assert rec["clipped"] and rec["clip_threshold"] == 1.0 and rec["grad_norm"] == pytest.approx(2.0)


def test_unknown_norm_is_booked_without_touching_statistics():
    pol = ClipSchedule("zclip", warmup=2)
    pol.record(1.0, 0)
    rec = pol.record(None, 1)  # accelerate + DeepSpeed may report no norm
    assert rec["grad_norm"] is None and rec["clipped"] is False
    assert pol.state_dict()["n_obs"] == 1 and pol.state_dict()["n_steps"] == 2


def _normal_norms(n, seed):
    rng = random.Random(seed)
    return [rng.uniform(0.9, 1.1) for _ in range(n)]


def test_zclip_clips_spike_not_normal_steps():
    pol = ClipSchedule("zclip", zclip_z=2.5, zclip_alpha=0.9, warmup=10)
    norms = _normal_norms(60, seed=1)
    recs = [pol.record(g, s) for s, g in enumerate(norms)]
    assert all(r["clip_threshold"] is None for r in recs[:10])  # warm-up: statistics only
    assert not any(r["clipped"] for r in recs)
    thr = pol.threshold(60)
    assert 1.0 < thr < 1.5
    # a real spike in an actual gradient is cut back to mean + z*std
    p = _param_with_grad(6.0, 8.0)
    rec = pol.clip([p], 60)
    assert rec["clipped"] and rec["grad_norm"] == pytest.approx(10.0)
    assert p.grad.norm().item() == pytest.approx(thr, rel=1e-4)
    # the spike was folded in clipped, so the threshold stays tight and the next normal step passes
    assert pol.threshold(61) < 1.5
    assert pol.record(1.05, 61)["clipped"] is False


def test_zclip_during_warmup_does_not_clip_even_spikes():
    pol = ClipSchedule("zclip", warmup=5)
    recs = [pol.record(g, s) for s, g in enumerate([1.0, 1.0, 50.0, 1.0, 1.0])]
    assert not any(r["clipped"] for r in recs)
    assert pol.threshold(5) is not None


def test_nonfinite_norm_is_flagged_and_not_learned():
    pol = ClipSchedule("zclip", warmup=3)
    for s, g in enumerate(_normal_norms(20, seed=2)):
        pol.record(g, s)
    before = pol.state_dict()
    rec = pol.record(float("nan"), 20)
    assert rec["clipped"] is True
    after = pol.state_dict()
    assert after["mean"] == before["mean"] and after["var"] == before["var"]


@pytest.mark.parametrize("policy", ["zclip", "decay"])
def test_state_round_trip_resumes_identically(policy):
    norms = _normal_norms(50, seed=3)
    norms[35] = 9.0  # a spike after the resume point
    full = ClipSchedule(policy, "cosine", start=2.0, end=0.5, total_steps=50, warmup=5)
    ref = [full.record(g, s) for s, g in enumerate(norms)]

    first = ClipSchedule(policy, "cosine", start=2.0, end=0.5, total_steps=50, warmup=5)
    for s, g in enumerate(norms[:25]):
        first.record(g, s)
    saved = json.loads(json.dumps(first.state_dict()))  # must survive JSON
    resumed = ClipSchedule(policy, "cosine", start=2.0, end=0.5, total_steps=50, warmup=5)
    resumed.load_state_dict(saved)
    tail = [resumed.record(g, s) for s, g in enumerate(norms[25:], start=25)]
    assert tail == ref[25:]
    if policy == "zclip":  # without the state, the statistics (and so the thresholds) differ
        fresh = ClipSchedule(policy, warmup=5)
        assert [fresh.record(g, s) for s, g in enumerate(norms[25:], start=25)] != ref[25:]


def test_clip_rejects_bad_config_and_bad_state():
    with pytest.raises(ConfigError, match="clip.policy"):
        ClipSchedule("sometimes")
    with pytest.raises(ConfigError, match="schedule"):
        ClipSchedule("decay", "step")
    with pytest.raises(ConfigError):
        ClipSchedule("decay", start=0.0)
    with pytest.raises(CheckpointError, match="zclip"):
        ClipSchedule("decay").load_state_dict(ClipSchedule("zclip").state_dict())
    with pytest.raises(CheckpointError, match="corrupt"):
        ClipSchedule("zclip").load_state_dict({"policy": "zclip"})


# ---------------------------------------------------------------------------------------- supcon


def test_pool_instruction_is_masked_mean():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    pooled = pool_instruction(hidden, mask)
    assert torch.allclose(pooled[0], hidden[0, :2].mean(0))
    assert torch.equal(pooled[1], torch.zeros(2))  # empty mask: zeros, not NaN


def _supcon_reference(emb, labels, t):
    z = torch.nn.functional.normalize(emb, dim=-1)
    losses = []
    for i in range(len(labels)):
        others = [a for a in range(len(labels)) if a != i]
        pos = [p for p in others if labels[p] == labels[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in others)
        losses.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p in pos) / len(pos))
    return sum(losses) / len(losses)


def test_supcon_matches_reference_and_skips_anchors_without_positives():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(7, 5, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3])  # labels 2 and 3: anchors without positives
    assert supcon_loss(emb, labels, 0.2).item() == pytest.approx(_supcon_reference(emb, labels.tolist(), 0.2),
                                                                  rel=1e-5)


def test_supcon_no_positives_is_zero_with_grad():
    emb = torch.randn(3, 4, requires_grad=True)
    loss = supcon_loss(emb, torch.tensor([0, 1, 2]), 0.1)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_supcon_descent_widens_cosine_gap_without_collapse():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(9, 8, generator=g, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    before = cosine_gap(emb, labels)
    opt = torch.optim.SGD([emb], lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        supcon_loss(emb, labels, 0.1).backward()
        opt.step()
    after = cosine_gap(emb, labels)
    assert after > before + 0.5
    z = torch.nn.functional.normalize(emb.detach(), dim=-1)
    assert float((z[0] @ z[3])) < 0.5  # other tasks are pushed apart, not everything pulled together


def test_cosine_gap_known_values():
    emb = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    assert cosine_gap(emb, torch.tensor([0, 0, 1, 1])) == pytest.approx(1.0)
    assert math.isnan(cosine_gap(emb, torch.tensor([0, 1, 2, 3])))


def _meta():
    meta, idx = [], 0
    # task 0: 3 phrasings, task 1: 2 phrasings, task 2: 4 phrasings, task 3: only one phrasing
    for task, n_phr in ((0, 3), (1, 2), (2, 4), (3, 1)):
        for phr in range(n_phr):
            for _ in range(4):
                meta.append((1000 + idx, task, phr))
                idx += 1
    return meta


@pytest.mark.parametrize("batch_size", [2, 5, 8, 12])
def test_consistency_batches_have_two_phrasings_per_task(batch_size):
    meta = _meta()
    info = {i: (t, p) for i, t, p in meta}
    for seed in range(30):
        batch = compose_consistency_batch(meta, batch_size, random.Random(seed))
        assert len(batch) == batch_size and len(set(batch)) == batch_size
        phr_by_task: dict[int, set[int]] = {}
        for i in batch:
            t, p = info[i]
            phr_by_task.setdefault(t, set()).add(p)
        assert 3 not in phr_by_task  # a single-phrasing task can't give a positive pair
        assert all(len(ps) >= 2 for ps in phr_by_task.values())
        assert len(phr_by_task) == min(3, batch_size // 2)  # as many tasks as fit: negatives too
    assert compose_consistency_batch(meta, 8, random.Random(4)) == compose_consistency_batch(meta, 8, random.Random(4))


def test_consistency_batch_errors_and_exhaustion():
    with pytest.raises(DataError, match="phrasings"):
        compose_consistency_batch([(0, 0, 0), (1, 0, 0), (2, 1, 5)], 4, random.Random(0))
    with pytest.raises(ConfigError):
        compose_consistency_batch(_meta(), 1, random.Random(0))
    small = [(0, 0, 0), (1, 0, 1), (2, 0, 1)]
    assert sorted(compose_consistency_batch(small, 8, random.Random(0))) == [0, 1, 2]


# ---------------------------------------------------------------------------------------- adversarial


def test_response_positions_follow_hf_shift():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, 6, 9, 4]])
    assert response_positions(labels).tolist() == [[False, True, True, False, False],
                                                   [True, True, True, True, False]]


def test_response_kl_aligns_different_prompt_lengths():
    g = torch.Generator().manual_seed(0)
    v, resp = 11, 3
    clean = torch.randn(2, 6, v, generator=g, requires_grad=True)
    twin = torch.randn(2, 9, v, generator=g, requires_grad=True)
    # row 0: clean prompt ends at 2, twin prompt ends at 5; row 1: clean at 1, twin at 4 (+ padding)
    cm = torch.zeros(2, 6, dtype=torch.bool)
    tm = torch.zeros(2, 9, dtype=torch.bool)
    cm[0, 2:5], tm[0, 5:8], cm[1, 1:4], tm[1, 4:7] = True, True, True, True
    loss = response_kl(twin, clean, tm, cm)
    ref = 0.0
    for b, (c0, t0) in enumerate(((2, 5), (1, 4))):
        for k in range(resp):
            p = torch.softmax(clean[b, c0 + k].detach(), -1)
            q = torch.softmax(twin[b, t0 + k].detach(), -1)
            ref += float((p * (p.log() - q.log())).sum())
    assert loss.item() == pytest.approx(ref / (2 * resp), rel=1e-5)
    # same distributions at the aligned positions give zero KL, whatever surrounds them
    twin2 = torch.randn(2, 9, v, generator=g)
    twin2[0, 5:8], twin2[1, 4:7] = clean[0, 2:5].detach(), clean[1, 1:4].detach()
    assert response_kl(twin2, clean, tm, cm).item() == pytest.approx(0.0, abs=1e-6)


def test_response_kl_stops_gradient_to_clean():
    g = torch.Generator().manual_seed(1)
    clean = torch.randn(1, 4, 5, generator=g, requires_grad=True)
    twin = torch.randn(1, 6, 5, generator=g, requires_grad=True)
    cm = torch.tensor([[False, True, True, False]])
    tm = torch.tensor([[False, False, False, True, True, False]])
    response_kl(twin, clean, tm, cm).backward()
    assert clean.grad is None
    assert twin.grad is not None and twin.grad.abs().sum() > 0


def test_response_kl_validates_and_handles_empty():
    twin, clean = torch.randn(1, 4, 5, requires_grad=True), torch.randn(1, 3, 5)
    with pytest.raises(ValueError, match="response lengths"):
        response_kl(twin, clean, torch.tensor([[0, 1, 1, 0]]), torch.tensor([[0, 1, 0]]))
    zero = response_kl(twin, clean, torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.requires_grad


def test_should_pay_share_is_exact_and_deterministic():
    assert not any(should_pay(s, 0.0, 7) for s in range(200))
    assert all(should_pay(s, 1.0, 7) for s in range(200))
    for share in (0.1, 0.3, 0.5, 0.75):
        pays = [should_pay(s, share, 7) for s in range(1000)]
        assert abs(sum(pays) - 1000 * share) <= 1
        # evenly spread: every window of 20 steps pays within one of its share
        assert all(abs(sum(pays[i:i + 20]) - 20 * share) <= 1 for i in range(0, 980))
        assert pays == [should_pay(s, share, 7) for s in range(1000)]  # stateless: resume-safe
    assert [should_pay(s, 0.3, 1) for s in range(50)] != [should_pay(s, 0.3, 2) for s in range(50)]
    with pytest.raises(ConfigError):
        should_pay(0, 1.5, 0)


# ---------------------------------------------------------------------------------------- neftune


class _Emb(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(20, 16)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, ids):
        return self.emb(ids)


def test_neftune_noise_only_in_training_and_removable():
    model = _Emb()
    ids = torch.tensor([[1, 2, 3, 4, 0, 0], [5, 6, 7, 8, 9, 10]])
    clean = model(ids).detach()
    hook = add_neftune(model, alpha=5.0)
    model.train()
    noisy = model(ids)
    bound = 5.0 / math.sqrt(6 * 16)
    assert not torch.allclose(noisy, clean)
    assert (noisy - clean).abs().max() <= bound + 1e-6
    assert (noisy - clean).abs().max() > 0.5 * bound  # it is uniform on the full range, not tiny
    model.eval()
    assert torch.equal(model(ids), clean)
    model.train()
    hook.remove()
    assert torch.equal(model(ids), clean) and not hook.active


def test_neftune_pad_aware_scaling_and_context_manager():
    model = _Emb().train()
    ids = torch.tensor([[1, 2, 0, 0], [3, 4, 5, 6]])
    clean = model(ids).detach()
    with neftune(model, alpha=4.0, pad_token_id=0, generator=torch.Generator().manual_seed(3)):
        delta = (model(ids) - clean).detach()
    assert torch.equal(delta[0, 2:], torch.zeros(2, 16))  # pads untouched
    assert delta[0, :2].abs().max() <= 4.0 / math.sqrt(2 * 16) + 1e-6
    assert delta[0, :2].abs().max() > 4.0 / math.sqrt(4 * 16)  # scaled by the real length, 2, not 4
    assert torch.equal(model(ids), clean)  # removed on exit
    with neftune(model, alpha=0.0):
        assert torch.equal(model(ids), clean)
