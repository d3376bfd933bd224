"""The ``tsne`` mode: function-space trajectories, a t-SNE of the predictions of per-epoch snapshots."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .records import ModeResult

__all__ = ["tsne"]


def _embed(x: np.ndarray, seed: int) -> tuple[np.ndarray, float, str]:
    from sklearn.manifold import TSNE

    perplexity = float(max(1.0, min(30.0, (len(x) - 1) / 3)))
    method = "exact" if len(x) <= 2000 else "barnes_hut"  # exact is fast and stable for few points
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", method=method,
               random_state=int(seed)).fit_transform(x)
    return emb, perplexity, method


def tsne(points: list[dict], vectors: torch.Tensor, runs: Sequence[str], indices: torch.Tensor, seed: int,
         dataset: str, title: str) -> ModeResult:
    """Embed one prediction vector per checkpoint in 2-D.

    ``points``: one dict per checkpoint (run, name, epoch, kind = snapshot | ticket), in the order of
    ``vectors`` (softmax probabilities on the ``indices`` test subset, flattened); ``runs``: the
    trajectories' names. The points get their ``x`` and ``y``.
    """
    res = ModeResult("tsne", dataset)
    n = int(indices.shape[0])
    emb, perplexity, method = _embed(vectors.numpy(), seed)
    for pt, (a, b) in zip(points, emb):
        pt["x"], pt["y"] = float(a), float(b)
        res.row(pt["name"], "tsne_x", pt["x"], split=f"test-subset-{n}")
        res.row(pt["name"], "tsne_y", pt["y"], split=f"test-subset-{n}")
    res.extras = {"samples": n, "seed": int(seed), "perplexity": perplexity, "method": method,
                  "vector": "softmax probabilities on the fixed test subset, flattened",
                  "indices": indices.tolist(), "runs": list(runs), "points": points}
    n_tickets = sum(p["kind"] == "ticket" for p in points)
    rows = []
    for r in runs:
        snaps = [p for p in points if p["run"] == r and p["kind"] == "snapshot"]
        tickets = [p["name"] for p in points if p["run"] == r and p["kind"] == "ticket"]
        first = next((p["epoch"] for p in points if p["run"] == r), None)
        rows.append([r, len(snaps), first, snaps[-1]["epoch"] if snaps else None, ", ".join(tickets) or "-"])
    res.table(f"tsne: {len(points)} checkpoints ({len(runs)} trajectories + {n_tickets} tickets) on {n} test images",
              ["run", "snapshots", "first epoch", "last epoch", "tickets"], rows)
    res.figure("tsne", "tsne", "tsne", points=points, runs=list(runs),
               title=f"{title}: function-space trajectories (t-SNE of predictions on {n} {dataset} test images)")
    return res
