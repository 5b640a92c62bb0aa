"""Noise cancellation in the style of Diffy: per JSON path, how often the candidate differs
from the primary against how often a baseline (a second copy of the primary's version) does;
a path counts as a mismatch only when the first beats the second by both thresholds. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.compare import (
    MAX_TRACKED_PATHS,
    OTHER_PATH,
    Comparison,
)

__all__ = ["NoiseModel", "PathReport", "counts_as_mismatch"]


def counts_as_mismatch(
    candidate_rate: float, noise_rate: float, relative_threshold: float, absolute_threshold: float
) -> bool:
    """Diffy's rule: a path's candidate diff rate counts only if it is above the noise rate by
    both thresholds: by more than `absolute_threshold` (a fraction of requests, e.g. 0.03), and
    by more than `relative_threshold` times the noise (e.g. 0.2: over 1.2x the noise rate). With
    no noise on the path (or no baseline at all) only the absolute threshold applies."""
    if candidate_rate - noise_rate <= absolute_threshold:
        return False
    return noise_rate == 0 or candidate_rate / noise_rate > 1 + relative_threshold


@dataclass(frozen=True, slots=True)
class PathReport:
    """One path of a NoiseModel: how often it differed against the candidate and the baseline."""

    path: str
    candidate_rate: float  # candidate_diffs / candidate_samples (0 without samples)
    noise_rate: float  # baseline_diffs / baseline_samples (0 without samples)
    candidate_diffs: int
    candidate_samples: int
    baseline_diffs: int
    baseline_samples: int
    counts_as_mismatch: bool


class NoiseModel:
    """Per collapsed path, how often primary and candidate differ, and how often primary and a
    baseline (a second copy of the primary's version) differ: the latter is noise (timestamps,
    request ids, random order) that the candidate is not to blame for.

    Memory is bounded: at most `max_paths` paths are tracked by name, the rest count as
    OTHER_PATH. Each comparison counts a path once, however many times it differed in it.
    """

    __slots__ = ("_baseline_samples", "_candidate_samples", "_counts", "max_paths")

    def __init__(self, max_paths: int = MAX_TRACKED_PATHS) -> None:
        self.max_paths = max_paths
        self._counts: dict[str, list[int]] = {}  # path -> [candidate diffs, baseline diffs]
        self._candidate_samples = 0
        self._baseline_samples = 0

    @property
    def candidate_samples(self) -> int:
        return self._candidate_samples

    @property
    def baseline_samples(self) -> int:
        return self._baseline_samples

    def record_candidate(self, comparison: Comparison) -> None:
        """Count one primary-vs-candidate comparison (matched ones too: they are the samples)."""
        self._candidate_samples += 1
        for path in self._slots(comparison):
            self._counts[path][0] += 1

    def count_matched(self, baseline: bool) -> None:
        """Count a candidate comparison that found no difference (and a baseline one, if
        `baseline`) without building it: what record_* would count for an empty Comparison."""
        self._candidate_samples += 1
        if baseline:
            self._baseline_samples += 1

    def to_obj(self) -> dict[str, object]:
        """The counts as plain JSON (a worker sends them to the master, proxy/host_counters)."""
        return {
            "paths": {path: list(pair) for path, pair in self._counts.items()},
            "candidate": self._candidate_samples,
            "baseline": self._baseline_samples,
        }

    def load_obj(self, obj: dict[str, object]) -> None:
        """Replace the counts with `to_obj` values (the master holds the host's sums)."""
        paths = obj["paths"]
        assert isinstance(paths, dict)
        self._counts = {str(path): [int(pair[0]), int(pair[1])] for path, pair in paths.items()}
        self._candidate_samples = int(str(obj["candidate"]))
        self._baseline_samples = int(str(obj["baseline"]))

    def record_baseline(self, comparison: Comparison) -> None:
        """Count one primary-vs-baseline comparison."""
        self._baseline_samples += 1
        for path in self._slots(comparison):
            self._counts[path][1] += 1

    def _slots(self, comparison: Comparison) -> set[str]:
        slots = set()
        for path in comparison.paths:
            if path not in self._counts:
                if len(self._counts) - (OTHER_PATH in self._counts) >= self.max_paths:
                    path = OTHER_PATH
                self._counts.setdefault(path, [0, 0])
            slots.add(path)
        return slots

    def _report(self, path: str, relative: float, absolute: float) -> PathReport:
        candidate_diffs, baseline_diffs = self._counts.get(path, (0, 0))
        candidate_rate = _rate(candidate_diffs, self._candidate_samples)
        noise_rate = _rate(baseline_diffs, self._baseline_samples)
        return PathReport(
            path=path,
            candidate_rate=candidate_rate,
            noise_rate=noise_rate,
            candidate_diffs=candidate_diffs,
            candidate_samples=self._candidate_samples,
            baseline_diffs=baseline_diffs,
            baseline_samples=self._baseline_samples,
            counts_as_mismatch=counts_as_mismatch(candidate_rate, noise_rate, relative, absolute),
        )

    def report(self, relative_threshold: float, absolute_threshold: float) -> list[PathReport]:
        """Every tracked path: the ones that count first, then by candidate rate, then by path."""
        reports = [
            self._report(path, relative_threshold, absolute_threshold) for path in self._counts
        ]
        reports.sort(key=lambda r: (not r.counts_as_mismatch, -r.candidate_rate, r.path))
        return reports

    def real_paths(
        self, comparison: Comparison, relative_threshold: float, absolute_threshold: float
    ) -> list[str]:
        """The paths of `comparison` that currently count as mismatches (sorted). Record the
        comparison first: a path never recorded has a rate of zero and does not count."""
        real = set()
        for path in comparison.paths:
            # A path not tracked by name was counted under OTHER_PATH (once the cap was reached).
            slot = path if path in self._counts else OTHER_PATH
            if slot not in self._counts:
                continue  # never recorded: no rate yet
            if self._report(slot, relative_threshold, absolute_threshold).counts_as_mismatch:
                real.add(path)
        return sorted(real)

    def is_real(
        self, comparison: Comparison, relative_threshold: float, absolute_threshold: float
    ) -> bool:
        """Whether `comparison` differs on at least one path that currently counts."""
        return bool(self.real_paths(comparison, relative_threshold, absolute_threshold))


def _rate(count: int, samples: int) -> float:
    return count / samples if samples else 0.0
