"""Iterable training sources for web-scale data: each epoch's rows dealt to (process × DataLoader worker) shards, one
entry per row whatever became of it, padded so that every process takes the same number of batches; the collator
wrapper, and the main process's bookkeeping (rows consumed, for resuming mid-epoch; failures by kind; throughput;
time the training loop waited for data)."""

from __future__ import annotations

import collections
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import torch

from captioning.data.records import SkipCounts
from captioning.data.web.downloads import DownloadStats


@dataclass(frozen=True)
class Skipped:
    """The entry of a row that gave no image: its shard, its place in the shard (`seq`) and why (`kind`)."""

    shard: int
    seq: int
    kind: str
    message: str = ""
    attempts: int = 0


@dataclass(frozen=True)
class Padding:
    """The entry that evens a short shard up to the epoch's length; no row behind it."""

    shard: int


class CaptionStream(torch.utils.data.IterableDataset):
    """
    Base class of the iterable caption sources (`UrlCaptionStream`, `WebDatasetStream`).

    An epoch deals units (rows of a url–caption file, samples of tar shards) to `num_shards = num_processes ×
    max(1, num_workers)` shards; shard `process_index × workers + worker_id` belongs to one DataLoader worker of one
    process, and each shard's units come in a sequence fixed by (seed, epoch). Each shard yields one entry per unit:
    an item (`{"image", "captions", "image_id", "index", "stream"}`, as `CaptionDataset` gives), or a `Skipped` for
    a unit that gave no image, then `Padding` up to the longest shard's length, so every worker makes
    `ceil(longest / batch_size)` batches and every process takes the same number of steps (a process that ran out
    of batches would wait for the others' gradients forever).

    Subclasses implement `shard_lengths`, `shard_units` and `produce`.

    Args:
        seed (`int`): with the epoch, fixes the order of units.
        process_index, num_processes (`int`): this process among the training processes.
        num_workers (`int`): the DataLoader's `num_workers` (0 counts as one shard per process). Persistent workers
            are welcome (no new processes each epoch): the epoch lives in shared memory, and the resume position
            matters only to the first epoch read, which their copy of the stream has.
    """

    name = "stream"
    split = "train"

    def __init__(self, seed: int = 0, process_index: int = 0, num_processes: int = 1, num_workers: int = 0):
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index={process_index} is not one of {num_processes} processes.")
        self.seed, self.process_index, self.num_processes = seed, process_index, num_processes
        self.num_workers = num_workers
        # Shared memory, as CaptionCollator's epoch: persistent DataLoader workers see each new epoch.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.position: dict | None = None
        self.skipped = SkipCounts()  # what was left out while reading the rows

    # -- what subclasses provide -------------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        """Units per epoch (rows, samples), all shards together."""
        raise NotImplementedError

    def shard_lengths(self, epoch: int, num_shards: int) -> list[int]:
        """The number of units of every shard in `epoch`."""
        raise NotImplementedError

    def shard_units(self, epoch: int, shard: int, num_shards: int) -> Sequence[Any]:
        """The units of one shard, in order."""
        raise NotImplementedError

    def produce(self, shard: int, todo: list[tuple[int, Any]]) -> Iterator[tuple[int, dict | Skipped]]:
        """For each `(seq, unit)` of `todo`, in any order, one `(seq, item)` or `(seq, Skipped(...))`."""
        raise NotImplementedError

    # -- epochs and positions -----------------------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return self.num_processes * max(1, self.num_workers)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration reads (Accelerate's prepared loaders call this too)."""
        self._epoch[0] = epoch

    def set_position(self, position: dict | None) -> None:
        """
        Resume mid-epoch: `position` is `StreamProgress.state_dict()` of a checkpoint (all processes merged). The
        rows it lists as consumed are not read again when its epoch is iterated; other epochs ignore it.
        """
        if position is not None and position["num_shards"] != self.num_shards:
            raise ValueError(
                f"The checkpoint's stream position was saved with {position['num_shards']} shards (processes × "
                f"DataLoader workers) and this run has {self.num_shards}: resume mid-epoch with the same number of "
                "processes and --num_workers, or from a checkpoint saved at the end of an epoch."
            )
        self.position = position

    def summary(self) -> str:
        """One line, as `CaptionDataset.summary` gives: name, split, rows and what was skipped while reading them."""
        shards = f"{self.num_shards} shard(s) of {self.num_processes} process(es)"
        return f"{self.name} {self.split}: {self.num_rows} rows streamed in {shards}; {self.skipped.report()}"

    def epoch_length(self, epoch: int | None = None) -> int:
        """Entries per shard in `epoch`: the longest shard's units."""
        lengths = self.shard_lengths(self.epoch if epoch is None else epoch, self.num_shards)
        return max(lengths) if lengths else 0

    def batches_per_epoch(self, batch_size: int, epoch: int | None = None) -> int:
        """Batches one process takes in an epoch: `max(1, num_workers) × ceil(longest shard / batch_size)`."""
        return max(1, self.num_workers) * math.ceil(self.epoch_length(epoch) / batch_size)

    def _consumed(self, shard: int) -> tuple[int, set[int], int]:
        if self.position is None or self.position["epoch"] != self.epoch:
            return 0, set(), 0
        done, extra, entries = self.position["shards"].get(str(shard), (0, [], 0))
        return done, set(extra), entries

    def __iter__(self) -> Iterator[dict | Skipped | Padding]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        if workers != max(1, self.num_workers):
            raise ValueError(
                f"{type(self).__name__} was built for num_workers={self.num_workers} but is read by a DataLoader with "
                f"{0 if info is None else workers} workers; pass the same number to both."
            )
        shard, num_shards = self.process_index * workers + worker, self.num_shards
        done, extra, entries = self._consumed(shard)
        units = self.shard_units(self.epoch, shard, num_shards)
        todo = [(seq, units[seq]) for seq in range(done, len(units)) if seq not in extra]
        produced = 0
        for seq, entry in self.produce(shard, todo):
            if isinstance(entry, dict):
                entry["stream"] = {**entry.get("stream", {}), "shard": shard, "seq": seq}
            produced += 1
            yield entry
        if produced != len(todo):
            raise RuntimeError(f"{type(self).__name__} shard {shard}: {produced} entries for {len(todo)} rows.")
        for _ in range(self.epoch_length() - entries - produced):
            yield Padding(shard)


