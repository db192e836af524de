// Live data shared by the pages: the latest value and recent history of every tag (from
// GET /api/values, then `value` events on /api/events), the gateway status sampled from
// GET /api/status every few seconds (with the uplinks' queue depth kept as a time series), and
// log lines. All in memory and bounded; the pages subscribe and render.

import { get } from './api.js';

export const HISTORY_MS = 10 * 60 * 1000; // sparklines: the last 10 minutes
const HISTORY_POINTS = 1200;
const STATUS_EVERY_MS = 3000;
export const QUEUE_SAMPLES = 600; // 30 minutes at one sample every 3 s
export const LOG_LINES = 2000;

const subs = { values: new Set(), status: new Set(), log: new Set(), conn: new Set() };

export function subscribe(kind, fn) {
  subs[kind].add(fn);
  return () => subs[kind].delete(fn);
}

function emit(kind, arg) {
  for (const fn of subs[kind]) {
    try { fn(arg); } catch (e) { console.error(e); }
  }
}

// ---- values ----------------------------------------------------------------------------------

/** key "device/tag" → {device, tag, value, unit, ts, quality, error, writable, history: [[ts, n]]} */
export const values = new Map();

function asMs(t) {
  if (typeof t === 'string' && t.trim() !== '') {
    const n = Number(t);
    t = Number.isFinite(n) ? n : Date.parse(t);
  }
  if (typeof t !== 'number' || !Number.isFinite(t)) return undefined;
  return t < 1e11 ? t * 1000 : t; // seconds → ms
}
export { asMs };

/** Accepts a reading in the shapes the API may use: flat, or {topic, payload}. */
function normReading(r, device, tag) {
  if (!r || typeof r !== 'object') return null;
  let p = r.payload && typeof r.payload === 'object' ? { ...r, ...r.payload } : r;
  const topic = p.topic;
  if ((device === undefined || tag === undefined) && typeof topic === 'string') {
    const parts = topic.split('/');
    if (parts[0] === 'devices' && parts.length >= 3) {
      device = parts[1];
      tag = parts.slice(2).join('/');
    }
  }
  device = p.device ?? device;
  tag = p.tag ?? p.name ?? tag;
  if (device === undefined || tag === undefined) return null;
  return {
    device: String(device),
    tag: String(tag),
    value: p.value,
    unit: p.unit ?? undefined,
    ts: asMs(p.ts) ?? Date.now(),
    quality: p.quality ?? 'good',
    error: p.error ?? null,
    writable: p.writable,
  };
}

function putReading(r) {
  const key = `${r.device}/${r.tag}`;
  let cur = values.get(key);
  if (!cur) {
    cur = { device: r.device, tag: r.tag, history: [] };
    values.set(key, cur);
  }
  const prevTs = cur.ts;
  cur.value = r.value;
  if (r.unit !== undefined) cur.unit = r.unit;
  cur.ts = r.ts;
  cur.quality = r.quality;
  cur.error = r.error;
  if (r.writable !== undefined) cur.writable = r.writable;
  cur.received = Date.now();
  const n = typeof r.value === 'boolean' ? (r.value ? 1 : 0) : Number(r.value);
  if (r.quality === 'good' && Number.isFinite(n) && r.value !== null && r.value !== '' && r.ts !== prevTs) {
    const h = cur.history;
    if (h.length && h[h.length - 1][0] > r.ts) h.length = 0; // clock went back: start again
    h.push([r.ts, n]);
    const cut = r.ts - HISTORY_MS;
    let drop = 0;
    while (drop < h.length && h[drop][0] < cut) drop += 1;
    if (h.length - drop > HISTORY_POINTS) drop = h.length - HISTORY_POINTS;
    if (drop) h.splice(0, drop);
  }
  return cur;
}

