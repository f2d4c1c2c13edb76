"""nanosafe.rl against hand-computed cases, closed forms and its own invariants (float64)."""
import math
import random

import pytest
import torch

from nanosafe.rl import (confidence_advantages, confidence_reward, group_advantages, kl_k3, policy_loss, search_reward,
                        step_counts, zero_variance_groups)

F64 = torch.float64
LN12, LN08 = math.log(1.2), math.log(0.8)  # 0.18232, -0.22314


def t(x):
    return torch.tensor(x, dtype=F64)


# ---------------------------------------------------------------- advantages

def test_group_advantage_by_hand():
    # group 1: R = [1, 0, 0.5], mean 0.5, unbiased std 0.5 -> A = +-0.5 / (0.5 + 1e-6), 0
    # group 2: all equal -> 0
    A = group_advantages(t([1.0, 0.0, 0.5, 2.0, 2.0, 2.0]), 3)
    assert A.tolist() == pytest.approx([0.999998000004, -0.999998000004, 0, 0, 0, 0], abs=1e-12)
    # R = [0, 0, 1, 1]: mean 0.5, var = 4 * 0.25 / 3, std 0.57735 -> +-0.5 / (0.57735 + 1e-6)
    A = group_advantages(t([0.0, 0.0, 1.0, 1.0]), 4)
    assert A.tolist() == pytest.approx([-0.8660239037870368] * 2 + [0.8660239037870368] * 2, rel=1e-12)
    # Dr.GRPO: R - mean only
    A = group_advantages(t([1.0, 0.0, 0.5, 2.0, 2.0, 2.0]), 3, norm="none")
    assert A.tolist() == pytest.approx([0.5, -0.5, 0, 0, 0, 0], abs=1e-15)


def test_singleton_and_all_equal_groups_are_exactly_zero():
    assert group_advantages(t([3.0, -1.0, 7.0]), 1).tolist() == [0.0, 0.0, 0.0]
    # 0.1 * 3 / 3 != 0.1 in floating point: a rounded R - mean would leave ~1e-11, not 0
    for dtype in (torch.float32, F64):
        for norm in ("std", "none"):
            A = group_advantages(torch.full((6,), 0.1, dtype=dtype), 3, norm=norm)
            assert (A == 0).all() and A.dtype == dtype
    assert group_advantages(torch.tensor([1, 0]), 2).dtype == torch.float32  # ints -> float32
    assert zero_variance_groups(t([1.0, 1.0, 0.0, 1.0, 2.0, 2.0]), 2) == 2
    assert zero_variance_groups(t([1.0, 2.0]), 1) == 2
    with pytest.raises(ValueError):
        group_advantages(t([1.0, 2.0, 3.0]), 2)


def b(x):
    return torch.tensor(x, dtype=torch.bool)


def test_cale_by_hand():
    # R = [1, 1, 1, 0]: A = [0.25, 0.25, 0.25, -0.75] / (0.5 + 1e-6); good set C = first three.
    # L in C = [10, 20, 30]: mean 20, unbiased std 10 -> A_len = max(0, [+1, 0, -1] * 10 / (10 + 1e-6))
    R, L, good = t([1.0, 1.0, 1.0, 0.0]), t([10.0, 20.0, 30.0, 5.0]), b([1, 1, 1, 0])
    A = group_advantages(R, 4, lengths=L, cale_beta=0.2, good=good)
    assert A.tolist() == pytest.approx([0.699998980002002, 0.499999000002, 0.499999000002,
                                        -1.499997000006], rel=1e-12)
    base = group_advantages(R, 4)
    # no CALE when beta = 0, when lengths in C are equal, or when |C| < 2
    assert torch.equal(group_advantages(R, 4, lengths=L, cale_beta=0.0, good=good), base)
    assert torch.equal(group_advantages(R, 4, lengths=t([7.0, 7.0, 7.0, 1.0]), cale_beta=0.2, good=good), base)
    R1 = t([1.0, 0.0, 0.0, 0.0])
    assert torch.equal(group_advantages(R1, 4, lengths=L, cale_beta=0.2, good=b([1, 0, 0, 0])),
                       group_advantages(R1, 4))
    with pytest.raises(ValueError, match="good mask"):
        group_advantages(R, 4, lengths=L, cale_beta=0.2)


