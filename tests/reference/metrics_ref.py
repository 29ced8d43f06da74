#!/usr/bin/env python3
"""Independent reference of the retrieval metric suite, used by tests/eval_metrics.rs to
hold `hist eval --embeddings` to it (docs/evaluation.md).

  gen        DIR  write every case below as DIR/<case>.safetensors
  check      DIR  -> JSON {case: {"numpy": ..., "pml": ..., "pml_faiss": ..., "nmi_sklearn": ...}}
  neighbours DIR  write DIR/<case>.neighbours.safetensors: "indices" [Q, min(20, G)], each
                  query's nearest gallery positions in the numpy order below (−1: none left)

`check` reads DIR/<case>.clusters.safetensors (our k-means assignment of the queries,
tensor "clusters") for the NMI. Three independent computations per case:

  numpy       brute force, one query at a time, written from the definitions: cosine
              similarity in float64, own row excluded, ranking by (−similarity, gallery
              position) via a stable lexsort; Recall@K, R-Precision, MAP@R; queries
              with R = 0 left out.
  pml         pytorch-metric-learning's AccuracyCalculator ("precision_at_1",
              "r_precision", "mean_average_precision_at_r") with k=None (full ranking)
              and a k-NN function giving the same exact float64 ranking (its default
              faiss search is float32, whose rounding reorders near-ties). It applies to
              same-source sets (embeddings_come_from_same_source, ref_includes_query)
              and disjoint query/gallery sets.
  pml_faiss   the stock AccuracyCalculator (faiss float32 search), on the well-separated
              case only, where no near-tie can change a metric.
  nmi_sklearn sklearn.metrics.normalized_mutual_info_score(query labels, our clusters).
"""
import argparse
import json
import logging
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import normalized_mutual_info_score

KS = [1, 2, 4, 8, 16, 1000]
NORM_EPS = 1e-12


# ---------------------------------------------------------------- cases


def _labels_with_sizes(rng, sizes):
    labels = np.concatenate([np.full(s, c) for c, s in enumerate(sizes)])
    return rng.permutation(labels)


def case_random(rng):
    # Gaussian embeddings; class sizes 1..12, so some queries are alone in their class.
    labels = _labels_with_sizes(rng, rng.integers(1, 13, size=70))
    emb = rng.standard_normal((len(labels), 32)).astype(np.float32)
    return {"embeddings": emb, "labels": labels}


def case_clustered(rng):
    # Noisy class centres: metrics well inside (0, 1). Stored as float64.
    sizes = rng.integers(3, 16, size=40)
    centres = rng.standard_normal((40, 64))
    labels = _labels_with_sizes(rng, sizes)
    emb = centres[labels] + 1.7 * rng.standard_normal((len(labels), 64))
    return {"embeddings": emb.astype(np.float64), "labels": labels}


def case_separated(rng):
    # Far-apart tight blobs: every metric near 1 and k-means recovers the classes.
    centres = rng.standard_normal((12, 16))
    labels = _labels_with_sizes(rng, [15] * 12)
    emb = centres[labels] + 0.02 * rng.standard_normal((len(labels), 16))
    return {"embeddings": emb.astype(np.float32), "labels": labels}


def case_duplicates(rng):
    # Exact duplicated rows with different labels: the tie-breaking decides the metrics.
    base = rng.standard_normal((60, 24)).astype(np.float32)
    pick = np.repeat(np.arange(60), rng.integers(1, 7, size=60))
    pick = rng.permutation(pick)
    return {"embeddings": base[pick], "labels": rng.integers(0, 15, size=len(pick))}


def case_signs(rng):
    # Entries ±1/8 in 64 dims: unit rows, every similarity an exact multiple of 1/32, so
    # ties are everywhere, including across the K and R boundaries.
    base = rng.choice([-1.0, 1.0], size=(10, 64))
    pick = rng.integers(0, 10, size=300)
    emb = base[pick].copy()
    for row in emb:
        row[rng.choice(64, size=rng.integers(0, 4), replace=False)] *= -1
    labels = np.where(rng.random(300) < 0.8, pick, rng.integers(0, 10, size=300))
    return {"embeddings": (emb / 8).astype(np.float32), "labels": labels}


def case_singletons(rng):
    # Most classes have one sample: most queries are left out (R = 0).
    labels = rng.integers(0, 100, size=150)
    emb = rng.standard_normal((150, 8)).astype(np.float32)
    return {"embeddings": emb, "labels": labels}


def case_query_gallery(rng):
    # In-Shop-like: items with query and gallery images, some items only on one side
    # (query-only items have R = 0; gallery-only items are distractors).
    rows, labels, is_query = [], [], []
    centres = rng.standard_normal((80, 32))
    for item in range(80):
        nq = 0 if item % 10 == 9 else int(rng.integers(1, 4))
        ng = 0 if item % 10 == 8 else int(rng.integers(1, 5))
        for q in [True] * nq + [False] * ng:
            rows.append(centres[item] + 0.9 * rng.standard_normal(32))
            labels.append(item)
            is_query.append(q)
    order = rng.permutation(len(rows))
    emb = np.array(rows, dtype=np.float32)[order]
    is_query = np.array(is_query)[order]
    return {"embeddings": emb, "labels": np.array(labels)[order], "is_query": is_query, "is_gallery": ~is_query}


