"""pcsignal: a WebRTC signaling server and headless WebRTC peer on Twisted."""

__version__ = "0.2.0"