def test_cale_all_wrong_group_gets_no_length_term():
    # the docstring's example: under the old "tau = group max" rule this group got
    # [+0.133, +0.099, +0.065, 0]; nobody is good, so nobody gets a length bonus
    L = t([5.0, 7.0, 9.0, 30.0])
    A = group_advantages(t([0.0] * 4), 4, lengths=L, cale_beta=0.2, good=b([0, 0, 0, 0]))
    assert A.tolist() == [0.0] * 4
    # a wrong answer that earns format + a partial score is still not good: the group term only
    R = t([1.0, 1.5, 1.0, 1.5])
    A = group_advantages(R, 4, lengths=L, cale_beta=0.2, good=b([0, 0, 0, 0]))
    assert torch.equal(A, group_advantages(R, 4))


def test_cale_mixed_group_rewards_only_short_good_answers():
    # good = {0, 2, 3} with lengths [30, 10, 50]: mean 30, std 20 -> only the 10-token answer (+1)
    # gains; the short wrong answer (5 tokens) and the longer good ones keep their group advantage
    R, L, good = t([2.0, 1.0, 2.0, 2.0, 1.0]), t([30.0, 5.0, 10.0, 50.0, 8.0]), b([1, 0, 1, 1, 0])
    A, base = group_advantages(R, 5, lengths=L, cale_beta=0.5, good=good), group_advantages(R, 5)
    assert (A - base).tolist() == pytest.approx([0, 0, 0.5 * 20 / (20 + 1e-6), 0, 0], abs=1e-12)


def test_cale_only_adds_to_good_responses():
    # an all-correct group (flat, group advantage 0): the short answers gain, the long ones stay
    # at 0 - a correct answer is never pushed down for its length. The near-tie of the second
    # group (a bad reward 0.01 below the good ones) keeps its order with no floor.
    A = group_advantages(t([2.0] * 4), 4, lengths=t([40.0, 80.0, 120.0, 160.0]), cale_beta=0.2,
                         good=b([1] * 4))
    assert A[0] > A[1] > 0 and A[2] == A[3] == 0
    R = t([1.0, 1.0, 0.99, 0.0, 0.0, 0.0])
    A = group_advantages(R, 6, lengths=t([10.0, 100.0, 50.0, 5.0, 5.0, 5.0]), cale_beta=0.2, good=R >= 1)
    assert A[1] == group_advantages(R, 6)[1] > A[2] and A[0] > A[1]


def test_cale_never_ranks_bad_above_good():
    # the good set is what reaches an absolute threshold (score_batch's `good`), here on R itself
    seed = random.randrange(2 ** 31)
    g = torch.Generator().manual_seed(seed)
    for _ in range(200):
        G = int(torch.randint(2, 17, (1,), generator=g))
        levels = torch.rand(3, generator=g, dtype=F64)
        R = levels[torch.randint(0, 3, (4 * G,), generator=g)]  # ties and near ties
        R = R + 1e-3 * torch.rand(4 * G, generator=g, dtype=F64) * (torch.rand(1, generator=g) < 0.5)
        L = torch.randint(1, 200, (4 * G,), generator=g)
        beta = 2 * float(torch.rand(1, generator=g))
        good = R >= float(R[int(torch.randint(0, 4 * G, (1,), generator=g))])
        A = group_advantages(R, G, lengths=L, cale_beta=beta, good=good).view(-1, G)
        for a, gd in zip(A, good.view(-1, G)):
            if gd.any() and (~gd).any():
                assert a[gd].min() >= a[~gd].max(), f"seed {seed}"


# ---------------------------------------------------------------- rung 4's confidence advantage

def test_confidence_advantage_by_hand():
    # the docstring's group: two right answers (p 0.9 and 0.7), a wrong one, one without a confidence
    rc = t([confidence_reward(True, False, 0.9, 1.0, 0.5), confidence_reward(True, False, 0.7, 1.0, 0.5),
            confidence_reward(False, True, 0.8, 1.0, 0.5), math.nan])
    assert rc[:3].tolist() == pytest.approx([-0.005, -0.045, -1.32])
    A = confidence_advantages(rc, t([1, 1, 0, 1]))
    a = 0.02 / (0.04 / math.sqrt(2) + 1e-6)  # deviation 0.02 from the mean -0.025, over std + eps
    assert A.tolist() == pytest.approx([a, -a, 0, 0], abs=1e-12) and a == pytest.approx(0.7071, abs=1e-4)
    # two wrong answers: the one that said "not sure" gains, by lam's and Brier's share alike
    rc = t([confidence_reward(False, True, 0.9, 2.0, 0.5), confidence_reward(False, False, 0.1, 2.0, 0.5)])
    assert rc.tolist() == pytest.approx([-2.405, -0.005])
    A = confidence_advantages(rc, t([0, 0]))
    assert A.tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)], abs=1e-5)
    # the search reward is y + Rc + format, with one home for Rc
    assert search_reward(False, True, 0.9, 1.0, 2.0, 0.5) == pytest.approx(-2.405 + 1.0)


