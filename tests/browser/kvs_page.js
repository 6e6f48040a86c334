// Browser side of the interop tests (tests/browser/test_browser_interop.py drives it through
// Playwright): a KVS viewer or master built on the official SDK's SignalingClient, the way the
// SDK's own examples do it (trickle ICE, one RTCPeerConnection per remote client).
//
// The page holds no AWS credentials. Python presigns the WSS URL with kvs-peer's resolver and
// hands it over; the SDK's `requestSigner` hook returns it (SDK README, "Managing Credentials").
'use strict';

(() => {
  const { SignalingClient, Role } = window.KVSWebRTC;

  const state = {
    sdkVersion: window.KVSWebRTC.VERSION,
    role: null,
    events: [], // [ms since start, name, detail]
    errors: [],
    localCandidates: [], // candidate lines this page trickled
    remoteCandidates: [], // candidate lines received through signaling
    messages: [], // data-channel messages received
    connectionStates: {}, // remote client id (or "MASTER") -> RTCPeerConnection state
    openChannels: 0,
    firstFrameMs: null, // start -> first presented frame (requestVideoFrameCallback)
    presentedFrames: 0,
    camera: null, // getUserMedia track settings (master)
  };
  let startedAt = performance.now();
  let signaling = null;
  let localStream = null;
  const peers = new Map();
  const channels = [];

  const since = () => Math.round(performance.now() - startedAt);
  const log = (name, detail = null) => state.events.push([since(), name, detail]);
  const fail = (where) => (err) => {
    state.errors.push(`${where}: ${err && err.message ? err.message : String(err)}`);
  };
  window.addEventListener('error', (e) => fail('page')(e.error || e.message));
  window.addEventListener('unhandledrejection', (e) => fail('promise')(e.reason));

  function makeClient(opts, role) {
    const client = new SignalingClient({
      channelARN: opts.channelArn,
      channelEndpoint: opts.endpoint,
      clientId: role === Role.VIEWER ? opts.clientId : undefined,
      role,
      region: opts.region,
      requestSigner: { getSignedURL: async () => opts.signedUrl },
      systemClockOffset: 0,
    });
    client.on('close', () => log('signaling-close'));
    client.on('statusResponse', (s) => log('status-response', s));
    return client;
  }

  // Resolves once the signaling socket is open; rejects if the SDK reports an error first.
  function openClient(client) {
    return new Promise((resolve, reject) => {
      client.on('open', () => {
        log('signaling-open');
        resolve();
      });
      client.on('error', (err) => {
        fail('signaling')(err);
        reject(new Error(`signaling error: ${err && err.message ? err.message : err}`));
      });
      client.open();
    });
  }

  // opts.iceTransportPolicy: 'relay' gathers and uses TURN relay candidates only.
  function rtcConfig(opts) {
    return {
      iceServers: opts.iceServers || [],
      iceTransportPolicy: opts.iceTransportPolicy || 'all',
    };
  }

  function watchPeer(pc, remote) {
    state.connectionStates[remote] = pc.connectionState;
    pc.addEventListener('connectionstatechange', () => {
      state.connectionStates[remote] = pc.connectionState;
      log(`connection-${pc.connectionState}`, remote);
    });
  }

  function setupChannel(channel) {
    channels.push(channel);
    channel.addEventListener('open', () => {
      state.openChannels += 1;
      log('channel-open', channel.label);
    });
    if (channel.readyState === 'open') state.openChannels += 1;
    channel.addEventListener('message', (ev) => {
      state.messages.push(typeof ev.data === 'string' ? ev.data : `[${ev.data.byteLength} bytes]`);
    });
  }

  function watchVideo(video) {
    const onFrame = (_now, meta) => {
      state.presentedFrames = meta.presentedFrames;
      if (state.firstFrameMs === null) {
        state.firstFrameMs = since();
        log('first-frame', [meta.width, meta.height]);
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  async function startViewer(opts) {
    startedAt = performance.now();
    state.role = 'VIEWER';
    const pc = new RTCPeerConnection(rtcConfig(opts));
    peers.set('MASTER', pc);
    watchPeer(pc, 'MASTER');
    pc.addTransceiver('video', { direction: 'recvonly' });
    if (opts.audio) pc.addTransceiver('audio', { direction: 'recvonly' });
    if (opts.dataChannel) setupChannel(pc.createDataChannel('kvs-peer-browser'));
    const video = document.getElementById('remote');
    pc.addEventListener('track', (ev) => {
      log('track', ev.track.kind);
      if (ev.track.kind === 'audio') {
        // Played, so Chromium decodes it and its stats (audioLevel, samples) move.
        const audio = new Audio();
        audio.srcObject = new MediaStream([ev.track]);
        audio.play().catch(fail('play audio'));
        return;
      }
      video.srcObject = new MediaStream([ev.track]);
      watchVideo(video);
      video.play().catch(fail('play'));
    });
    signaling = makeClient(opts, Role.VIEWER);
    // Candidates, as the SDK examples send them: each one as gathered (trickle; the final null
    // is not sent), or only inside the offer once gathering is complete (trickle: false).
    // holdCandidates: trickle, but only after gathering is complete, the offer and every
    // candidate at once (a client that gathered before it offered).
    const trickle = opts.trickle !== false;
    const held = [];
    const gathered = new Promise((resolve) => {
      pc.addEventListener('icecandidate', ({ candidate }) => {
        if (!candidate) {
          resolve();
          return;
        }
        state.localCandidates.push(candidate.candidate);
        if (opts.holdCandidates) held.push(candidate);
        else if (trickle) signaling.sendIceCandidate(candidate);
      });
    });
    signaling.on('sdpAnswer', async (answer) => {
      log('sdp-answer', (answer.sdp.match(/profile-level-id=([0-9a-fA-F]{6})/) || [])[1]);
      await pc.setRemoteDescription(answer).catch(fail('setRemoteDescription'));
    });
    signaling.on('iceCandidate', (candidate) => {
      state.remoteCandidates.push(candidate.candidate);
      pc.addIceCandidate(candidate).catch(fail('addIceCandidate'));
    });
    await openClient(signaling);
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    if (!trickle || opts.holdCandidates) await gathered;
    // Trickled offers go out as created, without the candidates localDescription gains.
    signaling.sendSdpOffer(trickle ? offer : pc.localDescription);
    log('sdp-offer-sent');
    for (const candidate of held) signaling.sendIceCandidate(candidate);
  }

  async function answer(offer, remote, opts) {
    log('sdp-offer', remote);
    if (peers.has(remote)) peers.get(remote).close();
    const pc = new RTCPeerConnection(rtcConfig(opts));
    peers.set(remote, pc);
    watchPeer(pc, remote);
    pc.addEventListener('icecandidate', ({ candidate }) => {
      if (!candidate) return;
      state.localCandidates.push(candidate.candidate);
      signaling.sendIceCandidate(candidate, remote);
    });
    pc.addEventListener('datachannel', (ev) => setupChannel(ev.channel));
    for (const track of localStream.getTracks()) pc.addTrack(track, localStream);
    await pc.setRemoteDescription(offer);
    await pc.setLocalDescription(await pc.createAnswer());
    signaling.sendSdpAnswer(pc.localDescription, remote);
    log('sdp-answer-sent', remote);
  }

  async function startMaster(opts) {
    startedAt = performance.now();
    state.role = 'MASTER';
    localStream = await navigator.mediaDevices.getUserMedia({
      video: { width: 640, height: 480 },
      audio: false,
    });
    state.camera = localStream.getVideoTracks()[0].getSettings();
    signaling = makeClient(opts, Role.MASTER);
    signaling.on('sdpOffer', (offer, remote) => {
      answer(offer, remote, opts).catch(fail('answer'));
    });
    signaling.on('iceCandidate', (candidate, remote) => {
      state.remoteCandidates.push(candidate.candidate);
      const pc = peers.get(remote);
      if (pc) pc.addIceCandidate(candidate).catch(fail('addIceCandidate'));
    });
    await openClient(signaling);
  }

  // One frame of the remote video as a PNG data URL, at the video's own size.
  function grabFrame() {
    const video = document.getElementById('remote');
    if (!video.videoWidth) return null;
    const canvas = document.getElementById('grab');
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext('2d').drawImage(video, 0, 0);
    return {
      png: canvas.toDataURL('image/png'),
      presentedFrames: state.presentedFrames,
      totalVideoFrames: video.getVideoPlaybackQuality().totalVideoFrames,
    };
  }

  function send(text) {
    let sent = 0;
    for (const channel of channels) {
      if (channel.readyState === 'open') {
        channel.send(text);
        sent += 1;
      }
    }
    return sent;
  }

  function close() {
    for (const pc of peers.values()) pc.close();
    peers.clear();
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    if (signaling) signaling.close();
  }

  // The inbound audio stream's stats (codec, packets, decoded samples, level), or null.
  async function audioStats() {
    const pc = peers.get('MASTER');
    if (!pc) return null;
    const report = await pc.getStats();
    for (const stats of report.values()) {
      if (stats.type === 'inbound-rtp' && stats.kind === 'audio') {
        const codec = report.get(stats.codecId);
        // The level the sender wrote in the RTP audio-level header extension (RFC 6465).
        const receiver = pc.getReceivers().find((r) => r.track.kind === 'audio');
        const sources = receiver ? receiver.getSynchronizationSources() : [];
        return {
          headerLevel: sources.length ? sources[0].audioLevel : null,
          mimeType: codec ? codec.mimeType : null,
          packetsReceived: stats.packetsReceived,
          packetsLost: stats.packetsLost,
          totalSamplesReceived: stats.totalSamplesReceived,
          concealedSamples: stats.concealedSamples,
          audioLevel: stats.audioLevel,
        };
      }
    }
    return null;
  }

  // The candidate pair the transport uses with `remote`, from getStats, or null before one is
  // selected: {local: {candidateType, protocol, address, port}, remote: {...}}.
  async function selectedPair(remote = 'MASTER') {
    const pc = peers.get(remote);
    if (!pc) return null;
    const report = await pc.getStats();
    for (const stats of report.values()) {
      if (stats.type !== 'transport' || !stats.selectedCandidatePairId) continue;
      const pair = report.get(stats.selectedCandidatePairId);
      const describe = (id) => {
        const c = report.get(id);
        const { candidateType, protocol, address, port } = c;
        return { candidateType, protocol, address, port };
      };
      return { local: describe(pair.localCandidateId), remote: describe(pair.remoteCandidateId) };
    }
    return null;
  }

  window.kvsTest = {
    state, startViewer, startMaster, grabFrame, audioStats, selectedPair, send, close,
  };
})();
