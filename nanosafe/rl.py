"""
RL math of SafeLadder: group advantages (+ CALE) and the CPGD / GRPO policy losses.

This file is the code's single home for the equations of DESIGN.md §4; each appears once below,
under a comment naming it. `kernels/advantage.py` re-implements group_advantages as a Triton
kernel and is tested against this file.

Equations (per prompt group of G responses, per response token t)
-----------------------------------------------------------------
  group advantage   A_i = (R_i - mean_g R) / (std_g R + eps)     std unbiased (G-1), eps = 1e-6
                    "none" (Dr.GRPO): A_i = R_i - mean_g R
  CALE              C = {i : good_i}, the responses whose recipe's every verifier scored >= tau
                    (verifiers.score_batch's `good`: correct / safe); if |C| >= 2 and the lengths
                    in C differ:  A_i^len = max(0, -(L_i - mean_C L) / (std_C L + eps)), i in C
                    A_i <- A_i + beta * A_i^len
  ratio             logr_t = logp_t - logp_old_t,  r_t = exp(logr_t)
  CPGD              -clip_logp_t * A,  clip_logp_t = min(logp_t, logp_old_t + ln(1+eps_hi)) if A > 0
                                                     max(logp_t, logp_old_t + ln(1-eps_lo)) else
  policy drift      + alpha * clamp(exp(logp_t.detach() - logp_old_t) - 1, max=2) * logp_t
                    (its gradient, alpha*min(r-1, 2)*grad logp, is that of the k3 estimate of
                    KL(pi_old || pi_theta): a soft pull back towards pi_old, on every token)
  GRPO / PPO        -min(r*A, clip(r, 1-eps_lo, 1+eps_hi)*A),   optional dual clip c for A < 0
  k3 KL             exp(q - p) - (q - p) - 1 >= 0 for log-probs p (sampled policy) and q (other)
  search reward     R = y + Rc + format,  Rc = -lam * 1{wrong and p >= c*} - mu * (p - y)^2,
                    y = 1{correct}, p the stated confidence (none: 1);  lam <- max(0, lam + eta*(FCR - delta))
  confidence adv.   S = {j in the step : y_j = y_i, j states p},  for the tokens that write p:
                    A_i^conf = (Rc_i - mean_S Rc) / (std_S Rc + eps)   (0 if |S| < 2 or Rc flat on S),
                    their loss weighted by (policy tokens / confidence tokens) of the response;
                    the response's other tokens: the group advantage of R - Rc
  aggregation       token-mean               sum_t m*l / n_tokens(step)
                    seq-mean-token-mean      sum_i (sum_t m*l / sum_t m) / n_seqs(step)
                    seq-mean-token-sum-norm  sum_t m*l / (n_seqs(step) * max_new_tokens)

Worked example (one prompt, G = 3, eps_lo = eps_hi = 0.2, alpha = 1e-3)
-----------------------------------------------------------------------
  rewards R = [1.0, 0.0, 0.5]: mean 0.5, unbiased std 0.5  ->  A = [+0.999998, -0.999998, 0]
  sample 0, a token with logp -0.5, old -0.7: logr = 0.2 > ln 1.2 = 0.1823, so clip_logp =
      -0.7 + 0.1823 = -0.5177 and the policy term is +0.5177 with zero gradient: the clip held
      the step. The drift term adds 1e-3 * (e^0.2 - 1) * (-0.5) = -1.1e-4 and its gradient
      2.2e-4 * grad logp pulls the token back towards pi_old.
  sample 1, a token with logp -1.0, old -1.1: A < 0 and logr = 0.1 > ln 0.8, inside the clip:
      the policy term is -1.0 * 0.999998 and its gradient pushes logp down.
  sample 2 has A = 0: only the drift term acts.
  CALE, beta = 0.2: an all-wrong group R = [0, 0, 0, 0], lengths [5, 7, 9, 30], good = none:
      A = [0, 0, 0, 0] - no length term, a short wrong answer earns nothing. R = [1, 1, 1, 0],
      L = [10, 20, 30, 5], good = the first three: A_len = [1, 0, 0, 0] (mean 20, std 10), so
      A = [0.5, 0.5, 0.5, -1.5] + 0.2 * A_len = [0.7, 0.5, 0.5, -1.5] (to 1e-5).

Choices, where well-known implementations differ
------------------------------------------------
- A group of one sample gets advantage 0 (some frameworks use mean 0 / std 1, i.e. the raw reward,
  which silently turns GRPO into REINFORCE for that prompt). An all-equal group gives exactly 0
  (tested via max == min, not via a rounded R - mean).
- Statistics in float32 at least (float64 when the rewards are float64), per prompt group,
  unbiased std, divided by (std + eps).
- CALE is our reading of the paper (it names CALE without printing a formula). It only ever adds:
  a shorter-than-average good response gets a bonus, a longer one keeps its advantage, and length
  never lifts a bad response above a good one. A two-sided term gave long *correct* answers a
  negative advantage and flipped digit facts ("8 + 3 = 10"): held-out sums 0.97 -> 0.91, against
  0.95 with this one (DESIGN §4). The good set is absolute, never "the best of the group": with
  the group max as threshold an all-wrong group was its own good set and its short wrong answers
  got the bonus ([+0.133, +0.099, +0.065, 0] for the group above).
- token-mean divides by the valid tokens of the whole optimiser step (all micro-batches, all ranks),
  never a mean of per-micro-batch means; seq-mean-token-mean averages per-sequence token means over
  the non-empty sequences of the step (an empty one is skipped, never NaN); seq-mean-token-sum-norm
  divides by (n_seqs * max_new_tokens), a constant. Both seq modes count the same n_seqs: sequences
  with at least one valid token, so that padding rows never count. With these global counts the
  sum of policy_loss over micro-batches equals the full-batch loss, gradient included.
- PPO dual-clip and k3 clamping exist as options, off by default, so the exact estimators can be
  compared with closed forms. The ratio is always computed, so clip and drift always run; on an
  on-policy mini-batch old_logp may be logp.detach() (rl.old_logp=auto): the ratio is 1, the
  gradient that of the recomputed old log-probs (DESIGN §4).
- The confidence tokens may get their own advantage (rung 4, rl.confidence_adv; off in the rung
  table: it conditions p on the search result on two seeds of three, and has cost knowledge or
  format on the third, docs/LOG.md). y is settled before p
  is written, so the sequence advantage, which is mostly y, is noise for them: in a group with
  right and wrong answers every right answer's p was pushed up, whatever it said. Comparing Rc
  among answers with the same outcome is a baseline that depends only on what precedes p
  (unbiased), and what is left is p's own effect: higher on a right answer, lower on a wrong one.
  The comparison runs over the step (this rank's share), not the group: early in rung 4 a right
  answer is often alone in its group, and with per-group sets only the wrong answers' p were
  pushed, all down, to 0.1 - 0.3 on right and wrong alike within 30 steps (docs/LOG.md). The
  loss weight makes the confidence a decision that counts as much as the rest of its response (3
  tokens of 50 had not read the search result after 80 steps), its KL and drift terms
  scaled with it so the anchor holds there as elsewhere. And Rc leaves the other tokens'
  reward: with it there, a search whose copied answer came out wrong at p 0.9 cost lam, so
  once the confidence after a passage rose the policy stopped searching and guessed at p 0.1
  (docs/LOG.md); the answer is judged by y, the confidence by Rc.
- Metrics are 0-dim detached tensors (no host sync), means over this call's valid tokens.
"""
import math

