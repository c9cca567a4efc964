"""The course's full mode, planned before it runs: every notebook's work counted and priced for one GPU machine.

    python benchmarks/full_mode_plan.py [--only 03,08] [--jobs 1,2,3,4] [--quick]

Each paper package lists its full budget's work (``<package>/workload.py``); :mod:`efflab.workload` counts
one step of each item here (operations, FLOPs, and seconds on one core for what stays on CPU cores) and prices
it for the machine of :class:`efflab.workload.Machine` (one H200 and 16 cores), as a range from the cheap to the
dear end of its assumptions. The report gives each notebook's wall time on the whole machine, the GPU's and the
cores' busy time, and the course laid on 1, 2, 3 and 4 lanes as ``run_notebooks --jobs N`` runs it.

``--quick`` prices the quick budgets on a two-core machine without a GPU instead, the mode whose times can be
measured here: set them beside ``python -m efflab.run_notebooks --mode quick`` to see how far the counts hold.

Not a test: the counts are exact for the budgets, the prices are assumptions (printed with the report).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from efflab.dense_to_moe import experiment as e09
from efflab.dense_to_moe import workload as w09
from efflab.early_exit import experiment as e04
from efflab.early_exit import workload as w04
from efflab.fine_grained_moe import experiment as e05
from efflab.fine_grained_moe import workload as w05
from efflab.first_steps import experiment as e00
from efflab.first_steps import workload as w00
from efflab.glimpse import experiment as e10
from efflab.glimpse import workload as w10
from efflab.joint_moe import experiment as e06
from efflab.joint_moe import workload as w06
from efflab.maximal_update import experiment as e07
from efflab.maximal_update import workload as w07
from efflab.projected_compression import experiment as e03
from efflab.projected_compression import workload as w03
from efflab.pruning import experiment as e01
from efflab.pruning import workload as w01
from efflab.relative_lr import experiment as e08
from efflab.relative_lr import workload as w08
from efflab.shapley import experiment as e02
from efflab.shapley import workload as w02
from efflab.timing import cpu_unit_seconds
from efflab.workload import Machine, StepCost, course_plan, work_cost

COURSE = {  # notebook: its budget and the list of its work
    e00.NAME: (e00.ByteLMBudget, w00.workload),
    e01.NAME: (e01.PruningBudget, w01.workload),
    e02.NAME: (e02.ShapleyBudget, w02.workload),
    e03.NAME: (e03.CompressionBudget, w03.workload),
    e04.NAME: (e04.EarlyExitBudget, w04.workload),
    e05.NAME: (e05.GranularityBudget, w05.workload),
    e06.NAME: (e06.ExpertCountBudget, w06.workload),
    e07.NAME: (e07.MupBudget, w07.workload),
    e08.NAME: (e08.RelativeLRBudget, w08.workload),
    e09.NAME: (e09.DenseToMoEBudget, w09.workload),
    e10.NAME: (e10.GlimpseBudget, w10.workload),
}


def span(pair, unit: str = "s") -> str:
    low, high = pair
    return f"{low:,.0f}-{high:,.0f} {unit}" if round(low) != round(high) else f"{low:,.0f} {unit}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="notebook prefixes, e.g. 03,08")
    parser.add_argument("--jobs", default="1,2,3,4", help="lane counts to lay the course on")
    parser.add_argument("--quick", action="store_true", help="the quick budgets on two CPU cores")
    parser.add_argument(
        "--counts",
        type=Path,
        help="a JSON file of step costs: items found there (same notebook, name, runs, steps and place) are not "
        "counted again, the others are counted and written back; stale once a step's shapes change",
    )
    args = parser.parse_args(argv)
    # quick mode runs here: a core is this one, a notebook spends 10-15 s starting its kernel and importing
    here = {"cores": 2, "gpu": False, "cpu_speed": (1.0, 1.0), "notebook_overhead": (10.0, 15.0)}
    machine = Machine(**here) if args.quick else Machine()
    prefixes = [p for p in (args.only or "").split(",") if p]
    chosen = {name: entry for name, entry in COURSE.items() if not prefixes or name[:2] in prefixes}
    unit = cpu_unit_seconds()
    print(f"machine: {machine}")
    print(f"one CPU unit here: {unit:.2f} s (CPU-core prices scale with it)\n")
    known = json.loads(args.counts.read_text()) if args.counts and args.counts.exists() else {}
    works, costs = {}, {}
    for name, (budget_class, workload) in chosen.items():
        start = time.perf_counter()
        budget = budget_class.quick() if args.quick else budget_class.full()
        works[name] = workload(budget)
        costs[name] = []
        for work in works[name]:
            key = f"{'quick' if args.quick else 'full'}|{name}|{work.what}|{work.runs}|{work.steps}|{work.on}"
            cost = StepCost(**known[key]) if key in known else work_cost(work, machine)
            known[key] = dataclasses.asdict(cost)
            costs[name].append(cost)
        print(f"{name}: counted in {time.perf_counter() - start:.1f} s")
    if args.counts:
        args.counts.write_text(json.dumps(known, indent=1))
    alone = course_plan(works, machine, jobs=1, costs=costs)
    report_notebooks(alone)
    report_table(alone)
    longest_first = sorted(
        works, key=lambda name: -next(p.seconds[1] for p in alone.notebooks if p.notebook == name)
    )
    best = None
    for jobs in [int(j) for j in args.jobs.split(",") if int(j) <= machine.cores]:
        for order, names in (("teaching order", list(works)), ("longest first", longest_first)):
            plan = course_plan({name: works[name] for name in names}, machine, jobs=jobs, costs=costs)
            print(
                f"\n{jobs} lane(s) of {machine.cores // jobs} cores, {order}: course {span(plan.seconds)}"
                f" ({span(tuple(s / 60 for s in plan.seconds), 'min')}); GPU busy {span(plan.gpu_seconds)},"
                f" cores busy {span(tuple(c / machine.cores for c in plan.core_seconds))} of {machine.cores}"
            )
            for lane, lane_names, seconds in zip(range(jobs), plan.lanes, plan.lane_seconds, strict=True):
                print(f"  lane {lane}: {span(seconds)}: {', '.join(n[:2] for n in lane_names)}")
            if best is None or plan.seconds[1] < best[0].seconds[1]:
                best = plan, names
    plan, names = best
    print(
        f"\nfastest by the dear end, {span(plan.seconds)}: python -m efflab.run_notebooks --mode full"
        f" --device cuda --jobs {plan.jobs} --only {','.join(name[:2] for name in names)}"
    )


def report_table(plan) -> None:
    """The plan as a Markdown table, one row per notebook."""
    print("\n| notebook | alone on the machine | GPU busy | cores busy (core-seconds) |\n|---|---:|---:|---:|")
    for notebook in plan.notebooks:
        print(
            f"| {notebook.notebook[:2]} | {span(notebook.seconds)} | {span(notebook.gpu_seconds)} |"
            f" {span(notebook.core_seconds, '')} |"
        )


def report_notebooks(plan) -> None:
    for notebook in plan.notebooks:
        print(f"\n{notebook.notebook}: {span(notebook.seconds)} (GPU busy {span(notebook.gpu_seconds)})")
        for pool in notebook.works:
            if len(pool.works) > 1:
                together = f"{span(pool.seconds)}, GPU {span(pool.gpu_seconds)}"
                print(f"  {pool.works[0].pool} ({len(pool.works)} items): {together}")
            for work, cost in zip(pool.works, pool.costs, strict=True):
                if work.on == "cpu":
                    measured = f"{cost.cpu_seconds * 1e3:,.1f} ms on a core"
                else:
                    measured = f"{cost.operations:,} ops, {cost.flops / 1e9:,.2f} GFLOP"
                indent = "    " if len(pool.works) > 1 else "  "
                print(f"{indent}{work.what}: {work.runs} x {work.steps:,} steps on {work.on} ({measured})")
            if len(pool.works) == 1:
                print(f"    {span(pool.seconds)}, GPU {span(pool.gpu_seconds)}")


if __name__ == "__main__":
    main()
