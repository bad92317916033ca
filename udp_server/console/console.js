// The rst recording console: plain JavaScript, no build step. Talks to the
// receiver's HTTP port with the session cookie set at sign-in.
'use strict';

const $ = (selector, root = document) => root.querySelector(selector);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};

const state = {
  taps: [],
  peaks: new Map(),      // uuid -> {R, W}: the highest level the meters showed
  listen: null,          // {socket, context, analyser, uuid, tracks}
  recording: null,       // {uuid, record, envelope, buffer, source, startedAt, analysers}
  waveformDrawn: false,
  live: null,            // {events, meters}: the live view's connection
  lossMarks: [],         // [{direction, x}] drawn on the open recording's waveform
  cursorX: null,         // where the playback cursor was last drawn
};

// ---- pages -------------------------------------------------------------

function showPage() {
  const page = (location.hash || '#live').slice(1);
  for (const section of document.querySelectorAll('.page')) {
    section.hidden = section.id !== `page-${page}`;
  }
  for (const link of document.querySelectorAll('header nav a')) {
    link.classList.toggle('active', link.dataset.page === page);
  }
}

// ---- live calls --------------------------------------------------------

// The live view; with meters only while the live table is on screen: each
// metered call costs the receiver a copy of its audio for this page.
function wantMeters() {
  return document.visibilityState === 'visible' && (location.hash || '#live') === '#live';
}

function connectLive() {
  const meters = wantMeters();
  if (state.live && state.live.meters === meters) return;
  if (state.live) state.live.events.close();
  const events = new EventSource(`/console/api/live${meters ? '' : '?meters=0'}`);
  state.live = { events, meters };
  events.onopen = () => { $('#status').textContent = 'live'; };
  events.onerror = () => { $('#status').textContent = 'reconnecting…'; };
  events.onmessage = (message) => {
    const view = JSON.parse(message.data);
    state.taps = view.taps;
    state.unmetered = view.calls.filter((call) => !call.levels).length;
    renderCalls(view.calls);
    renderTaps(view.taps);
    $('#status').textContent = `live · ${view.calls.length} call(s) · ${view.recordings} recording(s)${view.indexed ? '' : ' (indexing…)'}`;
  };
}

function meterWidth(level) {
  // -60 dBFS to 0 dBFS across the meter.
  if (!(level > 0)) return 0;
  return Math.max(0, Math.min(100, (20 * Math.log10(level) + 60) / 60 * 100));
}

// Where a call comes from: the tap its INV names (`tap=`), else a tap this
// receiver drives at the sender's address, else a guess from the Call-ID
// (taps learn it from SIP; mod_rst does not send one).
function source(call) {
  const ip = call.sender.replace(/:\d+$/, '');
  const driven = state.taps.find((t) => t.address && t.address.replace(/:\d+$/, '') === ip);
  let from;
  if (call.tap) from = `tap ${call.tap}`;
  else if (driven) from = `tap ${driven.tap}`;
  else if (call.call_id) from = `tap? ${call.sender}`;
  else from = `mod_rst ${call.sender}`;
  return `${from} (${call.mode})`;
}

function lossText(media) {
  const parts = [];
  for (const dir of ['R', 'W']) {
    const d = media.directions && media.directions[dir];
    if (d && d.expected != null) {
      const pct = d.expected ? (100 * d.lost / d.expected).toFixed(1) : '0.0';
      parts.push(`${dir} ${pct}% · ${d.jitter_ms.toFixed(1)} ms`);
    }
  }
  return parts.join(' / ') || '–';
}

function codecText(media) {
  const codecs = new Set();
  for (const d of Object.values(media.directions || {})) d.codecs.forEach((c) => codecs.add(c));
  return [...codecs].join(', ') || '–';
}

