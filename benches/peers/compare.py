"""Side-by-side timings of laplace-update against its peers, on the same .npy files.

Peers: laplace-torch's last-layer Full Laplace (fit, probit predictive) and a PyTorch
implementation of the seed paper's update rule (per-sample Sherman-Morrison plus the
gamma-scaled Newton step). Each measurement runs in its own process, so that its peak memory
(the process's maximum resident set) is its own. Outputs are checked to agree before any ratio
is reported.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

TAU = 1.0


def child_rusage(cmd):
    """Runs cmd; returns (stdout, stderr, peak RSS in MiB) of that process alone."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    # communicate() reaped the child; its rusage is folded into RUSAGE_CHILDREN, so the
    # workers report their own peak instead (see worker()). The CLI's peak comes from wait4.
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
    return out, err


def run_cli(binary, args):
    """Runs the CLI under wait4: (stderr, wall seconds, peak RSS MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen([binary] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read()
    if status != 0:
        raise RuntimeError(f"laplace-update {' '.join(args)} failed:\n{err}")
    return err, wall, usage.ru_maxrss / 1024.0


def internal_ms(stderr, marker):
    """The 'in X ms' figure the CLI prints on the line containing marker."""
    for line in stderr.splitlines():
        if marker in line and " in " in line:
            return float(line.split(" in ")[1].split(" ms")[0])
    raise RuntimeError(f"no timing for {marker!r} in: {stderr}")


def worker(role, work, repeats):
    """Runs inside its own process: one peer measurement, printed as JSON."""
    import resource

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    load = lambda name: torch.from_numpy(np.load(os.path.join(work, name)))
    times = []
    result = {}
    if role == "laplace-torch":
        from laplace import Laplace
        from torch.utils.data import DataLoader, TensorDataset

        x, y = load("fit_x.npy"), load("fit_y.npy").long()
        w, b = load("fit_w.npy"), load("fit_b.npy")
        xt = load("test_x.npy")
        k, d = w.shape
        model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(d, k))
        with torch.no_grad():
            model[1].weight.copy_(w)
            model[1].bias.copy_(b)
        loader = DataLoader(TensorDataset(x, y), batch_size=1000)
        fit_times, pred_times = [], []
        for _ in range(repeats):
            la = Laplace(
                model,
                "classification",
                subset_of_weights="last_layer",
                hessian_structure="full",
                prior_precision=TAU,
            )
            start = time.perf_counter()
            la.fit(loader)
            _ = la.posterior_covariance  # the covariance is part of the fit here too
            fit_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            with torch.no_grad():
                probs = la(xt, pred_type="glm", link_approx="probit")
            pred_times.append(time.perf_counter() - start)
        np.save(os.path.join(work, "lt_probs.npy"), probs.numpy())
        result = {"fit": fit_times, "predict": pred_times}
    elif role in ("paper-sequential", "paper-joint"):
        from safetensors.numpy import load_file

        prefix = "seq" if role == "paper-sequential" else "joint"
        post = load_file(os.path.join(work, f"{prefix}_post.safetensors"))
        head0 = torch.from_numpy(post["head"]).double()  # K x (D+1), bias last
        sigma0 = torch.from_numpy(post["covariance"]).double()
        x = load(f"{prefix}_new_x.npy").double()
        y = load(f"{prefix}_new_y.npy").long()
        ones = torch.ones(x.shape[0], 1, dtype=x.dtype)
        phi = torch.cat([x, ones], dim=1)
        k = head0.shape[0]
        dtype = torch.float32
        for _ in range(repeats):
            w = head0.to(dtype).clone()
            sigma = sigma0.to(dtype).clone()
            ph = phi.to(dtype)
            start = time.perf_counter()
            # The seed paper's loop: per sample, Sherman-Morrison on the shared covariance and the
            # gamma-scaled Newton step with the covariance just updated (gamma = 1, m_n = 1).
            for j in range(ph.shape[0]):
                f = ph[j]
                u = sigma @ f
                s = f @ u
                sigma = sigma - torch.outer(u, u) / (1.0 + s)
                p = torch.softmax(w @ f, dim=0)
                e = torch.nn.functional.one_hot(y[j], k).to(dtype)
                w = w + torch.outer(e - p, sigma @ f)
            times.append(time.perf_counter() - start)
        np.save(os.path.join(work, f"{prefix}_paper_head.npy"), w.numpy())
        np.save(os.path.join(work, f"{prefix}_paper_cov.npy"), sigma.numpy())
        # The joint rule in torch, for checking the mean of a Joint update: w + Σ' Σ_j g_j.
        w0 = head0.to(dtype)
        probs = torch.softmax(ph @ w0.T, dim=1)
        e = torch.nn.functional.one_hot(y, k).to(dtype)
        g = (e - probs).T @ ph
        np.save(os.path.join(work, f"{prefix}_joint_head.npy"), (w0 + g @ sigma).numpy())
        result = {"update": times}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result["peak_mib"] = peak
    print(json.dumps(result))


def synthetic(rng, n, d, k, w=None):
    x = (rng.standard_normal((n, d)) / np.sqrt(d) * 2.0).astype(np.float32)
    if w is None:
        w = (rng.standard_normal((k, d)) * 1.5).astype(np.float32)
    logits = (x @ w.T).astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    cum = np.cumsum(p / p.sum(1, keepdims=True), axis=1)
    y = np.minimum((cum < rng.random((n, 1))).sum(1), k - 1)
    return x, y.astype(np.int64), w


def median(v):
    return float(np.median(np.asarray(v)))


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin")
    ap.add_argument("--work", required=True)
    ap.add_argument("--report")
    ap.add_argument("--quick", action="store_true", help="one repeat of the slow peer runs")
    ap.add_argument("--role")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.role:
        worker(args.role, args.work, args.repeats)
        return
    os.makedirs(args.work, exist_ok=True)
    work = args.work
    path = lambda name: os.path.join(work, name)
    rng = np.random.default_rng(0)
    repeats_peer = 1 if args.quick else 3
    repeats_ours = 3 if args.quick else 5

    # Full fit N = 10,000, D = 512, K = 10, then the probit predictive at 2,000 points.
    x, y, w = synthetic(rng, 12_000, 512, 10)
    b = (rng.standard_normal(10) * 0.1).astype(np.float32)
    np.save(path("fit_x.npy"), x[:10_000])
    np.save(path("fit_y.npy"), y[:10_000])
    np.save(path("fit_w.npy"), w)
    np.save(path("fit_b.npy"), b)
    np.save(path("test_x.npy"), x[10_000:])
    # Shared sequential update D = 768, K = 77 (fit on 1,000, update with 100), and the Joint
    # update of 100 samples at D = 1,536, K = 10.
    for prefix, d, k in (("seq", 768, 77), ("joint", 1536, 10)):
        xs, ys, ws = synthetic(rng, 1_100, d, k)
        np.save(path(f"{prefix}_x.npy"), xs[:1_000])
        np.save(path(f"{prefix}_y.npy"), ys[:1_000])
        np.save(path(f"{prefix}_w.npy"), ws)
        np.save(path(f"{prefix}_new_x.npy"), xs[1_000:])
        np.save(path(f"{prefix}_new_y.npy"), ys[1_000:])

    def peer(role, repeats):
        out, _ = child_rusage([sys.executable, __file__, "--role", role, "--work", work, "--repeats", str(repeats)])
        return json.loads(out.strip().splitlines()[-1])

    rows = []
    print("laplace-torch: last-layer Full fit and probit predictive ...", flush=True)
    lt = peer("laplace-torch", repeats_peer)
    ours_fit, ours_pred, ours_fit_mem = [], [], 0.0
    for _ in range(repeats_ours):
        err, _, mem = run_cli(
            args.bin,
            ["fit", "--features", path("fit_x.npy"), "--labels", path("fit_y.npy"), "--weights", path("fit_w.npy"),
             "--bias-vector", path("fit_b.npy"), "--structure", "full", "--prior-precision", str(TAU),
             "--device", "cpu", "--out", path("full.safetensors")],
        )
        ours_fit.append(internal_ms(err, "fitted") / 1e3)
        ours_fit_mem = max(ours_fit_mem, mem)
        err, _, _ = run_cli(
            args.bin,
            ["predict", "--posterior", path("full.safetensors"), "--features", path("test_x.npy"), "--link", "probit",
             "--device", "cpu", "--out", path("ours_probs.npy")],
        )
        ours_pred.append(internal_ms(err, "predicted") / 1e3)
    probs_err = float(np.max(np.abs(np.load(path("ours_probs.npy")) - np.load(path("lt_probs.npy")))))
    assert probs_err < 1e-4, f"predictive probabilities differ by {probs_err}"
    rows.append(("Full fit, N=10,000 D=512 K=10 (laplace-torch)", median(lt["fit"]), median(ours_fit),
                 f"probs max diff {probs_err:.1e}"))
    rows.append(("Full probit predictive, 2,000 points (laplace-torch)", median(lt["predict"]), median(ours_pred),
                 "same posterior"))

    for prefix, rule, label in (("seq", "sequential", "Shared Sequential update, D=768 K=77, per sample"),
                                ("joint", "joint", "Joint update of 100 samples, D=1,536 K=10")):
        run_cli(args.bin, ["fit", "--features", path(f"{prefix}_x.npy"), "--labels", path(f"{prefix}_y.npy"),
                           "--weights", path(f"{prefix}_w.npy"), "--structure", "shared",
                           "--prior-precision", str(TAU), "--device", "cpu", "--out", path(f"{prefix}_post.safetensors")])
        paper = peer(f"paper-{'sequential' if prefix == 'seq' else 'joint'}", repeats_ours)
        # One process, repeats on copies of the loaded posterior, as the torch loop repeats in
        # its process: both medians are warm.
        err, _, _ = run_cli(args.bin, ["update", "--posterior", path(f"{prefix}_post.safetensors"),
                                       "--features", path(f"{prefix}_new_x.npy"), "--labels", path(f"{prefix}_new_y.npy"),
                                       "--rule", rule, "--device", "cpu", "--repeat", str(repeats_ours),
                                       "--out", path(f"{prefix}_updated.safetensors")])
        ours = [internal_ms(err, "updated") / 1e3]
        from safetensors.numpy import load_file

        updated = load_file(path(f"{prefix}_updated.safetensors"))
        cov_err = rel(updated["covariance"], np.load(path(f"{prefix}_paper_cov.npy")))
        want_head = np.load(path(f"{prefix}_paper_head.npy" if rule == "sequential" else f"{prefix}_joint_head.npy"))
        head_err = rel(updated["head"], want_head)
        assert cov_err < 1e-4 and head_err < 1e-4, f"{label}: covariance {cov_err}, mean {head_err}"
        scale = 100.0 if prefix == "seq" else 1.0
        rows.append((label + " (paper-style PyTorch loop)", median(paper["update"]) / scale, median(ours) / scale,
                     f"mean {head_err:.1e}, covariance {cov_err:.1e} rel"))

    mem_row = ("Peak memory of the Full fit, MiB (laplace-torch)", lt["peak_mib"], ours_fit_mem, "process max RSS")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
              f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, {platform.system()}"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        machine = model + ", " + machine
    except (OSError, StopIteration):
        pass
    import torch
    import laplace

    lines = [
        f"Machine: {machine}. torch {torch.__version__}, laplace-torch {getattr(laplace, '__version__', '0.3')}, "
        f"f32 everywhere, {os.cpu_count()} threads for both. Medians over {repeats_peer} (peers' slow runs) and "
        f"{repeats_ours} runs. Our times are the CLI's own (the operation, not process start or file I/O; "
        "updates repeated in one process, `--repeat`); the peers' are taken around the same operation in Python.",
        "",
        "| operation (peer) | peer | laplace-update | peer ÷ ours | agreement |",
        "|---|---|---|---|---|",
    ]
    unit = lambda s: f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"
    for name, theirs, ours, note in rows:
        lines.append(f"| {name} | {unit(theirs)} | {unit(ours)} | {theirs / ours:.1f}× | {note} |")
    name, theirs, ours, note = mem_row
    lines.append(f"| {name} | {theirs:.0f} MiB | {ours:.0f} MiB | {theirs / ours:.1f}× | {note} |")
    table = "\n".join(lines)
    print("\n" + table + "\n")
    if args.report:
        marker = "<!-- peers -->"
        text = open(args.report).read() if os.path.exists(args.report) else marker + "\n"
        head, _, rest = text.partition(marker)
        tail = rest.split("<!-- /peers -->", 1)[1] if "<!-- /peers -->" in rest else ""
        with open(args.report, "w") as f:
            f.write(head + marker + "\n" + table + "\n<!-- /peers -->" + tail)
        print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
