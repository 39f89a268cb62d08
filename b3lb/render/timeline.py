"""What the recording shows when: slide spans, screen-share spans and whiteboard states.

All times are seconds of the published recording, clipped to [0, duration]. The slide spans tile
the whole recording (a span without a slide shows the background). The screen share covers
whatever is below it while it runs. A whiteboard state is the set of drawings visible on one slide
from `start` to `end`; states change at drawings' timestamps and undo times, but states that would
last less than `merge_s` are skipped (their drawings appear with the next kept state, never early)
and the window grows until at most `max_states` remain and their markup (each state's overlay
holds every drawing visible then) fits `total_bytes`, so overlays stay bounded in number and in
scratch disk. A state whose drawings exceed `state_bytes` (or, when even one state per change
window is too much, its share of `total_bytes`) shows only its newest drawings, with a warning.

The states are found in one sweep per slide span over the drawings' events, keeping the visible
set as it goes: the markup size at every change time is known before any state is built, so the
window is chosen on those numbers and the states are built once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

from b3lb.render.archive import Presentation
from b3lb.render.bbbformat import Shape, SlideImage

MERGE_S = 0.5
MAX_STATES = 2000
MAX_STATE_BYTES = 4 * 1024 * 1024  # the drawings' markup in one overlay
MAX_TOTAL_BYTES = 256 * 1024 * 1024  # in all overlays of one render (scratch disk)
EPSILON = 1e-6


@dataclass(frozen=True)
class Span:
    start: float
    end: float


@dataclass(frozen=True)
class SlideSpan:
    start: float
    end: float
    slide: SlideImage | None  # None: the background (no slide, a missing file, the share's placeholder)


@dataclass(frozen=True)
class AnnotationState:
    start: float
    end: float
    slide: SlideImage
    shapes: tuple[Shape, ...]  # in drawing order


@dataclass
class Timeline:
    duration: float
    slides: list[SlideSpan]
    deskshare: list[Span]
    annotations: list[AnnotationState]
    merge_s: float = MERGE_S


def build_timeline(presentation: Presentation, duration: float, *, deskshare: bool, annotate: bool,
                   merge_s: float = MERGE_S, max_states: int = MAX_STATES, state_bytes: int = MAX_STATE_BYTES,
                   total_bytes: int = MAX_TOTAL_BYTES) -> Timeline:  # fmt: skip
    """The timeline of `presentation` over [0, duration]; `deskshare`: the share video is usable."""
    slides = slide_spans(presentation.slides, duration)
    shares = deskshare_spans(presentation, duration) if deskshare else []
    states: list[AnnotationState] = []
    window = merge_s
    if annotate and presentation.shapes:
        sweeps = _sweeps(slides, presentation.shapes)
        while True:
            picked = [sweep.pick(window) for sweep in sweeps]
            count = sum(len(points) for points in picked)
            size = sum(min(sweep.sizes[i], state_bytes) for sweep, points in zip(sweeps, picked, strict=True)
                       for i, _, _ in points)  # fmt: skip
            if (count <= max_states and size <= total_bytes) or window > duration:
                break
            window *= 2
        budget = state_bytes if size <= total_bytes else max(1, total_bytes // max(1, count))
        trimmed: list[int] = []
        for sweep, points in zip(sweeps, picked, strict=True):
            states.extend(sweep.states(points, budget, trimmed.append))
        if trimmed:
            presentation.warnings.append(
                f"whiteboard: {len(trimmed)} drawing states hold more than {budget} bytes of drawings: only their "
                f"newest drawings are shown ({sum(trimmed)} older drawings left out)")  # fmt: skip
    return Timeline(duration, slides, shares, states, window)


def slide_spans(images: Sequence[SlideImage], duration: float) -> list[SlideSpan]:
    """Spans tiling [0, duration]: each image from its start until its end or the next image's start."""
    ordered = sorted(images, key=lambda s: (s.start, s.end))
    spans: list[SlideSpan] = []
    cursor = 0.0
    for index, image in enumerate(ordered):
        start, end = max(image.start, cursor), min(image.end, duration)
        if index + 1 < len(ordered):
            end = min(end, ordered[index + 1].start)  # the next image takes over from its start
        if end - start <= EPSILON:
            continue
        if start - cursor > EPSILON:
            spans.append(SlideSpan(cursor, start, None))
        spans.append(SlideSpan(start, end, None if image.deskshare or image.file is None else image))
        cursor = end
    if duration - cursor > EPSILON or not spans:
        spans.append(SlideSpan(cursor, duration, None))
    return spans


