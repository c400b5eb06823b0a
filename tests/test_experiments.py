"""Smoke runs of every experiment file (conf/experiment/*.yaml) through `lora.train.execute`, as
`experiments/train.py experiment=<name>` runs it, on a tiny model of the same family and real data for 2 steps.

The demo runs once per method of `make demo`, and demo_nlg also as `make demo-nlg`'s unadapted baseline. All runs
together take 80-125 s on a 2-core machine, so the fast set holds one experiment per (method family x task kind)
and one per NLG task; the others are marked slow (`make test-slow`). NLG runs decode with beam 2 for 4 tokens; the
Java scorers (METEOR, ROUGE-L, CIDEr: ~10-15 s a call) are replaced by a stub here, tests/test_generation.py runs
the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import lora.config  # noqa: F401  (registers the config schema and the `by` resolver)
from lora import records
from lora.metrics import nlg as nlg_metrics
from lora.train import execute, run_name

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
NLG_TASKS = ("e2e", "webnlg", "dart")

# One experiment per (method family x task kind), and one per NLG task: the rest run with -m slow.
FAST = {
    "roberta_base_lora",  # GLUE, LoRA, MNLI-initialised rows (init_from=null here)
    "deberta_xxl_lora",  # GLUE, another family (DeBERTa-v2), bf16 and cls_dropout
    "demo",  # GLUE-style, once per method of `make demo` (full, bitfit, adapters, prefix, LoRA)
    "gpt2_medium_e2e_lora",  # NLG, LoRA (fused c_attn)
    "gpt2_medium_e2e_ft",  # NLG, full fine-tuning
    "gpt2_medium_e2e_adapter_l_0.37m",  # NLG, adapters
    "gpt2_medium_e2e_prefix_layer",  # NLG, prefix tuning through the cache
    "gpt2_medium_webnlg_lora",  # WebNLG: seen / unseen scores
    "gpt2_medium_dart_lora",  # DART: TER
    "demo_nlg",  # Llama family
}


def task_of(experiment: str) -> str:
    """The task an experiment is run on here: its own NLG task, RTE for GLUE experiments (and the demo)."""
    if experiment == "demo_nlg":
        return "e2e"
    for task in NLG_TASKS:
        if f"_{task}_" in experiment:
            return task
    return "rte"


def model_of(experiment: str) -> str:
    """The tiny model standing in for the experiment's model (same family, random weights, no download)."""
    if experiment.startswith("gpt2_"):
        return "tiny-gpt2"
    if experiment == "demo_nlg" or experiment.startswith("mini_e2e"):
        return "tiny-llama"  # SmolLM2's family
    if experiment == "demo" or experiment.startswith("mini_"):
        return "tiny-bert"  # MiniLM's family
    if experiment.startswith("deberta"):
        return "tiny-deberta"
    return "tiny-roberta"


def nlg_data_dir(tmp_path: Path) -> Path:
    """A data_dir for the NLG tasks: the real E2E and WebNLG folders, and DART with its real test set. DART's train
    split is not in ../shared/data (see its MANIFEST.md): train and dev are the real dev entries with at most two
    triples (longer ones overflow the tiny tokenizer's 128 positions)."""
    root = tmp_path / "nlg"
    (root / "dart").mkdir(parents=True)
    for name in ("e2e", "webnlg_challenge_2017"):
        (root / name).symlink_to(SHARED / name)
    dart = SHARED / "dart"
    dev = json.loads((dart / "dart-v1.1.1-full-dev.json").read_text())
    short = [e for e in dev if len(e["tripleset"]) <= 2]
    for split in ("train", "dev"):
        (root / "dart" / f"dart-v1.1.1-full-{split}.json").write_text(json.dumps(short[:32]))
    (root / "dart" / "dart-v1.1.1-full-test.xml").symlink_to(dart / "dart-v1.1.1-full-test.xml")
    return root


