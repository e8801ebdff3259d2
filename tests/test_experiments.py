"""Every ``conf/experiment/*.yaml``: composes with the recipe it promises, and runs end to end
(a few steps on the synthetic data, all experiments in one multirun) into a results table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from seqmnist import results
from seqmnist.core.rundir import RunDir
from seqmnist.reports import experiments as ex
from seqmnist.training.config import validate
from tests.helpers import PROJECT_ROOT, compose_config, run_sweep

CONF_DIR = PROJECT_ROOT / "conf"

# experiment -> (dataset, sequence, cell): what each one must train on.
EXPECTED = {
    "tutorial_lstm": ("mnist", "row", "lstm"),
    "tutorial_rnn": ("mnist", "row", "rnn"),
    "tutorial_gru3": ("mnist", "row", "gru"),
    "best_row": ("mnist", "row", "lstm"),
    "anytime_row": ("mnist", "row", "lstm"),
    "fashion_row": ("fashion_mnist", "row", "lstm"),
    "smnist_lstm": ("mnist", "pixel", "lstm"),
    "psmnist_lstm": ("mnist", "permuted", "lstm"),
    "fast99": ("mnist", "patch", "lstm"),
}
# experiment -> the recipe behind its row of the results table, as conf/experiment/<name>.yaml
# (and the defaults it builds on) gives it; a change of any of these values is a new recipe.
# Read off the composed config as the run builds its model, optimizer and data from it.
ADAM_1E3 = {"optimizer": "torch.optim.Adam", "lr": 0.001}
AFFINE = {"rotate": 10.0, "translate": 0.1, "scale": 0.1, "shear": 10.0}
BEST_ROW = {
    "net": ("lstm", 1, 128, 0.0, False, "torch"),  # cell, layers, hidden, dropout, bidir, init
    "optimizer": "torch.optim.Adam",
    "lr": 0.003,
    "scheduler": ("torch.optim.lr_scheduler.OneCycleLR", 0.003, 0.25),  # max_lr, pct_start
    "data": ("mnist", "row", 28, 128),  # dataset, sequence, pixels a step, batch size
    "augment": AFFINE,
    "ema_decay": 0.999,
    "trainer": (50, 1.0),  # max_epochs, gradient_clip_val
    "anytime_loss": "none",
    "results": (0.994, True),  # target, run by `make results`
}
RECIPES = {
    "tutorial_lstm": {
        **BEST_ROW,
        **ADAM_1E3,
        "scheduler": None,
        "augment": {},
        "ema_decay": None,
        "trainer": (20, None),  # trainer=cpu's 20 epochs, no clipping
        "results": (0.985, True),
    },
    "tutorial_rnn": {
        **BEST_ROW,
        "net": ("rnn", 1, 128, 0.0, False, "torch"),
        "optimizer": "torch.optim.RMSprop",
        "lr": 0.001,
        "rmsprop": {"alpha": 0.9, "momentum": 0.0},
        "scheduler": None,
        "augment": {},
        "ema_decay": None,
        "trainer": (20, 1.0),
        "results": (None, True),
    },
    "tutorial_gru3": {
        **BEST_ROW,
        "net": ("gru", 3, 200, 0.2, False, "tf1"),
        "optimizer": "seqmnist.models.optimizers.TF1RMSprop",
        "lr": 0.001,
        "rmsprop": {"decay": 0.9, "epsilon": 1e-10, "momentum": 0.0},
        "scheduler": None,
        "data": ("mnist", "row", 28, 64),
        "augment": {},
        "ema_decay": None,
        "trainer": (3, None),
        "results": (0.985, True),
    },
    "best_row": BEST_ROW,
    "anytime_row": {**BEST_ROW, "anytime_loss": "linear", "results": (0.99, True)},
    "fashion_row": {
        **BEST_ROW,
        "net": ("lstm", 2, 128, 0.2, False, "torch"),
        "data": ("fashion_mnist", "row", 28, 128),
        "augment": {},
        "trainer": (30, 1.0),
        "results": (0.915, True),
    },
    "fast99": {
        **BEST_ROW,
        "lr": 0.01,
        "scheduler": ("torch.optim.lr_scheduler.OneCycleLR", 0.01, 0.25),
        "data": ("mnist", "patch", 56, 128),
        "augment": {},
        "ema_decay": None,
        "trainer": (8, 1.0),
        "results": (0.99, False),
    },
    "smnist_lstm": {
        **BEST_ROW,
        **ADAM_1E3,
        "scheduler": ("torch.optim.lr_scheduler.CosineAnnealingLR", None, None),
        "data": ("mnist", "pixel", 28, 128),
        "augment": {},
        "ema_decay": None,
        "results": (None, False),
    },
    "psmnist_lstm": {
        **BEST_ROW,
        **ADAM_1E3,
        "scheduler": ("torch.optim.lr_scheduler.CosineAnnealingLR", None, None),
        "data": ("mnist", "permuted", 28, 128),
        "permutation_seed": 0,
        "augment": {},
        "ema_decay": None,
        "results": (None, False),
    },
}
# On top of the suite's FAST overrides (the last value wins): a couple of batches each, so the
# 784-step pixel experiments also take seconds.
TINY = [
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "hidden=8",
    "seed=0",
]


def compose_experiment(name: str, *overrides: str):
    return compose_config(f"experiment={name}", *overrides)


def plain(cfg, *drop: str) -> dict:
    """The config as a dict without the dotted keys in ``drop``."""
    out = OmegaConf.to_container(cfg, resolve=False)
    for key in drop:
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node[p]
        node.pop(leaf, None)
    return out


# The experiments, as everything else lists them: from conf/experiment/.
NAMES = [e.name for e in ex.catalogue()]


def test_every_experiment_file_is_covered() -> None:
    assert sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")) == sorted(NAMES)
    # A new experiment needs its expectation here (what it must train on).
    assert sorted(EXPECTED) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_experiment_composes(name: str) -> None:
    cfg = compose_experiment(name)
    validate(cfg)
    OmegaConf.to_container(cfg.model, resolve=True)  # every interpolation resolves
    dataset, sequence, cell = EXPECTED[name]
    assert (cfg.data.dataset, cfg.data.sequence, cfg.model.net.cell) == (dataset, sequence, cell)
    # No experiment forces a GPU: `trainer=gpu` is the user's to add.
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.tags, "experiments tag their runs"


def recipe(cfg) -> dict:
    """What RECIPES pins, read off a composed config as the run builds from it."""
    model, data = OmegaConf.to_container(cfg.model, resolve=True), cfg.data
    net, optimizer, scheduler = model["net"], model["optimizer"], model["scheduler"]
    ema = cfg.callbacks.get("weight_averaging")
    out = {
        "net": tuple(
            net[k]
            for k in ("cell", "num_layers", "hidden_size", "dropout", "bidirectional", "init")
        ),
        "optimizer": optimizer["_target_"],
        "lr": optimizer["lr"],
        "scheduler": scheduler
        and tuple(scheduler["scheduler"].get(k) for k in ("_target_", "max_lr", "pct_start")),
        "data": (data.dataset, data.sequence, data.step_pixels, data.batch_size),
        # elastic_sigma only shapes an elastic map: it counts when elastic_alpha does.
        "augment": {k: v for k, v in data.augment.items() if v and k != "elastic_sigma"},
        "ema_decay": ema.decay if ema else None,
        "trainer": (cfg.trainer.max_epochs, cfg.trainer.gradient_clip_val),
        "anytime_loss": model["anytime_loss"],
        "results": (cfg.results.target, cfg.results.run),
    }
    if "RMSprop" in optimizer["_target_"]:
        keys = ("decay", "epsilon") if "TF1" in optimizer["_target_"] else ("alpha",)
        out["rmsprop"] = {k: optimizer[k] for k in (*keys, "momentum")}
    if data.sequence == "permuted":
        out["permutation_seed"] = data.permutation_seed
    return out


def test_every_experiment_has_its_recipe_pinned() -> None:
    assert sorted(RECIPES) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_experiment_keeps_its_recipe(name: str) -> None:
    cfg = compose_experiment(name)
    assert recipe(cfg) == RECIPES[name]
    assert cfg.model.label_smoothing == 0.0


def test_a_one_cycle_peak_follows_the_learning_rate() -> None:
    """Recipes give the rate once: a one-cycle schedule peaks at optimizer.lr, also when a
    user overrides it."""
    one_cycle = []
    for name in NAMES:
        cfg = compose_experiment(name)
        sched = (cfg.model.get("scheduler") or {}).get("scheduler") or {}
        if str(sched.get("_target_", "")).endswith("OneCycleLR"):
            one_cycle.append(name)
            assert sched.max_lr == cfg.optimizer.lr, name
            again = compose_experiment(name, "optimizer.lr=0.5")
            assert again.model.scheduler.scheduler.max_lr == 0.5, name
    assert "best_row" in one_cycle and "fast99" in one_cycle


def test_fast99_reads_two_rows_a_step() -> None:
    from seqmnist.data.sequences import Layout

    cfg = compose_experiment("fast99")
    layout = Layout(cfg.data.sequence, cfg.data.step_pixels)
    assert (layout.seq_len, layout.input_size) == (14, 56)


def test_fashion_row_is_best_row_on_fashion_mnist_two_layers_no_augmentation() -> None:
    best, fashion = compose_experiment("best_row"), compose_experiment("fashion_row")
    assert fashion.data.dataset == "fashion_mnist"
    assert not any(v for k, v in fashion.data.augment.items() if k != "elastic_sigma")
    # Everything else is best_row's.
    differs = (
        "data.dataset",
        "data.augment",
        "layers",
        "dropout",
        "trainer.max_epochs",
        "tags",
        "results",
    )
    assert plain(fashion, *differs) == plain(best, *differs)


def test_anytime_row_is_best_row_trained_on_every_row() -> None:
    best, anytime = compose_experiment("best_row"), compose_experiment("anytime_row")
    assert best.model.anytime_loss == "none" and anytime.model.anytime_loss == "linear"
    differs = ("model.anytime_loss", "tags", "results")
    assert plain(anytime, *differs) == plain(best, *differs)


def test_tutorial_gru3_builds_tf1s_cells_and_optimizer() -> None:
    """A TF1 reproduction: TF1's initialisation and RMSProp, as built objects."""
    from hydra.utils import instantiate

    from seqmnist.models import SeqClassifier
    from seqmnist.models.optimizers import TF1RMSprop

    cfg = compose_experiment("tutorial_gru3", "hidden=8")
    model: SeqClassifier = instantiate(cfg.model, input_size=28, num_classes=10)
    optimizer = instantiate(model.hparams.optimizer)(params=model.parameters())
    assert isinstance(optimizer, TF1RMSprop)
    gru = model.net.rnn
    assert torch.all(gru.bias_ih_l0[: 2 * 8] == 1.0)  # TF1's GRU gate bias


