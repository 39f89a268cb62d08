"""Rendering: one video per recording profile from a node's published presentation.

The render core turns an uploaded archive into videos with ONE ffmpeg process per profile:

- `archive`: safe extraction of the tar (caps, no traversal, no links) and parsing of BBB's files
  (metadata.xml, shapes.svg, deskshare.xml, panzooms.xml, cursor.xml) into plain dataclasses;
- `timeline`: what is shown when (slide spans, screen-share spans, whiteboard states);
- `annotate`: whiteboard states as sanitised SVG documents, rasterised by librsvg inside ffmpeg or
  by resvg/cairosvg into PNGs;
- `graph`: the ffmpeg inputs and filter graph of one profile;
- `ffmpeg`: finding the binary, probing media, running it with progress and cancellation;
- `pipeline`: `Profile`, `RenderError`, `render_profile()`, the entry points of the render worker.

The worker (`worker`, `jobs`, `metrics`) takes jobs from the database and stores the results.
Nothing is imported here, so that loading the worker does not load the pipeline.
"""
