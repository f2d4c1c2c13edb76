"""AdamW with linear warmup then cosine decay to `min_lr_frac * lr`, shared by SFT and RL.
Weight decay applies to matrices only (not norms and biases), as in nanoGPT."""
from __future__ import annotations

import math

import torch

def make(model: torch.nn.Module, ocfg, total_steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": ocfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=ocfg.lr, betas=(ocfg.beta1, ocfg.beta2))
    warmup = max(1, int(ocfg.warmup_frac * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return ocfg.min_lr_frac + (1 - ocfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)