import torch

def _stat_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32

def _groups(x, group_size, dtype):
    if x.numel() % group_size:
        raise ValueError(f"{x.numel()} rewards do not split into groups of {group_size}")
    return x.reshape(-1, group_size).to(dtype)  # [n_groups, G]

def zero_variance_groups(rewards, group_size):
    """Number of groups whose rewards are all equal (they carry no group-advantage signal)."""
    r = _groups(rewards, group_size, _stat_dtype(rewards))  # [n, G]
    return int((r.amax(1) == r.amin(1)).sum())

def group_advantages(rewards, group_size, norm="std", eps=1e-6, lengths=None, cale_beta=0.0, good=None):
    """rewards [B] as B // group_size consecutive groups -> advantages [B] (float32 or float64).

    norm: "std" (GRPO) or "none" (Dr.GRPO's R - mean). lengths [B] + cale_beta > 0 adds the CALE
    term with good set C = {i : good[i]} (good [B] bool, required then). Groups of one and
    all-equal groups get 0 from the group term; see the module docstring for every choice.
    """
    if norm not in ("std", "none"):
        raise ValueError(f"norm must be 'std' or 'none', got {norm!r}")
    dt = _stat_dtype(rewards)
    r = _groups(rewards, group_size, dt)  # [n, G]
    if group_size == 1:  # a lone sample has nobody to be compared with
        return torch.zeros(r.numel(), dtype=dt, device=r.device)
    # group advantage (DESIGN §4)
    adv = r - r.mean(1, keepdim=True)  # [n, G]
    if norm == "std":
        adv = adv / (r.std(1, keepdim=True) + eps)
    flat = (r.amax(1, keepdim=True) == r.amin(1, keepdim=True))  # [n, 1]
    adv = torch.where(flat, torch.zeros_like(adv), adv)
    if lengths is None or cale_beta == 0:
        return adv.reshape(-1)
    # CALE, conditional length advantage (DESIGN §4)
    if good is None:
        raise ValueError("CALE (cale_beta > 0) needs the good mask: which responses are correct / safe")
    L = _groups(lengths, group_size, dt)  # [n, G]
    good = _groups(good, group_size, torch.bool)  # [n, G]
    n_good = good.sum(1, keepdim=True)  # [n, 1]
    mean_c = (L * good).sum(1, keepdim=True) / n_good.clamp(min=1)
    var_c = (((L - mean_c) * good) ** 2).sum(1, keepdim=True) / (n_good - 1).clamp(min=1)
    spread = (L.masked_fill(~good, -math.inf).amax(1, keepdim=True)
              > L.masked_fill(~good, math.inf).amin(1, keepdim=True))  # lengths in C differ
    a_len = (-(L - mean_c) / (var_c.sqrt() + eps)).clamp(min=0)  # [n, G]
    a_len = torch.where(good & spread & (n_good >= 2), a_len, torch.zeros_like(a_len))
    return (adv + cale_beta * a_len).reshape(-1)

