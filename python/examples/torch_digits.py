"""A PyTorch network extended with new labelled digits by Laplace updates of its last layer,
against retraining that layer and fine-tuning the whole network.

    pip install "./python[torch]" matplotlib
    python python/examples/torch_digits.py [OUT_DIR]

A seeded MLP (64 → 128 → 64 → 10, ReLU) is trained with AdamW on 300 of the bundled digits,
once regularised (weight decay 0.1, 300 epochs) and once to saturation (no weight decay, 2,000
epochs). ``Laplace(model, "classification", hessian_structure="full").fit(loader)`` fits the
posterior of its last layer, τ chosen by validation NLL on 300 other digits
(``optimize_prior_precision(method="gridsearch")``). Then 10 batches of 30 new labelled digits
arrive; after each, every method is scored on the 897 held-out digits:

- no update: the network, and its Laplace predictive (probit);
- the seed paper's rule, ``update(x, y, rule="sequential", step="newton", gamma=10)``, and one
  undamped Newton step, ``update(x, y, step="newton", gamma=1)``;
- ``la.update(x, y)``: the default damped update, which writes the new mean into the model; the
  model's own softmax and the Laplace predictive are both scored;
- retraining the head on every label seen (AdamW, 200 full-batch epochs, from the current head);
- fine-tuning the whole network the same way.

It prints a table (accuracy, NLL, ECE after the last batch, and the time all updates took) and
writes ``torch_digits.csv`` and ``torch_digits.png`` to OUT_DIR (default ``torch-digits-out``).
"""

from __future__ import annotations

import copy
import csv
import gzip
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from laplace_update.torch import Laplace

INITIAL, BATCHES, BATCH, VALIDATION, EPOCHS, SEED = 300, 10, 30, 300, 200, 7
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "data", "digits.csv.gz")
Scores = Tuple[float, float, float]


def load() -> Tuple[torch.Tensor, torch.Tensor]:
    with gzip.open(DATA, "rt") as f:
        rows = np.loadtxt(f, delimiter=",")
    return torch.tensor(rows[:, :64] / 16.0, dtype=torch.float32), torch.tensor(rows[:, 64], dtype=torch.long)


def network() -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )


def train(params: List[torch.nn.Parameter], model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, decay: float) -> None:
    """Full-batch AdamW on the cross-entropy, over ``params`` only."""
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=decay)
    model.train()
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