def test_confidence_advantage_ignores_the_outcome_gap():
    """Right answers all saying 0.3 and wrong ones all 0.9: the sequence advantage pushes every
    right answer's tokens up (y), the confidence advantage gives 0 (nothing to compare within an
    outcome) - and raising a right answer's p or lowering a wrong one's is what gains."""
    y = t([1, 1, 0, 0])
    rc = t([confidence_reward(bool(c), False, p, 0.0, 0.5) for c, p in zip(y, [0.3, 0.3, 0.9, 0.9])])
    assert confidence_advantages(rc, y).tolist() == [0, 0, 0, 0]
    assert group_advantages(y + rc, 4).tolist()[0] > 0
    rc = t([confidence_reward(bool(c), False, p, 0.0, 0.5) for c, p in zip(y, [0.3, 0.8, 0.9, 0.2])])
    A = confidence_advantages(rc, y)
    assert A[1] > 0 > A[0] and A[3] > 0 > A[2]


def test_confidence_advantage_compares_across_the_step():
    """A right answer alone in its group still gets a signal: S is the step's answers with its
    outcome (two groups of 3 here, one right answer each)."""
    y = t([1, 0, 0, 0, 1, 0])
    rc = t([confidence_reward(bool(c), False, p, 0.0, 0.5) for c, p in zip(y, [0.9, 0.1, 0.1, 0.3, 0.5, 0.1])])
    A = confidence_advantages(rc, y)
    assert A[0] > 0 > A[4]  # 0.9 beats 0.5 among the right answers, across the groups
    assert A[3] < 0 < A[1] == A[2] == A[5]


def test_confidence_advantage_matches_a_loop():
    seed = random.randrange(2 ** 31)
    g = torch.Generator().manual_seed(seed)
    for _ in range(100):
        B = int(torch.randint(1, 20, (1,), generator=g))
        y = (torch.rand(B, generator=g) < 0.5).to(F64)
        p = torch.randint(0, 10, (B,), generator=g).to(F64) / 10  # ties on purpose
        rc = -0.5 * (p - y) ** 2
        rc[torch.rand(B, generator=g) < 0.2] = math.nan
        A = confidence_advantages(rc, y)
        for i in range(B):
            vals = t([float(rc[j]) for j in range(B) if y[j] == y[i] and not math.isnan(rc[j])])
            if math.isnan(rc[i]) or len(vals) < 2 or vals.max() == vals.min():
                assert A[i] == 0, f"seed {seed}"
            else:
                want = float((rc[i] - vals.mean()) / (vals.std() + 1e-6))
                assert float(A[i]) == pytest.approx(want, abs=1e-9), f"seed {seed}"


# ---------------------------------------------------------------- losses

