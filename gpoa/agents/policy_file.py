"""Policy files: a trained network with everything needed to use it safely later.

A policy file (``best.pt`` / ``last.pt`` of a run) holds the network's architecture and weights,
the learner that trained it and that learner's settings, the NAMES of the observation features it
was trained on (node columns and graph globals, in order), and run metadata (the resolved config,
the patch grid, the feature cache key, scores). Loading checks the names against what this
version of GPOA observes, so a policy of another observation layout is refused with a clear
message instead of silently reading shifted columns. Files hold only tensors, numbers and
strings: ``torch.load(..., weights_only=True)`` reads them without running code.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from gpoa.agents.network import NodeSetNetwork
from gpoa.errors import UsageError
from gpoa.io import atomic_write_bytes

#: Tag of a policy file written by :func:`save_policy`.
POLICY_FORMAT = "gpoa-policy/2"


@dataclass
class PolicyFile:
    """What :func:`load_policy` returns: the network (eval mode) and the file's metadata."""

    network: NodeSetNetwork
    learner: str
    settings: dict = field(default_factory=dict)
    node_features: list = field(default_factory=list)
    global_features: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def _plain(value, where: str):
    """``value`` with numpy numbers/arrays, tuples and paths turned into what ``weights_only`` accepts."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _plain(item, f"{where}.{key}") for key, item in value.items()}
    raise TypeError(f"{where} is a {type(value).__name__}; policy metadata must be numbers, strings, lists, "
                    "dicts with string keys or tensors")


def save_policy(path: Union[str, Path], network: NodeSetNetwork, learner: str, settings: Optional[dict] = None,
                node_features: Sequence[str] = (), global_features: Sequence[str] = (),
                extra: Optional[dict] = None) -> None:
    """Write ``network`` and its metadata (module docstring) to ``path`` atomically."""
    payload = {"format": POLICY_FORMAT, "learner": learner, "settings": _plain(settings or {}, "settings"),
               "node_features": list(node_features), "global_features": list(global_features),
               "architecture": network.architecture,
               "state_dict": {name: value.detach().cpu() for name, value in network.state_dict().items()},
               "extra": _plain(extra or {}, "extra")}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_policy(path: Union[str, Path], device: str = "cpu") -> PolicyFile:
    """Rebuild a policy written by :func:`save_policy`.

    Raises :class:`~gpoa.errors.UsageError` naming the file when it is missing, unreadable, not a
    policy, or damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"policy checkpoint '{path}' does not exist; train one with train_GPOA.py or point "
                         "optimize.policy (--policy) at an existing best.pt or last.pt")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # zip, pickle and weights-only refusals all mean the same to a user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"policy checkpoint '{path}' cannot be read ({reason}); the file is truncated, corrupt "
                         "or not written by GPOA: retrain with train_GPOA.py or copy the file again") from None
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found != POLICY_FORMAT:
        raise UsageError(f"'{path}' is not a GPOA policy checkpoint of this version (format {found!r}, expected "
                         f"{POLICY_FORMAT!r}); pass a best.pt or last.pt that this version's train_GPOA.py wrote "
                         "(retrain older policies; the demo's: make clean-demo && make demo)")
    try:
        network = NodeSetNetwork(**payload["architecture"])
        network.load_state_dict(payload["state_dict"])
        policy = PolicyFile(network.to(device).eval(), str(payload["learner"]), dict(payload.get("settings", {})),
                            list(payload["node_features"]), list(payload["global_features"]),
                            dict(payload.get("extra", {})))
    except (KeyError, TypeError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0]
        raise UsageError(f"policy checkpoint '{path}' is damaged ({reason}); retrain with train_GPOA.py") from None
    return policy


def check_observation(policy: PolicyFile, path: Union[str, Path], node_features: Sequence[str],
                      global_features: Sequence[str]) -> None:
    """Raise UsageError unless the policy observes exactly these feature names, in this order."""
    for kind, trained, current in (("node", policy.node_features, list(node_features)),
                                   ("graph", policy.global_features, list(global_features))):
        if trained != current:
            missing = [name for name in current if name not in trained]
            unknown = [name for name in trained if name not in current]
            detail = (f"it lacks {missing} and has {unknown}" if missing or unknown
                      else "the same names in another order")
            raise UsageError(f"policy '{path}' was trained on other {kind} features than this version of GPOA "
                             f"observes ({detail}); retrain it with train_GPOA.py (the demo's: make clean-demo && "
                             "make demo)")
