"""TensorBoard: one event-file folder per fedclinic run, written with PyTorch's
`SummaryWriter` (needs the fedclinic[tensorboard] extra). Scalars per round; the parameters as
a text table; the report's text files as text and its PNG plots as images."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.tracking.base import Tracker

TEXT_SUFFIXES = (".md", ".json", ".jsonl", ".csv")
MAX_TEXT = 100_000          # characters of one text file shown (partition.json can be large)


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, logdir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(logdir)
        self.writer = SummaryWriter(log_dir=str(self.logdir))

    def log_params(self, params: Mapping[str, Any]) -> None:
        rows = ["| parameter | value |", "|---|---|"]
        rows += [f"| {k} | {json.dumps(v) if isinstance(v, str) else v} |"
                 for k, v in params.items()]
        self.writer.add_text("parameters", "\n".join(rows), global_step=0)
        self.writer.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, float(value), global_step=int(step))
        self.writer.flush()

    def log_files(self, paths: Sequence[Path]) -> None:
        for path in paths:
            if path.suffix in TEXT_SUFFIXES:
                text = path.read_text(errors="replace")[:MAX_TEXT]
                shown = text if path.suffix == ".md" else f"```\n{text}\n```"
                self.writer.add_text(f"files/{path.name}", shown, global_step=0)
            elif path.suffix == ".png":
                self._image(path)
        self.writer.flush()

    def _image(self, path: Path) -> None:
        from matplotlib.image import imread

        image = imread(str(path))                 # H x W x C, floats in [0, 1]
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[:, :, :3]
        self.writer.add_image(f"files/{path.name}", image, global_step=0,
                              dataformats="HWC" if image.ndim == 3 else "HW")

    def close(self, ok: bool = True) -> None:
        self.writer.add_text("status", "finished" if ok else "failed", global_step=0)
        self.writer.close()