def merge_spans(spans: Sequence[tuple[float, float]], duration: float) -> list[Span]:
    """Clipped to [0, duration], sorted, overlapping or touching spans joined."""
    merged: list[Span] = []
    for start, end in sorted(spans):
        start, end = max(0.0, start), min(duration, end)
        if end - start <= EPSILON:
            continue
        if merged and start <= merged[-1].end + EPSILON:
            merged[-1] = Span(merged[-1].start, max(merged[-1].end, end))
        else:
            merged.append(Span(start, end))
    return merged


def deskshare_spans(presentation: Presentation, duration: float) -> list[Span]:
    """deskshare.xml's events; without them, the intervals where shapes.svg shows the share's placeholder."""
    events = [(e.start, e.stop) for e in presentation.deskshare]
    if not events:
        events = [(s.start, s.end) for s in presentation.slides if s.deskshare]
    return merge_spans(events, duration)


def annotation_states(slides: Sequence[SlideSpan], shapes: dict[str, list[Shape]],
                      merge_s: float) -> list[AnnotationState]:  # fmt: skip
    """The whiteboard states of `slides` with changes at least `merge_s` apart (no size limits)."""
    states: list[AnnotationState] = []
    for sweep in _sweeps(slides, shapes):
        states.extend(sweep.states(sweep.pick(merge_s), 0, None))
    return states


def _sweeps(slides: Sequence[SlideSpan], shapes: dict[str, list[Shape]]) -> list[_Sweep]:
    return [_Sweep(span, span.slide, shapes[span.slide.id]) for span in slides
            if span.slide is not None and shapes.get(span.slide.id)]  # fmt: skip


@dataclass
class _Visible:
    """The drawings visible at the sweep's current time, in drawing order (a drawing's place is
    where its first version appeared), with their markup size, changed in place event by event."""

    rank: dict[str, int] = field(default_factory=dict)  # drawing -> order of its first version
    latest: dict[str, Shape] = field(default_factory=dict)  # drawing -> its newest version so far
    shown: dict[str, Shape] = field(default_factory=dict)  # the visible ones (their newest version)
    slots: list[Shape | None] = field(default_factory=list)  # the same, by rank
    size: int = 0
    top: int = -1  # the highest rank in `shown` while its order is right
    ordered: bool = True  # `shown` is in rank order (a drawing shown again breaks it)

    def appear(self, shape: Shape) -> None:
        if shape.key not in self.rank:
            self.rank[shape.key] = len(self.slots)
            self.slots.append(None)
        self.latest[shape.key] = shape

    def settle(self, keys: Sequence[str], t: float, sizes: dict[int, int]) -> bool:
        """Show or hide the drawings `keys` as they are at `t`; True when anything changed."""
        changed = False
        for key in sorted(keys, key=self.rank.__getitem__):
            shape, rank = self.latest[key], self.rank[key]
            old = self.slots[rank]
            if shape.undo < 0 or shape.undo > t + EPSILON:
                if old is shape:
                    continue
                if old is None:
                    self.ordered = self.ordered and rank > self.top
                    self.top = max(self.top, rank)
                else:
                    self.size -= sizes[id(old)]
                self.shown[key] = self.slots[rank] = shape  # a drawing still shown keeps its place
                self.size += sizes[id(shape)]
                changed = True
            elif old is not None:
                del self.shown[key]
                self.slots[rank] = None
                self.size -= sizes[id(old)]
                changed = True
        return changed

    def snapshot(self) -> tuple[Shape, ...]:
        if self.ordered:
            return tuple(self.shown.values())
        shown = tuple(filter(None, self.slots))  # C speed, no sort
        self.shown = dict(zip(map(attrgetter("key"), shown), shown, strict=True))
        self.ordered, self.top = True, self.rank[shown[-1].key] if shown else -1
        return shown


