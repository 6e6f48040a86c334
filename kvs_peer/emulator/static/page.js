// The emulator's page: list the channels, play one with KvsViewer (kvs-viewer.js).
//
// /?channel=NAME starts playing NAME at once. window.kvsPage holds the page's state for
// scripts and tests: {channel, state, stats: {framesDecoded, width, height, fps, codec}}.
'use strict';

const kvsPage = { channel: null, state: 'idle', stats: null, viewer: null };
window.kvsPage = kvsPage;

const $ = (id) => document.getElementById(id);

function log(line) {
  const time = new Date().toISOString().slice(11, 23);
  $('log').textContent += `${time} ${line}\n`;
}

function setState(state) {
  kvsPage.state = state;
  $('state').textContent = state;
  $('state').dataset.state = state;
}

async function getJson(path) {
  const response = await fetch(path, { cache: 'no-store' });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || `HTTP ${response.status}`);
  return body;
}

function cell(row, text) {
  const td = row.insertCell();
  td.textContent = text;
  return td;
}

async function refreshChannels() {
  let channels;
  try {
    channels = (await getJson('/_kvs/channels')).channels;
  } catch (error) {
    $('channels-error').textContent = `cannot list channels: ${error.message}`;
    $('channels-error').hidden = false;
    return;
  }
  $('channels-error').hidden = true;
  $('channels-empty').hidden = channels.length > 0;
  const body = $('channels').tBodies[0];
  body.replaceChildren();
  for (const channel of channels) {
    const row = body.insertRow();
    cell(row, channel.name).title = channel.arn;
    cell(row, channel.master ? 'connected' : '-');
    cell(row, String(channel.viewers));
    const button = document.createElement('button');
    button.textContent = channel.name === kvsPage.channel ? 'Watching' : 'Watch';
    button.disabled = !channel.master && channel.name !== kvsPage.channel;
    button.onclick = () => watch(channel.name);
    row.insertCell().append(button);
  }
}

function randomClientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return `kvs-page-${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

async function watch(channel) {
  stop();
  kvsPage.channel = channel;
  $('watching').textContent = channel;
  $('stop').disabled = false;
  history.replaceState(null, '', `?channel=${encodeURIComponent(channel)}`);
  const clientId = randomClientId();
  log(`watching ${channel} as ${clientId}`);
  let signed;
  try {
    const query = new URLSearchParams({ channel, clientId });
    signed = await getJson(`/_kvs/viewer-url?${query}`);
  } catch (error) {
    log(`no signed URL: ${error.message}`);
    setState('failed');
    return;
  }
  if (kvsPage.channel !== channel) return; // another channel was picked meanwhile
  const viewer = new KvsViewer({
    url: signed.url,
    onStream: (stream) => {
      if ($('video').srcObject !== stream) $('video').srcObject = stream;
    },
    onState: setState,
    onLog: log,
  });
  kvsPage.viewer = viewer;
  viewer.start();
  refreshChannels();
}

function stop() {
  if (kvsPage.viewer) kvsPage.viewer.close();
  kvsPage.viewer = null;
  kvsPage.channel = null;
  kvsPage.stats = null;
  $('video').srcObject = null;
  $('watching').textContent = '';
  $('stats').textContent = '';
  $('stop').disabled = true;
  setState('idle');
}

async function refreshStats() {
  const viewer = kvsPage.viewer;
  if (!viewer) return;
  const stats = await viewer.videoStats();
  if (viewer !== kvsPage.viewer) return;
  kvsPage.stats = stats;
  $('stats').textContent =
    `${stats.width}x${stats.height}, ${stats.framesDecoded} frames decoded, ` +
    `${stats.fps} fps ${stats.codec}`;
}

// Storage sessions (WebRTC ingestion): what they recorded, played back in a <video>.
async function refreshRecordings() {
  let listing;
  try {
    listing = await getJson('/_kvs/recordings');
  } catch (error) {
    $('recordings-folder').textContent = `cannot list recordings: ${error.message}`;
    return;
  }
  $('recordings-folder').textContent = `folder ${listing.folder}`;
  const body = $('recordings').tBodies[0];
  body.replaceChildren();
  for (const recording of listing.recordings) {
    const row = body.insertRow();
    cell(row, recording.stream);
    cell(row, recording.name);
    cell(row, `${(recording.bytes / 1e6).toFixed(2)} MB`);
    const button = document.createElement('button');
    button.textContent = 'Play';
    button.onclick = () => {
      $('playback').src = recording.url;
      $('playback').hidden = false;
    };
    row.insertCell().append(button);
  }
}

window.addEventListener('DOMContentLoaded', () => {
  $('endpoint').textContent = `endpoint ${location.origin}`;
  $('stop').onclick = () => {
    stop();
    history.replaceState(null, '', location.pathname);
    refreshChannels();
  };
  refreshChannels();
  setInterval(refreshChannels, 2000);
  refreshRecordings();
  setInterval(refreshRecordings, 5000);
  setInterval(() => refreshStats().catch((error) => log(`stats: ${error}`)), 1000);
  const wanted = new URLSearchParams(location.search).get('channel');
  if (wanted) watch(wanted);
});
