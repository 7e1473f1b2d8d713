"""
pcpeer's media options with real processes: --play (a file through PyAV,
looped), --echo and --no-answer, called by an in-process peer.
"""

import av
import numpy as np
import pytest_twisted
from twisted.internet import reactor, task

import pytest

from peers import api_peer, start_peer

pytestmark = pytest.mark.usefixtures("loopback_ice")

CLIP_SIZE = (176, 144)
CLIP_FRAMES = 20  # 2 s at 10 fps


def make_clip(path, size=CLIP_SIZE, frames=CLIP_FRAMES, fps=10):
    """A short MPEG-4 video made with PyAV: a grey ramp, one shade per frame."""
    width, height = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.full((height, width, 3), (i * 12) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


async def frames_exceed(track, count, timeout=20.0):
    """Poll a received track's frame counter (the API has no event for a count)."""
    for _ in range(int(timeout / 0.1)):
        if track.frames > count:
            return
        await task.deferLater(reactor, 0.1)
    raise AssertionError("only %d frames received, wanted more than %d" % (track.frames, count))


@pytest_twisted.ensureDeferred
async def test_play_echo_and_no_answer(pcsignal_server, run_twistd, tmp_path):
    _, url = pcsignal_server
    clip = tmp_path / "clip.mp4"
    make_clip(clip)
    player, _ = start_peer(run_twistd, url, "player", "--play", str(clip), "--loop")
    echo, _ = start_peer(run_twistd, url, "echo", "--echo")
    refuser, _ = start_peer(run_twistd, url, "refuser", "--no-answer")
    caller = api_peer(url, "caller")  # sends a 160x120 test pattern
    await caller.start()

    # --play: the file's pictures, at the file's size, and more of them than
    # the file holds (--loop).
    played = await caller.call("player")
    await played.wait_first_frame("video")
    assert played.received["video"].size == CLIP_SIZE
    await frames_exceed(played.received["video"], CLIP_FRAMES + 5)

    # --echo: our own 160x120 pattern comes back (the bot's is 320x240).
    echoed = await caller.call("echo")
    await echoed.wait_first_frame("video")
    assert echoed.received["video"].size == (160, 120)

    # --no-answer: declined with BYE.
    refused = await caller.call("refuser")
    assert await refused.wait_ended() == "BYE received"

    await caller.stop()
    for proc in (player, echo, refuser):
        proc.stop()
        assert "Traceback" not in proc.output()