def case_overlap(rng):
    # Overlapping uint8 masks: rows in both sets must not retrieve themselves.
    labels = _labels_with_sizes(rng, rng.integers(1, 8, size=40))
    n = len(labels)
    emb = rng.standard_normal((n, 16)).astype(np.float32)
    is_query = (rng.random(n) < 0.6).astype(np.uint8)
    is_gallery = (rng.random(n) < 0.7).astype(np.uint8)
    is_query[0] = is_gallery[0] = 1
    return {"embeddings": emb, "labels": labels, "is_query": is_query, "is_gallery": is_gallery}


def _satellites(rng, anchors, per_anchor, spacing, dim):
    """Anchor rows, each with `per_anchor` rows at cosine 0.6 + j·spacing(anchor) to it
    (j = 0..per_anchor−1, shuffled), otherwise random: an anchor query sees its satellites
    as a run of near-ties spaced `spacing` apart, while they stay far from one another."""
    rows, labels = [], []
    for a in range(anchors):
        q = rng.standard_normal(dim)
        q /= np.linalg.norm(q)
        rows.append(q)
        labels.append(a % 4)
        for j in rng.permutation(per_anchor):
            r = rng.standard_normal(dim)
            r -= (r @ q) * q
            r /= np.linalg.norm(r)
            cos = 0.6 + j * spacing(a)
            rows.append(cos * q + np.sqrt(1.0 - cos * cos) * r)
            labels.append(int(rng.integers(0, 4)))
    return np.array(rows), np.array(labels)


def case_near_ties(rng):
    # Cosines 1e-9, 1e-10 and 1e-11 apart (float64 rows): float32 products (error
    # ~1e-7) cannot order them, float64 can (error ~1e-16).
    emb, labels = _satellites(rng, 9, 16, lambda a: 10.0 ** -(9 + a % 3), 48)
    order = rng.permutation(len(labels))
    return {"embeddings": emb[order], "labels": labels[order]}


def case_near_ties_f32(rng):
    # Satellites 1e-8 apart, stored as float32 (which moves each cosine by ~1e-9, so they
    # stay distinct but unordered by float32 products), plus bit-identical copies of
    # some rows: exact ties inside runs of near-ties.
    emb, labels = _satellites(rng, 8, 14, lambda a: 1e-8, 40)
    copies = rng.choice(len(labels), size=30, replace=False)
    emb = np.concatenate([emb, emb[copies]]).astype(np.float32)
    labels = np.concatenate([labels, labels[copies]])
    order = rng.permutation(len(labels))
    return {"embeddings": emb[order], "labels": labels[order]}


CASES = {
    "random": case_random, "clustered": case_clustered, "separated": case_separated,
    "duplicates": case_duplicates, "signs": case_signs, "singletons": case_singletons,
    "query_gallery": case_query_gallery, "overlap": case_overlap,
    "near_ties": case_near_ties, "near_ties_f32": case_near_ties_f32,
}
# Cases where pytorch-metric-learning's protocols apply (same source or disjoint sets).
# Not near_ties: AccuracyCalculator casts embeddings to float32 before its k-NN function
# sees them, which erases that case's 1e-9 to 1e-11 cosine differences.
PML_CASES = {"random", "clustered", "separated", "duplicates", "signs", "singletons", "query_gallery", "near_ties_f32"}
# Depth of the reference neighbour lists (`neighbours`).
NEIGHBOURS_K = 20


def gen(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for i, (name, make) in enumerate(CASES.items()):
        arrays = make(np.random.default_rng(1000 + i))
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        tensors["labels"] = tensors["labels"].to(torch.int64)
        save_file(tensors, os.path.join(out_dir, f"{name}.safetensors"))


# ---------------------------------------------------------------- references


def normalize(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), NORM_EPS)


def split(t):
    n = len(t["labels"])
    q = t["is_query"].numpy().astype(bool) if "is_query" in t else np.ones(n, bool)
    g = t["is_gallery"].numpy().astype(bool) if "is_gallery" in t else np.ones(n, bool)
    return np.flatnonzero(q), np.flatnonzero(g)


def distinct_rows(x):
    """Unit-norm distinct rows of x and the distinct row of each row. Similarities are
    taken per distinct row so that duplicated rows tie exactly: a BLAS (OpenBLAS here)
    may round the same dot product differently in different rows of one product."""
    uniq, inv = np.unique(np.asarray(x, dtype=np.float64), axis=0, return_inverse=True)
    return normalize(uniq), inv.ravel()


