"""Package attributes that load their module on first use (PEP 562).

A package whose ``__init__`` re-exports names from heavy submodules (torch,
timm, scikit-learn) would load them for anyone importing a light sibling
(``fedeye.models.config``, ``fedeye.fairness.operating_point``), and every
``fedeye`` command would pay for it.

>>> get = lazy_exports("json", {"dumps": "decoder"})
>>> get("dumps").__name__
Traceback (most recent call last):
...
AttributeError: module 'json.decoder' has no attribute 'dumps'
>>> lazy_exports("json", {"JSONDecoder": "decoder"})("JSONDecoder").__name__
'JSONDecoder'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``package.<where[name]>`` when ``name`` is first asked for."""

    def get(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    return get
