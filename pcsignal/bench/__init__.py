"""
Load generators, apart from the server they load.

- ``signaling`` (``pcsignal-bench``): relay, storm and hold scenarios against
  any peerconnection signaling server at a URL (aiohttp; ``[bench]`` extra);
  ``peers`` holds its simulated clients, ``workers`` its worker processes,
  ``hostile`` its fuzz, churn and soak scenarios.
- ``calls`` (``pcpeer-bench``): call set-up, media and memory of pcpeer
  (aiortc; ``[peer]`` extra).
"""
