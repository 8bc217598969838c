"""BucketBatchSampler: single-bucket batches (so arrays stack), shuffled per epoch, split over ranks, resumable."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from stratum_core.errors import ConfigError


class BucketBatchSampler:
    """Batches of indices of `dataset` (anything with `.buckets`, or the list of bucket labels itself) that
    all share one bucket. Use it as `batch_sampler=` of a torch DataLoader, or iterate it directly.

    Each epoch every bucket's indices are permuted and cut into batches, then the order of all batches is
    permuted, from a generator seeded by (seed, epoch): the same seed and epoch give the same batches on every
    rank and in every run. Rank r takes batches r, r + world_size, ...: ranks are disjoint, and with
    drop_last=False together they cover every index once per epoch (ranks may then differ by one batch);
    drop_last=True drops each bucket's incomplete batch and trims the total to a multiple of world_size, so
    every rank runs the same number of steps (what DistributedDataParallel needs).

    Resume mid-epoch: save `state_dict(consumed=steps)` (steps = batches your loop finished this epoch; a
    DataLoader's workers fetch a few batches ahead of the loop) and `load_state_dict` it in the new process.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        buckets: Sequence[str | None] = getattr(dataset, "buckets", dataset)
        self.size = len(buckets)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._start = 0  # batches of this epoch to pass over (set by load_state_dict)
        self._handed_out = 0  # batches of this epoch handed out so far
        groups: dict[str, list[int]] = {}
        for index, label in enumerate(buckets):
            if label is not None:  # an unreadable sample under corrupt="skip"
                groups.setdefault(label, []).append(index)
        self._groups = {label: np.asarray(groups[label], dtype=np.int64) for label in sorted(groups)}

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle; setting the epoch a state was loaded for keeps its resume point."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def _all_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches: list[np.ndarray] = []
        for indices in self._groups.values():
            if self.shuffle:
                indices = rng.permutation(indices)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.drop_last:
            batches = batches[:len(batches) - len(batches) % self.world_size]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        mine = self._all_batches()[self.rank::self.world_size]
        start, self._start = self._start, 0
        self._handed_out = start
        for batch in mine[start:]:
            self._handed_out += 1
            yield batch.tolist()

    def __len__(self) -> int:
        total = 0
        for indices in self._groups.values():
            full, rest = divmod(len(indices), self.batch_size)
            total += full + (1 if rest and not self.drop_last else 0)
        if self.drop_last:
            total -= total % self.world_size
        return len(range(self.rank, total, self.world_size))

    def state_dict(self, consumed: int | None = None) -> dict:
        """Where this rank is: the epoch and how many of its batches are done (default: handed out)."""
        return {"epoch": self.epoch, "batches_done": self._handed_out if consumed is None else int(consumed),
                "seed": self.seed, "batch_size": self.batch_size, "drop_last": self.drop_last,
                "rank": self.rank, "world_size": self.world_size, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` was saved: the next iteration yields the rest of that epoch."""
        mine = {"seed": self.seed, "batch_size": self.batch_size, "drop_last": self.drop_last,
                "rank": self.rank, "world_size": self.world_size, "size": self.size}
        differing = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if differing:
            detail = ", ".join(f"{k} {was} (now {now})" for k, (was, now) in differing.items())
            raise ConfigError(f"the sampler state was saved with other settings: {detail}")
        self.epoch = int(state["epoch"])
        self._start = int(state["batches_done"])
        self._handed_out = self._start
