// A browser VIEWER for a kvs-peer master, with no AWS credentials in the page.
//
// 1. GET {signer}/kinesis-video-url?channel=..&role=VIEWER[&clientId=..] (bearer token or
//    anonymous) returns a presigned WSS URL, the client id it was signed for, and an
//    RTCConfiguration (STUN/TURN).
// 2. The official SDK (window.KVSWebRTC) connects through a custom request signer that hands
//    it that URL instead of signing with AWS keys.
// 3. The page offers receive-only video/audio and trickles its ICE candidates; the master
//    answers with a complete SDP.
'use strict';

(function () {
  async function fetchAccess({ signerUrl, channel, token, clientId }) {
    const params = new URLSearchParams({ channel, role: 'VIEWER' });
    if (clientId) params.set('clientId', clientId);
    const base = (signerUrl || window.location.origin).replace(/\/+$/, '');
    const response = await fetch(`${base}/kinesis-video-url?${params}`, {
      headers: token ? { Authorization: `Bearer ${token}` } : {},
      cache: 'no-store',
    });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      // Not JSON (a proxy error page): reported below with the status.
    }
    if (!response.ok) {
      const what = body && body.error ? ` ${body.error}` : '';
      const why = body && body.message ? body.message : 'no details';
      throw new Error(`signer answered ${response.status}${what}: ${why}`);
    }
    return body;
  }

  async function startViewer(settings, { video, log }) {
    if (typeof window.KVSWebRTC === 'undefined') {
      throw new Error('kvs-webrtc.min.js is missing: see examples/browser/README.md');
    }
    let access = await fetchAccess(settings);
    // The URL is a credential for the channel: log who it is for, never the URL itself.
    log(`signed URL for client ${access.clientId}, valid until ${access.expiresAt}`);
    let unused = true;
    const requestSigner = {
      // The SDK asks for a URL on every open(). A signed URL expires within minutes, so any
      // later (re)connect fetches a fresh one for the same client id.
      getSignedURL: async () => {
        if (unused) {
          unused = false;
          return access.url;
        }
        access = await fetchAccess({ ...settings, clientId: access.clientId });
        return access.url;
      },
    };

    const pc = new RTCPeerConnection(access.configuration);
    const signaling = new window.KVSWebRTC.SignalingClient({
      // The custom signer returns the whole URL; the SDK still requires these fields.
      channelARN: access.channelARN,
      channelEndpoint: access.url.split('?')[0],
      clientId: access.clientId,
      role: window.KVSWebRTC.Role.VIEWER,
      region: access.region,
      requestSigner,
    });

    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addEventListener('track', (event) => {
      const stream = event.streams[0] || new MediaStream([event.track]);
      if (video.srcObject !== stream) video.srcObject = stream;
      log(`receiving ${event.track.kind}`);
    });
    pc.addEventListener('icecandidate', ({ candidate }) => {
      if (candidate) signaling.sendIceCandidate(candidate); // trickle ICE
    });
    pc.addEventListener('connectionstatechange', () => log(`peer connection ${pc.connectionState}`));

    signaling.on('open', async () => {
      log('signaling open; sending offer');
      try {
        await pc.setLocalDescription(await pc.createOffer());
        signaling.sendSdpOffer(pc.localDescription);
      } catch (error) {
        log(`could not create the offer: ${error}`);
      }
    });
    signaling.on('sdpAnswer', async (answer) => {
      log('answer received');
      try {
        await pc.setRemoteDescription(answer);
      } catch (error) {
        log(`bad answer: ${error}`);
      }
    });
    signaling.on('iceCandidate', (candidate) => {
      pc.addIceCandidate(candidate).catch((error) => log(`bad candidate: ${error}`));
    });
    signaling.on('close', () => log('signaling closed'));
    signaling.on('error', (error) => log(`signaling error: ${error.message || error}`));
    signaling.open();

    return {
      access,
      peerConnection: pc,
      signaling,
      stop() {
        signaling.close();
        pc.close();
        video.srcObject = null;
      },
    };
  }

  window.kvsPeerViewer = { fetchAccess, startViewer };

  if (typeof document === 'undefined' || !document.getElementById('settings')) return;

  const $ = (id) => document.getElementById(id);
  const logBox = $('log');
  const log = (line) => {
    logBox.textContent += `${new Date().toLocaleTimeString()} ${line}\n`;
  };
  $('channel').value = new URLSearchParams(window.location.search).get('channel') || '';
  let viewer = null;

  $('settings').addEventListener('submit', async (event) => {
    event.preventDefault();
    if (viewer) viewer.stop();
    $('connect').disabled = true;
    try {
      viewer = await startViewer(
        {
          signerUrl: $('signer').value.trim(),
          channel: $('channel').value.trim(),
          token: $('token').value.trim(),
          clientId: $('clientId').value.trim(),
        },
        { video: $('remote'), log },
      );
      $('disconnect').disabled = false;
    } catch (error) {
      log(String(error.message || error));
    } finally {
      $('connect').disabled = false;
    }
  });
  $('disconnect').addEventListener('click', () => {
    if (viewer) viewer.stop();
    viewer = null;
    $('disconnect').disabled = true;
    log('disconnected');
  });
})();
