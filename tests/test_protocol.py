"""The pure protocol module: formats, name cleaning, id parsing, message kinds."""

import json

import pytest

from pcsignal import protocol
from pcsignal.protocol import Bye, Entry, IceCandidate, SessionDescription, Unrecognised


def test_entry_round_trip():
    assert protocol.format_entry("alice", 1, True) == b"alice,1,1\n"
    assert protocol.format_entry("alice", 1, False) == b"alice,1,0\n"
    assert protocol.parse_entry(b"alice,1,1\n") == Entry("alice", 1, True)
    assert protocol.parse_entries(b"bob,2,1\nalice,1,0\n") == [
        Entry("bob", 2, True), Entry("alice", 1, False)]


def test_parse_entry_tolerates_commas_in_names_from_other_servers():
    assert protocol.parse_entry("a,b,7,1") == Entry("a,b", 7, True)


@pytest.mark.parametrize("line", ["", "alice", "alice,1", "alice,x,1", "alice,1,2", "alice,0,1"])
def test_parse_entry_rejects_garbage(line):
    assert protocol.parse_entry(line) is None


@pytest.mark.parametrize("raw, name", [
    (b"alice", "alice"),
    (b"bob%20smith", "bob smith"),
    (b"a+b", "a+b"),
    (b"", "peer_7"),
    (b"x,y", "x_y"),
    (b"evil%0Amallory,9,1", "evil_mallory_9_1"),
    (b"cr%0D%0Alf", "cr__lf"),
    (b"tab%09nul%00del%7F", "tab_nul_del_"),
    (b"ls%E2%80%A8ps%E2%80%A9", "ls_ps_"),
    (b"%C2%85nel", "_nel"),
    (b"bad%FFutf8", "bad\ufffdutf8"),
    ("user@host".encode(), "user@host"),
])
def test_clean_name(raw, name):
    assert protocol.clean_name(raw, 7) == name


def test_clean_name_never_forges_an_entry():
    for raw in [b"%0A", b"a%0Ab,2,1%0A", b"%0D", b",,,", b"x%2C1%2C1"]:
        entries = protocol.parse_entries(protocol.format_entry(protocol.clean_name(raw, 3), 3, True))
        assert len(entries) == 1 and entries[0].peer_id == 3


def test_clean_name_is_at_most_512_bytes_and_keeps_characters_whole():
    assert len(protocol.clean_name(b"a" * 2000, 1).encode()) == 512
    name = protocol.clean_name("é".encode() * 300, 1)  # 2 bytes each
    assert len(name.encode()) == 512 and set(name) == {"é"}
    name = protocol.clean_name(b"a" + "é".encode() * 300, 1)
    assert len(name.encode()) == 511 and name.startswith("aé")


@pytest.mark.parametrize("text, value", [
    ("12", 12), ("12abc", 12), (" 7", 7), ("+5", 5), ("0", None), ("-3", None),
    ("abc", None), ("", None), ("2147483647", 2147483647), ("2147483648", None),
    ("99999999999999999999", None),
])
def test_atoi(text, value):
    assert protocol.atoi(text) == value


def test_query_ids_like_the_reference():
    assert protocol.query_peer_id(b"peer_id=5&to=6") == 5
    assert protocol.query_peer_id(b"to=6&peer_id=5") == 5
    assert protocol.query_peer_id(b"xpeer_id=5") == 5  # found anywhere, as the reference
    assert protocol.query_peer_id(b"id=5") is None
    assert protocol.query_to(b"peer_id=5&to=6") == 6
    assert protocol.query_to(b"to=6") == 6
    assert protocol.query_to(b"peer_id=5&xto=6") is None  # a parameter, not a substring
    assert protocol.query_to(b"xto=1&to=2") == 2


def test_parse_messages_from_the_native_client():
    offer = b'{\n   "sdp" : "v=0\\r\\n",\n   "type" : "offer"\n}\n'
    assert protocol.parse_message(offer) == SessionDescription("offer", "v=0\r\n")
    cand = json.dumps({"sdpMid": "audio", "sdpMLineIndex": 0,
                       "candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host"}).encode()
    assert protocol.parse_message(cand) == IceCandidate(
        "audio", 0, "candidate:1 1 udp 1 127.0.0.1 5000 typ host")
    assert protocol.parse_message(b"BYE") == Bye()
    assert isinstance(protocol.parse_message(b"{not json"), Unrecognised)
    assert isinstance(protocol.parse_message(b"[1]"), Unrecognised)
    assert isinstance(protocol.parse_message(b'{"type": "offer"}'), Unrecognised)
    assert isinstance(protocol.parse_message(b'{"candidate": "x", "sdpMLineIndex": "0"}'),
                      Unrecognised)


def test_encoded_messages_use_the_native_client_keys():
    desc = json.loads(SessionDescription("answer", "v=0").encode())
    assert desc == {"type": "answer", "sdp": "v=0"}
    cand = json.loads(IceCandidate("0", 0, "candidate:x").encode())
    assert cand == {"sdpMid": "0", "sdpMLineIndex": 0, "candidate": "candidate:x"}
    assert Bye().encode() == b"BYE"
    for msg in [SessionDescription("offer", "v=0\r\n"), IceCandidate("1", 1, "candidate:y"), Bye()]:
        assert protocol.parse_message(msg.encode()) == msg


@pytest.mark.parametrize("server_url, path, expected", [
    ("http://127.0.0.1:8888", "/ws", "ws://127.0.0.1:8888/ws"),
    ("https://signal.example.org/", "/ws", "wss://signal.example.org/ws"),
    ("HTTP://[::1]:8888/prefix", "/ws", "ws://[::1]:8888/prefix/ws"),
    ("http://127.0.0.1:9000", "/peerjs", "ws://127.0.0.1:9000/peerjs"),
])
def test_websocket_url(server_url, path, expected):
    assert protocol.websocket_url(server_url, path) == expected
