"""
Recording one call's received media to a file with PyAV.

aiortc's MediaRecorder loses the video of browser calls: the first audio
packet it writes makes PyAV write the file header, which opens every
encoder, the video one at its default size; the first video frame then
tries to set the real size on the open encoder, the track's task dies
with "Cannot change width after codec is open" and nobody reads that
track again (no error shown, and the call's video decoding stops at one
frame).  Between two pcpeers the video often came first, so it worked.

CallRecorder does what that recorder should:

- it reads each track as soon as it is added, so no frame arrives before
  it is ready;
- the video stream takes the size of the first video frame; audio packets
  are held back (at most HOLD_SECONDS) until then, so the header is
  written with the right size; frames of another size later (browsers
  adapt the resolution mid-call) are scaled to it by PyAV, and the change
  is logged once per new size;
- timestamps start at zero when the recording starts and follow each
  track's own clock (RTP timestamps may begin anywhere and wrap), strictly
  increasing, so audio and video stay in step;
- a track whose encoding or writing fails gets one error log line and is
  still read to its end, so the call's decoding never stops silently.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from typing import Callable, Optional

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

#: Audio is held back this long at most, waiting for the first video frame.
HOLD_SECONDS = 5.0
VIDEO_CLOCK = 90000  # RTP's video clock, and the video encoder's time base
_WRAP = 1 << 32  # RTP timestamps are 32-bit


class _Writer:
    """One recorded track: its output stream and where its clock stands."""

    def __init__(self, kind: str, stream) -> None:
        self.kind = kind
        self.stream = stream
        self.task: Optional[asyncio.Task] = None
        self.failed = False
        self.ended = False
        self.encoded = 0  # frames handed to the encoder
        self.offset = 0  # first frame's position in the recording, in the stream's clock
        self.position = 0  # ticks since this track's first frame
        self.last_raw: Optional[int] = None
        self.last_pts = -1
        self.size: Optional[tuple[int, int]] = None


class CallRecorder:
    """Records the tracks added to it into one file (see the module docstring)."""

    def __init__(self, path: str, log, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.log = log
        self.what = what  # "the call with NAME (ID)", for log lines
        self._clock = clock
        self._container = av.open(path, mode="w")
        self._writers: dict[str, _Writer] = {}
        self._started = False  # the header is written: no more streams
        self._start_time: Optional[float] = None
        self._held: list = []
        self._held_since: Optional[float] = None

    def add_track(self, track: MediaStreamTrack) -> bool:
        """Record this track from now on; False if it cannot be (recording already under way)."""
        if self._started or track.kind in self._writers:
            return False
        if track.kind == "audio":
            stream = self._container.add_stream(_audio_codec(self._container.format.name))
        else:
            stream = self._container.add_stream(_video_codec(self._container.format.name))
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        writer = self._writers[track.kind] = _Writer(track.kind, stream)
        writer.task = asyncio.ensure_future(self._record(writer, track))
        return True

    async def stop(self) -> None:
        """Stop reading, flush the encoders and close the file."""
        tasks = [w.task for w in self._writers.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._container is None:
            return
        try:
            for writer in self._writers.values():
                if writer.encoded and not writer.failed:
                    self._mux(writer, writer.stream.encode(None))
            if self._held:
                self._start()
        finally:
            container, self._container = self._container, None
            container.close()

    # -- per track -------------------------------------------------------------

    async def _record(self, writer: _Writer, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if writer.failed:
                    continue  # keep reading: the call's decoding must not stop
                try:
                    self._write(writer, frame)
                except Exception as e:
                    writer.failed = True
                    self.log.error(
                        "recording {kind} of {what} failed: {error}; the call goes on, its {kind} no longer "
                        "recorded to {path}",
                        kind=writer.kind,
                        what=self.what,
                        error=_describe(e),
                        path=self.path,
                    )
        except MediaStreamError:
            pass
        finally:
            writer.ended = True

    def _write(self, writer: _Writer, frame) -> None:
        now = self._clock()
        if self._start_time is None:
            self._start_time = now
        raw_pts, raw_time_base = frame.pts, frame.time_base
        if writer.kind == "video":
            pts, time_base = self._video_timestamp(writer, frame, now)
        else:
            if writer.encoded == 0:
                writer.offset = round((now - self._start_time) * frame.sample_rate)
            pts, time_base = writer.offset + writer.position, fractions.Fraction(1, frame.sample_rate)
            writer.position += frame.samples
        # The frame may be shared (--echo sends it too): lend it our timestamps
        # only while encoding, which is synchronous.
        frame.pts, frame.time_base = pts, time_base
        try:
            packets = writer.stream.encode(frame)
        finally:
            frame.pts, frame.time_base = raw_pts, raw_time_base
        writer.encoded += 1
        self._mux(writer, packets)

    def _video_timestamp(self, writer: _Writer, frame, now: float) -> tuple[int, fractions.Fraction]:
        size = (frame.width, frame.height)
        if writer.encoded == 0:
            # H.264 and VP8 in 4:2:0 need even sizes; odd ones are scaled.
            writer.stream.width, writer.stream.height = frame.width & ~1, frame.height & ~1
            writer.offset = round((now - self._start_time) * VIDEO_CLOCK)
            self.log.info(
                "recording video of {what} at {width}x{height}", what=self.what, width=frame.width & ~1,
                height=frame.height & ~1,
            )
        elif size != writer.size:
            self.log.info(
                "video of {what} changed size to {width}x{height}: recorded scaled to {recorded}",
                what=self.what,
                width=size[0],
                height=size[1],
                recorded="%dx%d" % (writer.stream.width, writer.stream.height),
            )
        writer.size = size
        raw = frame.pts if frame.pts is not None else writer.last_raw or 0
        ticks = round(raw * frame.time_base * VIDEO_CLOCK) if frame.time_base else raw
        if writer.last_raw is not None:
            step = (ticks - writer.last_raw) % _WRAP
            writer.position += step - _WRAP if step >= _WRAP // 2 else step
        writer.last_raw = ticks
        pts = max(writer.offset + writer.position, writer.last_pts + 1)
        writer.last_pts = pts
        return pts, fractions.Fraction(1, VIDEO_CLOCK)

    # -- the file ----------------------------------------------------------------

    def _mux(self, writer: _Writer, packets) -> None:
        if not self._started:
            if self._waiting_for_video() and writer.kind != "video":
                self._hold(packets)
                return
            self._start()
        for packet in packets:
            self._container.mux(packet)

    def _waiting_for_video(self) -> bool:
        video = self._writers.get("video")
        return video is not None and video.encoded == 0 and not video.failed and not video.ended

    def _hold(self, packets) -> None:
        now = self._clock()
        if self._held_since is None:
            self._held_since = now
        self._held.extend(packets)
        if now - self._held_since > HOLD_SECONDS:
            video = self._writers["video"]
            self.log.warn(
                "no video from {what} after {seconds:.0f} s: recording audio without it", what=self.what,
                seconds=HOLD_SECONDS,
            )
            video.failed = True  # its encoder opens now, at a default size
            self._start()

    def _start(self) -> None:
        self._started = True
        held, self._held = self._held, []
        for packet in held:
            self._container.mux(packet)


def _audio_codec(container_format: str) -> str:
    if container_format == "wav":
        return "pcm_s16le"
    if container_format in ("webm", "ogg"):
        return "libopus"
    return "aac"


def _video_codec(container_format: str) -> str:
    return "libvpx" if container_format == "webm" else "libx264"


def _describe(error: Exception) -> str:
    return str(error) or error.__class__.__name__
