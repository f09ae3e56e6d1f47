"""Which arrays of a PromptViT are prompts, and what a site's expert update holds.

Shared by the site (what it sends back) and the coordinator (what it expects
and merges): both sides import this, neither imports the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array

from fedeye.models.vit import PromptViT

BANK_KEY = "domain_prompts.tokens"  #: the experts' prompt tokens, ``[num_experts, tokens, dim]``
#: Tensors with one row per site: row k is site k's alone (its expert prompts and its style prototype).
PER_SITE = (BANK_KEY, "router.keys", "router.spread", "router.known")
EXPERT_PREFIX = "expert/"  #: a site's reply names its own rows ``expert/<name>``
EXPERT_KEY = EXPERT_PREFIX + BANK_KEY  #: one site's own expert prompts in its reply, ``[tokens, dim]``


def is_prompt_key(name: str) -> bool:
    """Whether a state-dict key belongs to the parts that train in prompt mode."""
    return name.split(".", 1)[0] in PromptViT.PROMPT_MODULES


def backbone_fingerprint(arrays: Mapping[str, Any]) -> str:
    """SHA-256 over the names, shapes and bytes of every non-prompt array.

    Two models with the same fingerprint have the same frozen backbone, so
    sending only the prompt parts between them is exact.

    >>> a = {"blocks.0.w": np.zeros(2, np.float32), "head.weight": np.ones(2, np.float32)}
    >>> backbone_fingerprint(a) == backbone_fingerprint({**a, "head.weight": np.zeros(2, np.float32)})
    True
    """
    digest = hashlib.sha256()
    for name in sorted(k for k in arrays if not is_prompt_key(k)):
        value = np.array(as_numpy(arrays[name]), order="C")
        digest.update(f"{name}:{value.dtype}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def site_update(state: Mapping[str, Any], expert_index: int, *, prompt_only: bool) -> dict[str, np.ndarray]:
    """What site ``expert_index`` sends back: shared parts and its own rows of :data:`PER_SITE`.

    Parameters
    ----------
    state : Mapping
        The trained model's state dict (tensors or arrays).
    expert_index : int
        The site's row of the bank.
    prompt_only : bool
        Prompt mode: leave out the frozen backbone.
    """
    out = {k: as_numpy(v) for k, v in state.items() if k not in PER_SITE and (not prompt_only or is_prompt_key(k))}
    for name in PER_SITE:
        if name in state:
            out[EXPERT_PREFIX + name] = np.array(as_numpy(state[name])[expert_index])
    return out


def as_numpy(value: Any) -> np.ndarray:
    """A Flower Array, a torch tensor or anything array-like, as a numpy array."""
    if isinstance(value, Array):
        return value.numpy()
    if hasattr(value, "detach"):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(value)
