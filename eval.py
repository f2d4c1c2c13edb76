"""Evaluate a policy on the tiny world's held-out split (or a public safety benchmark).

    python eval.py --model out/tiny/sft/model                     # tiny held-out split
    python eval.py --model out/tiny/m3b/model --out m3b.json
    python eval.py --model DIR --data my_prompts.jsonl            # any file in the DESIGN §3 schema
    python eval.py --model out/tiny/{sft,m3a,m3b}/model --plot ai45.png   # table + AI-45 plot
    python eval.py --reuse --model out/tiny/seed{0,1}/sft/model out/tiny/seed{0,1}/m3a/model \
        --names sft sft m3a m3a                                   # seeds: mean [min, max] per rung
    python eval.py --model DIR --bench xstest                     # or mmsafety|mssbench|siuo --data DIR
    python eval.py --model DIR --step-search 4                    # + verifier-guided step search
    python eval.py --model DIR --edit --id heldout-00030          # edit a think step, continue
    python eval.py --model DIR --id heldout-00030 --edit-step 0 --edit-text "This is harmful."
    python eval.py --audit [--judges safety=classifier:DIR]       # reward-hacking audit of the judges

The command line of nanosafe/evaluate.py (generation, scoring and the summary live there; see its
docstring for what each summary key means, DESIGN §9): it loads the model and the prompts, runs
the evaluation or an intervention (nanosafe/interventions.py), prints the table and writes JSON
(`--out`, default <model>/eval_<bench>.json) holding summary, summary_sampled and the same per
family. Several models under one name are seeds of one rung: the table shows each metric's mean
[min, max] over them, and the plot one path per seed (with --reuse, each model's eval_tiny.json
is read as it is, so each seed keeps its own world; ladder.sh writes them). The search tool is in
the loop whenever the world has a knowledge base, as in rung 4.
`--audit` needs no model: it runs nanosafe/audit.py's battery of degenerate and adversarial
responses through every label's recipe and exits 1 if any attack beats the honest baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import torch

import verifiers
from nanosafe import audit, benchmarks, config, data, interventions, model, rollout
from nanosafe.evaluate import CUE_KEYS, SUMMARY_KEYS, evaluate, fmt, over_seeds, score, step_search_eval, table, tiny_world

def public_benchmark(bundle, cfg, args) -> dict:
    """XSTest / MM-SafetyBench / MSSBench / SIUO: greedy answers judged by the verifiers, with the
    metrics each paper reports (nanosafe.benchmarks)."""
    samples, info = benchmarks.load(args.bench, args.data)
    print(f"{args.bench}: {info['n_samples']} prompts from {info['path']} ({info['layout']}); "
          f"skipped: {info['skipped'] or 'none'}")
    outs = rollout.generate(bundle, samples, cfg.data, cfg.rollout, greedy=True)
    _, metrics = score(outs, cfg.verifiers)
    result = {"bench": args.bench, "model": args.model, "info": info,
              "summary": benchmarks.metrics(args.bench, samples, [o.text for o in outs], metrics)}
    print(json.dumps({k: v for k, v in result["summary"].items() if not isinstance(v, dict)}, indent=2))
    out = args.out or os.path.join(args.model, f"eval_{args.bench}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")
    return result

def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description="Evaluate a policy (see the module docstring). Any other "
                                "argument is --config FILE or a config key=value.")
    p.add_argument("--model", required=True, nargs="+",
                   help="a save_pretrained dir (or hub id); several: a comparison table + the AI-45 plot")
    p.add_argument("--names", nargs="+", help="labels for several models (default: their run dirs)")
    p.add_argument("--reuse", action="store_true", help="several models: reuse <model>/eval_tiny.json")
    p.add_argument("--plot", default="ai45.png", help="several models: where the AI-45 PNG goes")
    p.add_argument("--bench", default="tiny", choices=["tiny", *benchmarks.LOADERS])
    p.add_argument("--data", help="tiny: a JSONL file in the DESIGN §3 schema instead of the world; "
                   "other benches: the benchmark's file or folder (xstest defaults to ../shared/data)")
    p.add_argument("--out", help="JSON output (default: <model>/eval_<bench>.json)")
    p.add_argument("--step-search", type=int, default=0, metavar="K",
                   help="also decode with verifier-guided step search, K candidates per step")
    p.add_argument("--edit", action="store_true", help="edit a reasoning step by hand, then continue")
    p.add_argument("--edit-step", type=int, help="scripted edit: the step to replace (from 0)")
    p.add_argument("--edit-text", help="scripted edit: the new text of that step")
    p.add_argument("--id", help="the sample to edit (default: the first)")
    args, rest = p.parse_known_args(argv)
    # `--model A B key=value` would read key=value as a third model: it is a config override
    rest += [m for m in args.model if "=" in m]
    args.model = [m for m in args.model if "=" not in m]
    if not args.model:
        p.error("--model needs a model directory")
    return args, rest

def compare(args, rest) -> dict:
    """Several models (e.g. every rung, or every rung on several seeds): one summary row each (a
    name given several times: seeds, mean [min, max]), and the AI-45 picture."""
    from nanosafe.plot import ai45_plot
    names = args.names or [os.path.basename(os.path.dirname(os.path.normpath(m))) for m in args.model]
    if len(names) != len(args.model):
        raise SystemExit(f"--names gives {len(names)} labels for {len(args.model)} models")
    rows = {}
    for name, m in zip(names, args.model):
        saved = os.path.join(m, "eval_tiny.json")
        if args.reuse and os.path.exists(saved):
            with open(saved) as f:
                r = json.load(f)
        else:
            r = main(rest + ["--model", m])
        run = os.path.basename(os.path.dirname(os.path.dirname(os.path.normpath(m))))  # out/tiny/seed1/sft/model
        rows.setdefault(name, []).append({**r, "run": run})
    seeds = any(len(rs) > 1 for rs in rows.values())
    if seeds:
        print(seeds_table(rows))
    else:
        lines = [f"{'model':<12} " + " ".join(f"{k[:8]:>8}" for k in SUMMARY_KEYS) +
                 "   (greedy; sampled safety / over_ref)"]
        for name, [r] in rows.items():
            s, ss = r["summary"], r.get("summary_sampled", {})
            lines.append(f"{name:<12} " + " ".join(f"{fmt(s.get(k)):>8}" for k in SUMMARY_KEYS) +
                         f"   {fmt(ss.get('safety'))} / {fmt(ss.get('over_refusal'))}")
        print("\n".join(lines))
    ai45_plot([{"name": n, "seed": r["run"] if seeds else None, "capability": r["summary"]["capability"] or 0.0,
                "safety": r["summary"]["safety"] or 0.0} for n, rs in rows.items() for r in rs], args.plot)
    print(f"wrote {args.plot}")
    return rows

def seeds_table(rows: dict) -> str:
    """{rung: [eval results, one per seed]} -> metrics as rows, rungs as columns, mean [min, max]."""
    keys = [("summary", k) for k in SUMMARY_KEYS + CUE_KEYS] + [("summary_sampled", k) for k in
                                                     ("safety", "over_refusal", "vote_majority", "vote_weighted")]
    agg = {n: {part: over_seeds([r.get(part, {}) for r in rs]) for part in ("summary", "summary_sampled")}
           for n, rs in rows.items()}
    cell = lambda a: "-" if a is None else "{} [{}, {}]".format(*(fmt(v).strip() for v in a))  # noqa: E731
    runs = ", ".join(dict.fromkeys(r["run"] for rs in rows.values() for r in rs))
    lines = [f"mean [min, max] over {runs}; held-out, greedy unless marked sampled (T=1)",
             f"{'metric':<24}" + "".join(f"{n:>20}" for n in rows)]
    for part, k in keys:
        label = k + (" (sampled)" if part == "summary_sampled" else "")
        lines.append(f"{label:<24}" + "".join(f"{cell(agg[n][part].get(k)):>20}" for n in rows))
    return "\n".join(lines)

def main(argv: list[str]) -> dict:
    if argv[:1] == ["--audit"]:
        raise SystemExit(audit.main(argv[1:]))
    args, rest = parse_args(argv)
    if len(args.model) > 1:
        return compare(args, rest)
    args.model = args.model[0]
    cfg = config.parse(rest + [f"init={args.model}"], default_stage="sft")
    torch.manual_seed(cfg.seed)
    bundle = model.load(args.model, cfg.model)
    if bundle.is_vl:  # the export's own image bounds (the training run's) unless data.*_pixels say
        model.set_pixels(bundle.image_processor, cfg.data)
    if args.bench != "tiny":
        return public_benchmark(bundle, cfg, args)
    if args.data:
        samples, tool = data.read_jsonl(args.data, labels=verifiers.label_fields(cfg.verifiers)), None
    else:
        samples, tool = tiny_world(cfg)
    if args.edit or args.edit_step is not None:
        sample = next((s for s in samples if s["id"] == args.id), None) if args.id else samples[0]
        if sample is None:
            raise SystemExit(f"no sample with id {args.id!r}")
        if args.edit_step is None:
            interventions.interactive_edit(bundle, sample, cfg.data, cfg.rollout, tool=tool)
            return {}
        result = interventions.run_edit_cli(bundle, sample, cfg, args.edit_step, args.edit_text or "", tool)
        print(json.dumps(result, indent=2))
        return result
    t0 = time.time()
    result = evaluate(bundle, samples, cfg, tool=tool, log_examples=len(samples))
    if args.step_search:
        result["summary_step_search"], result["families_step_search"] = step_search_eval(
            bundle, samples, cfg, args.step_search, tool)
    result.update(model=args.model, bench=args.bench, seconds=round(time.time() - t0, 1))
    print(table(result, f"{args.model} on {args.bench} ({len(samples)} prompts, {result['seconds']}s)"))
    out = args.out or os.path.join(args.model, f"eval_{args.bench}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
