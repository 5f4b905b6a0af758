"""Variants of lorp_search's seeds, moves and budget, compared on calibration text only.

For one model and budgets 1/3, 1/4, 1/8 of the blocks: the check loss is the library's (the first
256 tokens of the first 8 calibration windows, the last 128 scored); the validation loss is on
calibration windows 32-55 (never checked, not in the statistics pass), every token scored. No
held-out text is read. Prints SLEB's plan, the best run, and for each variant its plan, check
loss, validation loss and checks against SLEB's. How the default was chosen from these figures:
docs/method.md.

    python benchmarks/decisions/search_variants.py gemma3-270m > benchmarks/results/search_variants_gemma3-270m.txt
"""

import argparse

from decision_data import decision_data

from lorp_lightning.baselines import contiguous_runs
from lorp_lightning.locality import read_similarities
from lorp_lightning.search import PlanLoss, candidate_plans, neighbours, sleb_checks, sleb_order

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("model", help="a bundled model, e.g. gemma3-270m or smollm2-135m")
name = parser.parse_args().model
model, _, cal, val, stats = decision_data(name)
N = stats.num_layers
inp = read_similarities(stats, "lorp")
S, F = inp.blocks, inp.full
close = [float(F[layer, layer + 1]) for layer in range(N)]
check = PlanLoss(model, cal[:8, :256], score_last=128)
score = PlanLoss(model, val, score_last=None)
protected = {0, N - 1}
U = N - 2


def runs(k):
    """Every run of k unprotected blocks, most similar across the run first."""
    return sorted(contiguous_runs(N, k, protected), key=lambda run: -float(F[run[0], run[0] + k]))


class Counter:
    def __init__(self):
        self.asked = set()

    def __call__(self, p):
        self.asked.add(tuple(sorted(p)))
        return check(p)


def local(c, start, cap, first, ordered):
    """cap: max distinct plans in c.asked overall (None = unlimited)."""
    cur = sorted(start)
    while True:
        around = neighbours(cur, N, protected)
        if ordered:
            rem = set(cur)

            def key(p, rem=rem):
                b = (rem - set(p)).pop()
                a = (set(p) - rem).pop()
                return -(close[a] - close[b])

            around.sort(key=key)
        best, bestl = None, c(cur)
        for p in around:
            if tuple(p) not in c.asked and len(c.asked) >= cap:
                continue
            loss = c(p)
            if loss < bestl:
                best, bestl = p, loss
                if first:
                    break
        if best is None:
            return cur
        cur = best


for k in [int(f * N) for f in (1 / 3, 1 / 4, 1 / 8)]:
    sc = sleb_checks(U, k)
    cands = [c["pruned"] for c in candidate_plans(stats, k, protect=protected, seed=0)]
    R = [r for r in runs(k) if r not in cands]
    steps = sleb_order(check, k, protected)
    sleb = sorted(s["block"] for s in steps)
    print(f"{name} k={k}: SLEB checks {sc}; {len(cands)} candidates, {len(R)} new runs", flush=True)
    print(f"   sleb {sleb} check {check(sleb):.4f} val {score(sleb):.4f}", flush=True)
    best_run = min(runs(k), key=check)
    print(f"   best run {best_run} check {check(best_run):.4f} val {score(best_run):.4f}", flush=True)
    for seeds in ("C", "C+R"):
        for first, ordered in ((False, False), (True, True), (True, False)):
            for capname, capf in (
                ("/4 total", lambda n, sc=sc: sc // 4),
                ("/4 beyond", lambda n, sc=sc: n + sc // 4),
                ("/3 beyond", lambda n, sc=sc: n + sc // 3),
            ):
                c = Counter()
                pool = cands + (R if seeds == "C+R" else [])
                for p in pool:
                    c(p)
                start = min(pool, key=check)
                plan = local(c, start, capf(len(pool)), first, ordered)
                tag = f"{seeds:4} {'first' if first else 'best '}{'/ord' if ordered else '    '} cap {capname:9}"
                print(
                    f"   {tag} {plan} check {check(plan):.4f} val {score(plan):.4f} checks {len(c.asked)} ({len(c.asked) / sc:.2f} of sleb)",
                    flush=True,
                )
