"""Every transcript under tests/replay/ replays exactly (set SIDECAR_CMD for other builds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.replay.runner import replay

TRANSCRIPTS = sorted(Path(__file__).parent.glob("*.jsonl"))

pytestmark = pytest.mark.stdio


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_transcript(path: Path) -> None:
    replay(path)


def test_there_are_transcripts() -> None:
    assert len(TRANSCRIPTS) >= 4
