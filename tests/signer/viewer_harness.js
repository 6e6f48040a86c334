// Runs examples/browser/viewer.js with the real KVS WebRTC SDK bundle under Node, with a
// scripted RTCPeerConnection standing in for the browser's (Node has none).
//
//   node --experimental-websocket viewer_harness.js SDK_JS VIEWER_JS SIGNER_URL CHANNEL [TOKEN]
//
// Prints one JSON line per step ({"step": ...}) and exits 0 once the master's answer has been
// applied, 1 on any error, 2 on timeout.
'use strict';

const fs = require('fs');
const vm = require('vm');

const [sdkPath, viewerPath, signerUrl, channel, token] = process.argv.slice(2);
const emit = (step, extra = {}) => console.log(JSON.stringify({ step, ...extra }));
const OFFER_SDP = 'v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=harness\r\nt=0 0\r\n';
const CANDIDATE = {
  candidate: 'candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host',
  sdpMid: '0',
  sdpMLineIndex: 0,
};

class ScriptedPeerConnection {
  constructor(configuration) {
    this.configuration = configuration;
    this.listeners = {};
    this.transceivers = [];
    this.localDescription = null;
    this.connectionState = 'new';
    emit('peer-connection', { configuration });
  }
  addEventListener(type, fn) {
    (this.listeners[type] = this.listeners[type] || []).push(fn);
  }
  dispatch(type, event) {
    for (const fn of this.listeners[type] || []) fn(event);
  }
  addTransceiver(kind, init) {
    this.transceivers.push({ kind, direction: init.direction });
  }
  async createOffer() {
    return { type: 'offer', sdp: OFFER_SDP };
  }
  async setLocalDescription(description) {
    this.localDescription = { ...description, toJSON: () => ({ ...description }) };
    // Gathering starts: one candidate, then the end-of-candidates event (null).
    setTimeout(() => {
      this.dispatch('icecandidate', { candidate: { ...CANDIDATE, toJSON: () => CANDIDATE } });
      this.dispatch('icecandidate', { candidate: null });
    }, 10);
  }
  async setRemoteDescription(description) {
    emit('answer', { type: description.type, sdp: description.sdp, transceivers: this.transceivers });
    // Let the trickled candidate (sent 10 ms after the offer) leave before exiting.
    setTimeout(() => process.exit(0), 100);
  }
  async addIceCandidate() {}
  close() {}
}

const context = {
  console,
  fetch,
  URLSearchParams,
  WebSocket,
  setTimeout,
  clearTimeout,
  crypto: globalThis.crypto,
  TextEncoder,
  TextDecoder,
  btoa,
  atob,
  RTCPeerConnection: ScriptedPeerConnection,
  location: new URL(signerUrl),
};
context.window = context;
vm.createContext(context);
vm.runInContext(fs.readFileSync(sdkPath, 'utf8'), context, { filename: sdkPath });
vm.runInContext(fs.readFileSync(viewerPath, 'utf8'), context, { filename: viewerPath });

const video = { srcObject: null };
const log = (line) => emit('log', { line });
setTimeout(() => {
  emit('timeout');
  process.exit(2);
}, 8000);
context.kvsPeerViewer
  .startViewer({ signerUrl, channel, token, clientId: '' }, { video, log })
  .then((viewer) => emit('started', { clientId: viewer.access.clientId }))
  .catch((error) => {
    emit('error', { message: String(error.message || error) });
    process.exit(1);
  });