def deal(num_units: int, shard: int, num_shards: int) -> range:
    """Positions `shard, shard + num_shards, ...` below `num_units`: unit i belongs to shard i mod num_shards."""
    return range(shard, num_units, num_shards)


def epoch_order(num_units: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """A permutation of `range(num_units)` that depends on (seed, epoch) alone."""
    if not shuffle:
        return list(range(num_units))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_units, generator=generator).tolist()


def in_background(items: Iterable, maxsize: int = 64) -> Iterator:
    """The items of `items`, produced by a daemon thread ahead of the consumer (at most `maxsize` waiting); an
    exception in the thread is raised to the consumer."""
    handed: queue.Queue = queue.Queue(maxsize)
    done = object()
    stopping = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stopping.is_set():
                    try:
                        handed.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stopping.is_set():
                    return
            handed.put((done, None))
        except BaseException as error:
            handed.put((done, error))

    thread = threading.Thread(target=produce, name="captioner-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, error = handed.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stopping.set()


def shuffle_buffer(items: Iterable, size: int, rng) -> Iterator:
    """`items` in a random order drawn from a buffer of `size` (`rng` a `random.Random`): each new item takes the
    place of one drawn at random from the buffer, which is emptied in random order at the end."""
    buffer: list = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            chosen = rng.randrange(len(buffer))
            buffer[chosen], buffer[-1] = buffer[-1], buffer[chosen]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def ordered_map(pool: Executor, function: Callable, items: Iterable[tuple], window: int) -> Iterator:
    """`function(*args)` for each args tuple of `items`, run in `pool` with up to `window` under way, in order."""
    running: collections.deque = collections.deque()
    for args in items:
        running.append(pool.submit(function, *args))
        if len(running) >= window:
            yield running.popleft().result()
    while running:
        yield running.popleft().result()


class StreamCollator:
    """
    Wraps a `CaptionCollator` for a `CaptionStream`: `Skipped` and `Padding` entries are left out (a batch of only
    those has no `labels`, as a batch of undecodable images), and the batch gains `"stream"`, what the entries say
    about themselves, for `StreamProgress.update`.

    Args:
        collator (`CaptionCollator`): makes the model inputs from the items.
    """

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, entries: Sequence[dict | Skipped | Padding]) -> dict[str, Any]:
        info = {"shard": None, "rows": [], "entries": len(entries), "ok": 0, "bytes": 0, "retries": 0, "cached": 0}
        info["failures"] = []
        items = []
        for entry in entries:
            if isinstance(entry, Padding):
                info["shard"] = entry.shard
            elif isinstance(entry, Skipped):
                info["shard"] = entry.shard
                info["rows"].append(entry.seq)
                info["failures"].append((entry.kind, entry.message))
                info["retries"] += max(0, entry.attempts - 1)
            else:
                meta = entry["stream"]
                info["shard"] = meta["shard"]
                info["rows"].append(meta["seq"])
                info["ok"] += 1
                info["bytes"] += meta.get("bytes", 0)
                info["retries"] += max(0, meta.get("attempts", 1) - 1)
                info["cached"] += int(meta.get("cached", False))
                items.append({key: value for key, value in entry.items() if key != "stream"})
        batch = self.collator(items)
        batch["stream"] = info
        return batch


