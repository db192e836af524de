// Dashboard: is data flowing, is anything being lost. Gateway, broker, each uplink (state,
// since, last error, queue depth over time, drops by reason, drain ETA), devices at a glance.

import { h, replace, keepFocus } from './dom.js';
import { fmtDuration, fmtNumber, fmtBytes, fmtTime, fmtAgo, fmtRate, plural } from './format.js';
import { areaChart } from './chart.js';
import * as live from './live.js';

export const title = 'Dashboard';

function kv(rows) {
  return h('dl', { class: 'kv' }, rows.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function stateClass(state) {
  const s = String(state).toLowerCase();
  if (['connected', 'up', 'online'].includes(s)) return 'good';
  if (['connecting', 'reconnecting', 'draining', 'starting', 'backoff'].includes(s)) return 'warn';
  return 'bad';
}

function badge(text, cls) {
  return h('span', { class: ['badge', cls] }, text);
}

function drainEta(u) {
  if (!u.depth) return u.depth === 0 ? 'nothing queued' : '—';
  if (u.etaS !== undefined && u.etaS !== null) return fmtDuration(u.etaS);
  return stateClass(u.state) === 'good' ? 'not draining yet' : 'when the link is back';
}

// A Sparkplug B uplink's identity and state (docs/SPARKPLUG.md).
function sparkplugRows(sp) {
  if (!sp) return [];
  const host = sp.primary_host
    ? [sp.primary_host, ' ', sp.host_online === true ? badge('online', 'good') : sp.host_online === false ? badge('offline', 'bad') : badge('not heard yet', 'warn')]
    : h('span', { class: 'muted' }, 'none (births at once)');
  return [
    ['Sparkplug node', `spBv1.0/${sp.group_id}/…/${sp.edge_node_id}`],
    ['Primary host', host],
    ['Births', sp.born ? badge('published', 'good') : badge('not yet', 'warn')],
    ['bdSeq', sp.bd_seq === null || sp.bd_seq === undefined ? '—' : String(sp.bd_seq)],
  ];
}

function uplinkCard(u) {
  const dropped = Object.entries(u.dropped);
  const totalDropped = dropped.reduce((a, [, n]) => a + n, 0);
  const history = live.queueHistory.get(u.name) || [];
  const counters = Object.entries(u.counters);
  const chart = areaChart(history, `Queue depth of ${u.name}`);
  return h('section', { class: 'card uplink', 'aria-labelledby': `uplink-${u.name}` },
    h('header', {},
      h('h3', { id: `uplink-${u.name}` }, u.name),
      badge(u.state, stateClass(u.state))),
    kv([
      u.url ? ['Broker', u.url] : null,
      ['Since', u.since ? [fmtTime(u.since), ' ', h('span', { class: 'muted' }, `(${fmtAgo(u.since)})`)] : '—'],
      ['Last error', u.error ? h('span', { class: 'err' }, String(u.error)) : h('span', { class: 'muted' }, 'none')],
      // At a glance, not only under Counters: a flapping or stalling link shows here.
      u.counters.connections !== undefined ? ['Reconnects', fmtNumber(Math.max(0, u.counters.connections - 1))] : null,
      u.counters.stalls !== undefined ? ['Stalls', u.counters.stalls ? badge(fmtNumber(u.counters.stalls), 'bad') : '0'] : null,
      ['Dropped', totalDropped ? badge(fmtNumber(totalDropped), 'bad') : '0'],
      ['Queue', u.depth === undefined ? '—' : `${fmtNumber(u.depth)} messages${u.bytes !== undefined ? `, ${fmtBytes(u.bytes)}` : ''}`],
      ['Oldest queued', u.oldestS ? fmtDuration(u.oldestS) : '—'],
      ['Drain ETA', drainEta(u)],
      // Sparkplug B uplinks do not look (their node loop has no Behind): no row for them.
      stateClass(u.state) === 'good' && !u.sparkplug ? ['Keeping up', u.behindSince
        ? [badge('no', 'bad'), ' falling behind since ', fmtTime(u.behindSince), ' ', h('span', { class: 'muted' }, `(${fmtAgo(u.behindSince)}; see the log)`)]
        : 'yes'] : null,
      ...sparkplugRows(u.sparkplug),
    ]),
    h('figure', { class: 'chart-box' },
      chart.svg,
      h('figcaption', { class: 'muted' }, `Queue depth${chart.span ? ` over the last ${chart.span}` : ''}, sampled every 3 s (${plural(history.length, 'sample')} kept in this browser)`)),
    h('h4', {}, 'Dropped', totalDropped ? badge(fmtNumber(totalDropped), 'bad') : badge('0', 'good')),
    dropped.length
      ? h('table', { class: 'small' },
        h('caption', { class: 'sr-only' }, `Messages dropped by ${u.name}, by reason`),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'reason'), h('th', { scope: 'col', class: 'num' }, 'messages'))),
        h('tbody', {}, dropped.map(([k, n]) => h('tr', { class: n ? 'bad-row' : null }, h('td', {}, k), h('td', { class: 'num' }, fmtNumber(n))))))
      : h('p', { class: 'muted' }, 'No drops reported.'),
    counters.length
      ? h('details', {}, h('summary', {}, 'Counters'),
        kv(counters.map(([k, n]) => [k.replace(/_/g, ' '), fmtNumber(n)])))
      : null);
}

