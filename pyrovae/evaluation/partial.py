"""Evaluations that resume: the finished points' results, saved as an evaluation goes.

An importance-weighted or AIS estimate of log p(x) with K = 5000 over 10,000 images of a
convolutional model takes hours on two cores. With chunk seeds (``seed=``), each point's
result depends only on the seed, not on the points before it (``pyrovae.distributed``): the
points already done can be saved and skipped when the same evaluation runs again, and the
result is the one an uninterrupted run gives, point for point.

A ``PartialStore`` is one folder per evaluation. Its ``settings.json`` says what was being
computed; each ``points-LO-HI.pt`` holds the per-point rows (and additive totals) of the
points LO … HI - 1, written atomically (``pyrovae.files.write_atomic``) at most every
``every`` seconds and when the evaluation stops, by a signal (SIGTERM and Ctrl-C reach Python
as exceptions) or an error. A file that cannot be read is left out with a warning: its points
are computed again, so nothing is lost but time. The evaluator removes the folder once the
whole result is in.

Why not a checkpoint of the sampler's state: with one random stream drawn in order, the
state to save sits ahead of the last finished point (draws run ahead of scoring on worker
threads), and a resumed run would have to replay it exactly; seeded chunks make every point
start afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..files import os_reason, write_atomic, write_text

#: Seconds between two saves of an evaluation's finished points (and once more at its end).
SAVE_SECONDS = 60.0
_BLOCK = re.compile(r"points-(\d+)-(\d+)\.pt")


def evaluation_key(settings: Dict[str, Any], *tensors: torch.Tensor) -> str:
    """A short name for one evaluation: a hash of its ``settings`` (JSON-able) and of the
    bytes of ``tensors`` (the points evaluated, the model's parameters), 16 hex digits."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class PartialStore:
    """The saved points of one evaluation, in ``folder`` (created when first written).

    The evaluator calls ``attach`` with its per-point arrays before it starts (they are
    filled from the saved files, and the mask of points already done comes back), then
    ``finished(lo, hi)`` for each run of points whose results are complete, in order, then
    ``flush`` when it stops for any reason, and ``remove`` once the whole result is in.
    """

    def __init__(self, folder: Path, every: float = SAVE_SECONDS) -> None:
        self.folder = Path(folder)
        self.every = every
        self.rows: Dict[str, torch.Tensor] = {}
        self.totals: Dict[str, torch.Tensor] = {}
        self._segment: Optional[list] = None  # [lo, hi, totals] not yet written
        self._last_save = time.monotonic()
        self.resumed = 0  # points taken from earlier runs

    def attach(
        self,
        settings: Dict[str, Any],
        rows: Dict[str, torch.Tensor],
        totals: Optional[Dict[str, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Fill ``rows`` (name -> (n, ...) tensor, points first) and add into ``totals``
        (name -> tensor summed over points) what earlier runs saved; returns the (n,) bool
        mask of the points done. Files written with other ``settings`` (the evaluator's own:
        K, chunk sizes, seed, n) are removed first, with a warning."""
        self.rows, self.totals = rows, totals or {}
        n = next(iter(rows.values())).shape[0]
        done = torch.zeros(n, dtype=torch.bool)
        said = self.folder / "settings.json"
        text = json.dumps(settings, sort_keys=True, default=str)
        if said.exists() and said.read_text() != text:
            warnings.warn(
                f"{self.folder} held an evaluation with other settings: started over",
                stacklevel=3,
            )
            shutil.rmtree(self.folder, ignore_errors=True)
        for path in sorted(self.folder.glob("points-*.pt")) if self.folder.is_dir() else ():
            match = _BLOCK.fullmatch(path.name)
            block = self._read(path, match, n)
            if block is None:
                continue
            lo, hi = int(match[1]), int(match[2])
            for name, t in self.rows.items():
                t[lo:hi] = block["rows"][name].to(t)
            for name, t in self.totals.items():
                t += block["totals"][name].to(t)
            done[lo:hi] = True
        self.resumed = int(done.sum())
        self._settings_text = text
        return done

    def _read(self, path: Path, match, n: int) -> Optional[Dict[str, Any]]:
        """A block file's contents, or None (with a warning) where it is not one this
        evaluation wrote: its points are then computed again."""
        try:
            block = torch.load(path, map_location="cpu", weights_only=True)
            lo, hi = int(match[1]), int(match[2])
            ok = 0 <= lo < hi <= n and set(block["rows"]) == set(self.rows)
            ok = ok and set(block["totals"]) == set(self.totals)
            ok = ok and all(block["rows"][k].shape == self.rows[k][lo:hi].shape for k in self.rows)
            if ok:
                return block
            why = "it does not fit this evaluation"
        except Exception as e:  # a truncated or foreign file: any reason torch.load gives
            why = f"it cannot be read ({type(e).__name__})"
        warnings.warn(f"{path}: {why}; its points are computed again", stacklevel=4)
        return None

    def finished(self, lo: int, hi: int, totals: Optional[Dict[str, torch.Tensor]] = None):
        """Points ``lo`` … ``hi`` - 1 are complete in the rows, and ``totals`` (name ->
        tensor) is what they add to the totals. Saved with the run before them when they
        follow it, else after it is written; at most every ``every`` seconds."""
        if self._segment is not None and self._segment[1] != lo:
            self.flush()
        if self._segment is None:
            zero = {k: torch.zeros_like(t) for k, t in self.totals.items()}
            self._segment = [lo, lo, zero]
        self._segment[1] = hi
        for name, t in (totals or {}).items():
            self._segment[2][name] += t
        if time.monotonic() - self._last_save >= self.every:
            self.flush()

    def flush(self) -> None:
        """Write the points finished since the last save (nothing if none). A failure to
        write (a full disk, a read-only run directory) is a warning: the evaluation goes on,
        and only those points would be computed again after an interruption."""
        segment, self._segment = self._segment, None
        self._last_save = time.monotonic()
        if segment is None or segment[1] == segment[0]:
            return
        lo, hi, totals = segment
        block = {
            "rows": {k: t[lo:hi].detach().cpu().clone() for k, t in self.rows.items()},
            "totals": {k: t.detach().cpu() for k, t in totals.items()},
        }
        buffer = io.BytesIO()
        torch.save(block, buffer)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not (self.folder / "settings.json").exists():
                write_text(self.folder / "settings.json", self._settings_text)
            path = self.folder / f"points-{lo:06d}-{hi:06d}.pt"
            write_atomic(path, lambda f: f.write(buffer.getvalue()))
        except OSError as e:
            where = f"could not save the evaluation's progress in {self.folder}"
            warnings.warn(f"{where}: {os_reason(e)}", stacklevel=3)

    def remove(self) -> None:
        """Delete the folder, and its parent if that is left empty: the evaluation is
        complete."""
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # other evaluations' folders are still there
            self.folder.parent.rmdir()
