"""Throughput of the batched glimpse sensor against one crop and one resize per sample.

    python benchmarks/glimpse_sensor.py [--batch 32 1024 4096] [--canvas 32] [--glimpse 8] [--rounds 5]

A glimpse step of the environment reads a box of any size from every canvas of a batch and shrinks it to the same
G x G reading by area averaging. ``Sensor.read`` does this for the whole batch at once with two batched matrix
products (area averaging is separable); the baseline is the obvious loop, ``F.interpolate(crop, G, mode="area")``
once per sample, which is what the reading means. A third column adds painting the readings into the memory
canvas (``Sensor.paint``), the rest of what one environment step costs outside the task model: it writes whole
H x W canvases, so it is bound by memory traffic and costs about as much as the loop's reading.

Printed: glimpses per second of each column and their ratio to the loop, medians over rounds timed in
alternation, on one thread. Target: ``read`` at least 4x the loop at every batch size (a summed-area table, tried
first, reached only 0.6x at 4,096 glimpses: its float64 cumulative sums and gathers cost more than they save).
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from efflab.glimpse.sensor import Sensor
from efflab.timing import interleaved_times


def loop_read(canvases, boxes, glimpse_size):
    crops = [
        F.interpolate(canvas[None, :, top : top + side, left : left + side], glimpse_size, mode="area")[0, 0]
        for canvas, (top, left, side) in zip(canvases, boxes.tolist(), strict=True)
    ]
    return torch.stack(crops)


def repeated(work, repeats: int):
    """``work`` run ``repeats`` times in a row, so that a fast column's round is long enough to time."""
    return lambda: [work() for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 1024, 4096])
    parser.add_argument("--canvas", type=int, default=32)
    parser.add_argument("--glimpse", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sensor = Sensor(canvas_size=args.canvas, glimpse_size=args.glimpse)
    generator = torch.Generator().manual_seed(0)
    print(f"canvas {args.canvas}, reading {args.glimpse}x{args.glimpse}, one thread; glimpses/s (ratio to loop)")
    print(f"{'batch':>7} {'loop':>12} {'read':>20} {'read+paint':>20}")
    for batch in args.batch:
        canvases = torch.rand(batch, 1, args.canvas, args.canvas, generator=generator)
        boxes = sensor.boxes(torch.rand(batch, 3, generator=generator, dtype=torch.float64))
        memory = sensor.empty_memory(batch)
        assert torch.allclose(sensor.read(canvases, boxes), loop_read(canvases, boxes, args.glimpse), atol=1e-6)
        columns = {
            "loop": lambda c=canvases, b=boxes: loop_read(c, b, args.glimpse),
            "read": lambda c=canvases, b=boxes: sensor.read(c, b),
            "read+paint": lambda c=canvases, b=boxes, m=memory: sensor.paint(m, sensor.read(c, b), b),
        }
        repeats = {name: 1 if name == "loop" else max(1, 4096 // batch) for name in columns}
        works = {name: repeated(work, repeats[name]) for name, work in columns.items()}
        times = interleaved_times(works, repeats=args.rounds, warmup=1)
        rate = {name: batch * repeats[name] / statistics.median(values) for name, values in times.items()}
        cells = [f"{rate[name]:>10,.0f} ({rate[name] / rate['loop']:5.1f}x)" for name in ("read", "read+paint")]
        print(f"{batch:>7} {rate['loop']:>12,.0f} {cells[0]:>20} {cells[1]:>20}")


if __name__ == "__main__":
    main()
