"""seqmnist.inference.checkpoints: finding, safely reading and rebuilding trained models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from seqmnist.core.errors import SeqMNISTError
from seqmnist.data import PIXELS, SeqMNISTDataModule, load_split
from seqmnist.inference.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
)
from seqmnist.models.module import SeqClassifier
from tests.helpers import LAYOUT_IDS, LAYOUTS, best_ckpt, make_checkpoint


def test_load_model_rebuilds_the_trained_net(trained_run: Path) -> None:
    path = best_ckpt(trained_run)
    model, data = load_model(path)
    assert isinstance(model, SeqClassifier) and not model.training
    assert (data.dataset, data.sequence, data.permutation) == ("mnist", "row", None)
    assert data.class_names == [str(d) for d in range(10)]
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, raw[f"net.{key}"]), key
    assert model.hparams["net"]["hidden_size"] == 16  # FAST trains hidden=16


def test_run_dir_and_checkpoints_dir_resolve_to_best(trained_run: Path) -> None:
    best = best_ckpt(trained_run)
    assert best.name.startswith("epoch_")
    assert resolve_checkpoint(trained_run) == best
    assert resolve_checkpoint(trained_run / "checkpoints") == best
    loaded = load_checkpoint(trained_run)
    assert loaded.path == best and loaded.run_dir == trained_run.resolve()


def test_moved_run_uses_its_own_files(trained_run: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(trained_run, moved)
    # metrics.json still names the old absolute path: the copy's file must be chosen.
    assert resolve_checkpoint(moved) == moved / "checkpoints" / best_ckpt(trained_run).name
    (moved / "metrics.json").unlink()
    ckpts = moved / "checkpoints"
    for score in ("0.5000", "0.9000"):
        shutil.copy(ckpts / "last.ckpt", ckpts / f"epoch_00{score[2]}-val_acc_{score}.ckpt")
    assert resolve_checkpoint(moved).name == "epoch_009-val_acc_0.9000.ckpt"
    for p in ckpts.glob("epoch_*.ckpt"):
        p.unlink()
    assert resolve_checkpoint(moved).name == "last.ckpt"


def test_sweep_dir_names_a_job(trained_run: Path, tmp_path: Path) -> None:
    shutil.copytree(trained_run, tmp_path / "sweep" / "0")
    with pytest.raises(CheckpointError, match=r"no checkpoint in directory .*sweep.*multirun"):
        resolve_checkpoint(tmp_path / "sweep")


@pytest.mark.parametrize(
    ("kind", "needles"),
    [
        ("missing", ["does not exist", "nope.ckpt"]),
        ("text", ["is not a PyTorch checkpoint", "notes.ckpt"]),
        ("empty", ["is empty", "empty.ckpt"]),
        ("random_dict", ["not a seqmnist checkpoint", "random.ckpt"]),
        ("tensor", ["holds a Tensor", "tensor.ckpt"]),
        ("empty_dir", ["no checkpoint in directory"]),
    ],
)
def test_bad_checkpoints_name_the_file_and_the_fix(
    tmp_path: Path, kind: str, needles: list[str]
) -> None:
    path = {
        "missing": tmp_path / "nope.ckpt",
        "text": tmp_path / "notes.ckpt",
        "empty": tmp_path / "empty.ckpt",
        "random_dict": tmp_path / "random.ckpt",
        "tensor": tmp_path / "tensor.ckpt",
        "empty_dir": tmp_path / "rundir",
    }[kind]
    if kind == "text":
        path.write_text("these are my notes, not a model\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random_dict":
        torch.save({"weights": torch.randn(3, 3), "epoch": 4, "name": "resnet"}, path)
    elif kind == "tensor":
        torch.save(torch.randn(4), path)
    elif kind == "empty_dir":
        path.mkdir()
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert "Fix:" in msg
    assert isinstance(info.value, SeqMNISTError)


class _Payload:
    """Unpickling this would create a file: proof that weights_only refused it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_arbitrary_objects_are_refused_not_run(trained_run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    ckpt = torch.load(best_ckpt(trained_run), map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["extra"] = _Payload(str(marker))
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt stores Python objects .*arbitrary code"):
        load_model(path)
    assert not marker.exists()


def test_weights_of_another_model_are_refused(trained_run: Path, tmp_path: Path) -> None:
    ckpt = torch.load(best_ckpt(trained_run), map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["net"]["hidden_size"] = 32  # the weights are 16 wide
    torch.save(ckpt, tmp_path / "wide.ckpt")
    with pytest.raises(CheckpointError, match=r"wide\.ckpt: its weights do not fit .*shape"):
        load_model(tmp_path / "wide.ckpt")
    ckpt["hyper_parameters"]["net"].update(hidden_size=16, cell="gru")  # LSTM weights
    torch.save(ckpt, tmp_path / "gru.ckpt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "gru.ckpt")
    ckpt["hyper_parameters"]["net"]["cell"] = "transformer"
    torch.save(ckpt, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match=r"odd\.ckpt: .*do not build a model"):
        load_model(tmp_path / "odd.ckpt")


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_every_layout_round_trips(synthetic_root: Path, tmp_path: Path, layout: dict) -> None:
    path = make_checkpoint(tmp_path / "m.ckpt", synthetic_root, **layout)
    cell, layers, bidirectional = layout["cell"], layout["layers"], layout["bidirectional"]
    dataset, sequence = layout["dataset"], layout["sequence"]
    extra = {k: v for k, v in layout.items() if k in ("permutation_seed", "step_pixels")}
    model, data = load_model(path)
    assert (data.dataset, data.sequence) == (dataset, sequence)
    assert model.hparams["net"]["bidirectional"] is bidirectional
    assert model.net.rnn.num_layers == layers and model.net.cell == cell
    dm = SeqMNISTDataModule(
        dataset=dataset, root=str(synthetic_root), sequence=sequence, download=False, **extra
    )
    assert data.input_size == dm.input_size and data.seq_len == dm.seq_len
    if sequence == "permuted":
        assert torch.equal(data.permutation, dm.permutation)
    if dataset == "fashion_mnist":
        assert data.class_names[9] == "Ankle boot"
    # The loaded settings lay images out exactly as the training data module did.
    dm.setup("test")
    raw = load_split(dm.root, dm.dataset, "test")[0][:3]
    assert torch.equal(data.to_inputs(raw), dm.test_set.inputs[:3])


def test_the_saved_permutation_is_the_one_used(synthetic_root: Path, tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "p.ckpt", synthetic_root, sequence="permuted")
    ckpt = torch.load(path, weights_only=True)
    custom = torch.arange(PIXELS).flip(0)
    ckpt["SeqMNISTDataModule"]["permutation"] = custom
    torch.save(ckpt, path)
    assert torch.equal(load_model(path)[1].permutation, custom)
    ckpt["SeqMNISTDataModule"]["permutation"] = torch.zeros(PIXELS, dtype=torch.long)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="not a permutation"):
        load_model(path)
    # seqmnist.train always saves the order: a permuted checkpoint without it is damaged.
    del ckpt["SeqMNISTDataModule"]["permutation"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="not a permutation"):
        load_model(path)


def test_data_settings_come_from_the_checkpoint(synthetic_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    path = make_checkpoint(run / "checkpoints" / "m.ckpt", synthetic_root, sequence="column")
    data = load_model(path)[1]
    assert data.sequence == "column" and data.source.endswith("(datamodule_hyper_parameters)")
    # A file the project never wrote (no data module settings) is refused, naming the file,
    # even with a run config beside it.
    (run / "resolved_config.yaml").write_text(
        json.dumps({"data": {"dataset": "mnist", "sequence": "column"}})
    )
    ckpt = torch.load(path, weights_only=True)
    del ckpt["datamodule_hyper_parameters"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="m.ckpt does not say how its model reads images"):
        load_model(path)
    # A layout that contradicts the model is refused.
    ckpt["datamodule_hyper_parameters"] = {"dataset": "mnist", "sequence": "pixel"}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="reads 28 values per step .* give 1"):
        load_model(path)
