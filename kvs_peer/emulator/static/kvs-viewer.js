// A small KVS WebRTC signaling client for one VIEWER: no AWS SDK, no credentials.
//
// Wire protocol (docs/protocol.md, client and service frames): the viewer opens a presigned
// ConnectAsViewer URL and sends text frames {"action", "messagePayload", "correlationId"?}
// whose payload is base64 of a JSON object: first SDP_OFFER, then each ICE_CANDIDATE as it is
// gathered (trickle ICE). It receives {"messageType", "messagePayload", "senderClientId"?,
// "statusResponse"?}: the master's SDP_ANSWER and ICE_CANDIDATEs, and from the service
// STATUS_RESPONSE, GO_AWAY and RECONNECT_ICE_SERVER.
'use strict';

/** base64 of the UTF-8 JSON of `value` (the JS SDK uses btoa(JSON.stringify()), 2.2). */
function encodePayload(value) {
  let binary = '';
  for (const byte of new TextEncoder().encode(JSON.stringify(value))) {
    binary += String.fromCharCode(byte);
  }
  return btoa(binary);
}

/** The object in a base64 JSON payload, or undefined for anything else (3.4: junk is dropped). */
function decodePayload(text) {
  if (typeof text !== 'string' || text === '') return undefined;
  try {
    const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
    const value = JSON.parse(new TextDecoder().decode(bytes));
    return value && typeof value === 'object' ? value : undefined;
  } catch {
    return undefined;
  }
}

/** Whether this browser can decode H.264, the only video codec kvs-peer masters send. */
function canDecodeH264() {
  if (typeof RTCRtpReceiver === 'undefined' || !RTCRtpReceiver.getCapabilities) return true;
  const capabilities = RTCRtpReceiver.getCapabilities('video');
  return !capabilities || capabilities.codecs.some((c) => /^video\/h264$/i.test(c.mimeType));
}

class KvsViewer {
  /**
   * Receive a channel's media as VIEWER.
   *
   * @param {object} options
   * @param {string} options.url presigned ConnectAsViewer URL (wss:// or ws://)
   * @param {RTCIceServer[]} [options.iceServers] STUN/TURN servers; none are needed on one host
   * @param {(stream: MediaStream) => void} [options.onStream] media arrived (called per track)
   * @param {(state: string) => void} [options.onState] connecting, offered, answered,
   *     then the peer connection's states (connected, disconnected, failed, closed)
   * @param {(line: string) => void} [options.onLog] human-readable progress and errors
   */
  constructor({ url, iceServers = [], onStream, onState, onLog }) {
    this.url = url;
    this.iceServers = iceServers;
    this.onStream = onStream || (() => {});
    this.onState = onState || (() => {});
    this.onLog = onLog || (() => {});
    this.pc = null;
    this.ws = null;
    this.stream = null;
    this.offerSent = false;
    this.answered = false;
    this.outbox = []; // our candidates gathered before the offer went out
    this.inbox = []; // the master's candidates that arrived before its answer (3.4, step 4)
    this.received = Promise.resolve(); // messages are handled one at a time, in order
  }