class StreamLoader:
    """
    The training loader of a `CaptionStream` under Accelerate, in place of `accelerator.prepare`, which would split
    the stream between processes once more. Batches are received from the DataLoader by a background thread, so the
    transfer of each batch's tensors from its worker process (~2 ms on a CPU) overlaps with the training step instead
    of adding to it; they are moved to `device`, and the epoch's last batch is announced to Accelerate's gradient
    accumulation as its own loaders do (`end_of_dataloader`, through `DataLoaderStateMixin`).

    Args:
        loader (`torch.utils.data.DataLoader`): a DataLoader over a `CaptionStream`.
        device (`torch.device`, *optional*): where batches go.
        prefetch (`int`, *optional*, defaults to 2): batches received ahead of the training loop.
        non_blocking (`bool`, *optional*, defaults to `False`): copy to `device` without waiting for the copy (from a
            DataLoader with `pin_memory=True`, as Accelerate's `DataLoaderConfiguration(non_blocking=True)` does).
    """

    def __init__(
        self, loader: torch.utils.data.DataLoader, device=None, prefetch: int = 2, non_blocking: bool = False
    ):
        from accelerate.data_loader import DataLoaderStateMixin
        from accelerate.state import GradientState

        # A class made here: accelerate is imported where a stream is trained, not where one is read.
        self._state = type("StreamLoaderState", (DataLoaderStateMixin,), {})()
        self._state.gradient_state = GradientState()
        self._state._drop_last = True  # no remainder to account for: the stream pads its shards itself
        self.loader, self.device, self.prefetch, self.non_blocking = loader, device, prefetch, non_blocking

    @property
    def dataset(self) -> CaptionStream:
        return self.loader.dataset

    @property
    def end_of_dataloader(self) -> bool:
        return self._state.end_of_dataloader

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict]:
        from accelerate.utils import send_to_device

        end = object()
        self._state.begin()
        try:
            batches = in_background(self.loader, maxsize=self.prefetch)
            current = next(batches, end)
            while current is not end:
                following = next(batches, end)  # one ahead, to know which batch is the last
                self._state.end_of_dataloader = following is end
                yield (
                    current
                    if self.device is None
                    else send_to_device(current, self.device, non_blocking=self.non_blocking)
                )
                current = following
        finally:
            self._state.end()