/** Normalizes GET /api/values: a list, {device: {tag: reading}}, or {"devices/d/t": reading}. */
function readingsOf(data) {
  const out = [];
  if (Array.isArray(data)) {
    for (const r of data) out.push(normReading(r));
  } else if (data && typeof data === 'object') {
    const body = Array.isArray(data.values) ? data.values : (data.values && typeof data.values === 'object' ? data.values : data);
    if (Array.isArray(body)) return readingsOf(body);
    for (const [k, v] of Object.entries(body)) {
      if (k.includes('/')) {
        const parts = k.split('/');
        const d = parts[0] === 'devices' ? parts[1] : parts[0];
        const t = parts[0] === 'devices' ? parts.slice(2).join('/') : parts.slice(1).join('/');
        out.push(normReading(v, d, t));
      } else if (v && typeof v === 'object' && !('value' in v)) {
        const tags = Array.isArray(v.tags) ? v.tags : (v.tags && typeof v.tags === 'object' ? v.tags : v);
        if (Array.isArray(tags)) for (const r of tags) out.push(normReading(r, k));
        else for (const [t, r] of Object.entries(tags)) out.push(normReading(r, k, t));
      } else {
        out.push(normReading(v, k));
      }
    }
  }
  return out.filter(Boolean);
}

/** Takes the latest value of every tag; tags the gateway no longer has are forgotten. */
export async function loadValues() {
  const { data } = await get('/api/values');
  const seen = new Set();
  for (const r of readingsOf(data)) seen.add(`${putReading(r).device}/${r.tag}`);
  for (const k of [...values.keys()]) if (!seen.has(k)) values.delete(k);
  emit('values', null);
}

// ---- status ----------------------------------------------------------------------------------

export let status = null; // the normalized last GET /api/status
export let statusError = null;
export const queueHistory = new Map(); // uplink name → [[ms, depth]]

const pick = (o, ...keys) => {
  if (!o || typeof o !== 'object') return undefined;
  for (const k of keys) if (o[k] !== undefined && o[k] !== null) return o[k];
  return undefined;
};

const listOf = (x) => {
  if (Array.isArray(x)) return x;
  if (x && typeof x === 'object') return Object.entries(x).map(([name, v]) => ({ name, ...v }));
  return [];
};

const num = (x) => (typeof x === 'number' && Number.isFinite(x) ? x : (typeof x === 'string' && x !== '' && Number.isFinite(Number(x)) ? Number(x) : undefined));

function normUplink(u) {
  const q = pick(u, 'queue') || {};
  const c = pick(u, 'counters', 'ledger') || {};
  let dropped = pick(c, 'dropped') ?? pick(u, 'dropped') ?? {};
  if (typeof dropped === 'number') dropped = { total: dropped };
  const state = pick(u, 'state') ?? (pick(u, 'connected') === true ? 'connected' : pick(u, 'connected') === false ? 'disconnected' : 'unknown');
  const counters = {};
  for (const [k, v] of Object.entries(c)) if (k !== 'dropped' && num(v) !== undefined) counters[k] = num(v);
  const oldestMs = num(pick(q, 'oldest_age_ms')) ?? (num(pick(q, 'oldest_age_s', 'oldest_age_secs', 'oldest_age')) ?? num(pick(u, 'oldest_age_s', 'oldest_age')));
  return {
    name: String(pick(u, 'name') ?? '?'),
    state: String(state),
    since: asMs(pick(u, 'since', 'state_since')),
    error: pick(u, 'error', 'last_error') ?? null,
    url: pick(u, 'url'),
    depth: num(pick(q, 'depth', 'messages', 'len', 'count')) ?? num(pick(u, 'queue_depth', 'depth')),
    bytes: num(pick(q, 'bytes', 'size')) ?? num(pick(u, 'queue_bytes')),
    oldestS: oldestMs !== undefined && pick(q, 'oldest_age_ms') !== undefined ? oldestMs / 1000 : oldestMs,
    etaS: num(pick(u, 'drain_eta_s', 'drain_eta_secs', 'drain_eta')) ?? num(pick(q, 'drain_eta_s', 'drain_eta')),
    behindSince: asMs(pick(u, 'falling_behind_since')),
    counters,
    sparkplug: pick(u, 'sparkplug') ?? null,
    dropped: Object.fromEntries(Object.entries(dropped).map(([k, v]) => [k, num(v) ?? 0]).sort(([a], [b]) => a.localeCompare(b))),
  };
}

