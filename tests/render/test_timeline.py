"""The timeline (b3lb.render.timeline): slide spans tile the recording, screen-share spans come from
deskshare.xml (or the share's placeholder images), and whiteboard states change at drawings' times,
never early, with short states skipped and their number capped."""

from __future__ import annotations

from pathlib import Path

import pytest

from b3lb.render.archive import Presentation
from b3lb.render.bbbformat import DeskshareEvent, Metadata, Shape, SlideImage
from b3lb.render.timeline import (
    Span,
    annotation_states,
    build_timeline,
    deskshare_spans,
    merge_spans,
    slide_spans,
)

FILE = Path("/nonexistent/slide.png")


def image(image_id: str, start: float, end: float, *, file: Path | None = FILE, deskshare: bool = False) -> SlideImage:
    return SlideImage(image_id, f"presentation/p/{image_id}.png", start, end, 800, 600, file, (800, 600), deskshare)


def shape(key: str, timestamp: float, undo: float = -1.0, image_id: str = "image1") -> Shape:
    return Shape(image_id, key, timestamp, undo, f'<g id="{key}@{timestamp}"/>')


def presentation(slides: list[SlideImage], shapes: dict[str, list[Shape]] | None = None,
                 deskshare: list[DeskshareEvent] | None = None) -> Presentation:  # fmt: skip
    return Presentation(root=Path("/nonexistent"), metadata=Metadata("r", "", None, None, 10.0), slides=slides,
                        shapes=shapes or {}, deskshare=deskshare or [])  # fmt: skip


def spans(result: list) -> list[tuple[float, float, str | None]]:
    return [(s.start, s.end, s.slide.id if s.slide else None) for s in result]


def test_slide_spans_tile_the_recording() -> None:
    images = [image("image2", 3.0, 6.0), image("image1", 1.0, 3.0), image("image3", 7.0, 20.0)]
    assert spans(slide_spans(images, 10.0)) == [
        (0.0, 1.0, None), (1.0, 3.0, "image1"), (3.0, 6.0, "image2"), (6.0, 7.0, None), (7.0, 10.0, "image3"),
    ]  # fmt: skip


def test_slide_spans_overlaps_placeholders_and_missing_files() -> None:
    images = [image("image1", 0.0, 5.0), image("image2", 4.0, 6.0, deskshare=True),
              image("image3", 6.0, 8.0, file=None), image("image4", 8.0, 8.0)]  # fmt: skip
    # the later image takes over from its start; the share's placeholder and a missing file are background
    assert spans(slide_spans(images, 9.0)) == [(0.0, 4.0, "image1"), (4.0, 6.0, None), (6.0, 8.0, None),
                                               (8.0, 9.0, None)]  # fmt: skip
    assert spans(slide_spans([], 2.5)) == [(0.0, 2.5, None)]


def test_merge_spans_clips_sorts_and_joins() -> None:
    assert merge_spans([(5, 7), (-1, 2), (2, 3), (6, 12), (20, 30), (4, 4)], 10.0) == [
        Span(0.0, 3.0), Span(5.0, 10.0)]  # fmt: skip


def test_deskshare_spans_from_events_else_placeholders() -> None:
    events = [DeskshareEvent(8.0, 12.0, 1280, 720), DeskshareEvent(1.0, 2.0, 1280, 720)]
    assert deskshare_spans(presentation([], deskshare=events), 10.0) == [Span(1.0, 2.0), Span(8.0, 10.0)]
    placeholders = [image("image1", 0.0, 3.0), image("image2", 3.0, 4.5, deskshare=True)]
    assert deskshare_spans(presentation(placeholders), 10.0) == [Span(3.0, 4.5)]


def states_of(shapes: list[Shape], start: float = 0.0, end: float = 10.0, merge_s: float = 0.0) -> list[tuple]:
    slides = slide_spans([image("image1", start, end)], end)
    return [(s.start, s.end, [x.svg.split('"')[1] for x in s.shapes])
            for s in annotation_states(slides, {"image1": shapes}, merge_s)]  # fmt: skip


def test_drawings_appear_at_their_time_and_go_at_undo() -> None:
    shapes = [shape("a", 2.0), shape("b", 4.0, undo=6.0), shape("c", 0.0)]
    assert states_of(shapes) == [
        (0.0, 2.0, ["c@0.0"]), (2.0, 4.0, ["c@0.0", "a@2.0"]), (4.0, 6.0, ["c@0.0", "a@2.0", "b@4.0"]),
        (6.0, 10.0, ["c@0.0", "a@2.0"]),
    ]  # fmt: skip