def test_token_weight_scales_each_tokens_whole_loss():
    """weight [B, T] multiplies a token's policy, drift and KL terms alike; the counts stay the mask's."""
    g = torch.Generator().manual_seed(0)
    logp, old, ref = (-torch.rand(2, 5, generator=g, dtype=F64) for _ in range(3))
    adv, mask = t([[0.5] * 5, [-1.0] * 5]), t([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    w = t([[1, 1, 4, 1, 1], [1, 3, 1, 1, 1]])
    kw = dict(ref_logp=ref, kl_coef=0.1, drift_coef=0.01, agg="seq-mean-token-mean")
    x = logp.clone().requires_grad_()
    loss, _ = policy_loss(x, old, adv, mask, weight=w, **kw)
    loss.backward()
    y = logp.clone().requires_grad_()
    policy_loss(y, old, adv, mask, **kw)[0].backward()
    torch.testing.assert_close(x.grad, y.grad * w)  # each token's own gradient, scaled by its weight
    ones, _ = policy_loss(logp, old, adv, mask, weight=torch.ones_like(w), **kw)
    assert float(ones) == pytest.approx(float(policy_loss(logp, old, adv, mask, **kw)[0]), abs=1e-15)

def _two_tokens():
    # token 0: logp -0.5, old -0.7 (logr 0.2), A = +1;  token 1: logp -1.0, old -1.1 (logr 0.1), A = -1
    logp = t([[-0.5], [-1.0]]).requires_grad_()
    return logp, t([[-0.7], [-1.1]]), t([1.0, -1.0]), torch.ones(2, 1, dtype=F64)


def test_cpgd_by_hand():
    logp, old, adv, mask = _two_tokens()
    loss, met = policy_loss(logp, old, adv, mask, algo="cpgd", agg="token-mean")
    # token 0: logr 0.2 > ln 1.2 -> clip_logp = -0.7 + 0.18232 -> +0.5176784432060454;
    #          drift 1e-3 * (e^0.2 - 1) * (-0.5) = -1.107013790800849e-4
    # token 1: A < 0, logr 0.1 > ln 0.8 -> clip_logp = logp -> -(-1.0)(-1) = -1.0;
    #          drift 1e-3 * (e^0.1 - 1) * (-1.0) = -1.0517091807564772e-4
    assert loss.item() == pytest.approx(-0.24126871454555518, rel=1e-12)
    loss.backward()
    # d/dlogp: token 0 only the drift, 1e-3 (e^0.2 - 1) / 2; token 1: (1 + 1e-3 (e^0.1 - 1)) / 2
    assert logp.grad.view(-1).tolist() == pytest.approx([1.107013790800849e-4, 0.5000525854590379],
                                                        rel=1e-12)
    assert met["clip_frac"].item() == 0.5
    # approx_kl = mean over tokens of r - 1 - logr
    assert met["approx_kl"].item() == pytest.approx(((math.exp(.2) - 1.2) + (math.exp(.1) - 1.1)) / 2)


def test_grpo_by_hand():
    logp, old, adv, mask = _two_tokens()
    loss, met = policy_loss(logp, old, adv, mask, algo="grpo", agg="token-mean")
    # token 0: r = e^0.2 = 1.2214 > 1.2, A = 1 -> -min(1.2214, 1.2) = -1.2, no gradient
    # token 1: r = e^0.1, A = -1 -> -min(-1.10517, -1.10517) = 1.1051709180756477, d/dlogp = r
    assert loss.item() == pytest.approx(-0.04741454096217612, rel=1e-12)
    loss.backward()
    assert logp.grad.view(-1).tolist() == pytest.approx([0.0, 0.5525854590378239], rel=1e-12)
    assert met["clip_frac"].item() == 0.5


def test_grpo_dual_clip():
    # A = -1, r = e^2 = 7.389: PPO loss max(7.389, 1.2 * 1) = 7.389; dual clip c = 3 caps it at 3
    logp = t([[0.0]]).requires_grad_()
    args = (logp, t([[-2.0]]), t([-1.0]), torch.ones(1, 1, dtype=F64))
    assert policy_loss(*args, algo="grpo")[0].item() == pytest.approx(math.exp(2))
    loss, met = policy_loss(*args, algo="grpo", dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0)
    loss.backward()
    assert logp.grad.item() == 0.0 and met["clip_frac"].item() == 1.0


def test_cpgd_clip_gradient_by_side():
    # drift off; token-mean over 1 token: the gradient is -A inside the clip, 0 beyond it
    def grad(logr, A):
        logp = t([[-1.0 + logr]]).requires_grad_()
        policy_loss(logp, t([[-1.0]]), t([A]), torch.ones(1, 1), drift_coef=0.0)[0].backward()
        return logp.grad.item()

    for logr in (-1.0, 0.0, 0.1, LN12 - 1e-6):
        assert grad(logr, 2.0) == -2.0  # A > 0: only pushing logp above ln 1.2 is stopped
    for logr in (LN12 + 1e-6, 0.5, 3.0):
        assert grad(logr, 2.0) == 0.0
    for logr in (1.0, 0.0, LN08 + 1e-6):
        assert grad(logr, -2.0) == 2.0  # A < 0: only pushing logp below ln 0.8 is stopped
    for logr in (LN08 - 1e-6, -1.0, -5.0):
        assert grad(logr, -2.0) == 0.0


def test_drift_gradient_is_alpha_min_r_minus_1_2():
    logr = t([[-2.0, -0.3, 0.0, 0.4, 1.0, 1.5, 3.0]])  # r - 1 from -0.86 to 19 (clamped to 2)
    logp = (-2.0 + logr).requires_grad_()
    alpha = 0.1
    loss, _ = policy_loss(logp, logp.detach() - logr, t([0.0]), torch.ones_like(logr),
                          drift_coef=alpha, agg="token-mean", n_tokens=1)
    loss.backward()  # A = 0: the policy term has no gradient, only the drift remains
    assert torch.allclose(logp.grad, alpha * torch.clamp(logr.exp() - 1, max=2), rtol=1e-14, atol=0)


def test_k3():
    assert kl_k3(t(-1.0), t(-1.5)).item() == pytest.approx(0.10653065971263342, rel=1e-12)
    p, q = torch.randn(1000, dtype=F64) * 3, torch.randn(1000, dtype=F64) * 3
    assert (kl_k3(p, q) >= 0).all() and (kl_k3(p, p) == 0).all()
    assert (kl_k3(p, q, clamp=0.5) <= 0.5).all()
    # in the loss: d/dlogp of kl_coef * k3 = kl_coef * (1 - exp(ref - logp))
    logp = t([[-1.0]]).requires_grad_()
    loss, met = policy_loss(logp, logp.detach(), t([0.0]), torch.ones(1, 1), drift_coef=0.0,
                            ref_logp=t([[-1.5]]), kl_coef=0.3)
    loss.backward()
    assert loss.item() == pytest.approx(0.3 * 0.10653065971263342, rel=1e-12)
    assert logp.grad.item() == pytest.approx(0.3 * (1 - math.exp(-0.5)), rel=1e-12)
    assert met["kl_ref"].item() == pytest.approx(0.10653065971263342, rel=1e-12)


def test_on_policy_runs_every_path():
    logp = torch.randn(3, 5, dtype=F64).requires_grad_()
    for algo in ("cpgd", "grpo"):
        loss, met = policy_loss(logp, logp.detach(), t([1.0, -2.0, 0.5]), torch.ones(3, 5), algo=algo,
                                agg="token-mean")
        g, = torch.autograd.grad(loss, logp)
        # r = 1: drift gradient 0, PPO gradient A * r = A, CPGD gradient A: both -A / n_tokens
        assert torch.allclose(g, -t([1.0, -2.0, 0.5])[:, None].expand(3, 5) / 15)
        assert met["clip_frac"].item() == 0 and met["approx_kl"].item() == 0


def test_empty_sequences_do_not_nan():
    logp = torch.randn(3, 4, dtype=F64).requires_grad_()
    mask = t([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        for m in (mask, torch.zeros_like(mask)):
            loss, met = policy_loss(logp, logp.detach() - 0.1, t([1.0, 2.0, -1.0]), m, agg=agg,
                                    max_new_tokens=4)
            g, = torch.autograd.grad(loss, logp)
            assert torch.isfinite(loss) and torch.isfinite(g).all() and (g[1] == 0).all()
            assert all(torch.isfinite(v) for v in met.values())
    # the empty row is not counted: 2 non-empty sequences
    assert step_counts([mask]) == (6, 2)


@pytest.mark.parametrize("algo", ["cpgd", "grpo"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_give_the_full_batch_gradient(algo, agg):
    B, T = 8, 7
    logp = (torch.randn(B, T, dtype=F64) - 1).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(B, T, dtype=F64)  # some tokens clipped
    ref = logp.detach() + 0.3 * torch.randn(B, T, dtype=F64)
    lengths = torch.randint(0, T + 1, (B,))
    lengths[2] = 0  # an empty sequence
    mask = (torch.arange(T)[None] < lengths[:, None]).to(F64)  # [B, T]
    adv = torch.randn(B, dtype=F64)
    kw = dict(algo=algo, agg=agg, kl_coef=0.1, max_new_tokens=T)

    def loss_over(mb):
        chunks = [slice(i, i + mb) for i in range(0, B, mb)]
        # each micro-batch is cut to its own longest sequence, as a padded collate would do
        widths = [max(int(lengths[c].max()), 1) for c in chunks]
        masks = [mask[c, :w] for c, w in zip(chunks, widths)]
        n_tokens, n_seqs = step_counts(masks)
        return sum(policy_loss(logp[c, :w], old[c, :w], adv[c], m, ref_logp=ref[c, :w],
                               n_tokens=n_tokens, n_seqs=n_seqs, **kw)[0]
                   for c, w, m in zip(chunks, widths, masks))

    full = policy_loss(logp, old, adv, mask, ref_logp=ref, **kw)[0]
    full_grad, = torch.autograd.grad(full, logp)
    for mb in (1, 4):
        loss = loss_over(mb)
        g, = torch.autograd.grad(loss, logp)
        assert torch.allclose(g, full_grad, atol=1e-6, rtol=0)
        assert loss.item() == pytest.approx(full.item(), abs=1e-12)


def test_bad_arguments():
    logp = torch.zeros(1, 1)
    with pytest.raises(ValueError):
        policy_loss(logp, logp, torch.ones(1), torch.ones(1, 1), algo="ppo2")
    with pytest.raises(ValueError):
        policy_loss(logp, logp, torch.ones(1), torch.ones(1, 1), agg="seq-mean-token-sum-norm")