def kl_k3(logp, ref_logp, clamp=None):
    """k3 estimate of KL(pi_logp || pi_ref) per token, from samples of pi_logp; always >= 0.
    clamp (off by default) caps the value, like verl's low_var_kl; beyond it the gradient is 0."""
    # k3 KL (DESIGN §4)
    d = ref_logp - logp
    k3 = torch.exp(d) - d - 1
    return k3 if clamp is None else k3.clamp(max=clamp)

def step_counts(masks):
    """(n_tokens, n_seqs) over a list of [B, T] masks: the global counts for policy_loss. Sum these
    over micro-batches (and all-reduce them over ranks) before calling policy_loss."""
    n_tokens = sum(int(m.sum()) for m in masks)
    n_seqs = sum(int((m.sum(-1) > 0).sum()) for m in masks)
    return n_tokens, n_seqs

def policy_loss(logp, old_logp, adv, mask, algo="cpgd", clip_lo=0.2, clip_hi=0.2, drift_coef=1e-3,
                ref_logp=None, kl_coef=0.0, agg="seq-mean-token-mean", n_tokens=None, n_seqs=None,
                max_new_tokens=None, dual_clip=None, k3_clamp=None, weight=None):
    """logp, old_logp, ref_logp, mask [B, T]; adv [B] or [B, T] -> (scalar loss, metrics dict).
    weight [B, T] (optional) scales each token's whole loss (policy, drift and KL terms); the
    aggregation's counts stay those of the mask.

    n_tokens / n_seqs are the whole optimiser step's counts (step_counts, all-reduced); left None
    they default to this call's, which is right only when the call sees the whole step.
    """
    m = mask.to(logp.dtype)  # [B, T]
    A = adv.to(logp.dtype)
    A = A[:, None] if A.dim() == 1 else A  # [B, 1] or [B, T]
    old_logp = old_logp.detach()
    logr = logp - old_logp  # [B, T]
    if algo == "cpgd":
        # CPGD (DESIGN §4): clipping log pi itself stops the gradient beyond ln(1 +/- eps)
        hi = old_logp + math.log1p(clip_hi)  # [B, T]
        lo = old_logp + math.log1p(-clip_lo)
        clip_logp = torch.where(A > 0, torch.minimum(logp, hi), torch.maximum(logp, lo))
        tok = -clip_logp * A  # [B, T]
        clipped = clip_logp.detach() != logp.detach()
        # policy drift (DESIGN §4)
        r_det = torch.exp(logp.detach() - old_logp)
        tok = tok + drift_coef * torch.clamp(r_det - 1, max=2) * logp
    elif algo == "grpo":
        # GRPO / PPO clipped surrogate (DESIGN §4)
        ratio = torch.exp(logr)  # [B, T]
        unclipped = -A * ratio
        tok = torch.maximum(unclipped, -A * torch.clamp(ratio, 1 - clip_lo, 1 + clip_hi))
        clipped = tok.detach() != unclipped.detach()
        if dual_clip is not None:  # caps the loss of a negative-advantage token whose r exploded
            capped = torch.where(A < 0, torch.minimum(tok, -A * dual_clip), tok)
            clipped = clipped | (capped.detach() != tok.detach())
            tok = capped
    else:
        raise ValueError(f"algo must be 'cpgd' or 'grpo', got {algo!r}")
    kl_ref = None
    if ref_logp is not None:
        kl_ref = kl_k3(logp, ref_logp.detach(), k3_clamp)  # [B, T]
        tok = tok + kl_coef * kl_ref

    if weight is not None:
        tok = tok * weight.to(tok.dtype)

    # aggregation (DESIGN §4)
    tok_sum = (tok * m).sum(-1)  # [B]
    seq_len = m.sum(-1)  # [B]
    if agg == "token-mean":
        loss = tok_sum.sum() / (seq_len.sum().clamp(min=1) if n_tokens is None else n_tokens)
    elif agg in ("seq-mean-token-mean", "seq-mean-token-sum-norm"):
        if n_seqs is None:
            n_seqs = (seq_len > 0).sum().clamp(min=1)
        if agg == "seq-mean-token-mean":
            loss = (tok_sum / seq_len.clamp(min=1)).sum() / n_seqs  # empty rows add 0 / 1
        elif max_new_tokens is None:
            raise ValueError("agg='seq-mean-token-sum-norm' needs max_new_tokens")
        else:
            loss = tok_sum.sum() / (n_seqs * max_new_tokens)
    else:
        raise ValueError(f"unknown agg {agg!r}")

    with torch.no_grad():
        n_local = m.sum().clamp(min=1)
        metrics = {
            "clip_frac": (clipped * m).sum() / n_local,
            "approx_kl": (kl_k3(old_logp, logp) * m).sum() / n_local,  # KL(old || new), k3
            "ratio_max": torch.where(m > 0, logr.exp(), torch.zeros_like(logr)).amax(),
        }
        if kl_ref is not None:
            metrics["kl_ref"] = (kl_ref * m).sum() / n_local
    return loss, metrics

