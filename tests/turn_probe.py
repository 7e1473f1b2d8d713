"""
Run inside a peer's network namespace by tests/test_turn.py: sign in to a
pcsignal, fetch /ice-servers (and ask with an unknown id and on /wait, for
comparison), then use the TURN credentials with aioice as a TURN client:
allocate a relay and ask coturn to relay to each address given.  Prints one
JSON object with every answer as it came; the test judges them.

    python turn_probe.py SERVER_URL PEER_ADDRESS...
"""

import asyncio
import json
import sys
import urllib.error
import urllib.request

from aioice import stun
from aioice.turn import TurnClientUdpProtocol


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8")


async def relay_to(server, username, password, peers):
    """Allocate with these credentials, then ask for a channel to each peer address."""
    loop = asyncio.get_running_loop()
    transport, turn = await loop.create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(server, username=username, password=password, lifetime=600,
                                      channel_refresh_time=300),
        remote_addr=server,
    )
    try:
        relayed = await turn.connect()
        answers = {}
        for number, peer in enumerate(peers):
            try:
                await turn.channel_bind(0x4000 + number, (peer, 9))
                answers[peer] = "relayed"
            except stun.TransactionFailed as e:
                answers[peer] = "%d %s" % e.response.attributes["ERROR-CODE"]
        await turn.delete()
        return {"relayed": list(relayed), "peers": answers}
    finally:
        transport.close()


def main(url, *peers):
    status, headers, body = get(url + "/sign_in?probe")
    peer_id = int(headers["Pragma"])
    result = {"peer_id": peer_id, "ice_servers": get("%s/ice-servers?peer_id=%d" % (url, peer_id)),
              "unknown": get(url + "/ice-servers?peer_id=1"), "wait_unknown": get(url + "/wait?peer_id=1")}
    servers = json.loads(result["ice_servers"][2])["iceServers"]
    turn = next(s for s in servers if "username" in s)
    host, port = turn["urls"][0].split(":")[1:3]
    server = (host, int(port.split("?")[0]))
    result["turn"] = asyncio.run(relay_to(server, turn["username"], turn["credential"], peers))
    get("%s/sign_out?peer_id=%d" % (url, peer_id))
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
