from twisted.application.service import ServiceMaker

pcpeer = ServiceMaker(
    "pcpeer", "pcsignal.peer.tap", "Headless WebRTC peer (aiortc) for pcsignal", "pcpeer"
)
