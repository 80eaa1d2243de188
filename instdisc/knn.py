"""The paper's weighted kNN classifier and 1-NN monitor, chunked so memory stays bounded.

This is the one weighted-kNN implementation: the training monitor (``knn_accuracy``) and the
evaluation package (``instdisc.evaluation.metrics.rank_and_score``) both vote with :func:`weighted_knn_predict`.

Similarities are computed for ``query_chunk`` queries against ``bank_chunk`` bank rows at a
time and the running top-k is merged chunk by chunk, so the peak extra memory is
``query_chunk x (bank_chunk + k)`` floats whatever the bank size (1M rows included).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def topk_cosine(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    query_chunk: int = 1024,
    bank_chunk: int = 65536,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k inner products of unit rows: (scores, bank indices), both (Q, k), best first.

    ``exclude`` (Q,) gives a bank index to leave out per query (leave-one-out on the bank).
    """
    n = bank.shape[0]
    k = min(k, n - (1 if exclude is not None else 0))
    device = bank.device
    out_s, out_i = [], []
    for q0 in range(0, queries.shape[0], query_chunk):
        q = queries[q0 : q0 + query_chunk].to(device, bank.dtype)
        best_s = torch.full((q.shape[0], 0), float("-inf"), device=device)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=device)
        for b0 in range(0, n, bank_chunk):
            s = q @ bank[b0 : b0 + bank_chunk].t()
            if exclude is not None:
                ex = exclude[q0 : q0 + query_chunk].to(device) - b0
                hit = (ex >= 0) & (ex < s.shape[1])
                s[hit.nonzero().squeeze(1), ex[hit]] = float("-inf")
            kk = min(k, s.shape[1])
            s_top, i_top = s.topk(kk, dim=1)
            cat_s = torch.cat([best_s, s_top.float()], 1)
            cat_i = torch.cat([best_i, i_top + b0], 1)
            best_s, pos = cat_s.topk(min(k, cat_s.shape[1]), dim=1)
            best_i = cat_i.gather(1, pos)
        out_s.append(best_s.cpu())
        out_i.append(best_i.cpu())
    return torch.cat(out_s), torch.cat(out_i)


def weighted_vote(
    scores: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, k: int, temperature: float
) -> torch.Tensor:
    """Class scores sum_{i in top-k, y_i = c} exp(s_i / tau): (Q, num_classes), float64.

    ``scores`` (Q, K) best first; neighbours labelled -1 (unknown) get weight 0; k is clipped to K.
    """
    k = min(int(k), scores.shape[1])
    labels = neighbour_labels[:, :k].long()
    w = (scores[:, :k].double() / temperature).exp().masked_fill(labels < 0, 0.0)
    votes = torch.zeros(scores.shape[0], num_classes, dtype=torch.float64)
    return votes.scatter_add_(1, labels.clamp(min=0), w)


def weighted_knn_predict(
    scores: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, ks: Sequence[int], temperature: float
) -> dict[int, torch.Tensor]:
    """The weighted vote's predicted class (arg-max, ties to the lower class id) for each k in ``ks``.

    k is clipped to the neighbours given (the returned keys are the clipped values)."""
    return {kk: weighted_vote(scores, neighbour_labels, num_classes, kk, temperature).argmax(1)
            for kk in sorted({min(int(k), scores.shape[1]) for k in ks})}


@torch.no_grad()
def knn_predict(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    ks: Sequence[int] = (200,),
    temperature: float = 0.1,
    num_classes: int | None = None,
    exclude: torch.Tensor | None = None,
    **chunks: int,
) -> dict[int, torch.Tensor]:
    """Weighted-kNN predicted class for every k in ``ks`` from one top-max(k) search.

    Bank rows with a negative label (unlabelled) never vote.
    """
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(f"query dim {queries.shape[1]} != bank dim {bank.shape[1]}")
    if bank_labels.shape[0] != bank.shape[0]:
        raise ValueError(f"{bank_labels.shape[0]} labels for {bank.shape[0]} bank rows")
    labels = bank_labels.cpu().long()
    num_classes = int(num_classes if num_classes is not None else labels.max().item() + 1)
    labelled = labels >= 0
    if not bool(labelled.all()):
        keep = labelled.nonzero().squeeze(1)
        if exclude is not None:  # re-number the excluded rows into the labelled-only bank
            new_pos = torch.full((labels.shape[0],), -1, dtype=torch.long)
            new_pos[keep] = torch.arange(keep.shape[0])
            exclude = new_pos[exclude.cpu().long()]
        bank, labels = bank[keep.to(bank.device)], labels[keep]
    scores, index = topk_cosine(queries, bank, max(ks), exclude=exclude, **chunks)
    preds = weighted_knn_predict(scores, labels[index], num_classes, ks, temperature)
    return {k: preds[min(int(k), scores.shape[1])] for k in ks}


def knn_accuracy(
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    ks: Sequence[int] = (1, 200),
    temperature: float = 0.1,
    **kw,
) -> dict[int, float]:
    """Top-1 accuracy of the weighted kNN for each k (k = 1 is the 1-NN monitor)."""
    preds = knn_predict(queries, bank, bank_labels, ks, temperature, **kw)
    y = query_labels.cpu().long()
    return {k: float((p == y).double().mean()) for k, p in preds.items()}
