"""Shared plumbing of the `experiments/` entry points: one-line errors instead of tracebacks.

A bad input ends a command with ONE line on stderr, `error: <what is wrong and how to fix it>`, and exit code 2:

- `friendly_errors` does it for the `lora.errors.UserError`s raised by the command itself (a bad config value,
  missing data, ...); any other exception is a bug and keeps its traceback (exit code 1);
- `hydra_main` (a drop-in for `hydra.main`) also does it for Hydra's own composition errors (unknown config
  group option such as `model=foo`, misspelt key, wrong type), which Hydra prints over several lines.

In a sweep (`-m`), a run with bad input prints its line and the sweep goes on with the next run; the command
exits with 2 at the end. Set HYDRA_FULL_ERROR=1 for the traceback.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lora.errors import ConfigError, UserError

USER_ERRORS = (UserError,)
# Set by `hydra_main` while it runs: the HYDRA_FULL_ERROR=1 in the environment is ours (it makes Hydra raise
# instead of printing), not the user's request for tracebacks. Environment, so that launcher subprocesses see it.
_OURS = "LORA_CLI_HYDRA_RAISES"


class RunFailed(Exception):
    """A run of a sweep stopped on bad input; its `error:` line is printed already."""


def wants_traceback() -> bool:
    """True when the user set HYDRA_FULL_ERROR=1."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(_OURS) != "1"


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run `fn`; a user error (bad config value, missing data, ...) prints `error: <message>` and exits with 2 (in
    a sweep: raises `RunFailed`, so that Hydra goes on with the next run). HYDRA_FULL_ERROR=1: the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            if wants_traceback():
                raise
            print(f"error: {first_line(e)}", file=sys.stderr, flush=True)
            if _in_sweep():
                raise RunFailed(first_line(e)) from None
            sys.exit(2)

    return wrapper


def hydra_message(e: BaseException) -> str:
    """One line for a Hydra or OmegaConf error: the bad value and the fix."""
    from hydra.errors import MissingConfigException

    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options is not None:
        group, _, name = e.missing_cfg_file.rpartition("/")
        close = difflib.get_close_matches(name, e.options, n=3)
        if close:
            return (
                f"unknown {group} {name!r} (no conf/{group}/{name}.yaml): did you mean {' or '.join(close)}?"
            )
        shown = ", ".join(e.options[:20]) + (f", ... (ls conf/{group}/)" if len(e.options) > 20 else "")
        return f"unknown {group} {name!r} (no conf/{group}/{name}.yaml): choose from {shown}"
    parts = [first_line(e)]
    cause = e.__cause__
    if cause is not None and first_line(cause) not in parts[0]:
        parts.append(first_line(cause))
    msg = ": ".join(p.rstrip(".") for p in parts)
    if "Could not override" in msg or "not in" in msg:
        msg += f"; check the spelling (`python {sys.argv[0]} --cfg job` prints every key)"
    if "LexerNoViableAlt" in msg or "mismatched input" in msg or "token recognition error" in msg:
        msg += (
            "; Hydra's override grammar takes spaces, non-ASCII and special characters only inside quotes: "
            "write key='\"value\"' (e.g. data_dir='\"/data/glué\"')"
        )
    return msg


def hydra_main(
    config_name: str, config_path: str = "../conf"
) -> Callable[[Callable[[DictConfig], Any]], Any]:
    """`hydra.main(config_path, config_name, version_base="1.3")` with one-line errors for everything: the task's
    own user errors (`friendly_errors`) and Hydra's composition errors. `config_path` is relative to the file of
    the decorated function, as for `hydra.main`."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], None]:
        conf = (
            Path(inspect.getfile(task)).resolve().parent / config_path
        )  # absolute: the file may be imported
        job = hydra.main(config_path=str(conf.resolve()), config_name=config_name, version_base="1.3")(
            friendly_errors(task)
        )

        @functools.wraps(task)
        def main() -> None:
            saved = {k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", _OURS)}
            user_full = saved["HYDRA_FULL_ERROR"] == "1"
            if not user_full:  # make Hydra raise its errors (it would print them over several lines)
                os.environ["HYDRA_FULL_ERROR"] = os.environ[_OURS] = "1"
            try:
                job()
            except RunFailed as e:
                print(f"error: a run of the sweep failed ({e}); the other runs went on", file=sys.stderr)
                sys.exit(2)
            except (HydraException, OmegaConfBaseException) as e:
                if user_full:
                    raise
                print(f"error: {hydra_message(e)}", file=sys.stderr)
                sys.exit(2)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v

        return main

    return decorate


def parse_options(argv: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    """`key=value` arguments of the small entry points (tables, status, analysis, export) over `defaults`; an
    unknown key is a one-line ConfigError listing the known ones."""
    opts = dict(defaults)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in opts:
            raise ConfigError(f"unknown argument {arg!r}: use {' '.join(k + '=...' for k in opts)}")
        opts[key] = value
    return opts


def method_kwargs(method: DictConfig) -> tuple[str, dict[str, Any]]:
    """Split the `method` config group into its name and the options of its config dataclass."""
    d = OmegaConf.to_container(method, resolve=True)
    assert isinstance(d, dict)
    name = d.pop("name", None)
    if not name:
        raise ConfigError("the method config has no `name`; pick one with method=<name>")
    return str(name), d
