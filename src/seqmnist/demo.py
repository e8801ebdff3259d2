"""The draw-a-digit page: ``python -m seqmnist.demo --ckpt PATH [--port 7860]`` (``make demo``).

Draw a digit (or upload a picture); the page shows the 28x28 the model reads, its top 3
classes, and the anytime view: the answer after each row read, as a curve and as the rows
lighting up while they are read (a slider steps through them). Early exit: the page says
after which row the model would answer at a probability threshold (``--threshold``, and a
slider on the page) and marks that row in the curve. PATH is a ``.ckpt``, a
training run's directory, or an exported ``.onnx``/``.pt`` (anything ``predict`` takes);
checkpoints are loaded with ``weights_only=True``. Needs the demo extra (Gradio):
``make install-extras``.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from seqmnist.core.errors import ConfigError
from seqmnist.data.images import MAX_FILE_BYTES, BlankImageError, ImageInputError
from seqmnist.inference.early_exit import check_threshold, never_sure
from seqmnist.inference.predictor import Predictor, load_predictor
from seqmnist.inference.reading import Reading, curve, enlarged, frame, read, write_gif
from seqmnist.shell import command

log = logging.getLogger("seqmnist.demo")

# Nothing leaves the machine: no usage statistics (set before gradio is imported).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

BLANK = (
    "**Nothing to read: the canvas is blank.** Draw a digit (one stroke or several, any "
    "size), or upload a picture of one, then press *Read it*."
)
# System fonts: the default theme would fetch Google's fonts, which a closed network blocks.
FONTS = (["ui-sans-serif", "system-ui", "sans-serif"], ["ui-monospace", "monospace"])


class Demo:
    """The page's behaviour, apart from Gradio: each handler returns the outputs' values."""

    # Reading GIFs kept on disk: the page shows the newest; older ones are deleted.
    KEEP_GIFS = 8

    def __init__(self, predictor: Predictor, work_dir: Path, threshold: float = 0.99) -> None:
        self.predictor = predictor
        self.work_dir = work_dir
        self.threshold = check_threshold(threshold, "--threshold")
        self.count = 0

    def early(self, reading: Reading | None, threshold: float | None = None) -> str:
        """The sentence saying after which step early exit at ``threshold`` answers."""
        if reading is None:
            return ""
        if not reading.anytime:
            return "No early answer: this model is bidirectional (every step has read everything)."
        p = self.threshold if threshold is None else float(threshold)
        k = reading.answer_step(p)
        best, prob = next(iter(reading.top(1, step=k).items()))
        one = reading.step_name.removesuffix("s")
        unsure = never_sure(k, reading.steps, prob, p)
        how = f" (never {100 * p:g}% sure: read to the end)" if unsure else ""
        return (
            f"Early exit at p >= {p:g}: answers **{best}** ({100 * prob:.1f}%) after "
            f"{one} **{k}** of {reading.steps}{how}."
        )

    def rethreshold(
        self, reading: Reading | None, threshold: float, steps: float | None = None
    ) -> tuple[Any, str]:
        """The threshold slider: the curve (with the rows slider's marker kept) and the
        early-exit sentence at ``threshold``."""
        if reading is None:
            return None, ""
        step = int(steps) if steps is not None else None
        return curve(reading, step=step, threshold=threshold), self.early(reading, threshold)

    def new_gif(self) -> Path:
        """The path of the next reading GIF, after deleting all but the newest few."""
        self.count += 1
        old = self.count - self.KEEP_GIFS
        for gif in self.work_dir.glob("reading-*.gif"):
            number = gif.stem.removeprefix("reading-")
            if number.isdigit() and int(number) <= old:
                gif.unlink(missing_ok=True)
        return self.work_dir / f"reading-{self.count}.gif"

    def classify(self, picture: Any) -> tuple[str, Reading | None]:
        """Status text and the reading of ``picture`` (a canvas array, a path, or None)."""
        if picture is None:
            return BLANK, None
        try:
            reading = read(self.predictor, picture)
        except BlankImageError:
            return BLANK, None
        except ImageInputError as e:
            return f"**That file is not a picture that can be read.** {e}", None
        except Exception as e:  # never a stack trace on the page
            log.exception("reading failed")
            return f"**Something went wrong reading it:** {type(e).__name__}: {e}", None
        best, p = next(iter(reading.top(1).items()))
        status = (
            f"**{best}** ({100 * p:.1f}%) | read in {1000 * reading.seconds:.0f} ms on the CPU "
            f"| {reading.steps} {reading.step_name}"
        )
        return status, reading

    def outputs(self, picture: Any, threshold: float | None = None) -> tuple[Any, ...]:
        """(status, top 3, what the model sees, reading GIF, curve, slider, state, early-exit
        sentence)."""
        import gradio as gr

        started = time.perf_counter()
        status, reading = self.classify(picture)
        if reading is None:
            return (status, None, None, None, None, gr.update(visible=False), None, "")
        threshold = self.threshold if threshold is None else float(threshold)
        gif = write_gif(reading, self.new_gif())
        fig = curve(reading, threshold=threshold)
        status += f" | page ready in {1000 * (time.perf_counter() - started):.0f} ms"
        slider = gr.update(
            visible=True,
            minimum=1,
            maximum=reading.steps,
            value=reading.steps,
            step=1,
            label=f"{reading.step_name} read",
        )
        return (
            status,
            reading.top(3),
            enlarged(reading.image),
            str(gif),
            fig,
            slider,
            reading,
            self.early(reading, threshold),
        )

    def after(
        self, reading: Reading | None, steps: float, threshold: float | None = None
    ) -> tuple[Any, ...]:
        """The slider: the picture, the answer and the curve after ``steps`` steps."""
        if reading is None:
            return None, None, None
        k = int(steps)
        top = reading.top(3, step=k)
        best, p = next(iter(top.items()))
        text = f"After {k} of {reading.steps} {reading.step_name}: **{best}** ({100 * p:.1f}%)"
        if not reading.anytime:
            text += " (bidirectional: every step has seen the whole image)"
        return frame(reading, k), curve(reading, step=k, threshold=threshold), text


def read_canvas(editor_value: dict[str, Any] | None) -> Any:
    """The drawing of a Gradio sketchpad (its composite layer), or None when untouched."""
    if not editor_value:
        return None
    return editor_value.get("composite")


def build_app(predictor: Predictor, work_dir: Path | None = None, threshold: float = 0.99) -> Any:
    """The Gradio Blocks of the page for ``predictor``; early exit at ``threshold`` first."""
    import gradio as gr

    if work_dir is None:  # the page's files live as long as the page
        work_dir = Path(tempfile.mkdtemp(prefix="seqmnist-demo-"))
        atexit.register(shutil.rmtree, work_dir, ignore_errors=True)
    demo = Demo(predictor, Path(work_dir), threshold)
    data = predictor.data
    with gr.Blocks(title="seqmnist: watch a recurrent net read a digit") as app:
        gr.Markdown(
            f"## Watch a recurrent network read a digit\n"
            f"Model: `{predictor.describe()}` ({predictor.path.name}). It reads the 28x28 "
            f"image as a sequence ({data.sequence} mode), one step at a time, and its answer "
            "forms as it reads."
        )
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tab("Draw"):
                    canvas = gr.Sketchpad(
                        label="Draw a digit (pick the brush on the left first)",
                        type="numpy",
                        image_mode="RGBA",
                        canvas_size=(280, 280),
                        elem_id="canvas",
                        brush=gr.Brush(default_size=18, colors=["#000000"]),
                    )
                    go = gr.Button("Read it", variant="primary", elem_id="read")
                with gr.Tab("Upload"):
                    upload = gr.File(
                        label="A picture of a digit (PNG, JPEG, ...)",
                        type="filepath",
                        elem_id="upload",
                    )
            with gr.Column(scale=1):
                status = gr.Markdown("Draw a digit and press *Read it*.", elem_id="status")
                top = gr.Label(num_top_classes=3, label="Top 3", elem_id="top")
                seen = gr.Image(
                    label="What the model sees (28x28)",
                    type="pil",
                    height=200,
                    interactive=False,
                    elem_id="seen",
                )
                early = gr.Markdown(elem_id="early")
                cutoff = gr.Slider(
                    min(0.5, demo.threshold),  # --threshold may start below the usual range
                    1.0,
                    value=demo.threshold,
                    step=0.0001,  # evaluate's grid has 0.9995 and 0.9999
                    label="early exit: answer once the top probability reaches",
                    elem_id="threshold",
                    visible=predictor.anytime,
                )
        with gr.Row():
            with gr.Column(scale=1):
                reading_img = gr.Image(
                    label="Reading (the step being read in amber)",
                    type="filepath",
                    height=280,
                    interactive=False,
                    elem_id="reading",
                )
            with gr.Column(scale=2):
                plot = gr.Plot(label="Anytime view", elem_id="curve")
                steps = gr.Slider(
                    1,
                    data.seq_len,
                    value=data.seq_len,
                    step=1,
                    visible=False,
                    label="steps read",
                    elem_id="steps",
                )
                step_text = gr.Markdown(elem_id="step-answer")
        outputs = [status, top, seen, reading_img, plot, steps, state, early]
        go.click(lambda v, p: demo.outputs(read_canvas(v), p), [canvas, cutoff], outputs)
        upload.upload(demo.outputs, [upload, cutoff], outputs)
        steps.release(demo.after, [state, steps, cutoff], [reading_img, plot, step_text])
        cutoff.release(demo.rethreshold, [state, cutoff, steps], [plot, early])
    return app


def launch(app: Any, host: str, port: int, block: bool = True) -> Any:
    import gradio as gr

    theme = gr.themes.Default(font=FONTS[0], font_mono=FONTS[1])
    return app.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        quiet=True,
        prevent_thread_lock=not block,
        ssr_mode=False,
        theme=theme,
        footer_links=[],
        # Gradio refuses a larger upload before it reaches the page's handler.
        max_file_size=MAX_FILE_BYTES,
    )


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqmnist.demo", description=__doc__)
    parser.add_argument(
        "--ckpt",
        required=True,
        metavar="PATH",
        help="a .ckpt, a training run's directory, or an exported .onnx/.pt",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (7860)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.99,
        metavar="P",
        help="early exit's first threshold on the page, in (0, 1] (0.99)",
    )
    args = parser.parse_args(argv)
    check_threshold(args.threshold, "--threshold")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the demo needs Gradio, an optional extra. Fix: make install-extras "
            "(or pip install -e '.[demo]')."
        ) from None
    predictor = load_predictor(args.ckpt)
    print(
        f"serving {predictor.describe()} from {predictor.path} on http://{args.host}:{args.port}"
        " (Ctrl+C stops)",
        flush=True,
    )
    try:
        launch(build_app(predictor, threshold=args.threshold), args.host, args.port)
    except OSError as e:
        raise ConfigError(
            f"cannot serve on {args.host}:{args.port} ({e}). Fix: --port N."
        ) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
