"""`seqmnist.export`: ONNX and TorchScript files that give the checkpoint's probabilities and
anytime logits for any batch size, the JSON that says how to feed them, and `predict` on an
exported file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqmnist.data.synthetic import make_images
from seqmnist.export import run as export_command
from seqmnist.inference.checkpoints import CheckpointError, load_checkpoint
from seqmnist.inference.export import TOLERANCE, ExportError, export
from seqmnist.inference.predictor import CheckpointPredictor, ExportedPredictor, load_predictor
from seqmnist.models import SeqClassifier
from seqmnist.models.exportable import AnytimeOutputs
from seqmnist.predict import main as predict_main
from tests.helpers import compose_config, make_checkpoint

pytest.importorskip("onnxruntime", reason="the export extra: make install-extras")
pytest.importorskip("onnxscript", reason="the export extra: make install-extras")

IMAGES = make_images(256, seed=5)[0]

# Every cell, stacked, bidirectional, and a layout with a pixel order of its own.
KINDS = {
    "rnn": {"cell": "rnn"},
    "lstm-2-layers": {"cell": "lstm", "layers": 2},
    "gru-bidirectional": {"cell": "gru", "layers": 2, "bidirectional": True},
    "lstm-patches": {"cell": "lstm", "sequence": "patch", "step_pixels": 56},
}


@pytest.fixture(scope="module")
def checkpoints(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("ckpts")
    return {
        name: make_checkpoint(folder / f"{name}.ckpt", synthetic_root, **kw)
        for name, kw in KINDS.items()
    }


def reference(ckpt: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    loaded = load_checkpoint(ckpt)
    with torch.inference_mode():
        x = loaded.data.to_inputs(torch.as_tensor(images))
        # The model as training and evaluation run it: forward() and step_logits().
        return loaded.model.net(x).softmax(-1).numpy(), loaded.model.net.step_logits(x).numpy()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_exported_model_matches_its_checkpoint(
    checkpoints: dict, kind: str, fmt: str, tmp_path: Path
) -> None:
    ckpt = checkpoints[kind]
    path = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    meta = export(load_checkpoint(ckpt), fmt, path, IMAGES)
    check = meta["verified"]
    assert check["passed"] and check["images"] == 256
    assert check["max_abs_diff_probabilities"] <= TOLERANCE
    assert check["max_abs_diff_step_logits"] <= TOLERANCE
    assert json.loads(path.with_suffix(".json").read_text()) == meta

    exported = load_predictor(path)
    assert isinstance(exported, ExportedPredictor)
    for n in (1, 37):  # the batch axis is dynamic
        answer = exported.answer(IMAGES[:n])
        probs, step_logits = reference(ckpt, IMAGES[:n])
        assert answer.probabilities.shape == probs.shape
        np.testing.assert_allclose(answer.probabilities, probs, atol=TOLERANCE)
        steps = torch.from_numpy(step_logits).softmax(-1).numpy()
        np.testing.assert_allclose(answer.step_probabilities, steps, atol=TOLERANCE)


def test_the_json_says_how_to_feed_the_model(checkpoints: dict, tmp_path: Path) -> None:
    loaded = load_checkpoint(checkpoints["lstm-patches"])
    meta = export(loaded, "onnx", tmp_path / "m.onnx", None)
    pre = meta["preprocessing"]
    assert (pre["sequence"], pre["step_pixels"], pre["seq_len"], pre["input_size"]) == (
        "patch",
        56,
        14,
        56,
    )
    assert meta["inputs"]["sequences"]["shape"] == ["batch", 14, 56]
    assert meta["outputs"]["step_logits"]["shape"] == ["batch", 14, 10]
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["verified"] is None
    bi = export(
        load_checkpoint(checkpoints["gru-bidirectional"]), "torchscript", tmp_path / "b.pt", None
    )
    assert bi["anytime"] is False  # the backward half has read everything at every step


def test_permuted_layout_travels_in_the_json(synthetic_root: Path, tmp_path: Path) -> None:
    ckpt = make_checkpoint(
        tmp_path / "p.ckpt", synthetic_root, sequence="permuted", permutation_seed=3, hidden=4
    )
    loaded = load_checkpoint(ckpt)
    meta = export(loaded, "torchscript", tmp_path / "p.pt", IMAGES[:16])
    assert meta["preprocessing"]["permutation"] == loaded.data.permutation.tolist()
    exported = load_predictor(tmp_path / "p.pt")
    assert torch.equal(exported.data.permutation, loaded.data.permutation)


def test_the_fused_cpu_gru_exports_through_the_standard_path(
    synthetic_root: Path, tmp_path: Path
) -> None:
    ckpt = make_checkpoint(tmp_path / "g.ckpt", synthetic_root, cell="gru")
    state = torch.load(ckpt, weights_only=True)
    state["hyper_parameters"]["net"]["cpu_kernel"] = "fused"  # as cell=gru trains by default
    torch.save(state, ckpt)
    loaded = load_checkpoint(ckpt)
    assert loaded.model.net.cpu_kernel == "fused"
    meta = export(loaded, "onnx", tmp_path / "g.onnx", IMAGES)
    assert meta["verified"]["passed"]
    # AnytimeOutputs runs nn.GRU itself, also in training mode where the fused pass would run.
    wrapper = AnytimeOutputs(loaded.model.net).train()
    x = loaded.data.to_inputs(torch.as_tensor(IMAGES[:4]))
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x)[0], loaded.model.net.eval()(x).softmax(-1))


def test_the_command_writes_into_its_run_dir_and_predict_reads_the_file(
    checkpoints: dict, synthetic_root: Path, tmp_path: Path, pictures: dict, capsys
) -> None:
    run_dir = tmp_path / "export-run"
    cfg = compose_config(
        f"ckpt_path={checkpoints['rnn']}",
        f"data.root={synthetic_root}",
        "data.download=false",
        config_name="export",
        run_dir=run_dir,
    )
    meta = export_command(cfg)
    assert (run_dir / "model.onnx").is_file() and (run_dir / "model.json").is_file()
    assert meta["verified"]["images"] == 200  # the synthetic test split has 200
    capsys.readouterr()

    outputs = []
    for model in (checkpoints["rnn"], run_dir / "model.onnx"):
        assert predict_main(["--json", "--ckpt", str(model), str(pictures["digit"])]) == 0
        outputs.append(json.loads(capsys.readouterr().out)["results"][0]["top"])
    (from_ckpt, from_onnx) = outputs
    assert [t["class"] for t in from_ckpt] == [t["class"] for t in from_onnx]
    np.testing.assert_allclose(
        [t["probability"] for t in from_ckpt], [t["probability"] for t in from_onnx], atol=TOLERANCE
    )


def test_bad_format_and_missing_json_are_clear_errors(checkpoints: dict, tmp_path: Path) -> None:
    cfg = compose_config(
        f"ckpt_path={checkpoints['rnn']}",
        "format=tflite",
        config_name="export",
        run_dir=tmp_path / "r",
    )
    with pytest.raises(ExportError, match="format=onnx or format=torchscript"):
        export_command(cfg)
    export(load_checkpoint(checkpoints["rnn"]), "onnx", tmp_path / "m.onnx", None)
    (tmp_path / "m.json").unlink()
    with pytest.raises(CheckpointError, match=r"m\.json is missing"):
        load_predictor(tmp_path / "m.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    (tmp_path / "junk.json").write_text((tmp_path / "m.onnx").with_suffix(".json").name)
    with pytest.raises(CheckpointError, match="not the JSON that seqmnist.export writes"):
        load_predictor(tmp_path / "junk.onnx")


def test_a_checkpoint_predictor_is_the_checkpoints_model(checkpoints: dict) -> None:
    predictor = load_predictor(checkpoints["lstm-2-layers"])
    assert isinstance(predictor, CheckpointPredictor)
    probs, _ = reference(checkpoints["lstm-2-layers"], IMAGES[:8])
    np.testing.assert_allclose(predictor.answer(IMAGES[:8]).probabilities, probs, atol=1e-6)
    assert isinstance(predictor.loaded.model, SeqClassifier)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_exported_model_answers_early_as_its_checkpoint(
    checkpoints: dict, fmt: str, tmp_path: Path
) -> None:
    from seqmnist.inference.predictor import CheckpointPredictor

    ckpt = checkpoints["lstm-2-layers"]
    path = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    export(load_checkpoint(ckpt), fmt, path, IMAGES)
    exported, mine = load_predictor(path), CheckpointPredictor(ckpt)
    conf = mine.answer(IMAGES).step_probabilities.max(-1)
    # A threshold half the images reach at the first step: some answer early, some read on.
    threshold = float(np.median(conf[:, 0]))
    a, b = exported.answer_early(IMAGES, threshold), mine.answer_early(IMAGES, threshold)
    assert b.steps.min() < 28 and b.steps.max() > 1, np.bincount(b.steps)
    # Float noise may move an image sitting on the threshold by a step; no more than that:
    # an image answers at the same step, or one step apart where its top probability at the
    # earlier of the two is within the export's tolerance of the threshold.
    moved = np.flatnonzero(a.steps != b.steps)
    apart = np.abs(a.steps.astype(np.int64) - b.steps).max()
    assert apart <= 1, f"images {moved}: steps {a.steps[moved]} exported, {b.steps[moved]}"
    for i in moved:
        k = min(a.steps[i], b.steps[i])
        assert abs(conf[i, k - 1] - threshold) <= TOLERANCE, (i, a.steps[i], b.steps[i])
    same = a.steps == b.steps
    np.testing.assert_allclose(a.probabilities[same], b.probabilities[same], atol=TOLERANCE)
