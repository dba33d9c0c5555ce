"""Draw docs/review.svg: the review screen (Textual's SVG export) on the first pair of a run.

    python scripts/review_screenshot.py out/ docs/review.svg

Reads DIR's pairs and writes nothing into DIR (the session's log goes to a temporary copy).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from edgepref.runs.review import ReviewSession
from edgepref.ui.review import ReviewApp


async def _shoot(run: Path, size: tuple[int, int]) -> str:
    app = ReviewApp(ReviewSession(run, reviewer="docs"))
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        return app.export_screenshot(title="edgepref review")


def main(run_dir: str, out: str, width: int = 120, height: int = 34) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        copy.mkdir()
        for name in ("pairs.jsonl", "records.jsonl", "run.json"):
            if (Path(run_dir) / name).is_file():
                shutil.copy(Path(run_dir) / name, copy / name)
        svg = asyncio.run(_shoot(copy, (width, height)))
    Path(out).write_text(svg, encoding="utf-8")
    print(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
