"""Two naive oracles for dilated attention, written independently of atlas.attention (float64, tiny sizes).

A: a Python loop over (batch, head group, segment) in head_split mode -- the textbook definition.
B: the dense count-matrix form ``softmax(Q K^T / sqrt(d) + log C) V`` where ``C[h, i, j]`` counts the patterns of
   head h that pair query i with key j (log 0 = -inf, fully masked rows give 0).  It covers both modes: in
   head_split each head has one pattern and the result is divided by the number of groups.

Layout: (b, n, h, d).  key_padding_mask: (b, n) bool, True = padded key.
"""

import math

import torch


def _segment_rows(n, w, r, o):
    """Kept rows of every segment: [[t*w + o, t*w + o + r, ...] ∩ [t*w, min((t+1)*w, n))] for each t."""
    result = []
    for start in range(0, n, w):
        end = min(start + w, n)
        result.append(list(range(start + o, end, r)))
    return result


def _split(h, k):
    sizes = [h // k + (1 if i < h % k else 0) for i in range(k)]
    starts = [sum(sizes[:i]) for i in range(k)]
    return [list(range(s, s + z)) for s, z in zip(starts, sizes)]


def oracle_loop(q, k, v, segment_lengths, dilation_rates, is_causal=False, key_padding_mask=None):
    """Oracle A (head_split): explicit loops over batch, group, head and segment."""
    b, n, h, d = q.shape
    groups = len(segment_lengths)
    out = torch.zeros_like(q)
    for batch in range(b):
        for index, heads in enumerate(_split(h, groups)):
            w, r = segment_lengths[index], dilation_rates[index]
            for head in heads:
                for rows in _segment_rows(n, w, r, index % r):
                    if not rows:
                        continue
                    idx = torch.tensor(rows)
                    qs, ks, vs = q[batch, idx, head], k[batch, idx, head], v[batch, idx, head]
                    scores = qs @ ks.T / math.sqrt(d)
                    mask = torch.ones(len(rows), len(rows), dtype=torch.bool)
                    if is_causal:
                        mask = torch.tril(mask)
                    if key_padding_mask is not None:
                        mask = mask & ~key_padding_mask[batch, idx][None, :]
                    scores = scores.masked_fill(~mask, -math.inf)
                    for row in range(len(rows)):
                        if mask[row].any():
                            weights = torch.softmax(scores[row], dim=0)
                            out[batch, rows[row], head] = out[batch, rows[row], head] + weights @ vs / groups
    return out


def count_matrix(n, h, segment_lengths, dilation_rates, mode):
    """C (h, n, n): how many patterns of each head contain the (query, key) pair."""
    counts = torch.zeros(h, n, n, dtype=torch.float64)
    groups = len(segment_lengths)
    if mode == "head_split":
        patterns = {head: [] for head in range(h)}
        for index, heads in enumerate(_split(h, groups)):
            for head in heads:
                r = dilation_rates[index]
                patterns[head].append((segment_lengths[index], r, index % r))
    else:
        patterns = {
            head: [(w, r, head % r) for w, r in zip(segment_lengths, dilation_rates)] for head in range(h)
        }
    for head, pats in patterns.items():
        for w, r, o in pats:
            for rows in _segment_rows(n, w, r, o):
                for i in rows:
                    for j in rows:
                        counts[head, i, j] += 1
    return counts


def oracle_dense(q, k, v, segment_lengths, dilation_rates, mode="head_split", is_causal=False,
                 key_padding_mask=None):
    """Oracle B: softmax(QK^T/sqrt(d) + log C) V per (batch, head); /k in head_split mode."""
    b, n, h, d = q.shape
    counts = count_matrix(n, h, segment_lengths, dilation_rates, mode).expand(b, h, n, n).clone()
    if is_causal:
        counts = counts * torch.tril(torch.ones(n, n, dtype=torch.float64))
    if key_padding_mask is not None:
        counts = counts * (~key_padding_mask).to(torch.float64)[:, None, None, :]
    qh, kh, vh = (x.permute(0, 2, 1, 3) for x in (q, k, v))
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(d) + torch.log(counts)
    row_has_key = (counts > 0).any(dim=-1, keepdim=True)
    logits = torch.where(row_has_key, logits, torch.zeros_like(logits))
    probs = torch.softmax(logits, dim=-1) * row_has_key
    out = (probs @ vh).permute(0, 2, 1, 3)
    return out / len(segment_lengths) if mode == "head_split" else out