function normDevice(d) {
  const online = pick(d, 'online', 'available');
  return {
    name: String(pick(d, 'name') ?? '?'),
    driver: pick(d, 'driver', 'kind'),
    online: online === undefined ? null : !!online,
    running: pick(d, 'running', 'started'),
    since: asMs(pick(d, 'since')),
    error: pick(d, 'error', 'last_error') ?? null,
    lastPoll: asMs(pick(d, 'last_poll', 'last_poll_ms', 'last_poll_at')),
    latencyMs: num(pick(d, 'poll_latency_ms', 'latency_ms', 'last_poll_latency_ms')) ??
      (num(pick(d, 'poll_latency_us')) !== undefined ? num(pick(d, 'poll_latency_us')) / 1000 : undefined) ??
      (num(pick(d, 'poll_latency_s', 'poll_latency')) !== undefined ? num(pick(d, 'poll_latency_s', 'poll_latency')) * 1000 : undefined),
    errors: num(pick(d, 'failed_polls', 'errors', 'poll_errors')),
    tagCount: num(pick(d, 'tags')) ?? listOf(pick(d, 'tags')).length,
    polls: num(pick(d, 'polls')),
    tags: listOf(pick(d, 'tags')).map((t) => (typeof t === 'string' ? { name: t } : t)),
  };
}

function normStatus(s) {
  const g = pick(s, 'gateway') || {};
  const b = pick(s, 'broker') || {};
  const started = asMs(pick(g, 'started', 'started_ms', 'start_time'));
  const rate = pick(b, 'rate', 'messages_per_s', 'messages_per_sec', 'msgs_per_s');
  let rateIn;
  let rateOut;
  if (rate && typeof rate === 'object') {
    rateIn = num(pick(rate, 'in', 'received', 'publish_in'));
    rateOut = num(pick(rate, 'out', 'sent', 'publish_out'));
  } else {
    rateIn = num(rate) ?? num(pick(b, 'messages_in_per_s', 'received_per_s'));
    rateOut = num(pick(b, 'messages_out_per_s', 'sent_per_s'));
  }
  return {
    at: Date.now(),
    gateway: {
      id: pick(g, 'id') ?? pick(s, 'id'),
      version: pick(g, 'version') ?? pick(s, 'version'),
      uptimeS: num(pick(g, 'uptime_s', 'uptime_secs', 'uptime')) ?? (started ? (Date.now() - started) / 1000 : undefined),
      config: pick(g, 'config'),
      fileDiffers: pick(g, 'config_file_differs') === true,
    },
    broker: {
      clients: num(pick(b, 'clients', 'connected_clients', 'connections')),
      rateIn,
      rateOut,
      listeners: Array.isArray(b.listeners) ? b.listeners.map(String) : [],
    },
    uplinks: listOf(pick(s, 'uplinks')).map(normUplink),
    devices: listOf(pick(s, 'devices')).map(normDevice),
  };
}

let statusTimer = null;
let statusInFlight = false;

export async function refreshStatus() {
  if (statusInFlight) return;
  statusInFlight = true;
  try {
    const { data } = await get('/api/status');
    status = normStatus(data);
    statusError = null;
    for (const u of status.uplinks) {
      if (u.depth === undefined) continue;
      let h = queueHistory.get(u.name);
      if (!h) queueHistory.set(u.name, (h = []));
      h.push([status.at, u.depth]);
      if (h.length > QUEUE_SAMPLES) h.splice(0, h.length - QUEUE_SAMPLES);
    }
    for (const name of queueHistory.keys()) if (!status.uplinks.some((u) => u.name === name)) queueHistory.delete(name);
  } catch (e) {
    statusError = e;
  } finally {
    statusInFlight = false;
  }
  emit('status', status);
}

// ---- events ----------------------------------------------------------------------------------

export const logs = []; // {ts, level, target, message, fields}
let source = null;
let retryTimer = null;
let retryDelay = 1000;
export let connected = false;