def confidence_reward(correct, false_certain, p, lam, mu):
    """The part of rung 4's reward the stated confidence p decides (DESIGN §4):
    Rc = -lam * 1{wrong and p >= c*} - mu * (p - y)^2, y = 1{correct}. The constraint punishes
    confident errors; the Brier term (a proper scoring rule) makes the best p the real chance of
    being right, so a blanket hedge costs on every right answer."""
    # search reward (DESIGN §4), its confidence part
    return -lam * float(false_certain) - mu * (p - float(correct)) ** 2

def search_reward(correct, false_certain, p, format_reward, lam, mu):
    """Deliberative-search reward (DESIGN §4, rung 4), p the stated confidence (none: 1):
    R = y + Rc + format, Rc = confidence_reward."""
    return float(correct) + confidence_reward(correct, false_certain, p, lam, mu) + format_reward

def confidence_advantages(conf_reward, correct, eps=1e-6):
    """conf_reward [B] (Rc, NaN where no confidence is stated), correct [B] -> advantages [B] for
    the tokens that write the confidence: Rc standardised among the step's responses with the same
    outcome (module docstring). Rc = [-0.005, -0.045, -1.32, NaN] (p 0.9, 0.7 right; 0.8 wrong,
    lam 1; none stated), correct = [1, 1, 0, 1]: S of the right ones = {0, 1} -> [+0.707, -0.707]
    (mean -0.025, std 0.0283); the wrong one is alone in its S -> 0; no confidence -> 0. The right
    answer that said 0.9 gains over the one that said 0.7; the gap between right and wrong (y)
    plays no part."""
    dt = _stat_dtype(conf_reward)
    rc, y = conf_reward.to(dt), correct.to(dt)  # [B] each
    adv = torch.zeros_like(rc)
    # confidence advantage (DESIGN §4)
    for outcome in (0.0, 1.0):
        s = ~torch.isnan(rc) & (y == outcome)  # [B] the comparison set S
        if s.sum() >= 2 and rc[s].amax() > rc[s].amin():
            adv[s] = (rc[s] - rc[s].mean()) / (rc[s].std() + eps)
    return adv

def lagrange_update(lam, fcr, target, lr):
    """Dual ascent on the false-certain constraint FCR <= target (DESIGN §4):
    lam <- max(0, lam + lr * (FCR_batch - target))."""
    return max(0.0, lam + lr * (fcr - target))