def numpy_metrics(emb, labels, q_rows, g_rows):
    u, inv = distinct_rows(emb)
    hits = {k: 0 for k in KS}
    rp, mapr, scored, lone = 0.0, 0.0, 0, 0
    for i in q_rows:
        cand = g_rows[g_rows != i]
        sims = (u @ u[inv[i]])[inv[cand]]
        order = np.lexsort((np.arange(len(cand)), -sims))  # last key is primary
        rel = labels[cand[order]] == labels[i]
        r = int(rel.sum())
        if r == 0:
            lone += 1
            continue
        scored += 1
        for k in KS:
            hits[k] += bool(rel[:k].any())
        top = rel[:r]
        rp += top.sum() / r
        mapr += (np.cumsum(top) / np.arange(1, r + 1) * top).sum() / r
    out = {f"recall@{k}": hits[k] / scored for k in KS}
    out.update({"map@r": mapr / scored, "r_precision": rp / scored, "scored": scored, "lone": lone})
    return out


class ExactKNN:
    """k-NN for AccuracyCalculator: float64 cosine, ties by reference position."""

    def __call__(self, query, k, reference, ref_includes_query=False):
        u, inv = distinct_rows(reference.cpu().numpy())
        q = normalize(query.cpu().numpy())
        sims = (q @ u.T)[:, inv]
        g = u[inv]
        if ref_includes_query:
            k += 1
            # Own row first; PML's return_results then drops it.
            sims[np.arange(len(q)), np.arange(len(q))] = np.inf
        idx = np.stack([np.lexsort((np.arange(g.shape[0]), -row))[:k] for row in sims])
        dist = -np.take_along_axis(sims, idx, axis=1)
        from pytorch_metric_learning.utils.inference import return_results
        return return_results(torch.from_numpy(dist), torch.from_numpy(idx), ref_includes_query)


def pml_metrics(emb, labels, q_rows, g_rows, knn_func):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k=None, device=torch.device("cpu"), knn_func=knn_func)
    e = torch.from_numpy(np.asarray(emb))
    lab = torch.from_numpy(labels)
    if len(q_rows) == len(g_rows) and (q_rows == g_rows).all():
        return calc.get_accuracy(e, lab)
    assert not set(q_rows) & set(g_rows), "PML needs disjoint query and gallery sets"
    return calc.get_accuracy(e[q_rows], lab[q_rows], e[g_rows], lab[g_rows], False)


def numpy_neighbours(emb, q_rows, g_rows, k):
    """[Q, k] gallery positions of each query's k nearest (own row excluded), by float64
    cosine then gallery position; −1 where the gallery runs out."""
    u, inv = distinct_rows(emb)
    out = np.full((len(q_rows), k), -1, dtype=np.int64)
    for qi, i in enumerate(q_rows):
        pos = np.flatnonzero(g_rows != i)
        sims = (u @ u[inv[i]])[inv[g_rows[pos]]]
        order = np.lexsort((pos, -sims))[:k]
        out[qi, :len(order)] = pos[order]
    return out


def neighbours(out_dir):
    for name in CASES:
        t = load_file(os.path.join(out_dir, f"{name}.safetensors"))
        q_rows, g_rows = split(t)
        k = min(NEIGHBOURS_K, len(g_rows))
        idx = numpy_neighbours(t["embeddings"].numpy(), q_rows, g_rows, k)
        save_file({"indices": torch.from_numpy(idx)}, os.path.join(out_dir, f"{name}.neighbours.safetensors"))


def check(out_dir):
    logging.getLogger("PML").setLevel(logging.ERROR)
    report = {}
    for name in CASES:
        t = load_file(os.path.join(out_dir, f"{name}.safetensors"))
        emb = t["embeddings"].numpy()
        labels = t["labels"].numpy()
        q_rows, g_rows = split(t)
        entry = {"numpy": numpy_metrics(emb, labels, q_rows, g_rows), "pml": None, "pml_faiss": None}
        if name in PML_CASES:
            entry["pml"] = pml_metrics(emb, labels, q_rows, g_rows, ExactKNN())
        if name == "separated":
            # Stock search on unit rows: faiss L2 order = cosine order.
            entry["pml_faiss"] = pml_metrics(normalize(emb).astype(np.float32), labels, q_rows, g_rows, None)
        clusters = load_file(os.path.join(out_dir, f"{name}.clusters.safetensors"))["clusters"].numpy()
        assert len(clusters) == len(q_rows), f"{name}: {len(clusters)} clusters for {len(q_rows)} queries"
        entry["nmi_sklearn"] = float(normalized_mutual_info_score(labels[q_rows], clusters))
        entry["classes"] = int(len(np.unique(labels[q_rows])))
        entry["cluster_count"] = int(len(np.unique(clusters)))
        report[name] = entry
    json.dump(report, sys.stdout, default=float)
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["gen", "check", "neighbours"])
    ap.add_argument("dir")
    args = ap.parse_args()
    {"gen": gen, "check": check, "neighbours": neighbours}[args.command](args.dir)


if __name__ == "__main__":
    main()