def test_a_newer_version_replaces_the_drawing() -> None:
    # BBB writes each update of a drawing as a new <g> with the same `shape` name
    shapes = [shape("pencil1", 1.0), shape("pencil1", 1.5), shape("pencil1", 3.0), shape("line2", 2.0)]
    assert states_of(shapes) == [
        (1.0, 1.5, ["pencil1@1.0"]), (1.5, 2.0, ["pencil1@1.5"]), (2.0, 3.0, ["pencil1@1.5", "line2@2.0"]),
        (3.0, 10.0, ["pencil1@3.0", "line2@2.0"]),
    ]  # fmt: skip


def test_drawings_outside_the_span_and_empty_states() -> None:
    shapes = [shape("a", 0.5, undo=1.0), shape("b", 12.0)]
    assert states_of(shapes, start=2.0, end=10.0) == []  # undone before and drawn after: nothing to show


def test_short_states_are_skipped_never_early_and_the_last_is_exact() -> None:
    updates = [shape("pencil", round(1.0 + 0.1 * i, 1)) for i in range(21)]  # 1.0 .. 3.0, every 0.1 s
    states = states_of(updates, merge_s=0.5)
    assert states[-1][2] == ["pencil@3.0"] and states[-1][0] == 3.0  # the final drawing, from its time on
    for start, end, shown in states:
        drawn = float(shown[0].split("@")[1])
        assert drawn <= start  # never before it was drawn
        assert end - start >= 0.5 - 1e-9 or end == 10.0
    assert len(states) < 8


def test_the_number_of_states_is_capped() -> None:
    shapes = [shape(f"s{i}", i * 0.01, image_id="image1") for i in range(1, 900)]
    result = build_timeline(presentation([image("image1", 0.0, 10.0)], {"image1": shapes}), 10.0,
                            deskshare=False, annotate=True, merge_s=0.001, max_states=20)  # fmt: skip
    assert 0 < len(result.annotations) <= 20 and result.merge_s > 0.001
    assert result.annotations[-1].shapes[-1].key == "s899"  # the final state is still exact


def test_build_timeline_switches() -> None:
    source = presentation([image("image1", 0.0, 10.0)], {"image1": [shape("a", 1.0)]},
                          [DeskshareEvent(2.0, 3.0, 640, 480)])  # fmt: skip
    full = build_timeline(source, 10.0, deskshare=True, annotate=True)
    assert full.deskshare == [Span(2.0, 3.0)] and len(full.annotations) == 1
    bare = build_timeline(source, 10.0, deskshare=False, annotate=False)
    assert bare.deskshare == [] and bare.annotations == []


@pytest.mark.parametrize("duration", [0.5, 10.0, 3600.0])
def test_spans_always_cover_the_duration(duration: float) -> None:
    result = slide_spans([image("image1", 0.2, 0.4), image("image2", 0.4, 5000.0)], duration)
    assert result[0].start == 0.0 and result[-1].end == duration
    assert all(a.end == b.start for a, b in zip(result, result[1:], strict=False))


def reference_state(shapes: list[Shape], t: float) -> list[str]:
    """What a whiteboard shows at `t`, computed from scratch: per drawing its newest version drawn by
    then, unless undone by then, in the order the drawings first appeared."""
    newest: dict[str, Shape] = {}
    for version in sorted(shapes, key=lambda s: s.timestamp):  # stable: document order breaks ties
        if version.timestamp <= t + 1e-6:
            newest[version.key] = version
    return [s.svg for s in newest.values() if s.undo < 0 or s.undo > t + 1e-6]


def busy_board(count: int, duration: float) -> list[Shape]:
    """`count` versions of count/4 drawings: updates, undos, undone drawings drawn again later (their
    place stays where they first appeared), timestamps shared by several versions."""
    shapes = []
    for i in range(count):
        key = f"d{(i * 7919) % (count // 4)}"
        timestamp = round((i * 104729) % count * duration / count, 1)
        undo = -1.0 if i % 3 else round(timestamp + (i % 11) * 0.7, 1)
        shapes.append(Shape("image1", key, timestamp, undo, f'<g id="{key}@{i}"/>'))
    return shapes