class StreamProgress:
    """
    The training loop's account of one process's stream in an epoch: which rows its batches held (to resume
    mid-epoch without training on them again), what the rows gave (images, failures by kind, bytes), and how long
    the loop waited for each batch.

    Use `timed(loader)` in place of the loader, and `update(batch.pop("stream"))` for each batch.

    Args:
        num_shards (`int`): the stream's shards, all processes together.
        own_shards (`Iterable[int]`): the shards this process's DataLoader workers read.
    """

    def __init__(self, num_shards: int, own_shards: Iterable[int]):
        self.num_shards, self.own_shards = num_shards, set(own_shards)
        self.start_epoch(0)

    @classmethod
    def of(cls, stream: CaptionStream) -> StreamProgress:
        """The progress of `stream` in this process."""
        workers = max(1, stream.num_workers)
        return cls(stream.num_shards, range(stream.process_index * workers, (stream.process_index + 1) * workers))

    def start_epoch(self, epoch: int, position: dict | None = None) -> None:
        """Counts from zero for `epoch`; a checkpoint's `position` of the same epoch carries its rows and counts."""
        self.epoch = epoch
        self.shards: dict[int, list] = {}  # shard -> [rows done in a run from 0, rows done beyond it, entries]
        self.stats = DownloadStats()
        self.waited, self.first_wait = 0.0, None
        self.started = time.perf_counter()
        if position is not None and position["epoch"] == epoch:
            for shard, (done, extra, entries) in position["shards"].items():
                if int(shard) in self.own_shards:  # the other processes account for theirs
                    self.shards[int(shard)] = [done, set(extra), entries]

    def timed(self, batches: Iterable) -> Iterator:
        """`batches`, adding the time spent waiting for each one to `waited` (and for the first to `first_wait`)."""
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            batch = next(iterator, None)
            self.waited += time.perf_counter() - start
            if self.first_wait is None:
                self.first_wait = self.waited
            if batch is None:
                return
            yield batch

    def update(self, info: dict) -> None:
        """Records one batch's `"stream"` (from `StreamCollator`)."""
        if info["shard"] is None:
            return
        done, extra, entries = self.shards.setdefault(info["shard"], [0, set(), 0])
        for seq in info["rows"]:
            extra.add(seq)
        while done in extra:
            extra.remove(done)
            done += 1
        self.shards[info["shard"]] = [done, extra, entries + info["entries"]]
        self.stats.add_counts(ok=info["ok"], cached=info["cached"], retries=info["retries"], num_bytes=info["bytes"])
        for kind, message in info["failures"]:
            self.stats.add_counts(failure=kind, message=message)

    def state_dict(self) -> dict:
        """This process's position: JSON-ready, to merge with the other processes' (`merge`) into a checkpoint."""
        shards = {str(s): [done, sorted(extra), entries] for s, (done, extra, entries) in self.shards.items()}
        return {"epoch": self.epoch, "num_shards": self.num_shards, "shards": shards}

    @staticmethod
    def merge(states: list[dict]) -> dict:
        """The processes' `state_dict()`s as one (they hold disjoint shards)."""
        merged = {**states[0], "shards": {}}
        for state in states:
            merged["shards"].update(state["shards"])
        return merged

    def position(self, accelerator=None) -> dict:
        """Every process's `state_dict()` merged, for a checkpoint. With several processes call it on all of them
        (it gathers)."""
        if accelerator is None or accelerator.num_processes == 1:
            return self.state_dict()
        from accelerate.utils import gather_object

        return self.merge(gather_object([self.state_dict()]))

    def report(self) -> dict[str, Any]:
        """This epoch so far: the download counts, images/s and MB/s delivered, and the fraction of the time the
        loop waited for data."""
        seconds = max(time.perf_counter() - self.started, 1e-9)
        return {
            **self.stats.as_dict(),
            "seconds": round(seconds, 3),
            "images_per_second": round(self.stats.ok / seconds, 2),
            "megabytes_per_second": round(self.stats.num_bytes / 1e6 / seconds, 3),
            "data_wait_seconds": round(self.waited, 3),
            "first_batch_wait_seconds": round(self.first_wait or 0.0, 3),
            "data_wait_fraction": round(self.waited / seconds, 4),
        }


def sum_reports(reports: list[dict], processes: bool = False) -> dict[str, Any]:
    """
    `StreamProgress.report()`s added up: counts and failures by kind summed, the success rate recomputed. With
    `processes` (the reports of one epoch's processes, which ran side by side) the rates are summed too, and the
    longest time and largest waiting share kept; otherwise (epochs, one after another) only counts are kept.
    """
    total: dict[str, Any] = {"failures": {}}
    for report in reports:
        for name in ("ok", "cached", "retries", "num_bytes", "failed"):
            total[name] = total.get(name, 0) + report[name]
        for kind, count in report["failures"].items():
            total["failures"][kind] = total["failures"].get(kind, 0) + count
    attempted = total.get("ok", 0) + total.get("failed", 0)
    total["success_rate"] = round(total.get("ok", 0) / attempted, 6) if attempted else 1.0
    if processes and reports:
        for name in ("images_per_second", "megabytes_per_second"):
            total[name] = round(sum(report[name] for report in reports), 3)
        for name in ("seconds", "data_wait_seconds", "first_batch_wait_seconds", "data_wait_fraction"):
            total[name] = max(report[name] for report in reports)
    return total


def format_report(report: dict) -> str:
    """One line for the log, e.g. `270/300 images (90.0%), 812.0 images/s, waited for data 1.2% of the time;
    failed: 20 http_4xx, 10 timeout`."""
    line = f"{report['ok']}/{report['ok'] + report['failed']} images ({100 * report['success_rate']:.1f}%)"
    if "images_per_second" in report:
        line += (
            f", {report['images_per_second']:.1f} images/s ({report['megabytes_per_second']:.2f} MB/s), waited for "
            f"data {100 * report['data_wait_fraction']:.1f}% of the time"
        )
    failures = [f"{count} {kind}" for kind, count in report["failures"].items() if count]
    return line + (f"; failed: {', '.join(failures)}" if failures else "; no failures")


__all__ = [
    "CaptionStream",
    "Padding",
    "Skipped",
    "StreamCollator",
    "StreamLoader",
    "StreamProgress",
    "deal",
    "epoch_order",
    "format_report",
    "in_background",
    "ordered_map",
    "shuffle_buffer",
    "sum_reports",
]
