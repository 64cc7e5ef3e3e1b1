"""Benchmark the phantom renderer: full-size radiographs per second with a pool of processes.

Usage: python scripts/bench_phantom.py [--count K] [--processes P] [--scale S]

Workers are warmed up (imports, first render) before the clock starts, so the figure is render
time only. Prints the rate; it asserts nothing (the goal is >= 5 radiographs/s on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import time
from multiprocessing import get_context

import numpy as np

from avn.phantom.render import render_radiograph
from avn.phantom.specs import HipSpec, RadiographSpec, SubjectAnatomy
from avn.vocabulary import STAGES


def make_specs(count: int, seed: int = 0) -> list[RadiographSpec]:
    """Varied subjects, views, stages and missing-head cases."""
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(count):
        anat = SubjectAnatomy(
            sex=str(rng.choice(["F", "M"])),
            head_diameter_mm=float(rng.uniform(43, 53)),
            head_asymmetry_mm=float(rng.normal(0, 0.6)),
            neck_shaft_angle_deg=float(rng.uniform(125, 135)),
            acetabular_inclination_deg=float(rng.uniform(35, 45)),
            joint_space_mm=float(rng.uniform(3, 5)),
            pelvis_width_mm=float(rng.uniform(260, 320)),
            inter_teardrop_mm=float(rng.uniform(110, 130)),
            shaft_cortex_mm=float(rng.uniform(4, 7)),
            soft_tissue=float(rng.uniform(0, 1)),
            anatomy_seed=int(rng.integers(1 << 30)),
        )
        hips = tuple(
            HipSpec(
                side,
                str(rng.choice(STAGES)),
                float(rng.uniform()),
                bool(rng.random() < 0.3),
                int(rng.integers(1 << 30)),
            )
            for side in ("right", "left")
        )
        missing = None
        roll = rng.random()
        if roll < 0.1:
            hips, missing = hips[1:], "prosthesis"
        elif roll < 0.2:
            hips, missing = hips[:1], "collimated"
        specs.append(
            RadiographSpec(
                i,
                f"bench-{i}",
                str(rng.choice(["AP", "FL"])),
                anat,
                hips,
                missing,
                str(rng.choice(["CR", "DX"])),
                int(rng.integers(1 << 30)),
            )
        )
    return specs


def _render(args: tuple[RadiographSpec, float]) -> float:
    """Render one radiograph; return the CPU seconds it took (immune to other load on the machine)."""
    spec, scale = args
    start = time.process_time()
    render_radiograph(spec, scale)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40, help="radiographs to render (K)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    specs = make_specs(args.count)
    with get_context("fork").Pool(args.processes) as pool:
        pool.map(_render, [(s, args.scale) for s in make_specs(args.processes, seed=99)], chunksize=1)
        start = time.perf_counter()
        cpu = pool.map(_render, [(s, args.scale) for s in specs], chunksize=1)
        elapsed = time.perf_counter() - start
    rate = args.count / elapsed
    cpu_ms = 1000 * float(np.mean(cpu))
    print(
        f"{args.count} radiographs (scale {args.scale}) on {args.processes} processes: {elapsed:.2f} s wall, "
        f"{rate:.2f} radiographs/s"
    )
    print(
        f"CPU per radiograph: {cpu_ms:.0f} ms mean, {1000 * float(np.max(cpu)):.0f} ms max; "
        f"{args.processes} free cores would give {1000 * args.processes / cpu_ms:.2f} radiographs/s"
    )


if __name__ == "__main__":
    main()