function setConn(v) {
  if (connected !== v) {
    connected = v;
    emit('conn', v);
  }
}

function parse(ev) {
  try { return JSON.parse(ev.data); } catch { return null; }
}

function normLog(l) {
  if (typeof l === 'string') return { ts: Date.now(), level: 'INFO', target: '', message: l, fields: null };
  if (!l || typeof l !== 'object') return null;
  const fields = pick(l, 'fields');
  let message = pick(l, 'message', 'msg', 'line') ?? '';
  let rest = null;
  if (fields && typeof fields === 'object') {
    rest = { ...fields };
    if (rest.message !== undefined && !message) message = rest.message;
    delete rest.message;
  }
  return {
    ts: asMs(pick(l, 'ts', 'time', 'timestamp')) ?? Date.now(),
    level: String(pick(l, 'level') ?? 'INFO').toUpperCase(),
    target: String(pick(l, 'target', 'module') ?? ''),
    message: String(message),
    fields: rest && Object.keys(rest).length ? rest : null,
  };
}

const logKey = (l) => `${l.ts}|${l.level}|${l.target}|${l.message}`;

function pushLog(l) {
  logs.push(l);
  if (logs.length > LOG_LINES) logs.splice(0, logs.length - LOG_LINES);
  emit('log', l);
}

let statusSoon = null;
function refreshStatusSoon() {
  if (statusSoon) return;
  statusSoon = setTimeout(() => { statusSoon = null; refreshStatus(); }, 300);
}

function connect() {
  clearTimeout(retryTimer);
  if (source) source.close();
  source = new EventSource('/api/events', { withCredentials: true });
  // The stream starts with the gateway's recent log lines: after a reconnect, skip those this
  // browser already has.
  let known = new Set(logs.slice(-300).map(logKey));
  source.addEventListener('open', () => {
    retryDelay = 1000;
    setConn(true);
    // Values changed while we were away: take the latest again.
    loadValues().catch(() => {});
  });
  source.addEventListener('value', (ev) => {
    const d = parse(ev);
    const list = Array.isArray(d) ? d : [d];
    const changed = [];
    for (const x of list) {
      const r = normReading(x);
      if (r) changed.push(putReading(r));
    }
    if (changed.length) emit('values', changed);
  });
  source.addEventListener('status', () => refreshStatusSoon());
  source.addEventListener('log', (ev) => {
    const d = parse(ev) ?? ev.data;
    const l = normLog(d);
    if (!l) return;
    if (known) {
      if (known.has(logKey(l))) return;
      known = null;
    }
    pushLog(l);
  });
  source.addEventListener('lagged', (ev) => {
    // The browser fell behind the gateway: say what was lost, and take the values again.
    const d = parse(ev) || {};
    if (d.lost_logs) pushLog({ ts: Date.now(), level: 'WARN', target: 'web UI', message: `${d.lost_logs} log lines were skipped: this browser fell behind`, fields: null });
    if (d.lost) loadValues().catch(() => {});
  });
  source.addEventListener('error', () => {

    setConn(false);
    if (source && source.readyState === EventSource.CLOSED) {
      // The browser gave up (e.g. a 401): check the session, then retry with backoff.
      source.close();
      source = null;
      retryTimer = setTimeout(async () => {
        try {
          await get('/api/session');
          connect();
        } catch (e) {
          if (e.status !== 401) retryTimer = setTimeout(connect, retryDelay);
        }
      }, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 15000);
    }
  });
}

export function start() {
  stop();
  connect();
  loadValues().catch(() => {});
  refreshStatus();
  // Not while the tab is hidden: a Pi should not answer for a browser nobody looks at.
  statusTimer = setInterval(() => { if (!document.hidden) refreshStatus(); }, STATUS_EVERY_MS);
}

export function stop() {
  clearInterval(statusTimer);
  clearTimeout(retryTimer);
  statusTimer = null;
  if (source) source.close();
  source = null;
  setConn(false);
}

/** Forgets everything kept for the last session (on logout). */
export function reset() {
  stop();
  values.clear();
  queueHistory.clear();
  logs.length = 0;
  status = null;
}
