"""
A reverse proxy in the test process that makes pcsignal look like a server
without some of its paths: those are answered the way the reference
peerconnection_server answers every path it lacks (500, an HTML page), and
every other request goes to the real pcsignal behind it (treq, a new
connection per request).
"""

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool

REFERENCE_SORRY = b"<html><body>Sorry, not yet implemented</body></html>"


class ReferenceLike(resource.Resource):
    isLeaf = True

    def __init__(self, upstream, missing):
        resource.Resource.__init__(self)
        self.upstream = upstream
        self.missing = missing
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    def render(self, request):
        if request.path in self.missing:
            request.setResponseCode(500, b"Sorry")
            request.setHeader(b"Content-Type", b"text/html")
            return REFERENCE_SORRY
        headers = {b"Content-Type": request.requestHeaders.getRawHeaders(b"Content-Type", [])}
        d = self.http.request(request.method.decode(), self.upstream + request.uri.decode("latin-1"),
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


def listen_like_the_reference(url, missing):
    """Serve url's server, minus the paths in missing, on a free loopback port: (port, its URL)."""
    listening = reactor.listenTCP(0, server.Site(ReferenceLike(url, missing)), interface="127.0.0.1")
    return listening, "http://127.0.0.1:%d" % (listening.getHost().port,)


def listen_without_websocket(url):
    return listen_like_the_reference(url, (b"/ws",))
