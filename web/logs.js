// Logs: the daemon's log lines as they happen (SSE `log` events), with a level filter, a text
// filter and pause. The browser keeps the last LOG_LINES lines.

import { h, replace, setText, field } from './dom.js';
import { fmtClock, fmtTime } from './format.js';
import * as live from './live.js';

export const title = 'Logs';

const LEVELS = ['ERROR', 'WARN', 'INFO', 'DEBUG', 'TRACE'];
const RENDER_MAX = 1000; // lines in the page at once; the rest stays in the buffer
let minLevel = 'INFO';

function rank(level) {
  const i = LEVELS.indexOf(level);
  return i < 0 ? 2 : i;
}

function lineEl(l) {
  const fields = l.fields ? Object.entries(l.fields).map(([k, v]) => ` ${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join('') : '';
  return h('div', { class: ['log', `lv-${l.level.toLowerCase()}`] },
    h('time', { datetime: new Date(l.ts).toISOString(), title: fmtTime(l.ts) }, fmtClock(l.ts)), ' ',
    h('span', { class: 'lv' }, l.level.padEnd(5)), ' ',
    l.target ? h('span', { class: 'target' }, l.target) : null, l.target ? ': ' : '',
    h('span', { class: 'msg' }, l.message), fields ? h('span', { class: 'fields' }, fields) : null);
}

export function mount(main) {
  const level = h('select', { name: 'level' }, LEVELS.map((l) => h('option', { value: l, selected: l === minLevel }, `${l.toLowerCase()} and above`)));
  const filter = h('input', { name: 'filter', type: 'search', placeholder: 'text in the line', autocomplete: 'off' });
  const pause = h('button', { type: 'button', 'aria-pressed': 'false' }, 'Pause');
  const clear = h('button', { type: 'button', class: 'ghost' }, 'Clear');
  const info = h('span', { class: 'muted small', role: 'status', 'aria-live': 'polite' });
  const out = h('div', { class: 'logview', tabindex: 0, role: 'log', 'aria-label': 'Log lines', 'aria-live': 'off' });
  main.append(h('h1', {}, 'Logs'),
    h('form', { class: 'inline-form toolbar', role: 'search', 'aria-label': 'Filter the log' },
      field('Level', level).wrap, field('Filter', filter).wrap, pause, clear, info),
    out);

  let paused = false;
  let missed = 0;
  let clearedAt = 0;

  const match = (l) => rank(l.level) <= rank(level.value) && l.ts >= clearedAt &&
    (!filter.value || `${l.target} ${l.message} ${l.fields ? JSON.stringify(l.fields) : ''}`.toLowerCase().includes(filter.value.toLowerCase()));

  const atBottom = () => out.scrollHeight - out.scrollTop - out.clientHeight < 40;

  function renderAll() {
    const shown = live.logs.filter(match).slice(-RENDER_MAX);
    replace(out, shown.length ? shown.map(lineEl) : h('p', { class: 'muted empty' }, 'No log lines yet at this level. New lines appear here as they are logged.'));
    out.scrollTop = out.scrollHeight;
    missed = 0;
    updateInfo();
  }

  function updateInfo() {
    setText(info, paused ? `Paused${missed ? ` · ${missed} new line${missed === 1 ? '' : 's'} waiting` : ''}` : `${live.logs.length} lines kept (max ${live.LOG_LINES})`);
  }

  const off = live.subscribe('log', (l) => {
    if (!match(l)) return;
    if (paused) { missed += 1; updateInfo(); return; }
    const stick = atBottom();
    out.querySelector('.empty')?.remove();
    out.append(lineEl(l));
    while (out.childElementCount > RENDER_MAX) out.firstElementChild.remove();
    if (stick) out.scrollTop = out.scrollHeight;
    updateInfo();
  });

  level.addEventListener('change', () => { minLevel = level.value; renderAll(); });
  filter.addEventListener('input', renderAll);
  pause.addEventListener('click', () => {
    paused = !paused;
    pause.setAttribute('aria-pressed', String(paused));
    setText(pause, paused ? 'Resume' : 'Pause');
    if (!paused) renderAll(); else updateInfo();
  });
  clear.addEventListener('click', () => { clearedAt = Date.now(); renderAll(); });
  main.querySelector('form').addEventListener('submit', (ev) => ev.preventDefault());
  renderAll();
  return { destroy: off };
}
