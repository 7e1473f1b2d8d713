/*
 * Live call numbers from RTCPeerConnection.getStats(): bitrate, resolution
 * and frame rate of the video in each direction, and the round-trip time.
 *
 * A StatsSampler remembers the previous report so that bitrates are computed
 * over the interval between two samples.
 */
(function (pcsignal) {
  "use strict";

  function formatBitrate(bitsPerSecond) {
    if (bitsPerSecond === null) return "–";
    if (bitsPerSecond >= 1e6) return (bitsPerSecond / 1e6).toFixed(2) + " Mbit/s";
    return Math.round(bitsPerSecond / 1e3) + " kbit/s";
  }

  /** {rate, detail} texts for one direction of video, e.g. "1.20 Mbit/s", "640×480 · 30 fps". */
  function formatVideo(side) {
    if (!side) return { rate: "–", detail: "no video" };
    const size = side.width ? side.width + "×" + side.height : "–";
    const fps = side.fps !== null ? Math.round(side.fps) + " fps" : "– fps";
    return { rate: formatBitrate(side.bitrate), detail: size + " · " + fps };
  }

  class StatsSampler {
    constructor(pc) {
      this._pc = pc;
      this._previous = new Map(); // stats id -> {bytes, timestamp}
    }

    _video(stat, bytes, frames) {
      return {
        bitrate: this._bitrate(stat, bytes || 0),
        width: stat.frameWidth || 0,
        height: stat.frameHeight || 0,
        fps: stat.framesPerSecond === undefined ? null : stat.framesPerSecond,
        frames: frames || 0,
      };
    }

    _bitrate(stat, bytes) {
      const before = this._previous.get(stat.id);
      this._previous.set(stat.id, { bytes: bytes, timestamp: stat.timestamp });
      if (!before || stat.timestamp <= before.timestamp) return null;
      return ((bytes - before.bytes) * 8 * 1000) / (stat.timestamp - before.timestamp);
    }

    /**
     * {inbound, outbound, rttMs, path}: inbound/outbound are the video streams
     * as {bitrate, width, height, fps, frames} (frames decoded or encoded), or
     * null; path is "relay" when our end of the media path is a TURN relay,
     * "direct" otherwise, null before there is one.
     */
    async sample() {
      const report = await this._pc.getStats();
      const result = { inbound: null, outbound: null, rttMs: null, path: null };
      report.forEach((stat) => {
        if (stat.kind !== "video" && stat.type !== "candidate-pair") return;
        if (stat.type === "inbound-rtp") {
          result.inbound = this._video(stat, stat.bytesReceived, stat.framesDecoded);
        } else if (stat.type === "outbound-rtp") {
          result.outbound = this._video(stat, stat.bytesSent, stat.framesEncoded);
        } else if (stat.type === "candidate-pair" && stat.nominated && stat.state === "succeeded") {
          if (stat.currentRoundTripTime !== undefined) result.rttMs = stat.currentRoundTripTime * 1000;
          const local = report.get(stat.localCandidateId);
          if (local) result.path = local.candidateType === "relay" ? "relay" : "direct";
        }
      });
      return result;
    }
  }

  pcsignal.formatBitrate = formatBitrate;
  pcsignal.formatVideo = formatVideo;
  pcsignal.StatsSampler = StatsSampler;
})((window.pcsignal = window.pcsignal || {}));