  start() {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    this.stream = new MediaStream();
    // With both, Chromium 156's offer is about 8.6K of the 10K payload limit (docs/protocol.md#limits).
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.ontrack = (event) => {
      this.stream.addTrack(event.track);
      this.onStream(this.stream);
    };
    pc.onicecandidate = (event) => {
      // KVS has no end-of-candidates message (docs/protocol.md#client-frames): the final null candidate is not sent.
      if (event.candidate) this.send('ICE_CANDIDATE', event.candidate.toJSON());
    };
    pc.onconnectionstatechange = () => this.onState(pc.connectionState);
    if (!canDecodeH264()) {
      this.onLog('warning: this browser cannot decode H.264, which kvs-peer masters send');
    }
    this.onState('connecting');
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.onLog('signaling connected');
      this.offer().catch((error) => this.fail(`could not send the offer: ${error}`));
    };
    ws.onmessage = (event) => {
      this.received = this.received
        .then(() => this.receive(event.data))
        .catch((error) => this.onLog(`message not applied: ${error}`));
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return; // closed by close()
      // Browsers hide why an upgrade failed (403 bad signature, 404 unknown channel...).
      const why = event.code === 1006 && !this.offerSent ? ' (refused or unreachable)' : '';
      this.onLog(`signaling closed: ${event.code} ${event.reason || ''}${why}`.trim());
      if (!this.offerSent) this.onState('failed');
    };
  }

  /** Close signaling and the peer connection. Safe to call twice. */
  close() {
    if (this.ws) this.ws.close(1000);
    if (this.pc) this.pc.close();
    this.ws = null;
    this.pc = null;
    this.onState('closed');
  }

  async offer() {
    const pc = this.pc;
    await pc.setLocalDescription(await pc.createOffer());
    // A correlation id makes the service report a failed delivery (STATUS_RESPONSE, 3.2).
    this.sendNow({
      action: 'SDP_OFFER',
      messagePayload: encodePayload(pc.localDescription.toJSON()),
      correlationId: `offer-${Date.now()}`,
    });
    this.offerSent = true;
    this.onState('offered');
    for (const message of this.outbox.splice(0)) this.sendNow(message);
  }

  send(action, payload) {
    const message = { action, messagePayload: encodePayload(payload) };
    if (this.offerSent) this.sendNow(message);
    else this.outbox.push(message);
  }

  sendNow(message) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      this.onLog(`signaling is closed: ${message.action} not sent`);
      return;
    }
    this.ws.send(JSON.stringify(message));
  }

  async receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return; // 3.4, step 1: frames that are not JSON are ignored
    }
    if (!message || typeof message !== 'object' || !this.pc) return;
    const payload = decodePayload(message.messagePayload);
    switch (message.messageType) {
      case 'SDP_ANSWER':
        if (!payload || this.answered || this.pc.signalingState !== 'have-local-offer') return;
        await this.pc.setRemoteDescription(payload);
        this.answered = true;
        this.onState('answered');
        this.onLog('answer applied');
        for (const candidate of this.inbox.splice(0)) await this.addCandidate(candidate);
        break;
      case 'ICE_CANDIDATE':
        if (!payload) return;
        if (this.answered) await this.addCandidate(payload);
        else this.inbox.push(payload);
        break;
      case 'STATUS_RESPONSE': {
        const status = message.statusResponse || {};
        this.onLog(
          `signaling refused a message: ${status.statusCode || '?'} ${status.errorType || ''} ` +
            `${status.description || ''}`.trim(),
        );
        break;
      }
      case 'GO_AWAY':
        this.onLog('GO_AWAY: the service will close signaling; playback goes on');
        break;
      case 'RECONNECT_ICE_SERVER':
        this.onLog('RECONNECT_ICE_SERVER: no TURN in use here, nothing to do');
        break;
      default:
        break; // SDP_OFFER from a master and unknown types: a viewer has nothing to do
    }
  }

  async addCandidate(candidate) {
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (error) {
      this.onLog(`candidate refused: ${error}`); // one bad candidate must not end the session
    }
  }

  fail(message) {
    this.onLog(message);
    this.onState('failed');
  }

  /** Inbound video numbers from getStats(): frames decoded, size, frame rate, codec. */
  async videoStats() {
    const result = { framesDecoded: 0, width: 0, height: 0, fps: 0, codec: '' };
    if (!this.pc) return result;
    const report = await this.pc.getStats();
    report.forEach((entry) => {
      if (entry.type !== 'inbound-rtp' || entry.kind !== 'video') return;
      result.framesDecoded = entry.framesDecoded || 0;
      result.width = entry.frameWidth || 0;
      result.height = entry.frameHeight || 0;
      result.fps = entry.framesPerSecond || 0;
      const codec = entry.codecId && report.get(entry.codecId);
      result.codec = codec ? codec.mimeType : '';
    });
    return result;
  }
}
