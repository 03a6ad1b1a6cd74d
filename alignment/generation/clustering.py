"""Optional diversity selection for instruction pools: TF-IDF vectors, k-means, round-robin over clusters."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from alignment.generation.rouge import rouge_tokens

MAX_FEATURES = 4096


def tfidf_matrix(texts: Sequence[str], max_features: int = MAX_FEATURES) -> np.ndarray:
    """``[len(texts), vocab]`` L2-normalised TF-IDF rows (smooth idf ``ln((1+N)/(1+df)) + 1``).

    The vocabulary is the ``max_features`` tokens with the highest document frequency (ties by token).
    """
    documents = [Counter(rouge_tokens(text)) for text in texts]
    frequency = Counter(token for document in documents for token in document)
    ranked = sorted(frequency, key=lambda token: (-frequency[token], token))[:max_features]
    column = {token: i for i, token in enumerate(ranked)}
    matrix = np.zeros((len(texts), len(column)), dtype=np.float64)
    for row, document in enumerate(documents):
        for token, count in document.items():
            if token in column:
                matrix[row, column[token]] = count
    idf = np.array([math.log((1 + len(texts)) / (1 + frequency[t])) + 1.0 for t in ranked])
    matrix *= idf
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def kmeans(vectors: np.ndarray, k: int, seed: int, iterations: int = 50) -> np.ndarray:
    """Cluster labels ``[n]`` of ``vectors`` ``[n, d]`` by Lloyd's k-means with k-means++ seeding."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = [vectors[rng.integers(n)]]
    distance = ((vectors - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = distance.sum()
        centres.append(vectors[rng.choice(n, p=distance / total) if total > 0 else rng.integers(n)])
        distance = np.minimum(distance, ((vectors - centres[-1]) ** 2).sum(axis=1))
    centre_matrix = np.stack(centres)
    labels = np.full(n, -1, dtype=np.int64)
    for _ in range(iterations):
        new_labels = squared_distances(vectors, centre_matrix).argmin(axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for cluster in range(k):
            members = vectors[labels == cluster]
            if len(members):
                centre_matrix[cluster] = members.mean(axis=0)
    return labels


def squared_distances(vectors: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``[n, k]`` squared Euclidean distances between ``vectors`` ``[n, d]`` and ``centres`` ``[k, d]``."""
    cross = vectors @ centres.T
    return (vectors ** 2).sum(axis=1)[:, None] - 2.0 * cross + (centres ** 2).sum(axis=1)[None, :]


def diverse_order(labels: Sequence[int]) -> list[int]:
    """Indices visiting clusters round-robin (each cluster's items in original order): a prefix of any length
    covers as many clusters as possible."""
    queues: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        queues.setdefault(int(label), []).append(index)
    order: list[int] = []
    depth = 0
    while len(order) < len(labels):
        for cluster in sorted(queues):
            if depth < len(queues[cluster]):
                order.append(queues[cluster][depth])
        depth += 1
    return order


def select_diverse(texts: Sequence[str], n: int, n_clusters: int, seed: int) -> tuple[list[int], list[int]]:
    """``(indices of n texts spread over clusters, cluster label of every text)``."""
    labels = kmeans(tfidf_matrix(texts), n_clusters, seed).tolist()
    return sorted(diverse_order(labels)[:n]), labels