function deviceChip(d) {
  const cls = d.online === true ? 'good' : d.online === false ? 'bad' : 'unknown';
  const word = d.online === true ? 'online' : d.online === false ? 'offline' : (d.running === false ? 'not running' : 'unknown');
  return h('li', { class: ['chip', cls] },
    h('a', { href: `#/devices`, dataset: { device: d.name } },
      h('span', { class: 'dot', 'aria-hidden': 'true' }),
      h('span', { class: 'name' }, d.name),
      h('span', { class: 'sr-only' }, `: ${word}`)),
    d.error && d.online !== true ? h('span', { class: 'chip-err' }, String(d.error)) : null);
}

function render(root) {
  const st = live.status;
  const err = live.statusError;
  if (!st) {
    replace(root, err ? h('p', { class: 'banner error', role: 'alert' }, `Status unavailable: ${err.message}`) : h('p', { class: 'loading' }, 'Loading status…'));
    return;
  }
  // For measuring the page's load (User Timing; tests/e2e/bench.mjs reads it).
  if (!performance.getEntriesByName('tidegate:status-shown').length) performance.mark('tidegate:status-shown');
  const { gateway: g, broker: b, uplinks, devices } = st;
  const online = devices.filter((d) => d.online === true).length;
  const offline = devices.filter((d) => d.online === false).length;
  replace(root,
    err ? h('p', { class: 'banner error', role: 'alert' }, `Status not refreshed: ${err.message} (showing ${fmtAgo(st.at)})`) : null,
    g.fileDiffers ? h('p', { class: 'banner warn file-differs', role: 'status' },
      h('strong', {}, 'The config file on disk differs from the running config. '),
      'A reload refused it, or it was edited and not reloaded yet. ',
      h('a', { href: '#/config' }, 'See what differs on the Config page'), '.') : null,
    h('div', { class: 'grid tiles' },
      h('section', { class: 'card tile' }, h('h2', {}, 'Gateway'),
        kv([['ID', g.id ?? '—'], ['Version', g.version ?? '—'], ['Uptime', fmtDuration(g.uptimeS)],
          g.config ? ['Config', String(g.config)] : null])),
      h('section', { class: 'card tile' }, h('h2', {}, 'Broker'),
        kv([
          ['Clients', b.clients === undefined ? '—' : fmtNumber(b.clients)],
          b.rateIn !== undefined ? ['Messages in', fmtRate(b.rateIn)] : null,
          b.rateOut !== undefined ? ['Messages out', fmtRate(b.rateOut)] : null,
          b.listeners.length ? ['MQTT on', b.listeners.join(', ')] : null,
        ])),
      h('section', { class: 'card tile' }, h('h2', {}, 'Devices'),
        kv([['Online', `${online} of ${devices.length}`], ['Offline', offline ? h('span', { class: 'err' }, String(offline)) : '0']]))),
    h('section', { class: 'block', 'aria-labelledby': 'dash-devices' },
      h('h2', { id: 'dash-devices' }, 'Devices at a glance'),
      devices.length
        ? h('ul', { class: 'chips' }, devices.map(deviceChip))
        : h('p', { class: 'muted' }, 'No devices configured. Add one on the Config page.')),
    h('section', { class: 'block', 'aria-labelledby': 'dash-uplinks' },
      h('h2', { id: 'dash-uplinks' }, 'Uplinks'),
      uplinks.length
        ? h('div', { class: 'grid' }, uplinks.map(uplinkCard))
        : h('p', { class: 'muted' }, 'No uplink configured: readings stay on this gateway\'s broker.')),
    h('p', { class: 'muted small' }, `Updated ${fmtTime(st.at)}`));
}

export function mount(main) {
  const root = h('div', { class: 'dash' });
  main.append(h('h1', {}, 'Dashboard'), root);
  render(root);
  const off = live.subscribe('status', () => {
    // Keep open details open and keyboard focus where it was across the refresh.
    const open = [...root.querySelectorAll('details[open] summary')].map((s) => s.closest('section')?.getAttribute('aria-labelledby'));
    keepFocus(root, () => render(root));
    for (const id of open) root.querySelector(`section[aria-labelledby="${CSS.escape(id)}"] details`)?.setAttribute('open', '');
  });
  return { destroy: off };
}
