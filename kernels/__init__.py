"""Triton kernels (and their torch twins) for nanosafe: fused log-prob, group advantage."""
