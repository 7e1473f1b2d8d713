"""
pcpeer: a headless WebRTC peer (aiortc) for peerconnection signaling servers.

- ``signaling.SignalingClient``: sign-in, hanging GET, ordered sends,
  back-off, re-sign-in, peer list (Twisted, treq);
- ``call.CallManager`` / ``call.Call``: protocol messages to
  RTCPeerConnections, one per remote peer (asyncio, aiortc);
- ``media``: the shared outgoing source, recording names, frame counting;
- ``pattern``: the synthetic test pattern and tone;
- ``peer.Peer``: all of the above wired together, as ``twistd pcpeer`` runs it;
- ``tap``: ``twistd pcpeer`` options and service.
"""
