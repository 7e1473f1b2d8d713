"""
The default media source: a synthetic test pattern generated in-process.

Video: colour bars scrolling sideways, a bouncing white square, and a black
band with the frame counter and the wall-clock time, drawn as seven-segment
digits with numpy (no fonts needed, so it runs on a bare server).  Frames
are built directly in YUV 4:2:0, the encoders' native format, so no colour
conversion is paid per frame.

Audio: a quiet 440 Hz tone with a 1 kHz beep in the first 100 ms of every
wall-clock second, so that audio and the on-screen clock can be compared.
"""

from __future__ import annotations

import asyncio
import fractions
import time

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
AUDIO_RATE = 48000
AUDIO_PTIME = 0.020
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)

# (Y, U, V) of the classic 75% colour bars: white, yellow, cyan, green,
# magenta, red, blue, black.
_BARS_YUV = [
    (180, 128, 128),
    (162, 44, 142),
    (131, 156, 44),
    (112, 72, 58),
    (84, 184, 198),
    (65, 100, 212),
    (35, 212, 114),
    (16, 128, 128),
]

# Seven-segment glyphs on a 5x9 unit grid: rectangles (x0, y0, x1, y1).
_SEGMENTS = {
    "a": (0, 0, 5, 1),
    "b": (4, 0, 5, 5),
    "c": (4, 4, 5, 9),
    "d": (0, 8, 5, 9),
    "e": (0, 4, 1, 9),
    "f": (0, 0, 1, 5),
    "g": (0, 4, 5, 5),
}
_DIGITS = {
    "0": "abcdef",
    "1": "bc",
    "2": "abdeg",
    "3": "abcdg",
    "4": "bcfg",
    "5": "acdfg",
    "6": "acdefg",
    "7": "abc",
    "8": "abcdefg",
    "9": "abcdfg",
}
_GLYPH_W, _GLYPH_H, _GLYPH_GAP = 5, 9, 2
_DOTS = {":": [(2, 2, 3, 3), (2, 6, 3, 7)], ".": [(2, 8, 3, 9)], " ": []}


def _glyph_rects(char: str) -> list[tuple[int, int, int, int]]:
    if char in _DIGITS:
        return [_SEGMENTS[s] for s in _DIGITS[char]]
    return _DOTS.get(char, [])


def draw_text(plane: np.ndarray, text: str, x: int, y: int, unit: int, value: int) -> None:
    """Draw digits, ':' and '.' into a 2-D luma plane, clipped to its edges."""
    height, width = plane.shape
    for i, char in enumerate(text):
        left = x + i * (_GLYPH_W + _GLYPH_GAP) * unit
        for x0, y0, x1, y1 in _glyph_rects(char):
            top, bottom = max(0, y + y0 * unit), min(height, y + y1 * unit)
            lo, hi = max(0, left + x0 * unit), min(width, left + x1 * unit)
            if top < bottom and lo < hi:
                plane[top:bottom, lo:hi] = value


def read_text(plane: np.ndarray, x: int, y: int, unit: int, length: int, threshold: int = 128) -> str:
    """
    Read back digits drawn by draw_text (from a decoded frame, say): each
    segment counts as lit when the luma at its centre is above threshold.
    Characters that are not digits read as '?'.
    """
    by_segments = {"".join(sorted(v)): k for k, v in _DIGITS.items()}
    out = []
    for i in range(length):
        left = x + i * (_GLYPH_W + _GLYPH_GAP) * unit
        lit = []
        for name, (x0, y0, x1, y1) in sorted(_SEGMENTS.items()):
            cy = y + (y0 + y1) * unit // 2
            cx = left + (x0 + x1) * unit // 2
            if plane[cy, cx] > threshold:
                lit.append(name)
        out.append(by_segments.get("".join(lit), "?"))
    return "".join(out)


class TestPatternLayout:
    """Where the pattern puts things, shared by the generator and readers."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, width: int, height: int) -> None:
        if width % 2 or height % 2 or width < 64 or height < 48:
            raise ValueError("test pattern size must be even and at least 64x48, not %dx%d" % (width, height))
        self.width, self.height = width, height
        # The counter and the clock each take one text line in the band.
        self.unit = max(1, min(width // 120, height // 60))
        line = (_GLYPH_H + 3) * self.unit
        self.band_top = height - 2 * line - self.unit
        self.counter_x = self.clock_x = 2 * self.unit
        self.counter_y = self.band_top + self.unit
        self.clock_y = self.counter_y + line
        self.counter_digits = 6


class PacedTrack(MediaStreamTrack):
    """
    A live track whose frames are due on an ideal schedule, one every
    ``period`` seconds from the first, so that timing errors do not add up.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frames_generated = 0
        self._start: float | None = None

    async def next_index(self, period: float) -> int:
        """Wait until the next frame is due; return its number."""
        if self.readyState != "live":
            raise MediaStreamError
        index = self.frames_generated
        if self._start is None:
            self._start = time.monotonic()
        else:
            delay = self._start + index * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.readyState != "live":
                raise MediaStreamError
        self.frames_generated += 1
        return index


