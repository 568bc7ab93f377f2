"""vldd's torch LOF + k-means against scikit-learn's, at ImageNet scale (docs/method.md, "3. Image prototypes" and "Scale").

Per class: LocalOutlierFactor(n_neighbors=10, contamination=0.1), then KMeans(n_clusters=IPC, n_init=10,
random_state=seed) on the inliers. The torch side is `vldd.stages.prototypes.build_prototypes`, exactly what the pipeline
runs; the data are synthetic latent-like float32 rows (seeded). Both sides run interleaved on the same data, so the
ratios hold on a busy machine; every repeat draws a new class.

    python benchmarks/prototypes.py                                  # 1300 x 16384 per class, IPC 10 and 50
    python benchmarks/prototypes.py --n 300 --dim 2048 --repeats 2   # a quick run
    python benchmarks/prototypes.py --device cuda                    # the torch side on a GPU
    python benchmarks/prototypes.py --smoke                          # 60 x 64, IPC 4, one class: seconds
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def synthetic_latents(n: int, dim: int, seed: int, modes: int = 24) -> np.ndarray:
    """Latent-like rows: a class's modes (poses, backgrounds) of uneven size, a shared low-rank variation, noise,
    and 4% of rows scaled up as outliers. Values have std ~1.5, as SD latents x scaling factor do."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=0.6, size=(modes, dim))
    weights = rng.dirichlet(np.full(modes, 2.0))
    basis = rng.normal(scale=0.25, size=(16, dim))
    x = centres[rng.choice(modes, size=n, p=weights)] + rng.normal(size=(n, 16)) @ basis
    x += rng.normal(scale=0.8, size=(n, dim))
    far = rng.choice(n, size=n // 25, replace=False)
    x[far] *= rng.uniform(1.3, 2.0, size=(len(far), 1))
    return x.astype(np.float32)


def run_torch(x: np.ndarray, ipc: int, args) -> dict:
    from vldd.stages.prototypes import build_prototypes

    latents = torch.from_numpy(x).to(args.device)
    _sync(args.device)
    start = time.perf_counter()
    protos = build_prototypes(latents, ipc, contamination=args.contamination, n_neighbors=10, n_init=args.n_init,
                              seed=args.seed)
    _sync(args.device)
    return {"time": time.perf_counter() - start, "outliers": (protos.assignment < 0).numpy(),
            "inertia": protos.inertia}


def run_sklearn(x: np.ndarray, ipc: int, args) -> dict:
    from sklearn.cluster import KMeans
    from sklearn.neighbors import LocalOutlierFactor

    start = time.perf_counter()
    outliers = LocalOutlierFactor(n_neighbors=10, contamination=args.contamination).fit_predict(x) == -1
    km = KMeans(n_clusters=ipc, n_init=args.n_init, random_state=args.seed).fit(x[~outliers])
    return {"time": time.perf_counter() - start, "outliers": outliers, "inertia": float(km.inertia_)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1300, help="images per class (ImageNet: ~1300)")
    parser.add_argument("--dim", type=int, default=16384, help="values per latent (SD v1.5 at 512 px: 4x64x64)")
    parser.add_argument("--ipc", type=int, nargs="+", default=[10, 50], help="clusters per class")
    parser.add_argument("--repeats", type=int, default=3, help="classes (pairs of runs) per IPC")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both torch and scikit-learn")
    parser.add_argument("--device", default="cpu", help="torch side's device: cpu or cuda")
    parser.add_argument("--contamination", type=float, default=0.1)
    parser.add_argument("--n-init", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="60 x 64 values, IPC 4, one class: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.dim, args.ipc, args.repeats, args.threads = 60, 64, [4], 1, 1

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        warm = synthetic_latents(64, 256, seed=12345)
        run_torch(warm, 4, args), run_sklearn(warm, 4, args)  # first calls pay for lazy initialisation
        print(f"{args.n} x {args.dim} float32 per class, LOF(10, {args.contamination}) + k-means(n_init="
              f"{args.n_init}); torch on {args.device}, {args.threads} threads each; {args.repeats} repeats")
        for ipc in args.ipc:
            rows = []
            for r in range(args.repeats):
                x = synthetic_latents(args.n, args.dim, seed=args.seed + r)
                runners = [run_torch, run_sklearn] if r % 2 == 0 else [run_sklearn, run_torch]
                out = {f.__name__: f(x, ipc, args) for f in runners}
                t, s = out["run_torch"], out["run_sklearn"]
                rows.append({"torch": t["time"], "sklearn": s["time"], "speedup": s["time"] / t["time"],
                             "inertia": t["inertia"] / s["inertia"], "same": bool((t["outliers"] == s["outliers"]).all()),
                             "jaccard": (t["outliers"] & s["outliers"]).sum() / (t["outliers"] | s["outliers"]).sum()})
                row = rows[-1]
                agree = "identical" if row["same"] else f"jaccard {row['jaccard']:.3f}"
                print(f"  IPC {ipc:3d} class {r}: torch {row['torch']:7.2f} s  sklearn {row['sklearn']:7.2f} s  "
                      f"time ratio {row['speedup']:5.2f}x  inertia ratio {row['inertia']:.4f}  outliers {agree}",
                      flush=True)
            med = {k: statistics.median(row[k] for row in rows) for k in ("torch", "sklearn", "speedup", "inertia")}
            print(f"IPC {ipc}: median time ratio (sklearn / torch) {med['speedup']:.2f}x "
                  f"(torch {med['torch']:.2f} s, sklearn {med['sklearn']:.2f} s); inertia ratio (torch / sklearn) "
                  f"median {med['inertia']:.4f}, max {max(row['inertia'] for row in rows):.4f}; identical outlier "
                  f"sets {sum(row['same'] for row in rows)}/{len(rows)}", flush=True)


if __name__ == "__main__":
    main()