def smoke_config(experiment: str, tmp_path: Path, *extra: str) -> DictConfig:
    """The experiment on its tiny stand-in: 2 steps of batch 8, 16 train / 8 eval examples, outputs in tmp_path."""
    task = task_of(experiment)
    overrides = [
        f"experiment={experiment}",
        f"task={task}",
        f"model={model_of(experiment)}",
        "task.max_train_samples=16",
        "task.max_eval_samples=8",
        "train.max_steps=2",
        "train.batch_size=8",
        "train.eval_batch_size=8",
        "train.progress=false",
        f"results_dir={tmp_path / 'results'}",
        f"output_dir={tmp_path / 'outputs'}",
    ]
    if task in NLG_TASKS:
        overrides += [
            f"data_dir={nlg_data_dir(tmp_path)}",
            "task.max_decode_samples=2",
            "task.num_beams=2",
            "task.max_new_tokens=4",
        ]
    else:
        overrides += [f"data_dir={SHARED / 'glue'}", "init_from=null"]
    if experiment.endswith("_none"):  # the unadapted model: evaluated as it is
        overrides.append("train.max_steps=0")
    if experiment == "mini_prefix_embed":  # 16 prefix tokens + 128 do not fit the tiny model's 130 positions
        overrides.append("train.max_length=64")
    if "adptd" in experiment:  # AdapterDrop rows drop up to 8 layers; the tiny stand-in has 2
        overrides.append("method.drop_layers=1")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*overrides, *extra])


@pytest.fixture
def stub_java_scorers(monkeypatch: pytest.MonkeyPatch) -> None:
    """METEOR / ROUGE-L / CIDEr without Java: 0.5 each (BLEU, NIST, TER stay real)."""
    monkeypatch.setattr(nlg_metrics, "coco_scores", lambda hyps, refs, metrics=(): {
        m: 0.5 for m in metrics if m in ("meteor", "rouge_l", "cider")
    })  # fmt: skip


# Known bugs (see tests/test_train.py::test_causal_lm_logits_stay_aligned_with_the_callers_labels_under_prefix_embed):
# prefix_embed's logits cover its virtual tokens, which Trainer's label smoother (label_smoothing 0.1 on E2E and
# WebNLG; DART has none) cannot pair with the caller's labels.
KNOWN_BUGS: dict[str, str] = {}  # experiment -> reason, for a known failure kept visible as a strict xfail


def smoke_params() -> list:
    cases = [(e, ()) for e in EXPERIMENTS]
    cases += [("demo", (f"method={m}",)) for m in ("full", "bitfit", "adapter_h", "adapter_p", "prefix_embed")]  # fmt: skip
    cases.append(("demo_nlg", ("method=none", "train.max_steps=0")))  # make demo-nlg's "before" run
    params = []
    for e, extra in cases:
        marks = [] if e in FAST else [pytest.mark.slow]
        if e in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(strict=True, raises=RuntimeError, reason=KNOWN_BUGS[e]))
        params.append(pytest.param(e, extra, id=" ".join((e, *extra)), marks=marks))
    return params


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data not found at {SHARED} (../shared/data)")
@pytest.mark.parametrize(("experiment", "extra"), smoke_params())
def test_experiment_runs(
    experiment: str, extra: tuple[str, ...], tmp_path: Path, stub_java_scorers: None
) -> None:
    record = execute(smoke_config(experiment, tmp_path, *extra))

    assert record.status == "complete", record.reason
    assert record.experiment == experiment
    path = tmp_path / "results" / records.record_filename(record)
    assert records.RunRecord.from_json(path.read_text()).config_hash == record.config_hash
    trained = dict(a.split("=") for a in extra).get("method") != "none" and record.method != "none"
    assert (record.params["trainable"] > 0) == trained
    assert record.best is not None and record.epochs
    if task_of(experiment) in NLG_TASKS:
        expected = {"e2e": "nist", "webnlg": "bleu_seen", "dart": "ter"}[task_of(experiment)]
        assert expected in record.best["metrics"]  # (the first two WebNLG test inputs are of seen categories)
        decoded = sorted((tmp_path / "results").glob(f"{run_name(record)}.predictions.*.txt"))
        assert decoded and all(len(p.read_text().splitlines()) == 2 for p in decoded)  # best and/or last
    else:
        assert 0.0 <= record.best["metrics"]["accuracy"] <= 1.0
    if trained:
        assert (tmp_path / "outputs" / run_name(record) / "adapter").is_dir()


def test_fast_set_names_existing_experiments() -> None:
    # A renamed experiment file must not silently drop out of the fast set.
    assert set(EXPERIMENTS) >= FAST
