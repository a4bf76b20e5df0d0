"""The decode/batch engine (runs in DataLoader workers): raw tar samples -> batches whose images are
planar uint8 `[B, 3, T, H, W]`, in shared memory that is reused once the trainer has converted a batch.

`Batches` is format-agnostic: the shard format (`formats.ShardFormat`) says which JPEG parts to decode
(T of them), what to keep of the rest (`fields`) and how to build the batch (`collate`). The conversion
to float (and augmentation) happens in the consuming process (`float_batches.FloatBatches`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from lapa.data.images import decode_jpeg, decode_jpeg_into, encoded_image_size
from lapa.data.skips import has_parts, skip, where
from lapa.data.transforms import ensure_size

RELEASE = "__release__"  # batch key of a worker's buffer flag; `FloatBatches` sets it and drops the key


class SizeMismatch(ValueError):
    """An image of another size than its batch while images are not resized (`size=None`)."""


def decode_into(data: bytes, out: np.ndarray, scratch: np.ndarray, resize: bool) -> None:
    """One image into its planar batch slot `out` (uint8 `[3, H, W]`), through `scratch` (`[H, W, 3]`):
    decoded into the scratch when it has the slot's size, else decoded and, when `resize`, resized
    (shorter side) and centre-cropped to it."""
    rgb = scratch
    if not decode_jpeg_into(data, scratch):
        rgb = decode_jpeg(data)
        if resize:
            rgb = ensure_size(rgb, out.shape[1])
        if rgb.shape != scratch.shape:
            raise SizeMismatch(f"{rgb.shape[:2]} in a batch of {out.shape[1:]}; set data.image_size")
    # The layout change (channels last -> planar) reads the just-decoded image from cache: 4 ms per
    # 32 pairs here, against 10 ms for the same change fused into the float conversion in the trainer.
    np.copyto(out, rgb.transpose(2, 0, 1))


class SharedBuffers:
    """Shared-memory uint8 batch buffers of one DataLoader worker, reused once the trainer releases them.

    A batch made in a worker must live in shared memory to reach the trainer without a copy. A fresh
    12 MB shared buffer (32 pairs of 256 px) costs page faults and zeroing: measured 17 ms of kernel
    time per batch in each worker, 3 ms with reuse. Each buffer ends with a flag byte, shipped with the
    batch under `RELEASE`: the worker clears it when it fills the buffer, `FloatBatches` sets it once
    it has converted the batch to float, and only a set buffer is filled again. Batches of
    a consumer that never releases (the bare DataLoader) just get fresh buffers.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit  # kept buffers: those in flight (prefetched + being converted + being filled)
        self.buffers: list[torch.Tensor] = []  # uint8 [N + 1]: a batch of N bytes, then its flag

    def take(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(images uint8 `shape`, flag uint8 [1]), both views of one shared buffer."""
        n = math.prod(shape)
        buffer = next((b for b in self.buffers if b.numel() == n + 1 and b[n] == 1), None)
        if buffer is None:
            buffer = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(n + 1))
            self.buffers.append(buffer)
            if len(self.buffers) > self.limit:  # forget the oldest (never released, e.g. a batch the
                self.buffers.pop(0)  # trainer dropped unread): safe, as it is never written again
        buffer[n] = 0
        return buffer[:n].view(shape), buffer[n:]


class Batches:
    """Pipeline stage: tar samples -> batches with the images as planar uint8 `[B, 3, T, H, W]`.

    Each sample's JPEGs (`parts`, T of them) decode into one reused scratch image and go from there
    into their slot of the batch, which lives in (reused) shared memory inside a worker: no per-image
    arrays, and uint8 is 4x less to hand over than float.
    A corrupt sample is counted and its slot reused, so batches stay full. `fields(sample)` returns
    what the batch keeps of a sample besides its images (None: skip it, counted by `fields`);
    `collate(images, rows)` builds the batch. `size=None` keeps the shards' size (taken from the first
    image of each batch). `partial_last`: yield a last, smaller batch (validation, inference).
    `in_flight`: batches per worker in flight at once (the buffers worth keeping). Picklable.
    """

    def __init__(self, parts: tuple[str, ...], *, batch_size: int, size: int | None, partial_last: bool,
                 fields: Callable[[dict], dict | None], collate: Callable[[torch.Tensor, list], dict],
                 in_flight: int) -> None:
        self.parts, self.batch_size, self.size = parts, batch_size, size
        self.partial_last, self.in_flight = partial_last, in_flight
        self.fields, self.collate = fields, collate
        self._buffers: SharedBuffers | None = None  # made in the worker that uses it
        self._scratch = np.empty((0, 0, 3), dtype=np.uint8)  # one decoded image [H, W, 3]

    def __call__(self, samples: Iterable[dict], skip_batches: int = 0) -> Iterator[dict]:
        """Batches of `samples`, after passing over the first `skip_batches` batches' samples undecoded
        (a resumed run: those were trained on). A sample with corrupt fields is skipped there as here;
        one with a corrupt JPEG counts there (it is not decoded), not here."""
        images, rows = None, []  # the batch being filled: uint8 [B, 3, T, H, W], and its samples' fields
        to_skip = skip_batches * self.batch_size  # samples
        for sample in samples:
            row = self.fields(sample) if has_parts(sample, self.parts) else None
            if row is None:
                continue
            if to_skip:
                to_skip -= 1
                continue
            if images is None:
                shape = self._shape(sample)
                if shape is None:
                    continue
                images, flag = self._allocate(shape)
            if self._decode(sample, images[len(rows)].numpy()):  # slot [3, T, H, W]
                rows.append(row)
            if len(rows) == self.batch_size:
                yield self._finish(images, rows, flag)
                images, rows = None, []
        if rows and self.partial_last:
            yield self._finish(images[:len(rows)], rows, flag)

    def _allocate(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images, release flag or None): in a worker, a reused shared buffer."""
        if torch.utils.data.get_worker_info() is None:
            return torch.empty(shape, dtype=torch.uint8), None
        if self._buffers is None:
            self._buffers = SharedBuffers(self.in_flight)
        return self._buffers.take(shape)

    def _finish(self, images: torch.Tensor, rows: list, flag: torch.Tensor | None) -> dict:
        batch = self.collate(images, rows)
        if flag is not None:
            batch[RELEASE] = flag
        return batch

    def _shape(self, sample: dict) -> tuple[int, ...] | None:
        """[B, 3, T, H, W] of the batch that `sample` starts; None (counted) when it cannot tell."""
        if self.size is not None:
            h = w = self.size
        else:
            try:
                h, w = encoded_image_size(sample[self.parts[0]])
            except KeyError as err:
                return skip("missing part", f"{where(sample)} has no {err}")
            except Exception as err:
                return skip("bad jpeg", f"{where(sample)}: {err}")
        return self.batch_size, 3, len(self.parts), h, w

    def _decode(self, sample: dict, slot: np.ndarray) -> bool:
        """Decode the sample's T images into `slot` (uint8 `[3, T, H, W]`); False (counted) if corrupt."""
        if self._scratch.shape[:2] != slot.shape[2:]:
            self._scratch = np.empty(slot.shape[2:] + (3,), dtype=np.uint8)
        try:
            for j, part in enumerate(self.parts):
                decode_into(sample[part], slot[:, j], self._scratch, resize=self.size is not None)
            return True
        except KeyError as err:
            skip("missing part", f"{where(sample)} has no {err}")
        except SizeMismatch as err:
            skip("frame size mismatch", f"{where(sample)}: {err}")
        except Exception as err:  # simplejpeg/PIL raise several types for corrupt data
            skip("bad jpeg", f"{where(sample)}: {err}")
        return False