def scores(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> Scores:
    """Accuracy, NLL and the expected calibration error (equal-width confidence bins)."""
    p = probs.double()
    conf, pred = p.max(1)
    correct = (pred == y).double()
    nll = float(-torch.log(p[torch.arange(len(y)), y].clamp_min(1e-12)).mean())
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += float(inside.double().mean() * (conf[inside].mean() - correct[inside].mean()).abs())
    return float(correct.mean()), nll, ece


def softmax(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(x), 1)


def predictive(la: Laplace, x: torch.Tensor) -> torch.Tensor:
    """The Laplace predictive's class probabilities (probit link)."""
    probs = la(x, link_approx="probit")
    assert isinstance(probs, torch.Tensor)
    return probs


def run(regime: str, decay: float, epochs: int, x: torch.Tensor, y: torch.Tensor) -> List[Dict[str, object]]:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SEED))
    end = INITIAL + BATCHES * BATCH
    first, stream = order[:INITIAL], order[INITIAL:end]
    val, test = order[end : end + VALIDATION], order[end + VALIDATION :]
    torch.manual_seed(SEED)
    base = network()
    train(list(base.parameters()), base, x[first], y[first], epochs, decay)

    started = time.perf_counter()
    la = Laplace(copy.deepcopy(base), "classification", hessian_structure="full")
    la.fit(DataLoader(TensorDataset(x[first], y[first]), batch_size=100))
    la.optimize_prior_precision(method="gridsearch", val_loader=DataLoader(TensorDataset(x[val], y[val]), batch_size=100), grid_size=41)
    fit_s = time.perf_counter() - started
    frozen = copy.deepcopy(la)  # "no update": the same posterior, never updated
    paper, undamped = copy.deepcopy(la), copy.deepcopy(la)

    head, tuned = copy.deepcopy(base), copy.deepcopy(base)
    seconds = {"update": 0.0, "paper": 0.0, "undamped": 0.0, "retrain head": 0.0, "fine-tune network": 0.0}
    xt, yt = x[test], y[test]
    for b in range(BATCHES):
        batch = stream[b * BATCH : (b + 1) * BATCH]
        seen = order[: INITIAL + (b + 1) * BATCH]
        t = time.perf_counter()
        la.update(x[batch], y[batch])
        seconds["update"] += time.perf_counter() - t
        t = time.perf_counter()
        paper.update(x[batch], y[batch], rule="sequential", step="newton", gamma=10.0)
        seconds["paper"] += time.perf_counter() - t
        t = time.perf_counter()
        undamped.update(x[batch], y[batch], step="newton", gamma=1.0)
        seconds["undamped"] += time.perf_counter() - t
        t = time.perf_counter()
        last = head[-1]
        train([last.weight, last.bias], head, x[seen], y[seen], EPOCHS, decay)  # type: ignore[list-item]
        seconds["retrain head"] += time.perf_counter() - t
        t = time.perf_counter()
        train(list(tuned.parameters()), tuned, x[seen], y[seen], EPOCHS, decay)
        seconds["fine-tune network"] += time.perf_counter() - t

    methods: List[Tuple[str, Callable[[], torch.Tensor], float]] = [
        ("network, no update", lambda: softmax(base, xt), 0.0),
        ("Laplace, no update", lambda: predictive(frozen, xt), 0.0),
        ("paper rule (γ = 10) → model(x)", lambda: softmax(paper.model, xt), seconds["paper"]),
        ("undamped Newton → model(x)", lambda: softmax(undamped.model, xt), seconds["undamped"]),
        ("la.update → model(x)", lambda: softmax(la.model, xt), seconds["update"]),
        ("la.update → Laplace predictive", lambda: predictive(la, xt), seconds["update"]),
        ("retrain head (AdamW 200)", lambda: softmax(head, xt), seconds["retrain head"]),
        ("fine-tune network (AdamW 200)", lambda: softmax(tuned, xt), seconds["fine-tune network"]),
    ]
    rows = []
    for name, predict, spent in methods:
        acc, nll, ece = scores(predict(), yt)
        rows.append({"network": regime, "method": name, "accuracy": acc, "nll": nll, "ece": ece, "seconds": spent})
    print(f"{regime}: fit and τ by validation in {fit_s:.2f} s, τ = {float(la.prior_precision[0]):.3g}")
    return rows


def plot(rows: List[Dict[str, object]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted({str(r["network"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, ("accuracy", "nll")):
        for i, regime in enumerate(regimes):
            part = [r for r in rows if r["network"] == regime]
            pos = np.arange(len(part)) + 0.4 * i
            ax.barh(pos, [float(r[metric]) for r in part], height=0.4, label=regime)  # type: ignore[arg-type]
            ax.set_yticks(np.arange(len(part)) + 0.2, [str(r["method"]) for r in part])
        ax.set_xlabel(f"test {metric} after {BATCHES} batches of {BATCH}")
        ax.invert_yaxis()
    axes[0].set_xlim(0.8, 1.0)
    axes[0].legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "torch-digits-out"
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(2)
    x, y = load()
    rows = run("regularised", 0.1, 300, x, y) + run("saturated", 0.0, 2000, x, y)
    print(f"\n| network | method | accuracy | NLL | ECE | time of the {BATCHES} updates |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        spent = f"{r['seconds']:.2f} s" if r["seconds"] else "—"
        print(f"| {r['network']} | {r['method']} | {r['accuracy']:.3f} | {r['nll']:.3f} | {r['ece']:.3f} | {spent} |")
    with open(os.path.join(out, "torch_digits.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, os.path.join(out, "torch_digits.png"))
    print(f"wrote {out}/torch_digits.csv and .png")


if __name__ == "__main__":
    main()
