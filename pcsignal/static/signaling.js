/*
 * The peerconnection signaling protocol (PROTOCOL.md), over pcsignal's
 * WebSocket (/ws) when the server offers it, else over fetch.
 *
 * One SignalingClient is one signed-in peer.  Over WebSocket, one socket
 * carries everything; a dropped socket is resumed on a new one (with the
 * sign-in token and the number of the last frame handled, so nothing is
 * handled twice).  Over HTTP (a server without /ws, like the reference), it
 * keeps one hanging GET /wait open (re-issued right after every answer) and
 * posts messages strictly one at a time, in order, the way the native client
 * does.  It knows nothing about WebRTC: it reports peers coming and going
 * and opaque message texts.
 *
 * Events (CustomEvent, details in brackets):
 *   peer          {id, name, connected}   someone signed in or out
 *   message       {from, text}            a message posted by another peer
 *   unreachable   {retryIn}               the server could not be reached; retrying
 *   reachable     {}                      the server answers again
 *   signedout     {reason}                the server no longer knows us
 */
(function (pcsignal) {
  "use strict";

  const RETRY_FIRST_MS = 500;
  const RETRY_MAX_MS = 8000;
  const ICE_SERVERS_TIMEOUT_MS = 5000;
  const SOCKET_OPEN_TIMEOUT_MS = 5000;
  const SUBPROTOCOL = "pcsignal.v1";
  const CLOSE_PEER_GONE = 4500;
  const FORGOTTEN =
    "The server no longer knows this session (it restarted, or this page was " +
    "asleep for too long). Sign in again to continue.";

  /** Parse "name,id,connected\n" lines; the name is all before the last two commas. */
  function parseEntries(text) {
    const entries = [];
    for (const line of text.split("\n")) {
      const trimmed = line.replace(/\r$/, "");
      const last = trimmed.lastIndexOf(",");
      const middle = last > 0 ? trimmed.lastIndexOf(",", last - 1) : -1;
      if (middle < 0) continue;
      const id = parseInt(trimmed.slice(middle + 1, last), 10);
      const connected = trimmed.slice(last + 1);
      if (!(id > 0) || (connected !== "0" && connected !== "1")) continue;
      entries.push({ name: trimmed.slice(0, middle), id: id, connected: connected === "1" });
    }
    return entries;
  }

  /** "https://host:port/" or "host:port" -> "https://host:port" (no trailing slash). */
  function normaliseServerUrl(text) {
    let url = text.trim();
    if (!/^https?:\/\//i.test(url)) url = "http://" + url;
    return url.replace(/\/+$/, "");
  }

  /**
   * The entries of an RTCConfiguration-shaped iceServers list that
   * RTCPeerConnection accepts: STUN/TURN URLs, TURN credentials as strings.
   * Anything else is dropped, so that an odd answer cannot break a call.
   */
  function usableIceServers(list) {
    const servers = [];
    for (const entry of Array.isArray(list) ? list : []) {
      if (!entry || typeof entry !== "object") continue;
      const urls = (Array.isArray(entry.urls) ? entry.urls : [entry.urls]).filter(
        (url) => typeof url === "string" && /^(stuns?|turns?):[^\s]+$/i.test(url)
      );
      if (!urls.length) continue;
      const server = { urls: urls };
      if (typeof entry.username === "string") server.username = entry.username;
      if (typeof entry.credential === "string") server.credential = entry.credential;
      const isTurn = urls.some((url) => /^turns?:/i.test(url));
      if (isTurn && (server.username === undefined || server.credential === undefined)) continue;
      servers.push(server);
    }
    return servers;
  }

  class PeerGoneError extends Error {}

  /** An open WebSocket to server's /ws, or null if it has none (or cannot be reached). */
  function openSocket(server) {
    return new Promise((resolve) => {
      let ws;
      try {
        ws = new WebSocket(server.replace(/^http/i, "ws") + "/ws", SUBPROTOCOL);
      } catch (e) {
        resolve(null);
        return;
      }
      const timer = setTimeout(() => ws.close(), SOCKET_OPEN_TIMEOUT_MS);
      ws.onopen = () => {
        clearTimeout(timer);
        resolve(ws);
      };
      ws.onclose = () => {
        clearTimeout(timer);
        resolve(null);
      };
    });
  }

  /** The first frame on a socket (JSON), or null if it closed first. */
  function firstFrame(ws) {
    return new Promise((resolve) => {
      ws.onmessage = (event) => resolve(JSON.parse(event.data));
      ws.onclose = () => resolve(null);
    });
  }

  /** A message frame's body as text (a body that is not UTF-8 comes base64-encoded). */
  function frameText(frame) {
    if (typeof frame.data === "string") return frame.data;
    const bytes = Uint8Array.from(atob(frame.data_base64), (c) => c.charCodeAt(0));
    return new TextDecoder().decode(bytes);
  }

  class SignalingClient extends EventTarget {
    constructor(serverUrl) {
      super();
      this.server = normaliseServerUrl(serverUrl);
      this.id = null;
      this.name = null;
      this._abort = null;
      this._sendQueue = Promise.resolve();
      /** "websocket" or "http": how this client talks to the server. */
      this.transport = null;
      this._ws = null;
      this._token = null;
      this._last = 0; // n of the last frame handled
      this._seq = 0;
      this._unacked = new Map(); // seq -> {resolve, reject}
      this._outbox = []; // frames waiting for the socket to come back
    }

    get signedIn() {
      return this.id !== null;
    }

    _emit(type, detail) {
      this.dispatchEvent(new CustomEvent(type, { detail: detail }));
    }

    /**
     * Sign in over WebSocket if the server has /ws, else GET /sign_in?NAME
     * and the hanging GET.  Resolves to the list of other connected peers.
     * Rejects with a readable message.
     */
    async signIn(name) {
      const ws = await openSocket(this.server);
      if (ws) return this._signInOver(ws, name);
      let response, body;
      try {
        response = await fetch(this.server + "/sign_in?" + encodeURIComponent(name), {
          cache: "no-store",
        });
        body = await response.text();
      } catch (e) {
        throw new Error("Can't reach the server at " + this.server + ". Is pcsignal running there?");
      }
      const id = parseInt(response.headers.get("Pragma"), 10);
      if (!response.ok || !(id > 0)) {
        // pcsignal explains refusals in one short line of text (say, "server full").
        const reason = /^[^<\n]{1,200}$/.test(body.trim()) ? ": " + body.trim() : "";
        throw new Error(
          "The server at " + this.server + " refused to sign in (HTTP " + response.status + reason + ")."
        );
      }
      const entries = parseEntries(body);
      const me = entries.find((entry) => entry.id === id);
      this.id = id;
      this.name = me ? me.name : name;
      this.transport = "http";
      this._abort = new AbortController();
      this._waitLoop(this._abort.signal);
      return entries.filter((entry) => entry.id !== id && entry.connected);
    }

    async _signInOver(ws, name) {
      ws.send(JSON.stringify({ type: "sign_in", name: name }));
      const frame = await firstFrame(ws);
      if (!frame || frame.type !== "signed_in") {
        ws.close();
        const reason = frame && frame.type === "error" ? " (" + frame.status + ": " + frame.text + ")" : "";
        throw new Error("The server at " + this.server + " refused to sign in" + reason + ".");
      }
      this.transport = "websocket";
      this.id = frame.id;
      this.name = frame.name;
      this._token = frame.token;
      this._last = 0;
      this._attach(ws);
      return frame.peers.map((peer) => ({ id: peer.id, name: peer.name, connected: true }));
    }

    /** Frames from the server, and what to do when the socket closes. */
    _attach(ws) {
      this._ws = ws;
      ws.onmessage = (event) => this._frame(JSON.parse(event.data));
      ws.onclose = (event) => {
        if (this._ws !== ws) return; // replaced, or we closed it
        this._ws = null;
        for (const pending of this._unacked.values()) {
          pending.reject(new Error("Can't reach the server to deliver a message."));
        }
        this._unacked.clear();
        if (event.code === CLOSE_PEER_GONE) {
          this._forgotten();
        } else {
          this._resume();
        }
      };
      for (const frame of this._outbox.splice(0)) this._write(frame);
    }

    _frame(frame) {
      if (frame.n !== undefined) {
        if (frame.n <= this._last) return; // handled before the socket dropped
        this._last = frame.n;
      }
      if (frame.type === "peer") {
        if (frame.id !== this.id) {
          this._emit("peer", { id: frame.id, name: frame.name, connected: frame.connected });
        }
      } else if (frame.type === "message") {
        this._emit("message", { from: frame.from, text: frameText(frame) });
      } else if (frame.type === "ack" || frame.type === "error") {
        const pending = this._unacked.get(frame.seq);
        if (!pending) return;
        this._unacked.delete(frame.seq);
        if (frame.type === "ack") pending.resolve();
        else if (frame.status === 500) pending.reject(new PeerGoneError(frame.text));
        else pending.reject(new Error(frame.text));
      }
    }

    /** The socket dropped: get our peer back on a new one, retrying until the server answers. */
    async _resume() {
      let retryIn = RETRY_FIRST_MS;
      let unreachable = false;
      const id = this.id;
      while (this.id === id && id !== null) {
        const ws = await openSocket(this.server);
        // Closed again before answering counts as unreachable too.
        const frame = ws && this.id === id ? await this._resumeOver(ws, id) : null;
        if (this.id !== id) {
          if (ws) ws.close(1000);
          return;
        }
        if (!frame) {
          unreachable = true;
          retryIn = await this._unreachable(retryIn);
          continue;
        }
        if (frame.type === "resumed") {
          this._attach(ws);
          if (unreachable) this._emit("reachable", {});
          return;
        }
        ws.close(1000);
        this._forgotten();
        return;
      }
    }

    /** Say the server is unreachable, wait retryIn ms; the next, doubled delay. */
    async _unreachable(retryIn) {
      this._emit("unreachable", { retryIn: retryIn });
      await new Promise((resolve) => setTimeout(resolve, retryIn));
      return Math.min(retryIn * 2, RETRY_MAX_MS);
    }

    /** The server no longer knows our peer: drop the session and say so. */
    _forgotten() {
      this._forget();
      this._emit("signedout", { reason: FORGOTTEN });
    }

    _resumeOver(ws, id) {
      ws.send(JSON.stringify({ type: "resume", id: id, token: this._token, last: this._last }));
      return firstFrame(ws);
    }

    _write(frame) {
      if (this._ws && this._ws.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(frame));
      else this._outbox.push(frame);
    }

    async _waitLoop(signal) {
      let retryIn = RETRY_FIRST_MS;
      let unreachable = false;
      while (!signal.aborted) {
        let response, body;
        try {
          response = await fetch(this.server + "/wait?peer_id=" + this.id, {
            cache: "no-store",
            signal: signal,
          });
          body = await response.text();
          // 503: the server is shutting down or full; it may still know us after a pause.
          if (response.status === 503) throw new Error("server busy");
        } catch (e) {
          if (signal.aborted) return;
          unreachable = true;
          retryIn = await this._unreachable(retryIn);
          continue;
        }
        if (signal.aborted) return;
        if (unreachable) {
          unreachable = false;
          this._emit("reachable", {});
        }
        retryIn = RETRY_FIRST_MS;
        if (!response.ok) {
          this._forgotten();
          return;
        }
        this._dispatchItem(parseInt(response.headers.get("Pragma"), 10), body);
      }
    }

    /** One mailbox item: a notification if Pragma is our own id, else a message. */
    _dispatchItem(from, body) {
      if (from === this.id) {
        for (const entry of parseEntries(body)) {
          if (entry.id !== this.id) this._emit("peer", entry);
        }
      } else if (from > 0) {
        this._emit("message", { from: from, text: body });
      }
    }

    /**
     * GET /ice-servers: pcsignal's STUN and TURN servers (with TURN
     * credentials) for our calls, as {iceServers, ttl}.  A server without
     * that path (the reference answers 500), an error or an odd answer give
     * no servers: calls then use direct connections only.
     */
    async iceServers() {
      const none = { iceServers: [], ttl: null };
      if (this.id === null) return none;
      try {
        const response = await fetch(this.server + "/ice-servers?peer_id=" + this.id, {
          cache: "no-store",
          // A call waits for this answer: a server that never gives one must not hold it up.
          signal: AbortSignal.timeout(ICE_SERVERS_TIMEOUT_MS),
        });
        if (!response.ok) return none;
        const body = await response.json();
        const ttl = Number(body && body.ttl);
        return { iceServers: usableIceServers(body && body.iceServers), ttl: ttl > 0 ? ttl : null };
      } catch (e) {
        return none;
      }
    }

    /**
     * POST /message, queued behind every earlier send so that order is kept.
     * Rejects with PeerGoneError when the server does not know the target.
     */
    send(to, text) {
      const id = this.id;
      if (this.transport === "websocket") {
        if (id === null) return Promise.reject(new Error("Not signed in."));
        this._seq += 1;
        const seq = this._seq;
        return new Promise((resolve, reject) => {
          this._unacked.set(seq, { resolve: resolve, reject: reject });
          this._write({ type: "message", to: to, data: text, seq: seq });
        });
      }
      const sent = this._sendQueue.then(async () => {
        if (id === null || id !== this.id) throw new Error("Not signed in.");
        let response;
        try {
          response = await fetch(
            this.server + "/message?peer_id=" + id + "&to=" + to,
            {
              method: "POST",
              // text/plain keeps this a "simple" CORS request: no preflight.
              headers: { "Content-Type": "text/plain" },
              body: text,
              cache: "no-store",
            }
          );
          await response.text();
        } catch (e) {
          throw new Error("Can't reach the server to deliver a message.");
        }
        if (!response.ok) throw new PeerGoneError("Peer most likely gone.");
      });
      this._sendQueue = sent.catch(() => {});
      return sent;
    }

    _forget() {
      if (this._abort) this._abort.abort();
      this._abort = null;
      const ws = this._ws;
      this._ws = null;
      this._outbox = [];
      if (ws) ws.close(1000);
      this.id = null;
    }

    /**
     * GET /sign_out (one channel serves both transports: this ends a
     * WebSocket peer too).  With keepalive the request outlives the page, so
     * it can be used from pagehide.
     */
    signOut(keepalive) {
      const id = this.id;
      this._forget();
      if (id === null) return Promise.resolve();
      return fetch(this.server + "/sign_out?peer_id=" + id, {
        cache: "no-store",
        keepalive: Boolean(keepalive),
      }).then(
        () => {},
        () => {}
      );
    }

    /** Fire-and-forget POST that survives page unload (for a last BYE). */
    sendOnUnload(to, text) {
      if (this.id === null) return;
      fetch(this.server + "/message?peer_id=" + this.id + "&to=" + to, {
        method: "POST",
        headers: { "Content-Type": "text/plain" },
        body: text,
        keepalive: true,
      }).catch(() => {});
    }
  }

  pcsignal.parseEntries = parseEntries;
  pcsignal.normaliseServerUrl = normaliseServerUrl;
  pcsignal.usableIceServers = usableIceServers;
  pcsignal.PeerGoneError = PeerGoneError;
  pcsignal.SignalingClient = SignalingClient;
})((window.pcsignal = window.pcsignal || {}));
