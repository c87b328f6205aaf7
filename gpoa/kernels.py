"""Compiled inner loops of the per-step hot path: graph toggles, node observations, greedy Q-values.

One greedy optimisation step touches every node a few times (update the distance statistics,
write the node's observation row, embed it and score it). Written as numpy expressions each of
these is a dozen small array operations, and at a few hundred nodes their call overhead, not the
arithmetic, sets the step time. These are the same loops compiled with numba (``cache=True``: the
machine code is kept next to this file, so only the first run on a machine pays the compile).

The callers own the semantics and the documentation: :meth:`gpoa.graph.DualSpaceGraph.toggle`,
:meth:`gpoa.graph.DualSpaceGraph.node_features` and :meth:`gpoa.agents.dqn.GreedyPolicy.q_values`.
Their tests compare against independent implementations (a full numpy recompute of the graph
statistics, a brute-force feature computation, and the torch network).
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)


@_jit
def toggle_statistics(distance, category, active, sums, minimum, argmin, counts, num_active, pair_sum, node):
    """Toggle ``node`` and update the active-node statistics of a dual-space graph in place.

    distance (2, N, N) float32 [space, i, j]; category (N,) int8; active (N,) bool; sums, minimum,
    argmin (2, 2, N) [space, category of the other nodes, node]; counts (2, N) [category, node]
    (active nodes of that category other than the node); num_active (2,); pair_sum (2, 3) [space,
    edge type]. Deactivating refreshes the minimum only of the rows whose nearest node it was,
    over the remaining active members of its category: first minimum in node order, as a full
    recompute finds it.
    """
    n = active.shape[0]
    c = category[node]
    was_active = active[node]
    # the node's sums to the active negatives and positives are its share of the pair sums of
    # edge types c + 0 and c + 1 (its distance to itself is 0)
    sign = -1.0 if was_active else 1.0
    for s in range(2):
        for k in range(2):
            pair_sum[s, c + k] += sign * sums[s, k, node]
    active[node] = not was_active
    step = -1 if was_active else 1
    num_active[c] += step
    for i in range(n):
        counts[c, i] += step
    counts[c, node] -= step
    if was_active:
        members = np.empty(n, dtype=np.int64)
        m = 0
        for j in range(n):
            if active[j] and category[j] == c:
                members[m] = j
                m += 1
        for s in range(2):
            row = distance[s, node]
            for i in range(n):
                sums[s, c, i] -= row[i]
                if argmin[s, c, i] == node:
                    other = distance[s, i]
                    best = np.float32(np.inf)
                    best_index = -1
                    for t in range(m):
                        j = members[t]
                        if j != i and other[j] < best:
                            best = other[j]
                            best_index = j
                    minimum[s, c, i] = best
                    argmin[s, c, i] = best_index
    else:
        for s in range(2):
            row = distance[s, node]
            for i in range(n):
                sums[s, c, i] += row[i]
                if i != node and row[i] < minimum[s, c, i]:
                    minimum[s, c, i] = row[i]
                    argmin[s, c, i] = node


@_jit
def write_node_features(static, active, sums, counts, minimum, mask_columns, active_column, distance_column,
                        mask_column, feature_scale, out):
    """Fill ``out`` (N, F) float32: the static columns of ``static`` (N, F), then the active flag,
    the eight distance statistics from ``distance_column`` on — [space (feature, physical)]
    [positives, negatives][mean, min], the feature ones times ``feature_scale``, at most 1.0, and
    1.0 where there is no active node — and ``mask_columns`` (N, C) from ``mask_column`` on."""
    n, f = static.shape
    for i in range(n):
        for k in range(f):
            out[i, k] = static[i, k]
        out[i, active_column] = 1.0 if active[i] else 0.0
        column = distance_column
        for s in range(2):
            scale = feature_scale if s == 0 else np.float32(1.0)
            for c in (1, 0):
                count = counts[c, i]
                out[i, column] = min(sums[s, c, i] / count * scale, 1.0) if count > 0 else 1.0
                out[i, column + 1] = min(minimum[s, c, i] * scale, np.float32(1.0))
                column += 2
        for j in range(mask_columns.shape[1]):
            out[i, mask_column + j] = mask_columns[i, j]


@numba.njit(cache=True, nogil=True, fastmath=True)
def _relu_pool(pre, bias, h, total, maximum):
    """h = ReLU(pre + bias[:, None]) for pre, h (H, n) float32; each row's sum into ``total``
    (float32) and the int32 bit pattern of its max into ``maximum`` (int32; view it as float32).

    Written so that LLVM vectorises every loop: ``h`` is not ``pre`` (in place the loop does not
    vectorise), and the maximum runs over the int32 bit patterns of the non-negative floats, which
    order the same way (a float max reduction is not vectorised).
    """
    hidden, count = pre.shape
    bits = h.view(np.int32)
    for k in range(hidden):
        source, target, offset = pre[k], h[k], bias[k]
        for i in range(count):
            target[i] = max(source[i] + offset, np.float32(0.0))
        row_sum = np.float32(0.0)
        for i in range(count):
            row_sum += target[i]
        total[k] = row_sum
        row_bits = bits[k]
        row_max = np.int32(0)
        for i in range(count):
            value = row_bits[i]
            row_max = value if value > row_max else row_max
        maximum[k] = row_max


@_jit
def node_set_q(nodes, node_weight, node_bias, node_weight2, globals_, global_weight, global_bias,
               head_weight1, head_bias1, head_weight2, head_bias2, out):
    """Q-values of a node-set network for one graph: node toggles into ``out`` (n,), returns Q_STOP.

    nodes (n, F) float32, the real nodes only; node_weight (H, F) and node_bias (H,) the first
    node layer; node_weight2 (H, H) the bias-free second one, or (0, 0) for none; global_weight
    (G, H), global_bias (H,); head_weight1 (3H, H), head_bias1 (H,); head_weight2 (H, H + 2),
    head_bias2 (H + 2,) with the 1/√H of the node score already folded in. Node embeddings are
    kept as (H, n), one node per column, so that pooling runs along contiguous rows.
    """
    count = nodes.shape[0]
    hidden = node_bias.shape[0]
    total = np.empty(hidden, dtype=np.float32)
    maximum_bits = np.empty(hidden, dtype=np.int32)
    h = np.empty((hidden, count), dtype=np.float32)
    _relu_pool(np.dot(node_weight, np.ascontiguousarray(nodes.T)), node_bias, h, total, maximum_bits)
    if node_weight2.shape[0] > 0:
        _relu_pool(np.dot(node_weight2, h), np.zeros(hidden, dtype=np.float32), h, total, maximum_bits)
    context = np.empty(3 * hidden, dtype=np.float32)
    context[:hidden] = total / max(count, 1)
    context[hidden:2 * hidden] = maximum_bits.view(np.float32)
    context[2 * hidden:] = np.maximum(np.dot(globals_, global_weight) + global_bias, np.float32(0.0))
    middle = np.maximum(np.dot(context, head_weight1) + head_bias1, np.float32(0.0))
    head = np.dot(middle, head_weight2) + head_bias2
    query = np.ascontiguousarray(head[:hidden])
    if count > 0:
        out[:] = np.dot(query, h) + head[hidden]
    return head[hidden + 1]


@_jit
def write_action_mask(active, category, toggled, can_remove, can_add, out):
    """out[i] (first N entries) = not toggled[i] and (can_remove if active[i] else can_add)[category[i]]."""
    for i in range(active.shape[0]):
        allowed = can_remove[category[i]] if active[i] else can_add[category[i]]
        out[i] = allowed and not toggled[i]


@_jit
def graph_score_terms(pair_sum, nearest_negative, active, is_positive, num_active, out):
    """The five graph-score terms into ``out`` (5,) float64 (see DualSpaceGraph.graph_score).

    pair_sum (2, 3) [space (feature, physical), edge type (neg-neg, pos-neg, pos-pos)];
    nearest_negative (N,) physical distance of each node to its nearest active negative;
    num_active (2,) active negatives, positives.
    """
    q, p = num_active[0], num_active[1]
    out[:] = 0.0
    if p >= 2:
        pairs = p * (p - 1) / 2
        out[0] = 1.0 - pair_sum[0, 2] / pairs
        out[2] = pair_sum[1, 2] / pairs
    if q >= 2:
        out[3] = pair_sum[1, 0] / (q * (q - 1) / 2)
    if p >= 1 and q >= 1:
        out[1] = pair_sum[0, 1] / (p * q)
        total = 0.0
        for i in range(active.shape[0]):
            if active[i] and is_positive[i]:
                total += nearest_negative[i]
        out[4] = total / p