def test_pixel_experiments() -> None:
    pixel, permuted = compose_experiment("smnist_lstm"), compose_experiment("psmnist_lstm")
    assert plain(permuted, "data.sequence", "tags", "results") == plain(
        pixel, "data.sequence", "tags", "results"
    )
    # GPU runs are one override away.
    assert compose_experiment("smnist_lstm", "trainer=gpu").trainer.accelerator == "gpu"


@pytest.fixture(scope="module")
def experiment_sweep(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All experiments, a few steps each, as one multirun like ``make results`` runs them."""
    sweep = tmp_path_factory.mktemp("experiments") / "sweep"
    proc = run_sweep(f"experiment={','.join(NAMES)}", *TINY, root=synthetic_root, sweep_dir=sweep)
    # Per-experiment failures are reported by the tests below, with each job's own error.
    assert (sweep / "results.md").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep


def job_of(sweep: Path, name: str) -> Path:
    (job,) = [j for j in sweep.iterdir() if j.is_dir() and RunDir(j).experiment() == name]
    return job


@pytest.mark.e2e
@pytest.mark.parametrize("name", NAMES)
def test_experiment_runs_end_to_end(experiment_sweep: Path, name: str) -> None:
    job = job_of(experiment_sweep, name)
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["status"] == "completed", metrics.get("error")
    assert metrics["test/acc"] is not None and metrics["epochs"] == 1
    resolved = yaml.safe_load((job / "resolved_config.yaml").read_text())
    dataset, sequence, cell = EXPECTED[name]
    assert resolved["data"]["dataset"] == dataset
    assert resolved["data"]["sequence"] == sequence
    assert resolved["model"]["net"]["cell"] == cell
    assert (metrics["dataset"], metrics["sequence"], metrics["cell"]) == (dataset, sequence, cell)
    if sequence in ("pixel", "permuted"):
        assert resolved["data"]["permutation_seed"] == 0


@pytest.mark.e2e
def test_results_table_from_the_experiment_sweep(experiment_sweep: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    start, end = ex.RESULTS_MARKERS
    readme.write_text(f"# x\n\n## Results\n\n{start}\nold\n{end}\n\nafter\n")
    code = results.main([str(experiment_sweep), "--readme", str(readme)])
    assert code == 0
    text = readme.read_text()
    assert "old" not in text and text.endswith(f"{end}\n\nafter\n")
    for name in NAMES:
        row = [ln for ln in text.splitlines() if ln.startswith(f"| `{name}` |")]
        assert len(row) == 1, name
        assert ex.describe_experiment(name) in row[0]
        assert "1 (0)" in row[0]  # one run, seed 0
        assert "(part of the test set)" in row[0]  # trainer.limit_test_batches=1
    assert (experiment_sweep / ex.MD_NAME).is_file()
    assert (experiment_sweep / ex.CSV_NAME).is_file()


def test_make_results_runs_the_experiments_marked_to_run(capsys: pytest.CaptureFixture) -> None:
    assert results.main(["--list"]) == 0
    listed = capsys.readouterr().out.strip().split(",")
    assert listed == [e.name for e in ex.catalogue() if e.run]
    # The CPU recipes of the table; fast99 is `make bench-accuracy`'s, the pixel ones need a GPU.
    assert "best_row" in listed and "fast99" not in listed and "smnist_lstm" not in listed
    assert "seqmnist.results --list" in (PROJECT_ROOT / "Makefile").read_text()


def test_the_training_page_lists_every_experiment() -> None:
    text = (PROJECT_ROOT / "docs" / "training.md").read_text()
    start, end = ex.CATALOGUE_MARKERS
    block = text.split(start + "\n", 1)[1].split(end, 1)[0]
    assert block.strip() == ex.catalogue_markdown(ex.catalogue()).strip()
    for name in NAMES:
        assert f"| `{name}` |" in block


def test_catalogue_rewrites_the_readme_block(tmp_path: Path) -> None:
    start, end = ex.CATALOGUE_MARKERS
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{start}\nstale\n{end}\nrest\n")
    assert results.main(["--catalogue", str(readme)]) == 0
    text = readme.read_text()
    assert "stale" not in text and text.startswith("intro\n") and text.endswith(f"{end}\nrest\n")
    assert all(f"| `{n}` |" in text for n in NAMES)


def test_an_experiment_without_its_results_block_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("# @package _global_\n# A.\nlayers: 1\n")
    with pytest.raises(ex.ExperimentError, match=r"a\.yaml has no complete 'results:' block"):
        ex.catalogue(tmp_path)
    (tmp_path / "a.yaml").write_text(
        "# A.\nresults:\n  order: 2\n  run: false\n  target: 0.9\n  reference: null\n"
    )
    (tmp_path / "b.yaml").write_text(
        "# B.\nresults:\n  order: 1\n  run: true\n  target: null\n  reference: x\n"
    )
    b, a = ex.catalogue(tmp_path)
    assert (b.name, b.run, b.target, b.reference, b.what) == ("b", True, None, "x", "B.")
    assert (a.name, a.order, a.target) == ("a", 2, 0.9)
