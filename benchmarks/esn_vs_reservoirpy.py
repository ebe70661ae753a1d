"""backprobe's EchoStateNetwork against ReservoirPy on the same task, side by side.

Task (Mackey & Glass 1977, docs/references.md): Mackey-Glass (τ = 17, a = 0.2, b = 0.1,
n = 10, x0 = 1.2, step 1), 2000 points from ``backprobe.lab.tasks.mackey_glass``, rescaled
to [−1, 1] as in ReservoirPy's tutorial; one-step-ahead forecast u_t → u_{t+1}; the first 80 % for
training (the first 100 steps of it as warm-up), the last 20 % for testing, predicted
from the state the training run ended in.

Hyper-parameters, the same for both: 100 units, spectral radius 1.25, leak 0.3, input
scaling 1, densities 0.1 (W and W_in), no bias, ridge 1e-6 (bias fitted, not penalised).
Reservoirs are random: each library draws its own from the same seed numbers, so RMSE is
reported as the median over ``--seeds`` reservoirs, and a pair of draws is never the same
reservoir.

Timing: fit + predict, from building the model to the test predictions, interleaved
(backprobe, reservoirpy, backprobe, …) so that drifts of the machine hit both alike; the
table gives medians and the ratio of medians. One CPU thread for both (ReservoirPy's
sparse matmuls are single-threaded).

    python benchmarks/esn_vs_reservoirpy.py            # 5 seeds × 3 rounds
    python benchmarks/esn_vs_reservoirpy.py --quick    # smoke run

Needs the ``bench`` extra (``pip install -e ".[bench]"``) for ReservoirPy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from backprobe.lab.tasks import mackey_glass
from backprobe.remedies import EchoStateNetwork

UNITS, RADIUS, LEAK, RIDGE, WARMUP = 100, 1.25, 0.3, 1e-6, 100


def data(n: int = 2000) -> tuple[np.ndarray, ...]:
    """(u_train, y_train, u_test, y_test), each float64 [steps, 1]."""
    x = mackey_glass(n).numpy()
    x = 2.0 * (x - x.min()) / (x.max() - x.min()) - 1.0
    x = x.reshape(-1, 1)
    split = int(0.8 * n)
    return x[: split - 1], x[1:split], x[split - 1 : -1], x[split:]


def run_backprobe(seed: int, d: tuple[np.ndarray, ...]) -> tuple[float, np.ndarray]:
    u_tr, y_tr, u_te, _ = (torch.from_numpy(a).float() for a in d)
    start = time.perf_counter()
    esn = EchoStateNetwork(1, UNITS, 1, spectral_radius=RADIUS, leak=LEAK, ridge=RIDGE, seed=seed)
    esn.fit(u_tr, y_tr, warmup=WARMUP)
    with torch.no_grad():
        pred = esn(u_te, state=esn.last_state).numpy()
    return time.perf_counter() - start, pred


def run_reservoirpy(seed: int, d: tuple[np.ndarray, ...]) -> tuple[float, np.ndarray]:
    from reservoirpy.nodes import Reservoir, Ridge

    u_tr, y_tr, u_te, _ = d
    start = time.perf_counter()
    model = Reservoir(UNITS, lr=LEAK, sr=RADIUS, seed=seed) >> Ridge(ridge=RIDGE)
    model.fit(u_tr, y_tr, warmup=WARMUP)
    pred = model.run(u_te)
    return time.perf_counter() - start, np.asarray(pred)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="timed repeats per seed")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rounds = 2, 1
    torch.set_num_threads(1)
    d = data()
    y_te = d[3]
    runners = {"backprobe": run_backprobe, "reservoirpy": run_reservoirpy}
    times: dict[str, list[float]] = {k: [] for k in runners}
    rmse: dict[str, list[float]] = {k: [] for k in runners}
    for run in runners.values():  # warm-up: imports, first-call allocations
        run(0, d)
    for seed in range(args.seeds):
        for r in range(args.rounds):
            for name, run in runners.items():
                seconds, pred = run(seed, d)
                times[name].append(seconds)
                if r == 0:
                    rmse[name].append(float(np.sqrt(np.mean((pred - y_te) ** 2))))
    med_t = {k: statistics.median(v) for k, v in times.items()}
    med_e = {k: statistics.median(v) for k, v in rmse.items()}
    print(
        f"Mackey-Glass one-step, {len(y_te)} test points, {args.seeds} reservoirs, "
        f"{args.rounds} timed rounds each"
    )
    print("| library | test RMSE (median) | RMSE per seed | fit+predict (median) |")
    print("|---|---|---|---|")
    for k in runners:
        per_seed = " ".join(f"{e:.2e}" for e in rmse[k])
        print(f"| {k} | {med_e[k]:.3e} | {per_seed} | {1e3 * med_t[k]:.1f} ms |")
    print(
        f"| backprobe / reservoirpy | RMSE {med_e['backprobe'] / med_e['reservoirpy']:.2f}x "
        f"| | time {med_t['backprobe'] / med_t['reservoirpy']:.2f}x "
        f"(speed-up {med_t['reservoirpy'] / med_t['backprobe']:.2f}x) |"
    )


if __name__ == "__main__":
    main()
