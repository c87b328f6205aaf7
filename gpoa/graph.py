"""The dual-space graph: candidate prompt patches of one target image and their two distance spaces.

Nodes are patches of the target's :class:`~gpoa.grid.PatchGrid`, each a positive (category 1) or a
negative (category 0) prompt candidate: the input prompt set's positives and negatives (initially
active), plus ``graph.extra_positive`` / ``graph.extra_negative`` inactive candidates, the
non-prompt patches that look most like the reference foreground / background. Every pair of
nodes is joined by an edge whose type follows from the two categories (see :data:`EDGE_TYPES`) and
which carries two weights:

- ``feature_distance`` = (1 − cosine similarity of the patch features) / 2, in [0, 1];
- ``physical_distance`` = distance between patch centres / working-image diagonal, in [0, 1].

An agent edits the prompt set by toggling nodes on and off. Per-node statistics over the active
nodes (mean and minimum distance to the active positives and to the active negatives, in both
spaces) and the pairwise sums behind :meth:`DualSpaceGraph.graph_score` are kept up to date in
O(N) per toggle, so observing the graph after every step costs no rebuild.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

from gpoa.config import EnvConfig, GraphConfig
from gpoa.grid import PatchGrid
from gpoa.kernels import graph_score_terms, toggle_statistics, write_node_features
from gpoa.matching import ReferenceFeatures, l2_normalise, reference_similarity
from gpoa.prompts import PromptSet

POSITIVE, NEGATIVE = 1, 0

#: The node columns that follow the segmenter's current mask, written by the environment (0 without
#: a segmenter; see gpoa.envs.prompt_env.mask_observation and gpoa.envs.lookahead):
MASK_COLUMNS = (
    "inside_mask",  # 1 if the node lies inside the current mask
    # signed distance of the node's patch to the current mask's edge on the patch grid, in units of
    # MASK_DISTANCE_SCALE patches, clipped to [-1, 1]: > 0 inside the mask, < 0 outside
    "mask_edge_distance",
    # what toggling the node would do to the mask (lookahead; 0 for a node that cannot be toggled now)
    "lookahead_region_agreement",  # change of the mask's agreement with the predicted region
    "lookahead_area",  # change of the mask's area, relative to the reference's object area
    "lookahead_match_rank",  # change of the mean match rank inside the mask
    "lookahead_top_coverage",  # change of the share of the best-matching patches inside the mask
    "lookahead_changed",  # share of the mask that would change
)

#: Columns of :meth:`DualSpaceGraph.node_features`, in order. Distances are to the *active* nodes
#: of that category other than the node itself; 1.0 when there is none.
NODE_FEATURES = (
    "category",  # 1 positive, 0 negative
    "active",  # 1 if the node is a prompt now
    "initially_active",  # 1 if the node is in the prompt set the graph was built from
    # feature distances relative to the graph's mean feature distance between nodes (halved, at
    # most 1): what is near in feature space here, whatever the features' scale on this image
    "relative_feature_distance_positive_mean",
    "relative_feature_distance_positive_min",
    "relative_feature_distance_negative_mean",
    "relative_feature_distance_negative_min",
    "physical_distance_positive_mean",
    "physical_distance_positive_min",
    "physical_distance_negative_mean",
    "physical_distance_negative_min",
    # share of the other nodes less similar to the reference foreground / background prototype, [0, 1]
    "foreground_similarity_rank",
    "background_similarity_rank",
    # the match score against the image's: (score - median) / interquartile range / 4, in [-1, 1]
    "match_zscore",
    "match_rank",  # share of the image's patches whose match score is below the node's, [0, 1]
    "positive_support",  # share of the positive nodes (active or not) within SUPPORT_RADIUS of the node
    "negative_support",  # share of the negative nodes (active or not) within SUPPORT_RADIUS of the node
    # share of the patches within CONTEXT_RADII[0] / [1] patches that match the reference foreground
    # better than its background (see match_context); 0 unless graph.match_context
    "match_context_near",
    "match_context_far",
) + MASK_COLUMNS


#: Patches per unit of the "mask_edge_distance" column.
MASK_DISTANCE_SCALE = 8.0

#: Physical radius of the support columns, as a share of the working-image diagonal.
SUPPORT_RADIUS = 0.1

#: Radii, in patches, of the two match-context columns. A patch that looks like the object on its
#: own but sits among few other such patches (a short distractor fragment, a speck) scores low; a
#: patch of the object scores high because its neighbours look like the object too.
CONTEXT_RADII = (3, 6)

#: Edge type of nodes i, j is ``category[i] + category[j]``: an index into this tuple.
EDGE_TYPES = ("negative-negative", "positive-negative", "positive-positive")

#: Names of the five graph-score terms, in the order of ``EnvConfig.graph_weights``.
GRAPH_SCORE_TERMS = ("positive_compactness", "separation", "positive_spread", "negative_spread",
                     "positive_negative_proximity")

_FEATURE, _PHYSICAL = 0, 1  # index of a distance space in the statistics arrays
_COLUMN = {name: column for column, name in enumerate(NODE_FEATURES)}
_DISTANCE_COLUMNS = slice(_COLUMN["relative_feature_distance_positive_mean"],
                          _COLUMN["physical_distance_negative_min"] + 1)
_DEFAULT_WEIGHTS = np.asarray(EnvConfig().graph_weights, dtype=np.float64)


class DualSpaceGraph:
    """Dense dual-space graph over N candidate prompt patches, with the active-node statistics.

    Static attributes (never modified; shared by :meth:`clone`):

    - ``grid`` — the target's patch grid;
    - ``indices`` (N,) int64 patch indices; ``category`` (N,) int8, 1 positive / 0 negative;
    - ``initially_active`` (N,) bool — the node is in the prompt set the graph was built from;
    - ``feature_distance``, ``physical_distance`` (N, N) float32 in [0, 1], zero diagonal;
    - ``foreground_similarity``, ``background_similarity`` (N,) float32 — cosine similarity of the
      node's patch feature to the reference foreground / background prototype;
    - ``match_score`` (N,) float32 — similarity to the nearest reference foreground patch minus
      similarity to the nearest reference background patch, in [-2, 2];
    - ``match_context`` (N, 2) float32 — the node's two :func:`match_context` shares, in [0, 1]
      (zeros when ``graph.match_context`` is off);
    - ``patch_rank`` (rows * cols,) float32 — :func:`match_rank` of the ``patch_margin`` of every
      patch of the image (not only the nodes'); zeros when it is not given.

    State: ``active`` (N,) bool, changed only through :meth:`toggle`, :meth:`set_active` and
    :meth:`copy_state`, which keep the statistics in step.
    """

    def __init__(self, grid: PatchGrid, indices: np.ndarray, category: np.ndarray, initially_active: np.ndarray,
                 feature_distance: np.ndarray, physical_distance: np.ndarray, foreground_similarity: np.ndarray,
                 background_similarity: np.ndarray, match_score: np.ndarray, match_context: np.ndarray,
                 patch_margin: Optional[np.ndarray] = None):
        self.grid = grid
        self.indices = np.asarray(indices, dtype=np.int64)
        self.category = np.asarray(category, dtype=np.int8)
        self.initially_active = np.asarray(initially_active, dtype=bool)
        n = len(self.indices)
        if np.shape(feature_distance) != (n, n) or np.shape(physical_distance) != (n, n):
            raise ValueError(f"distance matrices must be ({n}, {n}) for {n} nodes, got {np.shape(feature_distance)} "
                             f"and {np.shape(physical_distance)}")
        # both distance matrices in one (2, N, N) block: row i of node i in both spaces is one slice
        self._distance = np.empty((2, n, n), dtype=np.float32)
        self._distance[_FEATURE] = feature_distance
        self._distance[_PHYSICAL] = physical_distance
        self.foreground_similarity = np.asarray(foreground_similarity, dtype=np.float32)
        self.background_similarity = np.asarray(background_similarity, dtype=np.float32)
        self.match_score = np.asarray(match_score, dtype=np.float32)
        self.match_context = np.asarray(match_context, dtype=np.float32)
        if self.match_context.shape != (n, len(CONTEXT_RADII)):
            raise ValueError(f"match_context must be ({n}, {len(CONTEXT_RADII)}) for {n} nodes, "
                             f"got {self.match_context.shape}")
        self.is_positive = self.category == POSITIVE
        static = np.zeros((len(NODE_FEATURES), n), dtype=np.float32)  # (F, N), the columns that never change
        static[_COLUMN["category"]] = self.category
        static[_COLUMN["initially_active"]] = self.initially_active
        static[_COLUMN["foreground_similarity_rank"]] = match_rank(self.foreground_similarity)
        static[_COLUMN["background_similarity_rank"]] = match_rank(self.background_similarity)
        # every patch's match score (patch_margin, (rows * cols,); the nodes' own when not given): the
        # z-score and rank columns, and the mask view's per-patch ranks (patch_rank)
        margin = self.match_score if patch_margin is None else np.asarray(patch_margin, dtype=np.float64).reshape(-1)
        if patch_margin is not None and margin.shape != (grid.num_patches,):
            raise ValueError(f"patch_margin must have one value per patch ({grid.num_patches}), got {margin.shape}")
        low, median, high = np.percentile(margin, [25, 50, 75])
        static[_COLUMN["match_zscore"]] = np.clip((self.match_score - median) / max(high - low, 1e-6) / 4, -1, 1)
        self.patch_rank = match_rank(margin) if patch_margin is not None else np.zeros(grid.num_patches, np.float32)
        static[_COLUMN["match_rank"]] = (self.patch_rank[self.indices] if patch_margin is not None
                                         else match_rank(self.match_score))
        # the relative feature distances: 1 / (2 x the mean feature distance between two nodes)
        pairs = n * (n - 1)
        mean_distance = float(self._distance[_FEATURE].sum()) / pairs if pairs else 0.0
        self._feature_scale = np.float32(0.5 / mean_distance) if mean_distance > 0 else np.float32(1.0)
        static[_COLUMN["match_context_near"]:_COLUMN["match_context_far"] + 1] = self.match_context.T
        near = self.physical_distance <= SUPPORT_RADIUS
        np.fill_diagonal(near, False)
        for column, members in (("positive_support", self.is_positive), ("negative_support", ~self.is_positive)):
            static[_COLUMN[column]] = near[:, members].sum(axis=1) / max(int(members.sum()), 1)
        self._static_features = np.ascontiguousarray(static.T)  # (N, F)
        self._no_mask = np.zeros((n, len(MASK_COLUMNS)), dtype=np.float32)
        self._allocate_state()
        self.set_active(self.initially_active)

    def _allocate_state(self) -> None:
        n = self.num_nodes
        self.active = np.zeros(n, dtype=bool)
        # statistics indexed [space (feature, physical), category of the other nodes (0 neg, 1 pos), node]
        self._sum = np.zeros((2, 2, n), dtype=np.float64)
        self._min = np.full((2, 2, n), np.inf, dtype=np.float32)
        self._argmin = np.full((2, 2, n), -1, dtype=np.int64)
        self._count = np.zeros((2, n), dtype=np.int64)  # active nodes of each category, excluding the node
        self._num_active = np.zeros(2, dtype=np.int64)  # active negatives, active positives
        # sum of the distance over all unordered pairs of active nodes, [space, edge type]
        self._pair_sum = np.zeros((2, 3), dtype=np.float64)

    # ----- static structure --------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return len(self.indices)

    @property
    def feature_distance(self) -> np.ndarray:
        """(N, N) float32: (1 − cosine similarity) / 2 of the nodes' patch features."""
        return self._distance[_FEATURE]

    @property
    def physical_distance(self) -> np.ndarray:
        """(N, N) float32: distance of the patch centres / working-image diagonal."""
        return self._distance[_PHYSICAL]

    def edge_types(self) -> np.ndarray:
        """(N, N) int8 index into :data:`EDGE_TYPES`: 0 neg–neg, 1 pos–neg, 2 pos–pos."""
        return self.category[:, None] + self.category[None, :]

    def nodes_of(self, positive_indices: Sequence[int], negative_indices: Sequence[int]) -> np.ndarray:
        """(N,) bool selecting the positive nodes at ``positive_indices`` and the negative nodes at
        ``negative_indices`` (patch indices); ``ValueError`` if one of them is not a node."""
        selected = np.zeros(self.num_nodes, dtype=bool)
        for category, wanted in ((POSITIVE, positive_indices), (NEGATIVE, negative_indices)):
            wanted = np.unique(np.asarray(wanted, dtype=np.int64))
            hit = (self.category == category) & np.isin(self.indices, wanted)
            if hit.sum() != len(wanted):
                missing = np.setdiff1d(wanted, self.indices[hit])
                kind = "positive" if category == POSITIVE else "negative"
                raise ValueError(f"patches {missing.tolist()} are not {kind} nodes of this graph")
            selected |= hit
        return selected

    def clone(self) -> DualSpaceGraph:
        """A graph sharing this one's static arrays, with its own copy of the active state."""
        twin = object.__new__(DualSpaceGraph)
        twin.__dict__.update(self.__dict__)
        twin._allocate_state()
        twin.copy_state(self)
        return twin

    def copy_state(self, source: DualSpaceGraph) -> None:
        """Take over the active state and statistics of ``source``, a clone of this graph, in O(N)."""
        if source._distance is not self._distance:
            raise ValueError("copy_state needs a clone of this graph (see DualSpaceGraph.clone)")
        self.active[:] = source.active
        self._sum[:], self._min[:], self._argmin[:] = source._sum, source._min, source._argmin
        self._count[:], self._num_active[:], self._pair_sum[:] = source._count, source._num_active, source._pair_sum

    # ----- state ---------------------------------------------------------------------------
    @property
    def num_positive(self) -> int:
        """Active positives."""
        return int(self._num_active[POSITIVE])

    @property
    def num_negative(self) -> int:
        """Active negatives."""
        return int(self._num_active[NEGATIVE])

    def positive_indices(self) -> np.ndarray:
        """Patch indices of the active positive nodes, in node order: (P,) int64."""
        return self.indices[self.active & self.is_positive]

    def negative_indices(self) -> np.ndarray:
        """Patch indices of the active negative nodes, in node order: (Q,) int64."""
        return self.indices[self.active & ~self.is_positive]

    def to_prompt_set(self, template: PromptSet, source: str) -> PromptSet:
        """The active nodes as a :class:`PromptSet` of the image ``template`` describes."""
        if template.grid != self.grid:
            raise ValueError(f"prompt set of '{template.image}' is on grid {template.grid}, the graph on {self.grid}")
        return PromptSet(image=template.image, original_size=template.original_size, grid=self.grid,
                         positive_indices=self.positive_indices(), negative_indices=self.negative_indices(),
                         source=source)

    def set_active(self, active: np.ndarray) -> None:
        """Replace the whole state by ``active`` (N,) bool and recompute the statistics."""
        active = np.asarray(active, dtype=bool)
        if active.shape != (self.num_nodes,):
            raise ValueError(f"active mask must have shape ({self.num_nodes},), got {active.shape}")
        self.active[:] = active
        self.recompute()

    def recompute(self) -> None:
        """All statistics from scratch, O(N · active); :meth:`toggle` keeps them equal to this."""
        for category in (NEGATIVE, POSITIVE):
            of_category = self.active & (self.category == category)
            members = np.flatnonzero(of_category)
            self._num_active[category] = len(members)
            self._count[category] = len(members) - of_category
            distance = self._distance[:, :, members]  # (2, N, m), a copy
            self._sum[:, category] = distance.sum(axis=2, dtype=np.float64)
            if len(members) == 0:
                self._min[:, category] = np.inf
                self._argmin[:, category] = -1
                continue
            distance[:, members, np.arange(len(members))] = np.inf  # a node is not its own neighbour
            nearest = distance.argmin(axis=2)
            minimum = np.take_along_axis(distance, nearest[..., None], axis=2)[..., 0]
            self._min[:, category] = minimum
            self._argmin[:, category] = np.where(np.isinf(minimum), -1, members[nearest])
        positives = self.active & self.is_positive
        negatives = self.active & ~self.is_positive
        self._pair_sum[:, 0] = self._sum[:, NEGATIVE][:, negatives].sum(axis=1) / 2
        self._pair_sum[:, 1] = self._sum[:, NEGATIVE][:, positives].sum(axis=1)
        self._pair_sum[:, 2] = self._sum[:, POSITIVE][:, positives].sum(axis=1) / 2

    def toggle(self, node: int) -> None:
        """Activate an inactive node or deactivate an active one, updating the statistics in O(N).

        Compiled (:func:`gpoa.kernels.toggle_statistics`): sums and counts move by the node's
        distance row; activating lowers the minimum of the rows it is nearer to; deactivating
        recomputes the minimum only of the rows whose nearest node it was, over the active members
        of its category.
        """
        node = int(node)
        if not 0 <= node < self.num_nodes:
            raise IndexError(f"node {node} is outside 0..{self.num_nodes - 1}")
        toggle_statistics(self._distance, self.category, self.active, self._sum, self._min, self._argmin,
                          self._count, self._num_active, self._pair_sum, node)

    # ----- what the agent observes -------------------------------------------------------------
    def node_features(self, mask_columns: Optional[np.ndarray] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
        """(N, F) float32 node observations, columns as in :data:`NODE_FEATURES`.

        ``mask_columns`` (N, C) float, C ≤ len(:data:`MASK_COLUMNS`) (or (N,): ``inside_mask`` alone),
        are the first C columns that follow the segmenter's current mask; the rest, and all of them
        when ``None`` (no mask), are 0. Mean and minimum distances are over the active nodes of the
        respective category other than the node itself, 1.0 when there is none. ``out`` (N, F)
        float32, when given, receives the result (no new array).
        """
        shape = (self.num_nodes, len(NODE_FEATURES))
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape or out.dtype != np.float32:
            raise ValueError(f"out must be a {shape} float32 array, got {out.shape} {out.dtype}")
        columns = self._no_mask
        if mask_columns is not None:
            given = np.asarray(mask_columns, dtype=np.float32)
            given = given[:, None] if given.ndim == 1 else given
            if given.ndim != 2 or given.shape[0] != self.num_nodes or given.shape[1] > len(MASK_COLUMNS):
                raise ValueError(f"mask_columns must have shape ({self.num_nodes}, C) with C <= {len(MASK_COLUMNS)}, "
                                 f"got {np.shape(mask_columns)}")
            columns = np.zeros((self.num_nodes, len(MASK_COLUMNS)), dtype=np.float32)
            columns[:, :given.shape[1]] = given
        write_node_features(self._static_features, self.active, self._sum, self._count, self._min,
                            np.ascontiguousarray(columns), _COLUMN["active"], _DISTANCE_COLUMNS.start,
                            _COLUMN["inside_mask"], self._feature_scale, out)
        return out

    def graph_terms(self) -> np.ndarray:
        """The five label-free terms of :meth:`graph_score`, (5,) float64, named by :data:`GRAPH_SCORE_TERMS`."""
        terms = np.empty(len(GRAPH_SCORE_TERMS), dtype=np.float64)
        graph_score_terms(self._pair_sum, self._min[_PHYSICAL, NEGATIVE], self.active, self.is_positive,
                          self._num_active, terms)
        return terms

    def graph_score(self, weights: Optional[Sequence[float]] = None) -> float:
        """Label-free quality of the active prompt set (higher is better), O(N) from the kept sums.

        With P active positives, Q active negatives, feature distance d_f and physical distance d_p::

            score = w0 · (1 − mean over positive pairs of d_f)        positive compactness
                  + w1 · mean over positive–negative pairs of d_f      feature separation
                  + w2 · mean over positive pairs of d_p               positive spread
                  + w3 · mean over negative pairs of d_p               negative spread
                  + w4 · mean over positives of min over negatives d_p positive–negative proximity

        The last term penalises negatives crowding the positives. A term that is undefined (fewer
        than two positives for the pair terms, no positive or no negative for the cross terms)
        counts 0. ``weights`` defaults to ``EnvConfig.graph_weights`` (5, 5, 1, 1, 1).
        """
        weights = _DEFAULT_WEIGHTS if weights is None else np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(GRAPH_SCORE_TERMS),):
            raise ValueError(f"graph score needs {len(GRAPH_SCORE_TERMS)} weights {GRAPH_SCORE_TERMS}, "
                             f"got {weights.tolist()} (config key env.graph_weights)")
        return float(weights @ self.graph_terms())


def unique_in_order(indices: np.ndarray) -> np.ndarray:
    _, first = np.unique(indices, return_index=True)
    return indices[np.sort(first)]


def _top(score: np.ndarray, allowed: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` highest ``score`` entries where ``allowed``, best first, ties by index."""
    candidates = np.flatnonzero(allowed)
    order = np.lexsort((candidates, -score[candidates]))
    return candidates[order[:max(count, 0)]]


def match_context(grid: PatchGrid, margin: np.ndarray) -> np.ndarray:
    """(rows * cols, len(CONTEXT_RADII)) float32: for every patch and radius r of :data:`CONTEXT_RADII`,
    the share of the patches within r patches (centre distance, the patch itself included; patches
    outside the grid do not count) whose ``margin`` (fg − bg nearest-neighbour similarity,
    (rows * cols,)) is positive: how much of its surroundings looks like the object."""
    foreground_like = (np.asarray(margin).reshape(grid.rows, grid.cols) > 0).astype(np.float32)
    in_grid = np.ones_like(foreground_like)
    shares = np.empty((grid.num_patches, len(CONTEXT_RADII)), dtype=np.float32)
    for column, radius in enumerate(CONTEXT_RADII):
        offsets = np.arange(-radius, radius + 1)
        disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).astype(np.float32)
        count = ndimage.correlate(foreground_like, disc, mode="constant")
        area = ndimage.correlate(in_grid, disc, mode="constant")
        shares[:, column] = np.clip(count / area, 0.0, 1.0).reshape(-1)
    return shares


def match_rank(margin: np.ndarray) -> np.ndarray:
    """(N,) float32 in [0, 1]: the share of the other patches whose ``margin`` (N,) is below each
    patch's (ties count half). Scale-free, so it means the same for any features and any image."""
    margin = np.asarray(margin, dtype=np.float64).reshape(-1)
    if len(margin) < 2:
        return np.full(len(margin), 0.5, dtype=np.float32)
    return ((rankdata(margin) - 1.0) / (len(margin) - 1)).astype(np.float32)


def _reach(grid: PatchGrid, patches) -> np.ndarray:
    """(rows * cols,) working-image pixel distance of every patch to the nearest of ``patches`` (inf if none)."""
    if len(patches) == 0:
        return np.full(grid.num_patches, np.inf)
    return grid.pixel_distance(np.arange(grid.num_patches), patches).min(axis=1)


def _spaced_top(score: np.ndarray, allowed: np.ndarray, count: int, grid: PatchGrid, taken: np.ndarray,
                spacing: float) -> np.ndarray:
    """Up to ``count`` indices picked greedily by highest ``score`` where ``allowed``, each at least
    ``spacing`` working-image pixels from the patches in ``taken`` and from the ones picked before."""
    reach = _reach(grid, taken)
    picked = []
    for _ in range(max(count, 0)):
        candidates = np.flatnonzero(allowed & (reach >= spacing))
        if len(candidates) == 0:
            break
        best = int(candidates[np.argmax(score[candidates])])  # ties: lowest index
        picked.append(best)
        np.minimum(reach, _reach(grid, [best]), out=reach)
    return np.asarray(picked, dtype=np.int64)


def build_graph(grid: PatchGrid, target_features: np.ndarray, prompt_set: PromptSet, reference: ReferenceFeatures,
                cfg: GraphConfig, nearest_similarity: Optional[tuple] = None) -> DualSpaceGraph:
    """The dual-space graph of one target image.

    ``target_features`` (rows, cols, D) are the target's patch features on ``grid``. Nodes, in this
    order: the prompt set's positives and negatives (active; duplicates dropped), then the
    ``cfg.extra_positive`` non-prompt patches with the highest fg − bg nearest-neighbour similarity
    and the ``cfg.extra_negative`` remaining ones with the highest bg − fg (inactive candidates).
    A patch that is both a positive and a negative prompt raises ``ValueError``. With
    ``cfg.match_context`` the nodes' match-context columns come from :func:`match_context` over the
    whole grid.

    ``nearest_similarity`` = (foreground_similarity, background_similarity), (rows * cols,) each,
    as in :class:`~gpoa.matching.MatchResult`, skips recomputing them: comparing every target patch
    with every reference patch is by far the largest cost of building a graph.
    """
    target_features = np.asarray(target_features)
    if target_features.ndim != 3 or target_features.shape[:2] != (grid.rows, grid.cols):
        raise ValueError(f"target features of '{prompt_set.image}' have shape {target_features.shape}; expected "
                         f"({grid.rows}, {grid.cols}, D) for its {grid.rows}x{grid.cols} patch grid")
    if prompt_set.grid != grid:
        raise ValueError(f"prompt set of '{prompt_set.image}' is on grid {prompt_set.grid}, the features on {grid}")
    positives = unique_in_order(prompt_set.positive_indices)
    negatives = unique_in_order(prompt_set.negative_indices)
    both = np.intersect1d(positives, negatives)
    if len(both):
        raise ValueError(f"prompt set of '{prompt_set.image}' has patches {both.tolist()} as both positive and "
                         "negative prompts; a patch can only be one of them")

    flat_features = target_features.reshape(grid.num_patches, -1)
    if nearest_similarity is None:
        _, nearest_foreground, nearest_background = reference_similarity(reference, l2_normalise(flat_features))
    else:
        nearest_foreground, nearest_background = (np.asarray(s, dtype=np.float32).reshape(-1)
                                                  for s in nearest_similarity)
        if nearest_foreground.shape != (grid.num_patches,) or nearest_background.shape != (grid.num_patches,):
            raise ValueError(f"nearest_similarity of '{prompt_set.image}' must hold two ({grid.num_patches},) "
                             "arrays, one value per target patch")
    margin = nearest_foreground - nearest_background  # (rows * cols,)
    free = np.ones(grid.num_patches, dtype=bool)
    free[positives] = free[negatives] = False
    if cfg.positive_spacing > 0:
        extra_positive = _spaced_top(margin, free, cfg.extra_positive, grid, positives,
                                     cfg.positive_spacing * grid.patch_size)
    else:
        extra_positive = _top(margin, free, cfg.extra_positive)
    free[extra_positive] = False
    def negative_candidates(allowed: np.ndarray, count: int) -> np.ndarray:
        if cfg.negative_spacing > 0:
            return _spaced_top(-margin, allowed, count, grid, negatives, cfg.negative_spacing * grid.patch_size)
        return _top(-margin, allowed, count)

    if cfg.negative_ring > 0 and len(positives):
        # negative candidates from the band around the positives, where a negative delimits the object
        near = _reach(grid, positives) <= cfg.negative_ring * grid.patch_size
        extra_negative = negative_candidates(free & near, cfg.extra_negative)
        free[extra_negative] = False
        extra_negative = np.concatenate([extra_negative,
                                         negative_candidates(free, cfg.extra_negative - len(extra_negative))])
    else:
        extra_negative = negative_candidates(free, cfg.extra_negative)

    indices = np.concatenate([positives, negatives, extra_positive, extra_negative])
    category = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives)), np.ones(len(extra_positive)),
                               np.zeros(len(extra_negative))]).astype(np.int8)
    initially_active = np.arange(len(indices)) < len(positives) + len(negatives)

    features = l2_normalise(flat_features[indices])  # (N, D)
    feature_distance = features @ features.T  # cosine similarity, turned into (1 - cosine) / 2 in place
    np.subtract(1.0, feature_distance, out=feature_distance)
    feature_distance *= 0.5
    np.clip(feature_distance, 0.0, 1.0, out=feature_distance)
    np.fill_diagonal(feature_distance, 0.0)
    physical_distance = grid.normalised_distance(indices, indices)
    foreground_similarity = np.clip(features @ reference.foreground_prototype, -1.0, 1.0)
    background_similarity = np.clip(features @ reference.background_prototype, -1.0, 1.0)
    context = (match_context(grid, margin)[indices] if cfg.match_context
               else np.zeros((len(indices), len(CONTEXT_RADII)), dtype=np.float32))
    return DualSpaceGraph(grid, indices, category, initially_active, feature_distance, physical_distance,
                          foreground_similarity, background_similarity, margin[indices], context,
                          patch_margin=margin)
