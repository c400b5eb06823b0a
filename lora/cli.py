"""Shared plumbing of the `experiments/` entry points: one-line errors instead of tracebacks."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, RuntimeError, KeyError, TypeError)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run `fn`; a user error (bad config value, missing data, ...) prints `error: <message>` and exits with 2.
    Set HYDRA_FULL_ERROR=1 for the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def method_kwargs(method: DictConfig) -> tuple[str, dict[str, Any]]:
    """Split the `method` config group into its name and the options of its config dataclass."""
    d = OmegaConf.to_container(method, resolve=True)
    assert isinstance(d, dict)
    name = d.pop("name", None)
    if not name:
        raise ValueError("the method config has no `name`; pick one with method=<name>")
    return str(name), d
