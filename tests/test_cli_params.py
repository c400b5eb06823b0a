"""Tests of lora/cli.py and the experiments/params.py entry point (run as a subprocess, as users run it).

Each subprocess costs a few seconds (importing torch, transformers and Hydra); the counting itself is on the meta
device and instant.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lora import methods
from lora.cli import friendly_errors, method_kwargs
from lora.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def run_params(*overrides: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
    return subprocess.run(
        [sys.executable, "experiments/params.py", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_params_prints_the_paper_count_as_json() -> None:
    proc = run_params("model=roberta-base", "method=lora", "method.r=8", "method.targets=[q,v]")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["trainable"] == 294_912  # 2 * (2 * 12) * 768 * 8, Table 2's 0.3M
    assert (out["model"], out["method"], out["modules"]) == ("roberta-base", "lora", 24)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("method.r=0", "got 0"),  # ours: `error: <message>`, exit 2
        ("method.targets=[x]", "['x']"),
        ("model=foo", "model/foo"),  # Hydra's own config errors: exit 1, no traceback
        ("method.bogus=1", "method.bogus"),
    ],
)
def test_params_bad_input_is_a_message_not_a_traceback(override: str, named: str) -> None:
    proc = run_params("model=roberta-base", override)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    first = proc.stderr.strip().splitlines()[0]
    assert named in first, proc.stderr
    if first.startswith("error: "):
        assert proc.returncode == 2 and proc.stderr.strip() == first


# --- lora/cli.py in-process ---------------------------------------------------------------------------------------


def test_friendly_errors_prints_one_line_and_exits_2(capsys, monkeypatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @friendly_errors
    def main() -> None:
        raise ConfigError("bad value 'x': use 'y'\nsecond line")

    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: bad value 'x': use 'y'\n"


def test_friendly_errors_keeps_tracebacks_on_request_and_for_bugs(monkeypatch) -> None:
    @friendly_errors
    def bad_input() -> None:
        raise ConfigError("bad")

    @friendly_errors
    def bug() -> None:
        raise ZeroDivisionError

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="bad"):
        bad_input()
    monkeypatch.delenv("HYDRA_FULL_ERROR")
    with pytest.raises(ZeroDivisionError):
        bug()


@pytest.mark.parametrize("exc", [ValueError, KeyError, TypeError, RuntimeError, FileNotFoundError])
def test_only_user_errors_are_one_line_everything_else_keeps_its_traceback(exc: type, monkeypatch) -> None:
    # A bare built-in exception is a bug somewhere (not a checked input): it must not be hidden as `error:`.
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @friendly_errors
    def bug() -> None:
        raise exc("internal")

    with pytest.raises(exc):
        bug()


def test_method_kwargs_splits_the_name_off() -> None:
    cfg = OmegaConf.create({"name": "lora", "r": 4, "targets": ["q", "v"]})
    assert method_kwargs(cfg) == ("lora", {"r": 4, "targets": ["q", "v"]})
    with pytest.raises(ValueError, match="method=<name>"):
        method_kwargs(OmegaConf.create({"r": 4}))


def test_method_config_validates_names_and_options() -> None:
    assert methods.method_config("lora", r=4).r == 4
    with pytest.raises(ValueError, match="unknown method 'lroa': choose from lora"):
        methods.method_config("lroa")
    with pytest.raises(ValueError, match=r"method 'lora' has no option\(s\) \['rank'\]"):
        methods.method_config("lora", rank=4)