class TestPatternVideoTrack(PacedTrack):
    """A live video track: moving colour bars, a bouncing square, counter and clock."""

    kind = "video"
    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0) -> None:
        super().__init__()
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.layout = TestPatternLayout(width, height)
        self.fps = fps
        self._bars = self._make_bars(width, height)

    @staticmethod
    def _make_bars(width: int, height: int) -> np.ndarray:
        """One yuv420p frame of colour bars, as a (height * 3 / 2, width) array."""
        columns = (np.arange(width) * len(_BARS_YUV)) // width
        y_row = np.array([_BARS_YUV[c][0] for c in columns], dtype=np.uint8)
        u_row = np.array([_BARS_YUV[c][1] for c in columns[::2]], dtype=np.uint8)
        v_row = np.array([_BARS_YUV[c][2] for c in columns[::2]], dtype=np.uint8)
        frame = np.empty((height * 3 // 2, width), dtype=np.uint8)
        frame[:height] = y_row
        # In av's yuv420p ndarray layout, U then V follow Y, each a quarter
        # plane stored as rows of width // 2 packed two to a line.
        quarter = height // 4
        frame[height : height + quarter] = np.tile(u_row, 2)
        frame[height + quarter :] = np.tile(v_row, 2)
        return frame

    def render(self, index: int, now: float) -> np.ndarray:
        """The yuv420p array for frame number index at wall-clock time now."""
        layout = self.layout
        w, h = layout.width, layout.height
        shift = (index * 4) % w
        frame = np.empty_like(self._bars)
        frame[:h] = np.roll(self._bars[:h], shift, axis=1)
        # Chroma rows hold two half-width lines each: roll each half.
        chroma = self._bars[h:].reshape(-1, 2, w // 2)
        frame[h:] = np.roll(chroma, shift // 2, axis=2).reshape(-1, w)
        luma = frame[:h]
        # A square bouncing across the bars shows motion smoothness.
        side = max(8, h // 8)
        span_x, span_y = w - side, layout.band_top - side
        px, py = (index * 5) % (2 * span_x), (index * 3) % (2 * max(1, span_y))
        px = px if px < span_x else 2 * span_x - px
        py = py if py < span_y else 2 * span_y - py
        luma[py : py + side, px : px + side] = 235
        # Black band with the frame counter and the clock (UTC, milliseconds).
        luma[layout.band_top :] = 16
        quarter, band = h // 4, layout.band_top // 4
        frame[h + band : h + quarter] = 128
        frame[h + quarter + band :] = 128
        counter = ("%0*d" % (layout.counter_digits, index))[-layout.counter_digits :]
        draw_text(luma, counter, layout.counter_x, layout.counter_y, layout.unit, 235)
        clock = time.strftime("%H:%M:%S", time.gmtime(now)) + ".%03d" % (int(now * 1000) % 1000)
        draw_text(luma, clock, layout.clock_x, layout.clock_y, layout.unit, 235)
        return frame

    async def recv(self) -> VideoFrame:
        index = await self.next_index(1.0 / self.fps)
        frame = VideoFrame.from_ndarray(self.render(index, time.time()), format="yuv420p")
        frame.pts = int(index * VIDEO_CLOCK_RATE / self.fps)
        frame.time_base = VIDEO_TIME_BASE
        return frame


class ToneAudioTrack(PacedTrack):
    """A live audio track: 440 Hz tone with a 1 kHz beep at each second."""

    kind = "audio"

    def __init__(self, sample_rate: int = AUDIO_RATE) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.samples_per_frame = int(sample_rate * AUDIO_PTIME)

    def render(self, first_sample: int, now: float) -> np.ndarray:
        t = (first_sample + np.arange(self.samples_per_frame)) / self.sample_rate
        beeping = (now % 1.0) < 0.1
        tone = np.sin(2 * np.pi * (1000.0 if beeping else 440.0) * t)
        return (tone * 8000).astype(np.int16).reshape(1, -1)

    async def recv(self) -> AudioFrame:
        index = await self.next_index(AUDIO_PTIME)
        first_sample = index * self.samples_per_frame
        frame = AudioFrame.from_ndarray(self.render(first_sample, time.time()), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = first_sample
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        return frame
