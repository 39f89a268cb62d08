"""What the recording shows when: slide spans, screen-share spans and whiteboard states.

All times are seconds of the published recording, clipped to [0, duration]. The slide spans tile
the whole recording (a span without a slide shows the background). The screen share covers
whatever is below it while it runs. A whiteboard state is the set of drawings visible on one slide
from `start` to `end`; states change at drawings' timestamps and undo times, but states that would
last less than `merge_s` are skipped (their drawings appear with the next kept state, never early)
and the window grows until at most `max_states` remain, so the number of overlays stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from b3lb.render.archive import Presentation
from b3lb.render.bbbformat import Shape, SlideImage

MERGE_S = 0.5
MAX_STATES = 2000
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
                   merge_s: float = MERGE_S, max_states: int = MAX_STATES) -> Timeline:  # fmt: skip
    """The timeline of `presentation` over [0, duration]; `deskshare`: the share video is usable."""
    slides = slide_spans(presentation.slides, duration)
    shares = deskshare_spans(presentation, duration) if deskshare else []
    states: list[AnnotationState] = []
    window = merge_s
    if annotate and presentation.shapes:
        while True:
            states = annotation_states(slides, presentation.shapes, window)
            if len(states) <= max_states or window > duration:
                break
            window *= 2
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
    states: list[AnnotationState] = []
    for span in slides:
        if span.slide is None or not shapes.get(span.slide.id):
            continue
        states.extend(_span_states(span, span.slide, shapes[span.slide.id], merge_s))
    return states


def _change_points(span: SlideSpan, drawings: Sequence[Shape], merge_s: float) -> list[float]:
    """The span's start, then change times at least `merge_s` apart, chosen from the end backwards so
    that the final state is always exact."""
    changes = sorted({t for d in drawings for t in (d.timestamp, d.undo) if span.start + EPSILON < t < span.end})
    kept: list[float] = []
    for t in reversed(changes):
        if not kept or kept[-1] - t >= merge_s:
            kept.append(t)
    return [span.start, *reversed(kept)]


def _span_states(span: SlideSpan, slide: SlideImage, drawings: Sequence[Shape],
                 merge_s: float) -> list[AnnotationState]:  # fmt: skip
    points = _change_points(span, drawings, merge_s)
    versions = sorted(range(len(drawings)), key=lambda i: (drawings[i].timestamp, i))
    latest: dict[str, Shape] = {}  # drawing -> its newest version so far; insertion order = drawing order
    states: list[AnnotationState] = []
    pointer = 0
    for index, t in enumerate(points):
        while pointer < len(versions) and drawings[versions[pointer]].timestamp <= t + EPSILON:
            shape = drawings[versions[pointer]]
            latest[shape.key] = shape
            pointer += 1
        visible = tuple(s for s in latest.values() if s.undo < 0 or s.undo > t + EPSILON)
        end = points[index + 1] if index + 1 < len(points) else span.end
        if not visible:
            continue
        if states and states[-1].shapes == visible and abs(states[-1].end - t) <= EPSILON:
            states[-1] = AnnotationState(states[-1].start, end, slide, visible)
        else:
            states.append(AnnotationState(t, end, slide, visible))
    return states


def frame_index(t: float, fps: int) -> int:
    """The frame shown at `t` in a video of `fps` frames per second starting at 0."""
    return round(t * fps)
