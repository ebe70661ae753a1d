"""Draw the lab's paper figures from stored runs: `.venv/bin/python docs/make_lab_figures.py`.

Reads seed 0 of the newest runs of the `saturation` and `isometry` experiments in the run
database (``--db``, default ``backprobe-runs/results.db``, where ``make results`` stores
them) and writes, in docs/images:

- ``saturation.png``: each hidden layer's activations over training, one panel per
  variant (Glorot & Bengio 2010, Figures 2 and 3);
- ``isometry.png``: σ_max of the input–output Jacobian against depth and the test
  accuracy over training, one line per ensemble (Pennington et al. 2017, Figures 3 and 4).

``--run`` first runs both experiments' full configurations on seed 0 into the database
(about 10 minutes on one core).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from backprobe.lab.experiments import get_experiment, run_experiment
from backprobe.lab.experiments.glorot import activation_figure
from backprobe.lab.experiments.isometry import isometry_figure
from backprobe.report.figures import save
from backprobe.store.run import open_run

OUT = Path(__file__).parent / "images"
TITLES = {
    "sigmoid-standard": "sigmoid, standard init",
    "tanh-standard": "tanh, standard init",
    "tanh-normalised": "tanh, normalised init",
    "sigmoid-normalised": "sigmoid, normalised init",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("backprobe-runs/results.db"))
    parser.add_argument("--run", action="store_true", help="run both experiments first")
    args = parser.parse_args()
    if args.run:
        for name in ("saturation", "isometry"):
            run_experiment(name, db=args.db, console=Console())
    saturation = get_experiment("saturation")
    runs = {TITLES[v]: open_run(args.db, f"lab/saturation/{v}/s0") for v in saturation.variants}
    print("wrote", save(activation_figure(runs), OUT / "saturation.png"))
    isometry = get_experiment("isometry")
    runs = {v: open_run(args.db, f"lab/isometry/{v}/s0") for v in isometry.variants}
    print("wrote", save(isometry_figure(runs), OUT / "isometry.png"))


if __name__ == "__main__":
    main()
