/*
 * One WebRTC call with one remote peer, speaking the native client's
 * message formats (PROTOCOL.md, "Messages between peers"):
 *
 *   {"type": "offer" | "answer", "sdp": "..."}
 *   {"sdpMid": "0", "sdpMLineIndex": 0, "candidate": "candidate:..."}
 *   BYE
 *
 * The caller creates the "chat" data channel before its offer; the callee
 * gets it from ondatachannel.  Candidates are trickled after the description,
 * and remote candidates that arrive before the remote description are held.
 *
 * Events (CustomEvent):
 *   state     {signaling, ice, connection}
 *   track     {stream}             remote media arrived
 *   chatopen  {}                   the data channel can carry text
 *   chat      {text}               text from the remote peer
 *   ended     {reason, error}      the call is over (reason is for people)
 */
(function (pcsignal) {
  "use strict";

  const BYE = "BYE";

  /** A message text from a peer, classified like pcsignal.protocol.parse_message. */
  function parseMessage(text) {
    if (text.trim() === BYE) return { kind: "bye" };
    let obj;
    try {
      obj = JSON.parse(text);
    } catch (e) {
      return { kind: "unknown" };
    }
    if (obj === null || typeof obj !== "object") return { kind: "unknown" };
    if (typeof obj.type === "string" && typeof obj.sdp === "string") {
      return { kind: "description", type: obj.type, sdp: obj.sdp };
    }
    if (typeof obj.candidate === "string") {
      return {
        kind: "candidate",
        candidate: obj.candidate,
        sdpMid: obj.sdpMid === undefined ? null : obj.sdpMid,
        sdpMLineIndex: obj.sdpMLineIndex === undefined ? null : obj.sdpMLineIndex,
      };
    }
    return { kind: "unknown" };
  }

  /** Camera and microphone, or whatever part of them the browser grants. */
  async function getLocalMedia() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      return {
        stream: null,
        error:
          "This browser only allows the camera on HTTPS pages or on localhost. Open the page " +
          "over https:// (run pcsignal with an ssl: endpoint). You can still receive video.",
      };
    }
    const wanted = [
      { audio: true, video: { width: { ideal: 1280 }, height: { ideal: 720 } } },
      { video: true },
      { audio: true },
    ];
    let lastError = null;
    for (const constraints of wanted) {
      try {
        return { stream: await navigator.mediaDevices.getUserMedia(constraints), error: null };
      } catch (e) {
        lastError = e;
        if (e.name === "NotAllowedError" || e.name === "SecurityError") break;
      }
    }
    const refused = lastError && (lastError.name === "NotAllowedError" || lastError.name === "SecurityError");
    return {
      stream: null,
      error: refused
        ? "Camera and microphone access was refused, so the other side can't see or hear you. " +
          "Allow them in the site settings and call again. You can still receive video."
        : "No usable camera or microphone (" + (lastError ? lastError.message || lastError.name : "none") +
          "). You can still receive video.",
    };
  }

  /**
   * A new RTCPeerConnection for these ICE servers; relayOnly: TURN relay
   * candidates only (hides our addresses, proves the relay works).
   */
  function newPeerConnection(iceServers, relayOnly) {
    const config = {
      iceServers: iceServers,
      iceTransportPolicy: relayOnly ? "relay" : "all",
      bundlePolicy: "max-bundle",
    };
    try {
      return new RTCPeerConnection(config);
    } catch (e) {
      // A server entry this browser rejects must not stop the call.
      console.warn("pcsignal: ICE servers refused, calling without them", e);
      return new RTCPeerConnection(Object.assign(config, { iceServers: [] }));
    }
  }

  class Call extends EventTarget {
    /**
     * peer: {id, name}; localId: our own peer id; send(text) -> Promise posts
     * a message to that peer; localStream may be null (receive only);
     * ice: {iceServers, relayOnly}, or nothing for direct connections only.
     */
    constructor(peer, localId, send, localStream, ice) {
      super();
      this.peer = peer;
      this.localId = localId;
      this.localStream = localStream;
      this._send = send;
      this._pc = newPeerConnection((ice && ice.iceServers) || [], Boolean(ice && ice.relayOnly));
      this._channel = null;
      this._descriptionSent = false;
      this._localCandidates = [];
      this._remoteCandidates = [];
      this._inbox = Promise.resolve();
      this._mediaAdded = false;
      this.ended = false;
      this.isCaller = false;

      this._pc.onicecandidate = (event) => this._onLocalCandidate(event.candidate);
      this._pc.ontrack = (event) => {
        const stream = event.streams[0] || new MediaStream([event.track]);
        this._emit("track", { stream: stream });
      };
      this._pc.ondatachannel = (event) => this._useChannel(event.channel);
      const report = () => this._emit("state", this.state);
      this._pc.onsignalingstatechange = report;
      this._pc.oniceconnectionstatechange = () => {
        report();
        if (this._pc.iceConnectionState === "failed") {
          this.hangUp(true, "Could not connect the media path to " + this.peer.name +
            " (ICE failed).", true);
        }
      };
      this._pc.onconnectionstatechange = report;
    }

    get state() {
      return {
        signaling: this._pc.signalingState,
        ice: this._pc.iceConnectionState,
        connection: this._pc.connectionState,
      };
    }

    get peerConnection() {
      return this._pc;
    }

    _emit(type, detail) {
      this.dispatchEvent(new CustomEvent(type, { detail: detail }));
    }

    _addLocalMedia() {
      if (this.localStream) {
        for (const track of this.localStream.getTracks()) this._pc.addTrack(track, this.localStream);
      }
    }

    /** Caller side: data channel, media, offer. */
    async start() {
      this.isCaller = true;
      this._useChannel(this._pc.createDataChannel("chat"));
      this._mediaAdded = true;
      this._addLocalMedia();
      // Receive audio and video even when we have nothing to send.
      const kinds = this.localStream ? this.localStream.getTracks().map((t) => t.kind) : [];
      for (const kind of ["audio", "video"]) {
        if (!kinds.includes(kind)) this._pc.addTransceiver(kind, { direction: "recvonly" });
      }
      await this._pc.setLocalDescription(await this._pc.createOffer());
      await this._sendDescription();
    }

    /** Feed one message text from this call's peer; handled strictly in order. */
    receive(text) {
      this._inbox = this._inbox
        .then(() => this._handle(parseMessage(text)))
        .catch((e) => {
          if (!this.ended) this.hangUp(true, "The call failed: " + e.message, true);
        });
      return this._inbox;
    }

    async _handle(message) {
      if (this.ended) return;
      if (message.kind === "bye") {
        const unanswered = this.isCaller && this._pc.signalingState === "have-local-offer";
        this.hangUp(false, unanswered
          ? this.peer.name + " is busy or declined the call."
          : this.peer.name + " hung up.");
      } else if (message.kind === "description") {
        await this._onRemoteDescription(message);
      } else if (message.kind === "candidate") {
        await this._onRemoteCandidate(message);
      }
    }

    async _onRemoteDescription(message) {
      if (message.type === "offer") {
        if (this._pc.signalingState === "have-local-offer" && this.localId < this.peer.id) {
          // Glare: both called at once.  The lower id's offer stands (as in pcpeer);
          // the other side answers ours.
          return;
        }
        // (In have-local-offer this rolls our own offer back: theirs wins.)
        await this._pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
        if (!this._mediaAdded) {
          this._mediaAdded = true;
          this._addLocalMedia();
        }
        await this._pc.setLocalDescription(await this._pc.createAnswer());
        await this._sendDescription();
      } else if (message.type === "answer") {
        if (this._pc.signalingState !== "have-local-offer") return; // not an answer to us
        await this._pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
      } else {
        return; // "offer-loopback" and other native-client specials: not supported
      }
      const held = this._remoteCandidates.splice(0);
      for (const candidate of held) await this._addRemoteCandidate(candidate);
    }

    async _onRemoteCandidate(message) {
      if (!this._pc.remoteDescription) {
        this._remoteCandidates.push(message);
      } else {
        await this._addRemoteCandidate(message);
      }
    }

    async _addRemoteCandidate(message) {
      let candidate = message.candidate;
      if (candidate && !candidate.startsWith("candidate:")) candidate = "candidate:" + candidate;
      const init = { candidate: candidate, sdpMid: message.sdpMid, sdpMLineIndex: message.sdpMLineIndex };
      if (init.sdpMid === null && init.sdpMLineIndex === null) init.sdpMLineIndex = 0;
      try {
        await this._pc.addIceCandidate(init);
        return;
      } catch (e) {
        // Older native clients name m-lines "audio"/"video": fall back to the index.
        if (init.sdpMid !== null && init.sdpMLineIndex !== null) {
          try {
            await this._pc.addIceCandidate({ candidate: candidate, sdpMLineIndex: init.sdpMLineIndex });
            return;
          } catch (ignored) {
            // reported below
          }
        }
        // One bad candidate (say, an address family this host lacks) must not end the call.
        console.warn("pcsignal: ignored remote candidate", candidate, e);
      }
    }

    async _sendDescription() {
      const description = this._pc.localDescription;
      const sent = this._send(JSON.stringify({ type: description.type, sdp: description.sdp }));
      this._descriptionSent = true;
      // Candidates gathered before the description went out follow it, in order.
      for (const candidate of this._localCandidates.splice(0)) this._sendCandidate(candidate);
      await sent;
    }

    _onLocalCandidate(candidate) {
      // null (and an empty string) mean end-of-candidates: the native formats have no message for it.
      if (!candidate || !candidate.candidate || this.ended) return;
      if (this._descriptionSent) this._sendCandidate(candidate);
      else this._localCandidates.push(candidate);
    }

    _sendCandidate(candidate) {
      this._send(
        JSON.stringify({
          sdpMid: candidate.sdpMid,
          sdpMLineIndex: candidate.sdpMLineIndex,
          candidate: candidate.candidate,
        })
      ).catch(() => {}); // a lost peer is reported by the description send or by sign-out
    }

    _useChannel(channel) {
      if (this._channel && this._channel.readyState !== "closed") return;
      this._channel = channel;
      // A channel from ondatachannel may already be open, and may still fire "open".
      let announced = false;
      const opened = () => {
        if (announced) return;
        announced = true;
        this._emit("chatopen", {});
      };
      channel.onopen = opened;
      channel.onmessage = (event) => {
        if (typeof event.data === "string") this._emit("chat", { text: event.data });
      };
      if (channel.readyState === "open") opened();
    }

    get chatOpen() {
      return Boolean(this._channel && this._channel.readyState === "open");
    }

    sendChat(text) {
      if (!this.chatOpen) return false;
      this._channel.send(text);
      return true;
    }

    /**
     * End the call: optionally tell the peer (BYE), close everything, stop the
     * camera.  reason is shown to the user; error marks it as a failure.
     */
    hangUp(sendBye, reason, error) {
      if (this.ended) return;
      this.ended = true;
      if (sendBye) this._send("BYE").catch(() => {});
      this._pc.onicecandidate = null;
      this._pc.close();
      if (this.localStream) for (const track of this.localStream.getTracks()) track.stop();
      this._emit("ended", { reason: reason || "Call ended.", error: Boolean(error) });
    }
  }

  pcsignal.parseMessage = parseMessage;
  pcsignal.getLocalMedia = getLocalMedia;
  pcsignal.Call = Call;
})((window.pcsignal = window.pcsignal || {}));