class _Sweep:
    """One slide span's drawings: the change times, and the visible markup size and a version number
    (changes whenever the visible set does) at each of them."""

    def __init__(self, span: SlideSpan, slide: SlideImage, drawings: Sequence[Shape]) -> None:
        self.span, self.slide = span, slide
        changes = sorted({t for d in drawings for t in (d.timestamp, d.undo) if span.start + EPSILON < t < span.end})
        self.times = [span.start, *changes]
        self.appearing = [drawings[i] for i in sorted(range(len(drawings)), key=lambda i: (drawings[i].timestamp, i))]
        self.undone = sorted((d for d in drawings if d.undo >= 0), key=lambda d: d.undo)
        self.bytes = {id(d): len(d.svg.encode()) for d in drawings}
        self.sizes: list[int] = []
        self.versions: list[int] = []
        version = 0
        for _, visible, changed in self._run():
            version += changed
            self.sizes.append(visible.size)
            self.versions.append(version)

    def _run(self) -> Iterator[tuple[int, _Visible, bool]]:
        """Per change time: its index, the visible set then, whether it changed since the last time."""
        visible = _Visible()
        appear = undo = 0
        for index, t in enumerate(self.times):
            keys: set[str] = set()
            while appear < len(self.appearing) and self.appearing[appear].timestamp <= t + EPSILON:
                visible.appear(self.appearing[appear])
                keys.add(self.appearing[appear].key)
                appear += 1
            while undo < len(self.undone) and self.undone[undo].undo <= t + EPSILON:
                if self.undone[undo].key in visible.latest:
                    keys.add(self.undone[undo].key)
                undo += 1
            yield index, visible, visible.settle(list(keys), t, self.bytes)

    def pick(self, window: float) -> list[tuple[int, float, float]]:
        """(index, start, end) of the states kept with changes at least `window` apart: the span's start,
        then change times chosen from the end backwards (so that the final state is always exact);
        empty states left out, consecutive unchanged ones joined."""
        kept: list[int] = []
        for index in range(len(self.times) - 1, 0, -1):
            if not kept or self.times[kept[-1]] - self.times[index] >= window:
                kept.append(index)
        points = [0, *reversed(kept)]
        chosen: list[tuple[int, float, float]] = []
        for n, index in enumerate(points):
            end = self.times[points[n + 1]] if n + 1 < len(points) else self.span.end
            if self.sizes[index] == 0:
                continue
            last = chosen[-1] if chosen else None
            if last and self.versions[last[0]] == self.versions[index] and abs(last[2] - self.times[index]) <= EPSILON:
                chosen[-1] = (last[0], last[1], end)
            else:
                chosen.append((index, self.times[index], end))
        return chosen

    def states(self, points: Sequence[tuple[int, float, float]], budget: int,
               trimmed: Callable[[int], None] | None) -> list[AnnotationState]:  # fmt: skip
        """The states at `points`; with `budget` > 0, a state over it keeps its newest drawings that fit
        (`trimmed` is told how many were left out)."""
        wanted = {index: (start, end) for index, start, end in points}
        states: list[AnnotationState] = []
        for index, visible, _ in self._run():
            if index not in wanted:
                continue
            start, end = wanted[index]
            shown = visible.snapshot()
            if budget and visible.size > budget:
                shown = self._newest(shown, budget)
                if trimmed is not None:
                    trimmed(len(visible.shown) - len(shown))
            if states and states[-1].shapes == shown and abs(states[-1].end - start) <= EPSILON:
                states[-1] = AnnotationState(states[-1].start, end, self.slide, shown)
            elif shown:
                states.append(AnnotationState(start, end, self.slide, shown))
        return states

    def _newest(self, shown: tuple[Shape, ...], budget: int) -> tuple[Shape, ...]:
        used = 0
        for first in range(len(shown) - 1, -1, -1):
            used += self.bytes[id(shown[first])]
            if used > budget:
                return shown[first + 1 :]
        return shown
