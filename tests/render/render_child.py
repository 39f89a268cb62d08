"""A render worker in a process of its own, for tests/render/test_worker_kill.py: the stand-in
pipeline of render_support, whose profile "b" never finishes, so the test can kill it mid-job.

    python tests/render/render_child.py DATABASE_URL TMP_PATH
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncpg
from render_support import StandIn, make_config

from b3lb.recordings.storage import make_storage
from b3lb.render.worker import RenderWorker


async def main(db_url: str, tmp_path: Path) -> None:
    config = make_config(tmp_path, lease_seconds=2.0, heartbeat_seconds=0.5)
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    pipeline = StandIn(gates={"b": asyncio.Event()})
    worker = RenderWorker(pool, make_storage(config), config, "child", render=pipeline.render,
                          extract=pipeline.extract, profile=pipeline.profile)  # fmt: skip
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
