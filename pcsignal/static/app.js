/*
 * The page: sign-in, peer list, one call at a time, chat, live numbers.
 * Glue between the DOM, SignalingClient (signaling.js), Call (call.js) and
 * StatsSampler (stats.js).
 */
(function (pcsignal) {
  "use strict";

  const STORAGE_NAME = "pcsignal.name";
  const STORAGE_SERVER = "pcsignal.server";
  const STATS_INTERVAL_MS = 1000;
  // TURN credentials are asked for again once half their lifetime is gone.
  const ICE_REFRESH_SHARE = 0.5;

  const $ = (id) => document.getElementById(id);

  // Fixed markup (no user data): a handset, and a camera for the current call.
  const ICON_CALL =
    '<svg viewBox="0 0 24 24"><path d="M6.6 10.8a15.2 15.2 0 0 0 6.6 6.6l2.2-2.2c.3-.3.7-.4 1-.2 1.1.4 2.3.6 3.6.6.6 0 1 .4 1 1V20c0 .6-.4 1-1 1A17 17 0 0 1 3 4c0-.6.4-1 1-1h3.5c.6 0 1 .4 1 1 0 1.3.2 2.5.6 3.6.1.3 0 .7-.2 1z"/></svg>';
  const ICON_IN_CALL =
    '<svg viewBox="0 0 24 24"><path d="M3 7h12v10H3z M15 10.5l6-3.5v10l-6-3.5z"/></svg>';

  const state = {
    client: null,
    peers: new Map(), // id -> name
    call: null,
    stats: null,
    statsTimer: null,
    resumeName: null, // signed out by pagehide; sign in again if the page comes back
    ice: null, // Promise of {iceServers, ttl, fetched} from the server's /ice-servers
  };

  // -- small view helpers ------------------------------------------------------

  function announce(text) {
    $("status").textContent = text;
  }

  function showBanner(text, kind, action) {
    const banner = $("banner");
    $("banner-text").textContent = text;
    banner.dataset.kind = kind || "error";
    const button = $("banner-action");
    if (action) {
      button.textContent = action.label;
      button.onclick = action.run;
      button.hidden = false;
    } else {
      button.hidden = true;
      button.onclick = null;
    }
    banner.hidden = false;
  }

  function hideBanner() {
    $("banner").hidden = true;
  }

  function storage(key, value) {
    try {
      if (value === undefined) return window.localStorage.getItem(key);
      window.localStorage.setItem(key, value);
    } catch (e) {
      // Private mode or storage disabled: remembering is a convenience only.
    }
    return null;
  }

  function initials(name) {
    // Format characters (bidi controls, isolate marks) are invisible: skip them.
    const words = name.replace(/\p{Cf}/gu, "").trim().split(/\s+/).filter(Boolean);
    const letters = words.slice(0, 2).map((w) => Array.from(w)[0]);
    return (letters.join("") || "?").toUpperCase();
  }

  // A name with right-to-left letters or bidi controls could reorder the
  // words of a sentence around it ("Calling \u202egnp.exe…" reads "Calling
  // …exe.png"): such a name is shown between isolate marks (FSI … PDI), which
  // confine its direction to itself.  Names are only ever shown as text.
  const BIDI =
    /[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u{10800}-\u{10fff}\u{1e800}-\u{1efff}]/u;

  function shown(name) {
    return BIDI.test(name) ? "\u2068" + name + "\u2069" : name;
  }

  function hue(text) {
    let h = 0;
    for (const ch of text) h = (h * 31 + ch.codePointAt(0)) % 360;
    return h;
  }

  function defaultServer() {
    if (location.protocol === "http:" || location.protocol === "https:") return location.origin;
    return "http://localhost:8888";
  }

  // -- peer list ------------------------------------------------------------------

  function renderPeers() {
    const list = $("peer-list");
    list.replaceChildren();
    const inCall = Boolean(state.call);
    const sorted = Array.from(state.peers.entries()).sort((a, b) =>
      a[1].localeCompare(b[1], undefined, { sensitivity: "base" }) || a[0] - b[0]
    );
    for (const [id, name] of sorted) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "peer";
      button.dataset.peerId = String(id);
      const active = inCall && state.call.peer.id === id;
      if (active) button.classList.add("active");
      button.disabled = inCall;
      button.setAttribute("aria-label", (active ? "In call with " : "Call ") + name);
      button.title = active ? "In call with " + name : "Call " + name;

      const avatar = document.createElement("span");
      avatar.className = "avatar";
      avatar.setAttribute("aria-hidden", "true");
      avatar.style.setProperty("--hue", hue(name));
      avatar.textContent = initials(name);

      const label = document.createElement("span");
      label.className = "peer-name";
      label.textContent = name;

      const action = document.createElement("span");
      action.className = "peer-action";
      action.setAttribute("aria-hidden", "true");
      action.innerHTML = active ? ICON_IN_CALL : ICON_CALL;

      button.append(avatar, label, action);
      button.addEventListener("click", () => placeCall(id));
      item.append(button);
      list.append(item);
    }
    $("peer-count").textContent = String(state.peers.size);
    $("peers-empty").hidden = state.peers.size > 0;
  }

  // -- call view --------------------------------------------------------------------

  function renderCallState() {
    const call = state.call instanceof pcsignal.Call ? state.call : null;
    const s = call ? call.state : null;
    $("state-signaling").textContent = s ? s.signaling : "–";
    $("state-ice").textContent = s ? s.ice : "–";
    $("state-connection").textContent = s ? s.connection : "–";
    for (const [id, value] of [
      ["state-signaling", s && s.signaling],
      ["state-ice", s && s.ice],
      ["state-connection", s && s.connection],
    ]) {
      $(id).dataset.tone =
        value === "connected" || value === "completed" || value === "stable" ? "good"
          : value === "failed" || value === "closed" ? "bad"
          : value ? "busy" : "";
    }
    let title = "No call";
    if (state.call && !call) {
      title = state.call.pending.length
        ? state.call.peer.name + " is calling…"
        : "Calling " + state.call.peer.name + "…";
    } else if (call) {
      const name = call.peer.name;
      if (s.connection === "connected") title = "In call with " + name;
      else if (call.isCaller && s.signaling === "have-local-offer") title = "Calling " + name + "…";
      else title = "Connecting to " + name + "…";
    }
    if ($("call-title").textContent !== title) {
      $("call-title").textContent = title;
      announce(title);
    }
    if (call) {
      // Shown until (and unless) remote video arrives.
      $("idle-text").textContent = s.connection === "connected"
        ? call.peer.name + " is not sending video."
        : "Connecting to " + call.peer.name + "…";
      if (s.connection === "connected" && !call.chatOpen) {
        $("chat-input").placeholder = call.peer.name + " offered no chat";
      }
    }
    document.body.classList.toggle("in-call", Boolean(state.call));
    document.body.classList.toggle("connected", Boolean(s && s.connection === "connected"));
    $("hang-up").disabled = !state.call;
  }

  function setChatEnabled(enabled) {
    $("chat-input").disabled = !enabled;
    $("chat-send").disabled = !enabled;
    $("chat-input").placeholder = enabled
      ? "Message " + state.call.peer.name
      : "Available during a call";
  }

  function addChatLine(who, text, kind) {
    const item = document.createElement("li");
    item.className = "chat-line " + kind;
    if (who) {
      const author = document.createElement("span");
      author.className = "author";
      author.textContent = who;
      item.append(author);
    }
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    item.append(body);
    const log = $("chat-log");
    log.append(item);
    log.scrollTop = log.scrollHeight;
  }

  function showStat(id, text) {
    const rate = document.createElement("span");
    rate.className = "rate";
    rate.textContent = text.rate;
    const detail = document.createElement("span");
    detail.className = "detail";
    detail.textContent = text.detail;
    $(id).replaceChildren(rate, " ", detail);
  }

  async function updateStats() {
    const sampler = state.stats;
    if (!sampler) return;
    let sample;
    try {
      sample = await sampler.sample();
    } catch (e) {
      return; // the connection closed between two samples
    }
    if (state.stats !== sampler) return; // the call ended meanwhile
    showStat("stats-in", pcsignal.formatVideo(sample.inbound));
    showStat("stats-out", pcsignal.formatVideo(sample.outbound));
    showStat("stats-rtt", {
      rate: sample.rttMs === null ? "–" : Math.round(sample.rttMs) + " ms",
      detail: sample.path === "relay" ? "ICE round trip · via TURN relay"
        : sample.path === "direct" ? "ICE round trip · direct" : "ICE round trip",
    });
    if (sample.path) $("stats").dataset.path = sample.path;
    const frames = sample.inbound ? sample.inbound.frames : 0;
    $("stats").dataset.framesDecoded = String(frames);
  }

  /**
   * Play the remote media.  A page nobody has clicked yet may not play sound
   * (autoplay policy): then play muted and offer to turn the sound on.
   */
  function playWithSound(video) {
    video.muted = false;
    video.play().catch((e) => {
      if (e.name !== "NotAllowedError") return;
      video.muted = true;
      video.play().catch(() => {});
      showBanner("The browser started the call muted.", "warning", {
        label: "Turn sound on",
        run: () => {
          video.muted = false;
          hideBanner();
        },
      });
    });
  }

  function resetCallView() {
    $("remote-video").srcObject = null;
    $("local-video").srcObject = null;
    $("local-video").hidden = true;
    $("idle").hidden = false;
    for (const id of ["stats-in", "stats-out", "stats-rtt"]) showStat(id, { rate: "–", detail: "" });
    delete $("stats").dataset.framesDecoded;
    delete $("stats").dataset.path;
    setChatEnabled(false);
  }

  // -- ICE servers -------------------------------------------------------------------------

  function fetchIceServers(client) {
    const fetched = Date.now();
    return client.iceServers().then((ice) => Object.assign(ice, { fetched: fetched }));
  }

  /** The ICE servers for a new call: those fetched at sign-in, or fresh ones once they age. */
  async function iceForCall(client) {
    let ice = await (state.ice || (state.ice = fetchIceServers(client)));
    if (ice.ttl && Date.now() - ice.fetched > ice.ttl * 1000 * ICE_REFRESH_SHARE) {
      state.ice = fetchIceServers(client);
      ice = await state.ice;
    }
    return ice;
  }

  /** Relay only: the page setting, on by default with ?relay=1 in the address. */
  function relayOnly() {
    return $("relay-only").checked;
  }

  function hasTurn(iceServers) {
    return iceServers.some((server) => server.urls.some((url) => /^turns?:/i.test(url)));
  }

  // -- calls ------------------------------------------------------------------------------

  function attachCall(call) {
    state.call = call;
    state.stats = new pcsignal.StatsSampler(call.peerConnection);
    state.statsTimer = setInterval(updateStats, STATS_INTERVAL_MS);
    if (call.localStream) {
      $("local-video").srcObject = call.localStream;
      $("local-video").hidden = false;
    }
    call.addEventListener("state", renderCallState);
    call.addEventListener("track", (event) => {
      const video = $("remote-video");
      if (video.srcObject === event.detail.stream) return;
      video.srcObject = event.detail.stream;
      $("idle").hidden = true;
      playWithSound(video);
    });
    call.addEventListener("chatopen", () => {
      setChatEnabled(true);
      addChatLine(null, "Chat connected with " + call.peer.name + ".", "system");
    });
    call.addEventListener("chat", (event) => addChatLine(call.peer.name, event.detail.text, "theirs"));
    call.addEventListener("ended", (event) => {
      if (state.call !== call) return;
      clearInterval(state.statsTimer);
      state.call = null;
      state.stats = null;
      resetCallView();
      $("idle-text").textContent = event.detail.reason + " Pick someone to call.";
      addChatLine(null, event.detail.reason, "system");
      if (event.detail.error) showBanner(event.detail.reason, "error");
      announce(event.detail.reason);
      renderCallState();
      renderPeers();
    });
    renderCallState();
    renderPeers();
  }

  /**
   * Start the camera, then either call the peer or, if its offer arrived
   * meanwhile, answer it.  state.call holds a placeholder during the (possibly
   * slow) camera prompt so that the line is busy for everybody else.
   */
  async function startCall(peerId, offerText) {
    const peer = { id: peerId, name: state.peers.get(peerId) || "peer " + peerId };
    const placeholder = { peer: peer, pending: offerText ? [offerText] : [] };
    state.call = placeholder;
    renderPeers();
    renderCallState();
    $("idle-text").textContent = offerText
      ? peer.name + " is calling. Starting your camera…"
      : "Starting your camera…";
    announce(offerText ? "Incoming call from " + peer.name + "." : "Calling " + peer.name + ".");
    const client = state.client;
    const [media, ice] = await Promise.all([pcsignal.getLocalMedia(), iceForCall(client)]);
    if (media.error) showBanner(media.error, "warning");
    if (relayOnly() && !hasTurn(ice.iceServers)) {
      showBanner("Relay only is on, but the server offers no TURN relay: this call cannot connect.", "warning");
    }
    if (state.call !== placeholder) {
      if (media.stream) media.stream.getTracks().forEach((t) => t.stop());
      return;
    }
    const call = new pcsignal.Call(peer, client.id, (text) => client.send(peerId, text), media.stream, {
      iceServers: ice.iceServers,
      relayOnly: relayOnly(),
    });
    attachCall(call);
    if (placeholder.pending.length) {
      for (const text of placeholder.pending) call.receive(text);
      return;
    }
    try {
      await call.start();
    } catch (e) {
      const reason = e instanceof pcsignal.PeerGoneError
        ? peer.name + " is no longer online."
        : "Could not start the call: " + e.message;
      call.hangUp(false, reason, true);
    }
  }

  function placeCall(peerId) {
    if (state.call || !state.client) return;
    hideBanner();
    startCall(peerId, null);
  }

  function dropPlaceholder(reason) {
    state.call = null;
    resetCallView();
    $("idle-text").textContent = reason + " Pick someone to call.";
    announce(reason);
    renderCallState();
    renderPeers();
  }

  function hangUp() {
    const call = state.call;
    if (!call) return;
    if (call instanceof pcsignal.Call) {
      call.hangUp(true, "You hung up.");
    } else {
      state.client.send(call.peer.id, "BYE").catch(() => {});
      dropPlaceholder("You hung up.");
    }
  }

  function isOffer(text) {
    const message = pcsignal.parseMessage(text);
    return message.kind === "description" && message.type === "offer";
  }

  function onMessage(event) {
    const from = event.detail.from;
    const text = event.detail.text;
    const call = state.call;
    if (call && call.peer.id === from) {
      if (call instanceof pcsignal.Call) call.receive(text);
      else if (pcsignal.parseMessage(text).kind === "bye") dropPlaceholder(call.peer.name + " hung up.");
      else if (call.pending.length || isOffer(text)) call.pending.push(text);
      return;
    }
    if (isOffer(text)) {
      if (call) {
        // One call at a time, like the native client: turn the second caller away.
        state.client.send(from, "BYE").catch(() => {});
        const name = state.peers.get(from) || "peer " + from;
        addChatLine(null, name + " tried to call you; declined while you are busy.", "system");
      } else {
        startCall(from, text);
      }
    }
    // Anything else from a peer we are not talking to (late candidates, BYE): ignore.
  }

  function onPeer(event) {
    const entry = event.detail;
    if (entry.connected) {
      state.peers.set(entry.id, shown(entry.name));
      announce(shown(entry.name) + " is online.");
    } else {
      const name = state.peers.get(entry.id) || shown(entry.name);
      state.peers.delete(entry.id);
      announce(name + " went offline.");
      const call = state.call;
      if (call && call.peer.id === entry.id) {
        if (call instanceof pcsignal.Call) call.hangUp(false, name + " left.", true);
        else dropPlaceholder(name + " left.");
      }
    }
    renderPeers();
  }

  // -- session ------------------------------------------------------------------------------

  function showSignedIn(signedIn) {
    $("signin-view").hidden = signedIn;
    $("app-view").hidden = !signedIn;
    $("session").hidden = !signedIn;
    document.body.classList.toggle("signed-in", signedIn);
  }

  function endSession() {
    if (state.call instanceof pcsignal.Call) state.call.hangUp(false, "Signed out.");
    state.call = null;
    state.client = null;
    state.ice = null;
    state.peers.clear();
    renderPeers();
    showSignedIn(false);
  }

  async function signIn(event) {
    if (event) event.preventDefault();
    const name = $("name").value.trim();
    if (!name) {
      showBanner("Please enter a name so that others know who is calling.", "error");
      $("name").focus();
      return;
    }
    const server = $("server").value.trim() || defaultServer();
    storage(STORAGE_NAME, name);
    storage(STORAGE_SERVER, server === defaultServer() ? "" : server);
    const button = $("sign-in");
    button.disabled = true;
    button.textContent = "Signing in…";
    hideBanner();
    const client = new pcsignal.SignalingClient(server);
    try {
      const peers = await client.signIn(name);
      state.client = client;
      state.peers = new Map(peers.map((p) => [p.id, shown(p.name)]));
      state.ice = fetchIceServers(client);
    } catch (e) {
      showBanner(e.message, "error", { label: "Try again", run: () => signIn() });
      return;
    } finally {
      button.disabled = false;
      button.textContent = "Sign in";
    }
    client.addEventListener("peer", onPeer);
    client.addEventListener("message", onMessage);
    client.addEventListener("unreachable", (e) => {
      if (state.client !== client) return;
      document.body.classList.add("offline");
      $("presence-text").textContent = "Reconnecting…";
      showBanner(
        "The server is unreachable. Retrying in " + Math.ceil(e.detail.retryIn / 1000) + " s…",
        "warning"
      );
    });
    client.addEventListener("reachable", () => {
      if (state.client !== client) return;
      document.body.classList.remove("offline");
      $("presence-text").textContent = shown(client.name);
      hideBanner();
      announce("Connected to the server again.");
    });
    client.addEventListener("signedout", (e) => {
      if (state.client !== client) return;
      document.body.classList.remove("offline");
      endSession();
      showBanner(e.detail.reason, "error", { label: "Sign in again", run: () => signIn() });
    });
    $("presence-text").textContent = shown(client.name);
    showSignedIn(true);
    renderPeers();
    renderCallState();
    announce("Signed in as " + shown(client.name) + ".");
    $("main").focus({ preventScroll: true });
  }

  function signOut() {
    const client = state.client;
    endSession();
    if (client) client.signOut(false);
    announce("Signed out.");
    $("name").focus();
  }

  function onPageHide() {
    const client = state.client;
    if (!client) return;
    if (state.call) client.sendOnUnload(state.call.peer.id, "BYE");
    client.signOut(true);
    endSession();
    state.resumeName = client.name;
  }

  /** Back from the back/forward cache: we signed out on the way out, so sign in again. */
  function onPageShow(event) {
    if (event.persisted && state.resumeName && !state.client) {
      state.resumeName = null;
      signIn();
    }
  }

  function sendChat(event) {
    event.preventDefault();
    const input = $("chat-input");
    const text = input.value;
    if (!text.trim() || !(state.call instanceof pcsignal.Call)) return;
    if (state.call.sendChat(text)) {
      addChatLine("You", text, "mine");
      input.value = "";
    }
  }

  function init() {
    $("name").value = storage(STORAGE_NAME) || "";
    $("server").value = storage(STORAGE_SERVER) || defaultServer();
    const relay = new URLSearchParams(location.search).get("relay");
    $("relay-only").checked = relay !== null && relay !== "0" && relay !== "false";
    if ($("server").value !== defaultServer() || relayOnly()) $("server-details").open = true;
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("hang-up").addEventListener("click", hangUp);
    $("chat-form").addEventListener("submit", sendChat);
    $("banner-close").addEventListener("click", hideBanner);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && state.call && !event.target.closest("input")) hangUp();
    });
    window.addEventListener("pagehide", onPageHide);
    window.addEventListener("pageshow", onPageShow);
    showSignedIn(false);
    resetCallView();
    renderCallState();
    if (!$("name").value) $("name").focus();
  }

  // For tests and the console: the live state (client, call, peers).
  pcsignal.app = state;

  init();
})((window.pcsignal = window.pcsignal || {}));
