"""
pcpeer's call recorder (pcsignal.peer.recorder) fed with frames directly:
audio before the first video frame, video changing size mid-call (as
browsers do), RTP timestamps starting anywhere and wrapping, and a track
that fails.  The files are read back with PyAV.
"""

import asyncio
import fractions

import av
import numpy as np
import pytest
import pytest_twisted
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from twisted.internet import defer
from twisted.logger import Logger, formatEvent

from pcsignal.peer.recorder import CallRecorder


class FrameList(MediaStreamTrack):
    """A track that hands out the given frames, then ends."""

    def __init__(self, kind, frames, first_after=0.0):
        super().__init__()
        self.kind = kind
        self._frames = list(frames)
        self._first_after = first_after
        self.read = 0

    async def recv(self):
        await asyncio.sleep(0.001 if self.read else self._first_after)
        if not self._frames:
            raise MediaStreamError
        self.read += 1
        return self._frames.pop(0)


def video_frame(width, height, pts):
    frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), pts % 200, np.uint8), format="rgb24")
    frame = frame.reformat(format="yuv420p")
    frame.pts, frame.time_base = pts % (1 << 32), fractions.Fraction(1, 90000)
    return frame


def audio_frame(pts):
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 960 * 2), np.int16), format="s16", layout="stereo")
    frame.sample_rate, frame.pts, frame.time_base = 48000, pts, fractions.Fraction(1, 48000)
    return frame


def log_lines():
    events = []
    return Logger(namespace="test", observer=events.append), events


async def record(path, tracks):
    log, events = log_lines()
    recorder = CallRecorder(str(path), log, "the test call")
    for track in tracks:
        assert recorder.add_track(track)
    await asyncio.gather(*[w.task for w in recorder._writers.values()])
    await recorder.stop()
    return [formatEvent(e) for e in events], [e["log_level"].name for e in events]


def read_back(path):
    with av.open(str(path)) as container:
        video = [(f.width, f.height, f.time) for f in container.decode(video=0)]
        container.seek(0)
        audio = sum(f.samples for f in container.decode(audio=0))
    return video, audio


@pytest_twisted.ensureDeferred
async def test_video_changing_size_after_audio_came_first(tmp_path):
    # Audio arrives first; video starts near the top of the 32-bit RTP clock
    # (it wraps), at 640x360, then drops to 320x180 and comes back.
    start = (1 << 32) - 3000 * 40
    sizes = [(640, 360)] * 40 + [(320, 180)] * 40 + [(640, 360)] * 40
    video = FrameList("video", [video_frame(w, h, start + 3000 * i) for i, (w, h) in enumerate(sizes)], 0.1)
    audio = FrameList("audio", [audio_frame(123456 + 960 * i) for i in range(200)])
    path = tmp_path / "call.mp4"
    lines, _ = await defer.Deferred.fromFuture(asyncio.ensure_future(record(path, [audio, video])))
    frames, samples = read_back(path)
    assert len(frames) == 120
    assert {(w, h) for w, h, _ in frames} == {(640, 360)}  # scaled to the first size
    times = [t for _, _, t in frames]
    assert times == sorted(times) and times[-1] - times[0] == pytest.approx(119 / 30, abs=0.05)
    assert times[0] < 1.0  # from the recording's start, not the RTP clock's
    assert samples >= 190 * 960
    assert sum("changed size to 320x180" in line for line in lines) == 1, lines
    assert sum("changed size to 640x360" in line for line in lines) == 1, lines


@pytest_twisted.ensureDeferred
async def test_a_failing_track_is_one_error_line_and_still_read(tmp_path):
    frames = [video_frame(160, 120, 3000 * i) for i in range(30)]
    frames[10:10] = [audio_frame(0)] * 5  # nonsense on the video track
    video = FrameList("video", frames)
    path = tmp_path / "call.webm"
    lines, levels = await defer.Deferred.fromFuture(asyncio.ensure_future(record(path, [video])))
    assert video.read == 35  # read to its end
    errors = [line for line, level in zip(lines, levels) if level == "error"]
    assert len(errors) == 1 and "recording video of the test call failed" in errors[0], lines
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10  # those before the failure
