"""Bad input to experiments/train.py: ONE line on stderr, `error: <the bad value and the fix>`, exit code 2, no
traceback, and nothing in results_dir touched (an earlier record stays byte-identical, with its mtime).

The entry point runs in-process (a subprocess costs ~5-10 s of imports each); two cases also run as real
subprocesses, to see exactly what a user sees. Expected messages are the exact text of each check in
lora/ (pinned so that a vaguer message fails here).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

import lora.config  # noqa: F401  (registers the config schema and the `by` resolver)
from lora import methods
from lora.checkpoint import WEIGHTS, save_adapter
from lora.methods.lora import LoRAConfig
from lora.models import build_model
from lora.train import execute

ROOT = Path(__file__).resolve().parent.parent
GLUE = ROOT.parent / "shared" / "data" / "glue"

pytestmark = pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE data not found at {GLUE} (../shared/data)")

TINY = ["model=tiny-bert", "task=rte", "method=lora", "task.max_train_samples=16", "task.max_eval_samples=8",
        "train.max_steps=2", "train.batch_size=8", "train.progress=false", "device=cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A results dir holding one complete record, bad data dirs, a foreign and a truncated adapter."""
    root = tmp_path_factory.mktemp("errors")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, f"data_dir={GLUE}", f"results_dir={root / 'runs'}",
                                           f"output_dir={root / 'out'}"])  # fmt: skip
    assert execute(cfg).status == "complete"

    header = "index\tsentence1\tsentence2\tlabel\n"
    bad_data = {
        "columns": "index\tsentence1\tlabel\n0\ta\tentailment\n",
        "empty": "",
        "labels": header + "0\ta cat\ta dog\tmaybe\n",
    }
    for name, text in bad_data.items():
        (root / name / "RTE").mkdir(parents=True)
        (root / name / "RTE" / "train.tsv").write_text(text)
        (root / name / "RTE" / "dev.tsv").write_text(header + "0\ta\tb\tentailment\n")
    (root / "undecodable" / "RTE").mkdir(parents=True)
    (root / "undecodable" / "RTE" / "train.tsv").write_bytes(
        header.encode() + b"0\ta \xff cat\tb\tentailment\n"
    )
    (root / "undecodable" / "RTE" / "dev.tsv").write_text(header + "0\ta\tb\tentailment\n")

    roberta = build_model("tiny-roberta", "classification")
    save_adapter(
        roberta, root / "roberta_adapter", "lora", LoRAConfig(), methods.apply(roberta, "lora", LoRAConfig())
    )
    bert = build_model("tiny-bert", "classification")
    cut = save_adapter(
        bert, root / "cut_adapter", "lora", LoRAConfig(), methods.apply(bert, "lora", LoRAConfig())
    )
    data = (cut / WEIGHTS).read_bytes()
    (cut / WEIGHTS).write_bytes(data[: len(data) // 2])
    (root / "a_file").write_text("not a directory\n")
    return {"root": root, "runs": root / "runs"}


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def train_main() -> Any:
    spec = importlib.util.spec_from_file_location("train_entry", ROOT / "experiments" / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


MAIN = train_main()

# (overrides; {root} is the world's folder) -> the exact message after "error: " ("..." = anything after it)
CASES: dict[str, tuple[list[str], str]] = {
    "unknown model": (["model=robrta-base"], "unknown model 'robrta-base' (no conf/model/robrta-base.yaml): did "
                      "you mean roberta-base or roberta-large?"),
    "unknown task": (["task=rtee"], "unknown task 'rtee' (no conf/task/rtee.yaml): did you mean rte?"),
    "unknown method": (["method=lroa"], "unknown method 'lroa' (no conf/method/lroa.yaml): did you mean lora?"),
    "unknown experiment": (["experiment=nope"], "unknown experiment 'nope' (no conf/experiment/nope.yaml): "
                           "choose from ..."),  # the first 20 of conf/experiment/, then "... (ls conf/experiment/)"
    "unknown key": (["train.lrr=1"], "Could not override 'train.lrr': Key 'lrr' not in 'TrainConfig'; check the "
                    "spelling (`python experiments/train.py --cfg job` prints every key)"),
    "wrong type": (["train.batch_size=abc"], "Error merging override train.batch_size=abc: Value 'abc' of type "
                   "'str' could not be converted to Integer"),
    "r <= 0": (["method.r=0"], "LoRA rank r must be a positive integer, got 0"),
    "alpha <= 0": (["method.alpha=0"], "LoRA alpha must be > 0, got 0"),
    "dropout >= 1": (["method.dropout=1.0"], "LoRA dropout must be in [0, 1), got 1.0"),
    "bottleneck <= 0": (["method=adapter_h", "method.bottleneck=0"],
                        "adapter bottleneck must be a positive integer, got 0"),
    "prefix length <= 0": (["method=prefix_layer", "method.prefix_length=0"],
                           "prefix_layer prefix_length must be a positive integer, got 0"),
    "unknown target role": (["method.targets=[q,fc1]"],
                            "unknown LoRA target(s) ['fc1']: choose from q, k, v, o, ffn_in, ffn_out"),
    "method not for this architecture": (["model=tiny-roberta", "method=prefix_layer"], "prefix_layer supports "
                                         "gpt2, llama (prefixes go through the key/value cache), not roberta"),
    "missing data dir": (["data_dir={root}/nowhere"], "GLUE data dir {root}/nowhere does not exist; set "
                         "data_dir=/path/to/glue or export LORA_GLUE_DIR=/path/to/glue to a folder holding RTE/ "
                         "(<dir>/RTE/train.tsv, <dir>/RTE/dev.tsv)"),
    "wrong columns": (["data_dir={root}/columns"], "{root}/columns/RTE/train.tsv: header ['index', 'sentence1', "
                      "'label'] lacks columns ['sentence2'] that GLUE 'rte' needs; is it the right task's file?"),
    "empty file": (["data_dir={root}/empty"], "{root}/empty/RTE/train.tsv has no data rows; it is empty or cut "
                   "off: download it again"),
    "bad label": (["data_dir={root}/labels"], "{root}/labels/RTE/train.tsv line 2: bad rte label 'maybe', expected "
                  "('entailment', 'not_entailment'); is the file damaged?"),
    "adapter of another model": (["init_from={root}/roberta_adapter"], "adapter at {root}/roberta_adapter was "
                                 "trained on a roberta model of width 32 with 2 layers; this is a bert model of "
                                 "width 32 with 2 layers; pass an adapter trained on this model (or init_from=null)"),
    "truncated adapter": (["init_from={root}/cut_adapter"], "{root}/cut_adapter/adapter.safetensors is not a "
                          "readable safetensors file (truncated or corrupt?): ..."),
    "no adapter there": (["init_from={root}/nowhere"], "init_from={root}/nowhere: no such adapter directory; give "
                         "a saved adapter's folder"),
    "non-UTF-8 data": (["data_dir={root}/undecodable"], "{root}/undecodable/RTE/train.tsv: line 2 is not valid "
                       "UTF-8 (invalid start byte at byte ..."),
    "generation task on an encoder": (["task=e2e"], "task=e2e is generation and needs a decoder model; tiny-bert is "
                                      "a bert encoder (use a decoder, e.g. model=gpt2-medium or model=smollm2)"),
    "rank above the matrix size": (["method.r=64"], "LoRA rank r=64 exceeds the size of ..."),
    "empty layer list": (["method.layers=[]"], "LoRA layers=[] adapts no layer: list layer indices, or "
                         "layers=null for every layer"),
    "untrained paper row": (["experiment=roberta_base_lora", "train.max_steps=0"], "train.max_steps=0 trains "
                            "nothing, so experiment=roberta_base_lora would record an untrained lora; use method=none "
                            "for the unadapted baseline, or experiment=custom to evaluate as is"),
    "non-ASCII path unquoted": (["data_dir={root}/glué"], "LexerNoViableAltException: data_dir={root}/glué; Hydra's "
                                "override grammar takes spaces, non-ASCII and special characters only inside quotes: "
                                "write key='\"value\"' (e.g. data_dir='\"/data/glué\"')"),
    "results not writable": (["results_dir={root}/a_file/runs"], "results directory '{root}/a_file/runs' is not "
                             "writable (Not a directory); choose a directory you can write to (e.g. "
                             "results_dir=/path/you/own) or fix its permissions"),
}  # fmt: skip


def argv(world: dict[str, Path], overrides: list[str]) -> list[str]:
    # seed=7: not the complete run of `world` (whose config hash ignores data_dir: it would just be skipped)
    base = [*TINY, "seed=7", f"data_dir={GLUE}", f"results_dir={world['runs']}", f"output_dir={world['root'] / 'out'}",
            f"hydra.run.dir={world['root'] / 'hydra'}", "hydra.output_subdir=null"]  # fmt: skip
    return [*base, *(o.format(root=world["root"]) for o in overrides)]


def check(code: int, stderr: str, expected: str, world: dict[str, Path]) -> None:
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    want = "error: " + expected.format(root=world["root"])
    if want.endswith("..."):
        assert lines[0].startswith(want.removesuffix("...")), lines[0]
    else:
        assert lines[0] == want


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(
    case: str, world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    before = snapshot(world["runs"])
    overrides, expected = CASES[case]
    err = io.StringIO()
    monkeypatch.setattr(sys, "argv", ["experiments/train.py", *argv(world, overrides)])
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        MAIN()
    check(int(exit_.value.code), err.getvalue(), expected, world)
    assert snapshot(world["runs"]) == before  # same files, same bytes, same mtimes
    assert os.environ.get("HYDRA_FULL_ERROR") is None  # the entry point restores the environment


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_cuda_on_a_machine_without_one_is_one_line(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    err = io.StringIO()
    monkeypatch.setattr(sys, "argv", ["experiments/train.py", *argv(world, ["device=cuda"])])
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        MAIN()
    expected = ("device=cuda but this machine has no usable CUDA GPU (torch.cuda.is_available() is False); use "
                "device=auto or device=cpu")  # fmt: skip
    check(int(exit_.value.code), err.getvalue(), expected, world)


def test_a_bug_keeps_its_traceback(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # Not a UserError: a KeyError from inside the run is a bug, shown with its traceback (exit status 1), never
    # passed off as a one-line input error.
    import lora.train

    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("internal")

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(lora.train, "_setup", broken)
    monkeypatch.setattr(sys, "argv", ["experiments/train.py", *argv(world, ["seed=8"])])
    with pytest.raises(KeyError, match="internal"):
        MAIN()


def test_full_error_gives_the_traceback(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", ["experiments/train.py", *argv(world, ["method.r=0"])])
    with pytest.raises(ValueError, match="LoRA rank r must be a positive integer, got 0"):
        MAIN()


@pytest.mark.parametrize(
    "case", ["unknown model", pytest.param("method not for this architecture", marks=pytest.mark.slow)]
)
def test_as_a_subprocess(case: str, world: dict[str, Path]) -> None:
    """What a user sees: Hydra's composition error and an error found while building the run."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
    before = snapshot(world["runs"])
    overrides, expected = CASES[case]
    proc = subprocess.run(
        [sys.executable, "experiments/train.py", *argv(world, overrides)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    check(proc.returncode, proc.stderr, expected, world)
    assert snapshot(world["runs"]) == before