function clock(seconds) {
  const s = Math.floor(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

function renderCalls(calls) {
  const body = $('#calls tbody');
  const seen = new Set();
  for (const call of calls) {
    seen.add(call.uuid);
    let row = body.querySelector(`tr[data-uuid="${CSS.escape(call.uuid)}"]`);
    if (!row) {
      row = el('tr');
      row.dataset.uuid = call.uuid;
      for (let i = 0; i < 10; i++) row.append(el('td'));
      const meters = row.cells[8];
      meters.append(el('span', { className: 'meter R', title: 'R' }, el('span')), el('br'),
        el('span', { className: 'meter W', title: 'W' }, el('span')));
      for (const [label, tracks] of [['R', 'inbound'], ['W', 'outbound'], ['both', 'both']]) {
        row.cells[9].append(el('button', {
          type: 'button', textContent: label, className: `listen-${label}`,
          onclick: () => startListening(call.uuid, tracks, label),
        }), ' ');
      }
      body.append(row);
    }
    const media = call.media || {};
    const cells = row.cells;
    cells[0].textContent = call.caller || '–';
    cells[1].textContent = call.callee || '–';
    cells[2].textContent = call.call_id || '–';
    cells[3].textContent = source(call);
    cells[4].textContent = codecText(media);
    cells[5].textContent = clock(call.duration);
    cells[6].textContent = lossText(media);
    cells[7].textContent = media.dtmf || '';
    const peak = state.peaks.get(call.uuid) || { R: 0, W: 0 };
    row.cells[8].classList.toggle('unmetered', !call.levels);
    row.cells[8].title = call.levels ? '' : 'not metered (only the first 50 calls are)';
    for (const dir of ['R', 'W']) {
      const level = call.levels ? call.levels[dir] : 0;
      peak[dir] = Math.max(peak[dir], level);
      row.querySelector(`.meter.${dir} span`).style.width = `${meterWidth(level)}%`;
      row.dataset[`level${dir}`] = level.toFixed(4);
    }
    state.peaks.set(call.uuid, peak);
  }
  for (const row of [...body.rows]) {
    if (!seen.has(row.dataset.uuid)) row.remove();
  }
  $('#no-calls').hidden = calls.length > 0;
}

// ---- listen-in ---------------------------------------------------------

const LISTEN_RATE = 16000;

function stopListening() {
  const listen = state.listen;
  state.listen = null;
  if (listen) {
    listen.socket.close();
    listen.context.close();
  }
  $('#listening').hidden = true;
}

async function startListening(uuid, tracks, label) {
  stopListening();
  const context = new AudioContext({ sampleRate: LISTEN_RATE });
  await context.resume().catch(() => {});
  const analyser = context.createAnalyser();
  analyser.fftSize = 2048;
  analyser.connect(context.destination);
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const url = `${scheme}://${location.host}/api/calls/${encodeURIComponent(uuid)}/listen?format=raw&rate=${LISTEN_RATE}&tracks=${tracks}`;
  const socket = new WebSocket(url);
  socket.binaryType = 'arraybuffer';
  const listen = { socket, context, analyser, uuid, tracks, channels: tracks === 'both' ? 2 : 1, next: 0, frames: 0 };
  state.listen = listen;
  socket.onmessage = (message) => {
    if (typeof message.data === 'string') {
      const event = JSON.parse(message.data);
      if (event.event === 'start' && event.format && event.format.channels) listen.channels = event.format.channels;
      if (event.event === 'stop') $('#listening-what').textContent += ' — the call ended';
      return;
    }
    play(listen, new Int16Array(message.data));
  };
  socket.onclose = () => { if (state.listen === listen) $('#listening-what').textContent += ' (closed)'; };
  $('#listening-what').textContent = `Listening to ${label} of ${uuid} — logged`;
  $('#listening').hidden = false;
  drawScope(listen);
}

function play(listen, pcm) {
  const { context, channels } = listen;
  const frames = Math.floor(pcm.length / channels);
  if (frames === 0) return;
  const buffer = context.createBuffer(channels, frames, LISTEN_RATE);
  for (let c = 0; c < channels; c++) {
    const out = buffer.getChannelData(c);
    for (let i = 0; i < frames; i++) out[i] = pcm[i * channels + c] / 32768;
  }
  const source = context.createBufferSource();
  source.buffer = buffer;
  source.connect(listen.analyser);
  // A little ahead of now, so that chunks play back to back.
  listen.next = Math.max(listen.next, context.currentTime + 0.15);
  source.start(listen.next);
  listen.next += buffer.duration;
  listen.frames += frames;
}

function listenLevel() {
  return state.listen ? rms(state.listen.analyser) : 0;
}

function drawScope(listen) {
  const canvas = $('#listen-scope');
  const g = canvas.getContext('2d');
  const data = new Float32Array(listen.analyser.fftSize);
  const frame = () => {
    if (state.listen !== listen) return;
    listen.analyser.getFloatTimeDomainData(data);
    g.clearRect(0, 0, canvas.width, canvas.height);
    g.strokeStyle = '#1f6feb';
    g.beginPath();
    for (let x = 0; x < canvas.width; x++) {
      const v = data[Math.floor(x / canvas.width * data.length)];
      const y = canvas.height / 2 - v * canvas.height / 2;
      if (x === 0) g.moveTo(x, y); else g.lineTo(x, y);
    }
    g.stroke();
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
}

// ---- recordings --------------------------------------------------------

async function search(event) {
  if (event) event.preventDefault();
  const params = new URLSearchParams();
  for (const [key, value] of new FormData($('#search'))) if (value !== '') params.set(key, value);
  const response = await fetch(`/console/api/recordings?${params}`);
  if (!response.ok) {
    $('#search-summary').textContent = await response.text();
    return;
  }
  const found = await response.json();
  $('#search-summary').textContent = `${found.total} call(s) found${found.rows.length < found.total ? `, the newest ${found.rows.length} shown` : ''}${found.indexed ? '' : ' (still indexing the recordings on disk)'}`;
  const body = $('#results tbody');
  body.replaceChildren(...found.rows.map((row) => {
    const tr = el('tr', { onclick: () => openRecording(row.uuid, tr) },
      el('td', { textContent: new Date(row.start).toLocaleString() }),
      el('td', { textContent: row.caller }),
      el('td', { textContent: row.callee }),
      el('td', { textContent: row.call_id || row.uuid }),
      el('td', { textContent: row.duration.toFixed(1) }),
      el('td', { textContent: row.end_reason || '' }));
    tr.dataset.uuid = row.uuid;
    return tr;
  }));
}

function fileUrl(uuid, kind) {
  return `/console/api/recordings/${encodeURIComponent(uuid)}/files/${kind}`;
}

async function openRecording(uuid, tr) {
  stopPlayback();
  if (state.recording && state.recording.context) state.recording.context.close();
  state.cursorX = null;
  $('#play-time').textContent = '0.0 s';
  const cursor = $('#cursor');
  cursor.getContext('2d').clearRect(0, 0, cursor.width, cursor.height);
  for (const row of $('#results tbody').rows) row.classList.toggle('selected', row === tr);
  state.waveformDrawn = false;
  const base = `/console/api/recordings/${encodeURIComponent(uuid)}`;
  const [record, envelope] = await Promise.all([
    fetch(base).then((r) => (r.ok ? r.json() : null)),
    fetch(`${base}/envelope?buckets=1000`).then((r) => (r.ok ? r.json() : null)),
  ]);
  state.recording = { uuid, record, envelope, buffer: null, source: null };
  $('#detail').hidden = false;
  $('#detail-title').textContent = record ? `${record.caller || '?'} → ${record.callee || '?'} · ${record.call_id || uuid}` : uuid;
  for (const kind of ['stereo', 'R', 'W', 'json']) $(`#dl-${kind}`).href = fileUrl(uuid, kind);
  $('#detail-facts').textContent = record ? JSON.stringify(record, null, 2) : 'The record cannot be read.';
  drawWaveform();
}

function drawWaveform() {
  const { record, envelope } = state.recording;
  const canvas = $('#waveform');
  const g = canvas.getContext('2d');
  g.fillStyle = '#fff';
  g.fillRect(0, 0, canvas.width, canvas.height);
  if (!envelope) return;
  const half = canvas.height / 2;
  const colors = ['#1f6feb', '#d4553a'];
  envelope.channels.forEach((buckets, channel) => {
    const mid = half * channel + half / 2;
    const n = buckets.length || 1;
    buckets.forEach(([min, max], i) => {
      const x0 = Math.floor(i / n * canvas.width);
      const x1 = Math.max(x0 + 1, Math.floor((i + 1) / n * canvas.width));
      if (min === 0 && max === 0) {
        // No audio here: loss filled with silence, or none sent.
        g.fillStyle = 'rgba(233,163,163,0.35)';
        g.fillRect(x0, half * channel, x1 - x0, half);
        return;
      }
      g.fillStyle = colors[channel % 2];
      const top = mid - (max / 32768) * (half / 2);
      const bottom = mid - (min / 32768) * (half / 2);
      g.fillRect(x0, top, x1 - x0, Math.max(1, bottom - top));
    });
  });
  g.fillStyle = '#888';
  g.fillRect(0, half, canvas.width, 1);
  state.lossMarks = [];
  if (record && envelope.duration > 0) {
    // Where packets were lost (RTP calls): a red tick on the direction's half,
    // at least 2 px wide however short the gap.
    ['R', 'W'].forEach((dir, channel) => {
      const gaps = record.directions && record.directions[dir] && record.directions[dir].gaps;
      for (const gap of (gaps && gaps.first) || []) {
        const x = gap.offset / envelope.duration * canvas.width;
        const width = Math.max(2, (gap.rate ? gap.samples / gap.rate : 0) / envelope.duration * canvas.width);
        g.fillStyle = '#b3261e';
        g.fillRect(x, half * channel, width, 8);
        g.fillRect(x, half * channel + half - 8, width, 8);
        g.fillStyle = 'rgba(179,38,30,0.25)';
        g.fillRect(x, half * channel + 8, width, half - 16);
        state.lossMarks.push({ direction: dir, x });
      }
    });
    g.font = '12px system-ui';
    for (const key of record.dtmf || []) {
      const x = key.offset / envelope.duration * canvas.width;
      g.fillStyle = '#2a9d3a';
      g.fillRect(x, 0, 2, canvas.height);
      g.fillText(`${key.digit} (${key.direction})`, x + 3, 12);
    }
    let y = canvas.height - 6;
    for (const dir of ['R', 'W']) {
      const d = record.directions && record.directions[dir];
      const rtp = d && d.rtp;
      if (rtp && rtp.lost > 0) {
        const gaps = d.gaps;
        const marked = gaps && gaps.count > gaps.first.length ? `; the first ${gaps.first.length} of ${gaps.count} gaps marked` : '';
        g.fillStyle = '#b3261e';
        g.fillText(`${dir}: ${rtp.lost} packet(s) lost of ${rtp.expected}${marked}`, 6, y);
        y -= 14;
      }
    }
  }
  state.waveformDrawn = true;
}

function rms(analyser) {
  const data = new Float32Array(analyser.fftSize);
  analyser.getFloatTimeDomainData(data);
  let sum = 0;
  for (const v of data) sum += v * v;
  return Math.sqrt(sum / data.length);
}

// What the page's playback is doing, as the test reads it.
function playback() {
  const rec = state.recording;
  if (!rec || !rec.context) return { playing: false };
  const playing = !!rec.source;
  return {
    playing,
    state: rec.context.state,
    channels: rec.buffer ? rec.buffer.numberOfChannels : 0,
    duration: rec.buffer ? rec.buffer.duration : 0,
    position: playing ? rec.context.currentTime - rec.startedAt : 0,
    shown: $('#play-time').textContent,
    cursorX: state.cursorX,
    levels: rec.analysers ? rec.analysers.map(rms) : [0, 0],
  };
}

function stopPlayback() {
  const rec = state.recording;
  if (rec && rec.source) {
    rec.source.stop();
    rec.source = null;
  }
  $('#play').textContent = 'Play';
}

async function togglePlayback() {
  const rec = state.recording;
  if (!rec) return;
  if (rec.source) { stopPlayback(); return; }
  if (!rec.context) rec.context = new AudioContext();
  await rec.context.resume().catch(() => {});
  if (!rec.buffer) {
    const bytes = await fetch(`${fileUrl(rec.uuid, 'stereo')}?play=1`).then((r) => r.arrayBuffer());
    rec.buffer = await rec.context.decodeAudioData(bytes);
  }
  if (!rec.analysers) {
    // One analyser per channel (left R, right W): the page can tell that
    // both sides of the call are playing.
    const splitter = rec.context.createChannelSplitter(2);
    rec.analysers = [0, 1].map((channel) => {
      const analyser = rec.context.createAnalyser();
      analyser.fftSize = 2048;
      splitter.connect(analyser, channel);
      return analyser;
    });
    rec.splitter = splitter;
  }
  const source = rec.context.createBufferSource();
  source.buffer = rec.buffer;
  source.connect(rec.context.destination);
  source.connect(rec.splitter);
  source.onended = () => { if (rec.source === source) stopPlayback(); };
  rec.source = source;
  rec.startedAt = rec.context.currentTime;
  source.start();
  $('#play').textContent = 'Pause';
  const cursor = $('#cursor');
  const g = cursor.getContext('2d');
  const frame = () => {
    g.clearRect(0, 0, cursor.width, cursor.height);
    if (rec.source !== source) return;
    const at = rec.context.currentTime - rec.startedAt;
    $('#play-time').textContent = `${at.toFixed(1)} s`;
    const x = at / rec.buffer.duration * cursor.width;
    g.fillStyle = '#000';
    g.fillRect(x, 0, 2, cursor.height);
    state.cursorX = x;
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
}

// ---- taps --------------------------------------------------------------

function renderTaps(taps) {
  $('#no-taps').hidden = taps.length > 0;
  $('#taps tbody').replaceChildren(...taps.map((tap) => {
    const c = tap.counters || {};
    return el('tr', {},
      ...[tap.tap, tap.state, tap.address || '–', tap.controller || '–', c.calls_active ?? '–',
        c.calls_started ?? '–', c.packets ?? '–', tap.error || '', new Date(tap.updated).toLocaleTimeString()]
        .map((text) => el('td', { textContent: String(text) })));
  }));
}

// ---- start -------------------------------------------------------------

window.rstConsole = {
  listenLevel,
  listenFrames: () => (state.listen ? state.listen.frames : 0),
  listenState: () => (state.listen ? state.listen.context.state : 'none'),
  meterPeaks: (uuid) => state.peaks.get(uuid) || null,
  metering: () => !!(state.live && state.live.meters),
  unmeteredCalls: () => state.unmetered,
  waveformDrawn: () => state.waveformDrawn,
  lossMarks: () => state.lossMarks,
  playback,
  waveformInk: () => {
    const canvas = $('#waveform');
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let ink = 0;
    for (let i = 0; i < data.length; i += 4) if (data[i] < 200 || data[i + 1] < 200) ink++;
    return ink;
  },
  search,
  openRecording: (uuid) => openRecording(uuid, $(`#results tr[data-uuid="${CSS.escape(uuid)}"]`)),
  stopListening,
};

window.addEventListener('hashchange', () => { showPage(); connectLive(); });
document.addEventListener('visibilitychange', connectLive);
document.addEventListener('DOMContentLoaded', () => {
  showPage();
  $('#search').addEventListener('submit', search);
  $('#listen-stop').addEventListener('click', stopListening);
  $('#play').addEventListener('click', togglePlayback);
  connectLive();
  search();
});
