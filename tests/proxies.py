"""
A reverse proxy in the test process that makes pcsignal look like a server
without the WebSocket transport: ``/ws`` is answered the way the reference
peerconnection_server answers every path it lacks (500, an HTML page), and
everything else goes to the real pcsignal behind it (twisted.web.proxy).
"""

from twisted.internet import reactor
from twisted.web import resource, server
from twisted.web.proxy import ReverseProxyResource

from httpclients import address

SORRY = b"<html><body>Sorry, not yet implemented</body></html>"


class Sorry(resource.Resource):
    isLeaf = True

    def render(self, request):
        request.setResponseCode(500, b"Sorry")
        request.setHeader(b"Content-Type", b"text/html")
        return SORRY


class WithoutWebSocket(ReverseProxyResource):
    def getChild(self, path, request):
        if path == b"ws":
            return Sorry()
        return ReverseProxyResource.getChild(self, path, request)


def listen_without_websocket(url):
    """Serve url's server, minus /ws, on a free loopback port: (port, its URL)."""
    host, port = address(url)
    listening = reactor.listenTCP(0, server.Site(WithoutWebSocket(host, port, b"")),
                                  interface="127.0.0.1")
    return listening, "http://127.0.0.1:%d" % (listening.getHost().port,)
