"""
A reverse proxy in the test process that makes pcsignal look like a server
without the WebSocket transport: ``/ws`` is answered the way the reference
peerconnection_server answers every path it lacks (500, an HTML page), and
every other request goes to the real pcsignal behind it (treq).
"""

import treq
from twisted.internet import reactor
from twisted.web import resource, server

SORRY = b"<html><body>Sorry, not yet implemented</body></html>"


class WithoutWebSocket(resource.Resource):
    isLeaf = True

    def __init__(self, upstream):
        resource.Resource.__init__(self)
        self.upstream = upstream

    def render(self, request):
        if request.path == b"/ws":
            request.setResponseCode(500, b"Sorry")
            request.setHeader(b"Content-Type", b"text/html")
            return SORRY
        headers = {b"Content-Type": request.requestHeaders.getRawHeaders(b"Content-Type", [])}
        d = treq.request(request.method.decode(), self.upstream + request.uri.decode("latin-1"),
                         data=request.content.read() or None, headers=headers)
        gone = []
        d.addCallback(lambda response: treq.content(response).addCallback(
            lambda body: gone or self.answer(request, response, body)))
        # A client that leaves (a parked /wait) takes its upstream request along.
        request.notifyFinish().addErrback(lambda _: (gone.append(True), d.cancel()))
        d.addErrback(lambda _: None)
        return server.NOT_DONE_YET

    def answer(self, request, response, body):
        request.setResponseCode(response.code)
        for name in (b"Pragma", b"Content-Type", b"Access-Control-Allow-Origin"):
            value = response.headers.getRawHeaders(name)
            if value:
                request.setHeader(name, value[0])
        request.write(body)
        request.finish()


def listen_without_websocket(url):
    """Serve url's server, minus /ws, on a free loopback port: (port, its URL)."""
    listening = reactor.listenTCP(0, server.Site(WithoutWebSocket(url)), interface="127.0.0.1")
    return listening, "http://127.0.0.1:%d" % (listening.getHost().port,)
