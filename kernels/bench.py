"""
Benchmark of per-token log-prob (forward + backward) at real LM-head shapes.

    python kernels/bench.py [--shapes 0.5b,7b] [--json PATH]     # GPU: time, peak memory, error
    python kernels/bench.py --cpu-mem                             # CPU: peak memory, naive vs twin

Candidates: naive fp32, torch.compile of it, ours (Triton, +entropy, torch twin), and Liger's
fused linear cross-entropy and Cut Cross-Entropy when importable. The JSON goes to $OUT/bench.json
if OUT is set, else to --json. What is measured and how: docs/kernels.md."""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from kernels.logprob import fused_logprob  # noqa: E402

SHAPES = {"0.5b": (4096, 896, 151936), "7b": (16384, 3584, 152064)}

def candidates():
    naive = lambda h, W, t: fused_logprob(h, W, t, impl="naive")  # noqa: E731
    out = {
        "naive fp32": naive,
        "torch.compile(naive)": torch.compile(naive),
        "ours (triton)": lambda h, W, t: fused_logprob(h, W, t, impl="triton"),
        "ours (triton) +entropy": lambda h, W, t: fused_logprob(h, W, t, return_entropy=True, impl="triton"),
        "ours (torch twin)": lambda h, W, t: fused_logprob(h, W, t, impl="torch"),
    }
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        liger = LigerFusedLinearCrossEntropyLoss(reduction="none")
        out["liger FLCE"] = lambda h, W, t: -liger(W, h, t)
    except Exception as e:  # noqa: BLE001 - any import problem means "not available"
        print(f"liger not available: {e!r}")
    try:
        from cut_cross_entropy import linear_cross_entropy
        out["cut cross-entropy"] = lambda h, W, t: -linear_cross_entropy(h, W, t, reduction="none")
    except Exception as e:  # noqa: BLE001
        print(f"cut-cross-entropy not available: {e!r}")
    return out

def fwd_bwd(fn, h, W, t, g, g_ent=None):
    """One step: log p gets the upstream gradient g, the entropy (where returned) g_ent or g."""
    out = fn(h, W, t)
    outs = out if isinstance(out, tuple) else (out,)
    grads = (g,) + (g if g_ent is None else g_ent,) * (len(outs) - 1)
    return outs[0], torch.autograd.grad(outs, (h, W), grads)

def errors(fn, h, W, t, rows):
    """Max |error| of log p (rows), dh (rows) and dW (relative to max |dW|) against float64."""
    g = torch.zeros(h.shape[0], device=h.device)
    g[rows] = torch.randn(len(rows), device=h.device)
    logp, (dh, dW) = fwd_bwd(fn, h, W, t, g, g_ent=torch.zeros_like(g))
    h64, W64 = h[rows].double().requires_grad_(), W.double().requires_grad_()
    logq = torch.log_softmax(h64 @ W64.t(), -1)  # [R, V]
    ref = logq.gather(1, t[rows][:, None])[:, 0]
    dh64, dW64 = torch.autograd.grad(ref, (h64, W64), g[rows].double())
    return {"logp": (logp[rows].double() - ref).abs().max().item(),
            "dh_rel": ((dh[rows].double() - dh64).abs().max() / dh64.abs().max()).item(),
            "dW_rel": ((dW.double() - dW64).abs().max() / dW64.abs().max()).item()}

def bench_gpu(shape_names):
    from triton.testing import do_bench
    results = []
    for name in shape_names:
        N, D, V = SHAPES[name]
        torch.manual_seed(0)
        h = torch.randn(N, D, device="cuda", dtype=torch.bfloat16).requires_grad_()
        W = (torch.randn(V, D, device="cuda") * 2 / D ** 0.5).to(torch.bfloat16).requires_grad_()
        t = torch.randint(0, V, (N,), device="cuda")
        g = torch.randn(N, device="cuda")
        rows = torch.randperm(N, device="cuda")[:256]
        for label, fn in candidates().items():
            row = {"shape": name, "N": N, "D": D, "V": V, "impl": label}
            step = lambda: fwd_bwd(fn, h, W, t, g)  # noqa: E731
            try:
                step()  # compile / autotune outside the measurements
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                step()
                torch.cuda.synchronize()
                row["peak_mem_gib"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
                row["ms"] = do_bench(step, warmup=5, rep=50, return_mode="median")
                row.update(errors(fn, h, W, t, rows))
            except Exception as e:  # noqa: BLE001 - an OOM or a changed third-party API
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            results.append(row)
    return results

def print_table(results):
    cols = [("shape", 5, "{}"), ("impl", 24, "{}"), ("ms", 9, "{:.2f}"), ("peak_mem_gib", 12, "{:.2f}"),
            ("logp", 9, "{:.1e}"), ("dh_rel", 9, "{:.1e}"), ("dW_rel", 9, "{:.1e}")]
    print("  ".join(c.ljust(w) for c, w, _ in cols))
    for r in results:
        if "error" in r:
            print(f"{r['shape']:<5}  {r['impl']:<24}  failed: {r['error'][:100]}")
        else:
            print("  ".join(f.format(r[c]).ljust(w) for c, w, f in cols))

def cpu_mem_child(impl):
    N, D, V = 2048, 896, 151936
    torch.manual_seed(0)
    h = torch.randn(N, D).requires_grad_()
    W = torch.randn(V, D).div_(D ** 0.5).requires_grad_()  # in place: a freed temporary would
    t = torch.randint(0, V, (N,))                           # raise the baseline high-water mark
    small = torch.randn(8, D, requires_grad=True)  # load every code path before the baseline
    torch.autograd.grad(fused_logprob(small, W[:300], t[:8] % 300, impl=impl).sum(), small)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    dh, dW = torch.autograd.grad(fused_logprob(h, W, t, impl=impl).sum(), (h, W))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"impl": impl, "N": N, "D": D, "V": V, "peak_growth_mib": (peak - before) / 1024,
                      "grads_mib": (dh.numel() + dW.numel()) * 4 / 2 ** 20, "seconds": seconds}))

def cpu_mem():
    rows = []
    for impl in ("naive", "torch"):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--cpu-mem-child", impl],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print("impl    peak RSS growth (MiB)   dh+dW outputs (MiB)    fwd+bwd (s)   [N=2048 D=896 V=151936 fp32]")
    for r in rows:
        print(f"{r['impl']:<8}{r['peak_growth_mib']:>21.0f}{r['grads_mib']:>23.0f}{r['seconds']:>14.1f}")
    return rows

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="0.5b,7b")
    ap.add_argument("--json", default=None, help="output path when $OUT is not set")
    ap.add_argument("--cpu-mem", action="store_true")
    ap.add_argument("--cpu-mem-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cpu_mem_child:
        return cpu_mem_child(args.cpu_mem_child)
    if args.cpu_mem:
        results = cpu_mem()
    elif not torch.cuda.is_available():
        sys.exit("the timing benchmark needs a CUDA GPU; on a CPU run --cpu-mem")
    else:
        results = bench_gpu(args.shapes.split(","))
        print_table(results)
    path = os.path.join(os.environ["OUT"], "bench.json") if os.environ.get("OUT") else args.json
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {path}")

if __name__ == "__main__":
    main()
