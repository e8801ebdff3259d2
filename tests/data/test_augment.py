"""Training-batch augmentation: geometry, per-image draws, determinism, labels, train split
only, every sequence layout, config errors, and an augmented run resumed = uninterrupted."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from torchvision.transforms.v2.functional import gaussian_blur

from seqmnist.core.errors import ConfigError
from seqmnist.data import SeqMNISTDataModule
from seqmnist.data.augment import BatchAugment, _blur_matrix
from seqmnist.data.sequences import Layout, image_view, sequence_view
from seqmnist.train import run
from tests.helpers import FAST, compose_config, metrics_of, train_in_process

AFFINE = {"rotate": 10.0, "translate": 0.1, "scale": 0.1, "shear": 10.0}
BOTH = {**AFFINE, "elastic_alpha": 34.0, "elastic_sigma": 4.0}


def block() -> torch.Tensor:
    """One (1, 28, 28) image: a bright 5x3 block away from the centre."""
    img = torch.zeros(1, 28, 28)
    img[0, 5:10, 3:6] = 1.0
    return img


def at_limit(self, n: int, limit: float, like: torch.Tensor) -> torch.Tensor:
    """Every random draw at the top of its range: a known transform."""
    return torch.full((n,), limit, device=like.device)


def test_shift_of_two_pixels_moves_the_image_two_pixels_down_and_right() -> None:
    with mock.patch.object(BatchAugment, "_uniform", at_limit):
        out = BatchAugment(translate=2 / 28)(block())
    expected = torch.zeros(1, 28, 28)
    expected[0, 7:12, 5:8] = 1.0
    assert torch.allclose(out, expected, atol=1e-5)


def test_rotation_by_90_degrees_turns_the_image_clockwise() -> None:
    with mock.patch.object(BatchAugment, "_uniform", at_limit):
        out = BatchAugment(rotate=90.0)(block())
    assert torch.allclose(out, torch.rot90(block(), -1, (1, 2)), atol=1e-5)


def test_flip_mirrors_left_to_right() -> None:
    images = torch.rand(6, 28, 28)
    assert torch.allclose(BatchAugment(flip=1.0)(images), images.flip(2), atol=1e-5)
    torch.manual_seed(0)
    out = BatchAugment(flip=0.5)(images)
    mirrored = [torch.allclose(o, i.flip(1), atol=1e-5) for o, i in zip(out, images, strict=True)]
    kept = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, images, strict=True)]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True)) and any(mirrored) and any(kept)


def test_scale_above_one_enlarges_about_the_centre() -> None:
    centred = torch.zeros(1, 28, 28)
    centred[0, 12:16, 12:16] = 1.0
    with mock.patch.object(BatchAugment, "_uniform", at_limit):
        out = BatchAugment(scale=0.5)(centred)
    assert torch.allclose(out.sum(), centred.sum() * 1.5**2, rtol=0.05)
    assert torch.allclose(out, out.flip(1).flip(2), atol=1e-5)  # still centred


def test_elastic_blur_is_torchvisions_gaussian_blur() -> None:
    field = torch.rand(3, 2, 28, 20)
    ours = _blur_matrix(28, 4.0, torch.device("cpu")) @ field @ _blur_matrix(20, 4.0, "cpu").T
    assert torch.allclose(ours, gaussian_blur(field, [25, 25], [4.0, 4.0]), atol=1e-5)


def test_elastic_distortion_moves_pixels_by_about_its_strength() -> None:
    torch.manual_seed(0)
    grid = BatchAugment(elastic_alpha=34.0)._displacement(256, 28, 28, torch.zeros(1))
    pixels = grid * 14  # normalised units -> pixels
    rms = pixels.pow(2).sum(-1).mean().sqrt()
    assert 1.0 < rms < 3.0  # Simard's alpha 34, sigma 4: a pixel or two


@pytest.mark.parametrize("strengths", [AFFINE, {"elastic_alpha": 34.0}, BOTH])
def test_shape_dtype_range_and_one_draw_per_image(strengths: dict) -> None:
    torch.manual_seed(0)
    images = block().repeat(16, 1, 1)
    out = BatchAugment(**strengths)(images)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6
    # Same image in, 16 different images out: each has its own draw.
    assert len({tuple(o.flatten().tolist()) for o in out}) == 16
    # Still the same picture, moved a little.
    cosine = torch.nn.functional.cosine_similarity(out.flatten(1), images.flatten(1))
    assert cosine.mean() > 0.3 and not torch.equal(out, images)


def test_same_seed_same_batch_other_seed_other_batch() -> None:
    images = torch.rand(8, 28, 28)
    aug = BatchAugment(**BOTH)
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append(aug(images))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_all_strengths_zero_leaves_the_batch_alone() -> None:
    images = torch.rand(4, 28, 28)
    aug = BatchAugment.from_config(None)
    assert not aug.active and aug(images) is images


@pytest.mark.parametrize("mode", ["row", "column", "pixel", "permuted", "patch"])
def test_image_view_inverts_sequence_view(mode: str) -> None:
    images = torch.rand(3, 28, 28)
    perm = torch.randperm(784)
    seqs = sequence_view(images, mode, 56, perm)
    assert torch.equal(image_view(seqs, mode, perm), images)
    layout = Layout(mode, 56, perm)
    assert torch.equal(layout.from_images(layout.to_images(seqs)), seqs)


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"rotate": -1}, "data.augment.rotate=-1"),
        ({"scale": 1.5}, "data.augment.scale=1.5"),
        ({"elastic_sigma": 0}, "data.augment.elastic_sigma=0"),
        ({"flip": 2}, "data.augment.flip=2"),
        ({"rotation": 10}, "no key 'rotation'"),
    ],
)
def test_bad_strengths_name_the_key(values: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace(".", r"\.")):
        BatchAugment.from_config(values)


def fake_trainer(training: bool) -> SimpleNamespace:
    return SimpleNamespace(training=training)


@pytest.mark.parametrize("mode", ["row", "permuted"])
def test_only_training_batches_change_and_labels_never(synthetic_root: Path, mode: str) -> None:
    dm = SeqMNISTDataModule(root=str(synthetic_root), sequence=mode, augment=BOTH, val_size=100)
    dm.setup("fit")
    x, y = dm.train_set.inputs[:32], dm.train_set.targets[:32]
    dm.trainer = fake_trainer(training=False)  # validation, test, predict
    assert dm.on_after_batch_transfer((x, y), 0)[0] is x
    dm.trainer = fake_trainer(training=True)
    xa, ya = dm.on_after_batch_transfer((x, y), 0)
    assert ya is y
    assert xa.shape == x.shape and xa.dtype == x.dtype and not torch.equal(xa, x)
    # The same images, augmented in image space and laid out in the same mode.
    diff = (dm.layout.to_images(xa) - dm.layout.to_images(x)).abs().mean()
    assert diff < 0.5 * dm.layout.to_images(x).mean() + 0.2


def test_the_strengths_are_saved_as_plain_numbers(synthetic_root: Path) -> None:
    dm = SeqMNISTDataModule(root=str(synthetic_root), augment={"rotate": 5})
    assert dm.hparams.augment == {**BatchAugment().as_dict(), "rotate": 5.0}
    assert SeqMNISTDataModule(root=str(synthetic_root)).hparams.augment is None


def test_a_bad_strength_on_the_command_line_is_one_message(
    synthetic_root: Path, tmp_path: Path
) -> None:
    args = [f"data.root={synthetic_root}", *FAST, "augment=affine", "data.augment.shear=95"]
    status, _ = run(compose_config(*args, run_dir=tmp_path / "r"), args, multirun=False)
    assert status == 2 and not (tmp_path / "r" / "metrics.json").exists()


# -- whole runs ------------------------------------------------------------------------------
RUN = [
    *(o for o in FAST if not o.startswith("trainer.max_epochs")),
    "trainer.max_epochs=2",
    "augment=affine_elastic",
    "callbacks=ema",
    "dropout=0.2",
    "layers=2",
]
SAME = ["val/acc_best", "test/acc", "test/loss", "epochs"]


def test_augmented_run_is_seeded_and_resumes_exactly(synthetic_root: Path, tmp_path: Path) -> None:
    plain = train_in_process(synthetic_root, tmp_path / "plain", *RUN, "augment=none")
    full = train_in_process(synthetic_root, tmp_path / "full", *RUN)
    assert full["status"] == "completed"
    assert {k: full[k] for k in SAME} != {k: plain[k] for k in SAME}  # augmentation did act

    # One epoch, then resume=RUN_DIR to two: the same as two epochs straight.
    half = tmp_path / "half"
    train_in_process(synthetic_root, half, *RUN, "trainer.max_epochs=1")
    args = [f"resume={half}", "trainer.max_epochs=2"]
    status, _ = run(compose_config(*args, run_dir=tmp_path / "inv"), args, multirun=False)
    assert status == 0
    resumed = metrics_of(half)
    assert {k: resumed[k] for k in SAME} == {k: full[k] for k in SAME}
    # The same weights at the end, averaged and trained.
    ends = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
        for d in (half, tmp_path / "full")
    ]
    for key in ("state_dict", "current_model_state"):
        for name, value in ends[0][key].items():
            if name.startswith("net."):
                assert torch.equal(value, ends[1][key][name]), (key, name)


@pytest.mark.parametrize(
    ("preset", "affine", "elastic"),
    [
        ("none", False, False),
        ("affine", True, False),
        ("elastic", False, True),
        ("affine_elastic", True, True),
    ],
)
def test_presets_switch_on_what_they_name(preset: str, affine: bool, elastic: bool) -> None:
    values = compose_config(f"augment={preset}").data.augment
    assert bool(values.rotate and values.translate and values.scale and values.shear) == affine
    assert bool(values.elastic_alpha) == elastic
    assert any(values[k] for k in ("rotate", "translate", "scale", "shear")) == affine
