from twisted.application.service import ServiceMaker

pcsignal = ServiceMaker(
    "pcsignal", "pcsignal.server_tap", "WebRTC peerconnection signaling server", "pcsignal"
)
