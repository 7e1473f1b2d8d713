"""
Media plumbing around aiortc.contrib.media: the shared outgoing source and
frame counting.

Every call sends the same source: SharedSource opens it when the first call
subscribes, fans it out with aiortc's MediaRelay, and stops it when the last
call unsubscribes, so a test pattern or a file costs nothing while idle and
a capture device is released between calls.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

from aiortc.contrib.media import MediaPlayer, MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from pcsignal import logs
from pcsignal.peer.pattern import TestPatternVideoTrack, ToneAudioTrack

TrackOpener = Callable[[], Mapping[str, MediaStreamTrack]]


def pattern_source(width: int = 640, height: int = 480, fps: float = 30.0) -> TrackOpener:
    """Opener for the synthetic test pattern (video) and tone (audio)."""

    def open_tracks() -> dict[str, MediaStreamTrack]:
        return {"audio": ToneAudioTrack(), "video": TestPatternVideoTrack(width, height, fps)}

    return open_tracks


def player_source(
    source: str, format: Optional[str] = None, options: Optional[dict[str, str]] = None, loop: bool = False
) -> TrackOpener:
    """Opener for a file, URL or capture device read by aiortc's MediaPlayer (PyAV)."""

    def open_tracks() -> dict[str, MediaStreamTrack]:
        media = MediaPlayer(source, format=format, options=options or {}, loop=loop)
        tracks = {"audio": media.audio, "video": media.video}
        return {kind: track for kind, track in tracks.items() if track is not None}

    return open_tracks


class SharedSource:
    """One live source for all calls, opened on demand (see module docstring)."""

    def __init__(self, open_tracks: TrackOpener) -> None:
        self.log = logs.logger("pcpeer.media")
        self._open_tracks = open_tracks
        self._relay = MediaRelay()
        self._tracks: Optional[Mapping[str, MediaStreamTrack]] = None
        self._subscribers = 0

    @property
    def active(self) -> bool:
        return self._tracks is not None

    def subscribe(self) -> dict[str, MediaStreamTrack]:
        """One proxy track per kind the source has, for one call."""
        if self._tracks is None:
            self._tracks = dict(self._open_tracks())
            self.log.info("media source opened: {kinds}", kinds=", ".join(sorted(self._tracks)) or "no tracks")
        self._subscribers += 1
        # Unbuffered: a slow call gets the latest frame, never a growing queue.
        return {kind: self._relay.subscribe(track, buffered=False) for kind, track in self._tracks.items()}

    def unsubscribe(self, proxies: Mapping[str, MediaStreamTrack]) -> None:
        for proxy in proxies.values():
            proxy.stop()
        self._subscribers -= 1
        if self._subscribers == 0 and self._tracks is not None:
            for track in self._tracks.values():
                track.stop()
            self._tracks = None
            self.log.info("media source closed: no calls left")


class CountingTrack(MediaStreamTrack):
    """
    Pass a track through, counting frames.  Wrapped around what a call sends
    it counts frames handed to the encoder; around what it receives, frames
    decoded.  ``on_frame(track)`` runs after each frame.
    """

    def __init__(self, source: MediaStreamTrack, on_frame: Optional[Callable[["CountingTrack"], None]] = None) -> None:
        super().__init__()
        self.kind = source.kind
        self.source = source
        self.frames = 0
        self.size: Optional[tuple[int, int]] = None
        self._on_frame = on_frame

    async def recv(self):
        frame = await self.source.recv()
        self.frames += 1
        if self.kind == "video":
            self.size = (frame.width, frame.height)
        if self._on_frame is not None:
            self._on_frame(self)
        return frame

    def stop(self) -> None:
        super().stop()
        self.source.stop()