def check_against_recount(shapes: list[Shape], states: list, samples: int = 0) -> None:
    """Every state (or `samples` spread over them, and the last) shows exactly the drawings visible at
    its start, counted from scratch."""
    assert all(a.end <= b.start + 1e-9 for a, b in zip(states, states[1:], strict=False))
    for state in states[:: max(1, len(states) // samples)] + states[-1:] if samples else states:
        assert [s.svg for s in state.shapes] == reference_state(shapes, state.start), state.start


def test_the_sweep_matches_a_recount_at_every_change() -> None:
    shapes = busy_board(2000, 600.0)
    slides = slide_spans([image("image1", 0.0, 600.0)], 600.0)
    states = annotation_states(slides, {"image1": shapes}, 0.0)
    assert len(states) > 1000  # (almost) one per change: updates, undos and drawings drawn again
    check_against_recount(shapes, states)
    changes = {t for s in shapes for t in (s.timestamp, s.undo) if 0.0 < t < 600.0}
    assert {s.start for s in states} <= changes | {0.0}


def test_twenty_thousand_drawings_on_two_hours() -> None:
    """One sweep over the events (the old rebuild per change took ~13 s here, this ~0.2 s): the states
    are still exact, their number and markup within the caps, the last one complete."""
    shapes = busy_board(20_000, 7200.0)
    source = presentation([image("image1", 0.0, 7200.0)], {"image1": shapes})
    result = build_timeline(source, 7200.0, deskshare=False, annotate=True)
    assert 100 < len(result.annotations) <= 2000
    check_against_recount(shapes, result.annotations, samples=100)
    last = max(t for s in shapes for t in (s.timestamp, s.undo) if t < 7200.0)
    assert result.annotations[-1].start == last and source.warnings == []


def test_the_markup_of_all_overlays_is_capped_by_thinning_states() -> None:
    # 400 drawings of 1 kB drawn one per 0.1 s and never undone: 400 states averaging 200 kB = 80 MB
    shapes = [Shape("image1", f"s{i}", i * 0.1, -1.0, f'<g id="s{i}"/>'.ljust(1000)) for i in range(400)]
    source = presentation([image("image1", 0.0, 60.0)], {"image1": shapes})
    result = build_timeline(source, 60.0, deskshare=False, annotate=True, merge_s=0.05, total_bytes=4_000_000)
    total = sum(len(s.svg) for state in result.annotations for s in state.shapes)
    assert total <= 4_000_000 and result.merge_s > 0.05 and len(result.annotations) >= 5
    assert [s.key for s in result.annotations[-1].shapes] == [f"s{i}" for i in range(400)]  # still exact
    assert source.warnings == []  # thinning alone was enough: nothing left out


def test_a_state_over_its_cap_keeps_its_newest_drawings() -> None:
    shapes = [Shape("image1", f"s{i}", 1.0 + i, -1.0, f'<g id="s{i}"/>'.ljust(1000)) for i in range(8)]
    source = presentation([image("image1", 0.0, 10.0)], {"image1": shapes})
    result = build_timeline(source, 10.0, deskshare=False, annotate=True, state_bytes=3000)
    assert [[s.key for s in state.shapes] for state in result.annotations][-2:] == [
        ["s4", "s5", "s6"], ["s5", "s6", "s7"]]  # fmt: skip
    assert all(sum(len(s.svg) for s in state.shapes) <= 3000 for state in result.annotations)
    assert len(source.warnings) == 1 and "only their newest drawings are shown" in source.warnings[0]


def test_when_thinning_is_not_enough_every_state_gets_a_share() -> None:
    # 50 slide changes, each slide showing 20 kB of drawings: at least 50 states whatever the window
    slides = [image(f"image{n}", n * 2.0, n * 2.0 + 2.0) for n in range(50)]
    shapes = {f"image{n}": [Shape(f"image{n}", f"s{i}", n * 2.0, -1.0, f'<g id="{n}-{i}"/>'.ljust(1000))
                            for i in range(20)] for n in range(50)}  # fmt: skip
    source = presentation(slides, shapes)
    result = build_timeline(source, 100.0, deskshare=False, annotate=True, total_bytes=500_000)
    assert len(result.annotations) == 50
    assert sum(len(s.svg) for state in result.annotations for s in state.shapes) <= 500_000
    assert all(state.shapes and state.shapes[-1].key == "s19" for state in result.annotations)
    assert len(source.warnings) == 1 and "50 drawing states" in source.warnings[0]
