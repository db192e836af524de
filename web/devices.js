// Devices: every tag's live value (SSE) with a sparkline of the last minutes, its quality
// (a bad reading shows its error), the device's availability and last poll latency; a test-read
// form for Modbus devices (every decoding side by side) and a confirmed write for writable tags.

import { h, replace, setText, field } from './dom.js';
import { api, seg } from './api.js';
import { fmtValue, fmtMs, fmtAgo, fmtTime } from './format.js';
import { sparkline } from './chart.js';
import * as live from './live.js';
import { draftText, setDraftText } from './config.js';

export const title = 'Devices';

const MODBUS = new Set(['modbus_tcp', 'modbus_rtu']);

/** The devices to show: from the status (config order), plus any only seen in values. */
function deviceList() {
  const out = new Map();
  const st = live.status;
  for (const d of st ? st.devices : []) out.set(d.name, { ...d, tagNames: d.tags.map((t) => String(t.name ?? t.tag ?? '')).filter(Boolean) });
  if (!st || st.devices.length === 0) {
    for (const v of live.values.values()) {
      if (!out.has(v.device)) out.set(v.device, { name: v.device, online: null, tags: [], tagNames: [] });
    }
  }
  for (const v of live.values.values()) {
    const d = out.get(v.device);
    if (d && !d.tagNames.includes(v.tag)) d.tagNames.push(v.tag);
  }
  return [...out.values()];
}

function tagMeta(d, tag) {
  return d.tags.find((t) => String(t.name ?? t.tag) === tag) || {};
}

/** Whether the gateway says which tags are writable (per tag in the status, or per value). */
function writabilityKnown(d) {
  return d.tags.some((t) => typeof t.writable === 'boolean') ||
    d.tagNames.some((n) => typeof live.values.get(`${d.name}/${n}`)?.writable === 'boolean');
}

/** A tag gets a write form when it is writable, or when the gateway does not say (then the
 *  gateway's own check answers: "not writable"). */
function writableOf(d, tag) {
  if (!writabilityKnown(d)) return true;
  const v = live.values.get(`${d.name}/${tag}`);
  return (v && v.writable === true) || tagMeta(d, tag).writable === true;
}

function availability(d) {
  if (d.online === true) return ['online', 'good'];
  if (d.online === false) return ['offline', 'bad'];
  if (d.running === false) return ['not running', 'bad'];
  if (!d.polls && !d.lastPoll) return ['not polled yet', 'unknown'];
  return ['unknown', 'unknown'];
}

/**
 * The decodings of a test read (the shape `tidegate modbus read` prints): registers with u16,
 * i16, hex, binary, ASCII, and the 32-bit values starting at each in the four byte/word
 * orders (with the config keys that select each); or bits. Returns null for other shapes.
 */
function decodingsView(data, caption, addTag) {
  const d = data && typeof data === 'object' && data.decodings && typeof data.decodings === 'object' ? data.decodings : data;
  if (!d || typeof d !== 'object') return null;
  // Raw figures as the device's documentation writes them: no digit grouping, full precision.
  const cell = (v, cls) => h('td', { class: cls }, v === null || v === undefined ? '—' : typeof v === 'object' ? JSON.stringify(v) : String(v));
  const NUM = new Set(['address', 'u16', 'i16', 'u32', 'i32', 'f32']);
  const head = (cols) => h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col', class: NUM.has(c) ? 'num' : null }, c))));
  // "Add as tag…" on a row: that decoding, named, into the config editor's text.
  const add = (pick) => (addTag ? h('td', { class: 'act' }, addButton(() => addTag(pick))) : null);
  const addHead = addTag ? [''] : [];
  if (Array.isArray(d.bits)) {
    return h('div', { class: 'table-wrap' }, h('table', { class: 'decodings' }, h('caption', {}, caption),
      head(['address', 'value', ...addHead]),
      h('tbody', {}, d.bits.map((b) => h('tr', {}, cell(b.address, 'num'), cell(b.value === true ? '1 (on)' : b.value === false ? '0 (off)' : b.value),
        add({ address: b.address, types: ['bool'] }))))));
  }
  if (!Array.isArray(d.registers)) return null;
  const regs = d.registers;
  const words = h('table', { class: 'decodings' }, h('caption', {}, caption),
    head(['address', 'hex', 'u16', 'i16', 'binary', 'ASCII', ...addHead]),
    h('tbody', {}, regs.map((r) => h('tr', {}, cell(r.address, 'num'), cell(r.hex), cell(r.u16, 'num'), cell(r.i16, 'num'), cell(r.binary, 'mono'), cell(r.ascii, 'mono'),
      add({ address: r.address, types: ['u16', 'i16', 'bit'] })))));
  const withPairs = regs.filter((r) => Array.isArray(r.pairs) && r.pairs.length);
  const pairs = withPairs.length ? h('table', { class: 'decodings pairs' },
    h('caption', {}, '32-bit values starting at each register, in every byte and word order'),
    head(['address', 'order', 'config', 'u32', 'i32', 'f32', ...addHead]),
    h('tbody', {}, withPairs.flatMap((r) => r.pairs.map((p, i) => h('tr', { class: i === 0 ? 'group' : null },
      i === 0 ? h('th', { scope: 'rowgroup', rowspan: r.pairs.length, class: 'num' }, String(r.address)) : null,
      cell(p.order), h('td', {}, h('code', {}, `byte_order: ${p.byte_order}, word_order: ${p.word_order}`)),
      cell(p.u32, 'num'), cell(p.i32, 'num'), cell(p.f32, 'num'),
      add({ address: r.address, types: ['f32', 'u32', 'i32'], byte_order: p.byte_order, word_order: p.word_order })))))) : null;
  return h('div', { class: 'decoded' },
    h('div', { class: 'table-wrap' }, words),
    pairs ? h('div', { class: 'table-wrap' }, pairs) : null,
    typeof d.ascii === 'string' ? h('p', {}, 'As text: ', h('code', { class: 'ascii' }, d.ascii)) : null);
}

function addButton(onClick) {
  const b = h('button', { type: 'button', class: 'small ghost add-tag' }, 'Add as tag…');
  b.addEventListener('click', onClick);
  return b;
}

/** The form under a test-read that names the picked decoding and puts it into the config
 *  editor's text as a tag of device `d` (validated, diffed and applied there like any edit). */
function addTagForm(d, register, pick, slot) {
  const name = h('input', { name: 'name', required: true, autocomplete: 'off', spellcheck: 'false',
    pattern: '[a-z0-9_-]+', value: `${register}_${pick.address}` });
  const type = h('select', { name: 'type' }, pick.types.map((t) => h('option', { value: t }, t === 'bit' ? 'one bit (bool)' : t)));
  const bit = h('input', { name: 'bit', type: 'number', min: 0, max: 15, value: '0', inputmode: 'numeric' });
  const bitField = field('Bit', bit, '0 = least significant').wrap;
  bitField.hidden = true;
  type.addEventListener('change', () => { bitField.hidden = type.value !== 'bit'; });
  const go = h('button', { type: 'submit', class: 'primary' }, 'Add to config');
  const cancel = h('button', { type: 'button', class: 'ghost' }, 'Cancel');
  const msg = h('div', { 'aria-live': 'polite' });
  const orders = pick.byte_order ? `, byte_order: ${pick.byte_order}, word_order: ${pick.word_order}` : '';
  const form = h('form', { class: 'inline-form add-tag-form', 'aria-label': `Add ${register} ${pick.address} as a tag of ${d.name}` },
    h('p', {}, `A tag of ${d.name}: ${register} register ${pick.address}${orders}.`),
    field('Tag name', name, 'a-z, 0-9, _ and -').wrap, field('Decoding', type).wrap, bitField, go, cancel, msg);
  cancel.addEventListener('click', () => replace(slot));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    go.disabled = true;
    const tag = { name: name.value.trim(), register, address: pick.address };
    if (type.value === 'bit') tag.bit = Number(bit.value);
    else if (!['coil', 'discrete'].includes(register)) tag.type = type.value;
    if (pick.byte_order && type.value !== 'bit') { tag.byte_order = pick.byte_order; tag.word_order = pick.word_order; }
    try {
      const yaml = draftText();
      const { data } = await api('POST', '/api/config/add-tag', { json: yaml === null ? { device: d.name, tag } : { yaml, device: d.name, tag } });
      setDraftText(data.yaml);
      location.hash = '#/config';
    } catch (e) {
      replace(msg, h('p', { class: 'form-msg error', role: 'alert' }, `Not added: ${e.message}`));
      go.disabled = false;
    }
  });
  replace(slot, form);
  setTimeout(() => name.focus(), 0);
}

/** A table of any JSON answer: rows of objects side by side, or key/value pairs. */
function resultTable(data, caption, addTag) {
  const known = decodingsView(data, caption, addTag);
  if (known) return known;
  const rowsOf = (x) => {
    if (Array.isArray(x) && x.length && x.every((r) => r && typeof r === 'object' && !Array.isArray(r))) return x;
    if (x && typeof x === 'object' && !Array.isArray(x)) {
      for (const k of ['rows', 'registers', 'decodings', 'values', 'words', 'bits']) {
        const r = rowsOf(x[k]);
        if (r) return r;
      }
    }
    return null;
  };
  const cell = (v) => (v === null || v === undefined ? '—' : typeof v === 'object' ? JSON.stringify(v) : fmtValue(v));
  const rows = rowsOf(data);
  if (rows) {
    const cols = [];
    for (const r of rows) for (const k of Object.keys(r)) if (!cols.includes(k)) cols.push(k);
    return h('div', { class: 'table-wrap' }, h('table', { class: 'decodings' },
      h('caption', {}, caption),
      h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows.map((r) => h('tr', {}, cols.map((c) => h('td', { class: typeof r[c] === 'number' ? 'num' : null }, cell(r[c]))))))));
  }
  if (data && typeof data === 'object') {
    return h('div', { class: 'table-wrap' }, h('table', { class: 'decodings' }, h('caption', {}, caption),
      h('tbody', {}, Object.entries(data).map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, k), h('td', {}, cell(v)))))));
  }
  return h('pre', { class: 'result' }, String(data));
}

function testReadForm(d) {
  const register = h('select', { name: 'register' },
    ['holding', 'input', 'coil', 'discrete'].map((r) => h('option', { value: r }, r)));
  const address = h('input', { name: 'address', type: 'number', min: 0, max: 65535, value: '0', required: true, inputmode: 'numeric' });
  const count = h('input', { name: 'count', type: 'number', min: 1, max: 125, value: '2', required: true, inputmode: 'numeric' });
  // One Modbus request reads at most 125 registers or 2000 coils / discrete inputs.
  register.addEventListener('change', () => { count.max = ['coil', 'discrete'].includes(register.value) ? 2000 : 125; });
  const submit = h('button', { type: 'submit' }, 'Read');
  const out = h('div', { class: 'read-out', 'aria-live': 'polite' });
  const addSlot = h('div', { class: 'add-slot' });
  const form = h('form', { class: 'inline-form', 'aria-label': `Test-read registers of ${d.name}` },
    field('Register', register).wrap,
    field('Address', address, '0-based').wrap,
    field('Count', count, '≤ 125 registers, ≤ 2000 bits').wrap,
    submit);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    replace(out, h('p', { class: 'muted' }, 'Reading…'));
    replace(addSlot);
    const req = { register: register.value, address: Number(address.value), count: Number(count.value) };
    try {
      const { data } = await api('POST', `/api/devices/${seg(d.name)}/read`, { json: req });
      const addTag = (pick) => addTagForm(d, req.register, pick, addSlot);
      replace(out, resultTable(data, `${req.register} ${req.address}…${req.address + req.count - 1} of ${d.name}, every decoding`, addTag));
    } catch (e) {
      replace(out, h('p', { class: 'banner error', role: 'alert' }, `Read failed: ${e.message}`));
    }
    submit.disabled = false;
  });
  return h('details', { class: 'test-read' }, h('summary', {}, 'Test read'),
    h('p', { class: 'muted' }, 'Read registers straight from the device to find the right address and type before writing the tag into the config.'),
    form, addSlot, out);
}

/** OPC UA test read: one node by id; shows its value, type, status and source timestamp. */
function opcuaReadForm(d) {
  const node = h('input', { name: 'node_id', type: 'text', required: true, placeholder: 'ns=2;s=Press/Temperature', spellcheck: 'false', autocomplete: 'off' });
  const submit = h('button', { type: 'submit' }, 'Read');
  const out = h('div', { class: 'read-out', 'aria-live': 'polite' });
  const form = h('form', { class: 'inline-form', 'aria-label': `Test-read a node of ${d.name}` },
    field('Node id', node, 'ns=2;s=…, ns=2;i=…, ns=2;g=…, ns=2;b=…').wrap, submit);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    replace(out, h('p', { class: 'muted' }, 'Reading…'));
    try {
      const { data } = await api('POST', `/api/devices/${seg(d.name)}/read`, { json: { node_id: node.value.trim() } });
      replace(out, resultTable(data, `${data.node_id} of ${d.name}`));
    } catch (e) {
      replace(out, h('p', { class: 'banner error', role: 'alert' }, `Read failed: ${e.message}`));
    }
    submit.disabled = false;
  });
  return h('details', { class: 'test-read' }, h('summary', {}, 'Test read'),
    h('p', { class: 'muted' }, 'Read one node straight from the server (find node ids with `tidegate opcua browse`).'),
    form, out);
}

function parseValue(text) {
  const t = text.trim();
  if (t === '') return { error: 'Enter a value.' };
  try {
    return { value: JSON.parse(t) };
  } catch {
    return { value: t };
  }
}

/** The write panel of one device: value → review → confirm → result. */
function writePanel(d, tag) {
  const input = h('input', { name: 'value', autocomplete: 'off', required: true, spellcheck: 'false' });
  const v = live.values.get(`${d.name}/${tag}`);
  if (v && v.value !== undefined) input.value = typeof v.value === 'string' ? v.value : JSON.stringify(v.value);
  const m = tagMeta(d, tag);
  const range = m.min !== undefined || m.max !== undefined ? `allowed ${m.min ?? '−∞'} … ${m.max ?? '∞'}`
    : `a number, true/false, or text${writabilityKnown(d) ? '' : '; only tags with writable: true accept it'}`;
  const review = h('button', { type: 'submit' }, 'Review write…');
  const cancel = h('button', { type: 'button', class: 'ghost' }, 'Close');
  const step = h('div', { class: 'confirm', 'aria-live': 'polite' });
  const form = h('form', { class: 'inline-form write-form', 'aria-label': `Write ${d.name}/${tag}` },
    field(`New value of ${tag}`, input, range).wrap, review, cancel);
  const panel = h('div', { class: 'write-panel', dataset: { tag } }, h('h4', {}, `Write ${tag}`), form, step);
  cancel.addEventListener('click', () => panel.dispatchEvent(new Event('write-closed')));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const p = parseValue(input.value);
    if (p.error) {
      replace(step, h('p', { class: 'form-msg error', role: 'alert' }, p.error));
      return;
    }
    const yes = h('button', { type: 'button', class: 'danger' }, 'Confirm write');
    const no = h('button', { type: 'button', class: 'ghost' }, 'Cancel');
    replace(step, h('p', { role: 'alert' }, 'Write ', h('code', {}, JSON.stringify(p.value)), ' to ', h('strong', {}, `${d.name}/${tag}`), '? This changes the device.'), yes, no);
    no.addEventListener('click', () => { replace(step); input.focus(); });
    yes.addEventListener('click', async () => {
      yes.disabled = true;
      no.disabled = true;
      replace(step, h('p', { class: 'muted' }, 'Writing…'));
      try {
        const { data } = await api('POST', `/api/devices/${seg(d.name)}/tags/${seg(tag)}/write`, { json: { value: p.value } });
        if (data && data.ok === false) throw new Error(data.error || 'refused');
        const back = data && data.value !== undefined ? data.value : p.value;
        replace(step, h('p', { class: 'form-msg ok', role: 'status' }, `Written at ${fmtTime(Date.now())}; read back: ${fmtValue(back)}`));
      } catch (e) {
        replace(step, h('p', { class: 'form-msg error', role: 'alert' }, `Write refused: ${e.message}`));
      }
    });
    yes.focus();
  });
  setTimeout(() => input.focus(), 0);
  return panel;
}

/** Closes every open write form on the page. */
function closeWriteRows() {
  for (const p of document.querySelectorAll('tr.write-row .write-panel')) p.dispatchEvent(new Event('write-closed'));
}

function deviceCard(d, rows) {
  const [word, cls] = availability(d);
  const head = h('header', {},
    h('h2', { id: `dev-${d.name}` }, d.name),
    d.driver ? h('span', { class: 'muted' }, d.driver) : null,
    h('span', { class: ['badge', cls], dataset: { role: 'availability' } }, word));
  const meta = h('p', { class: 'dev-meta' });
  const tbody = h('tbody');
  const anyWritable = d.tagNames.some((t) => writableOf(d, t));
  for (const tag of d.tagNames) {
    const cells = {
      value: h('td', { class: 'value num' }),
      quality: h('td', { class: 'quality' }),
      trend: h('td', { class: 'trend' }),
      age: h('td', { class: 'age muted' }),
    };
    const wcell = h('td', { class: 'act' });
    const tr = h('tr', { dataset: { tag } }, h('th', { scope: 'row' }, tag), cells.value, cells.quality, cells.trend, cells.age, anyWritable ? wcell : null);
    if (writableOf(d, tag)) {
      const b = h('button', { type: 'button', class: 'small', 'aria-label': `Write ${d.name}/${tag}`, 'aria-expanded': 'false' },
        h('span', { class: 'w-label' }, 'Write…'));
      b.addEventListener('click', () => {
        const mine = tr.nextElementSibling;
        if (mine && mine.classList.contains('write-row')) { mine.querySelector('input').focus(); return; }
        // One write form at a time, in the row under its tag.
        closeWriteRows();
        const panel = writePanel(d, tag);
        const row = h('tr', { class: 'write-row' }, h('td', { colspan: 6 }, panel));
        panel.addEventListener('write-closed', () => { row.remove(); b.setAttribute('aria-expanded', 'false'); b.focus(); });
        b.setAttribute('aria-expanded', 'true');
        tr.after(row);
      });
      wcell.append(b);
    }
    rows.set(`${d.name}/${tag}`, { tr, ...cells, spark: null, device: d.name, tag });
    tbody.append(tr);
  }
  const table = d.tagNames.length
    ? h('div', { class: 'table-wrap' }, h('table', { class: 'tags' },
      h('caption', { class: 'sr-only' }, `Tags of ${d.name}`),
      h('thead', {}, h('tr', {},
        h('th', { scope: 'col' }, 'tag'), h('th', { scope: 'col', class: 'num' }, 'value'), h('th', { scope: 'col' }, 'quality'),
        h('th', { scope: 'col', class: 'trend' }, 'last 10 min'), h('th', { scope: 'col', class: 'age' }, 'updated'), anyWritable ? h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'actions')) : null)),
      tbody))
    : h('p', { class: 'muted' }, d.tagCount ? `No readings yet of its ${d.tagCount} tag${d.tagCount === 1 ? '' : 's'}.` : 'No readings yet.');
  const card = h('section', { class: 'card device', 'aria-labelledby': `dev-${d.name}`, dataset: { device: d.name } },
    head, meta, table, MODBUS.has(d.driver) ? testReadForm(d) : d.driver === 'opcua' ? opcuaReadForm(d) : null);
  return { card, badge: head.querySelector('.badge'), meta, d };
}

function updateMeta(entry, d) {
  const [word, cls] = availability(d);
  setText(entry.badge, word);
  entry.badge.className = `badge ${cls}`;
  const parts = [];
  if (d.latencyMs !== undefined) parts.push(`last poll ${fmtMs(d.latencyMs)}`);
  if (d.lastPoll) parts.push(`polled ${fmtAgo(d.lastPoll)}`);
  if (d.since) parts.push(`${word} since ${fmtTime(d.since)}`);
  if (d.polls) parts.push(`${d.errors || 0} of ${d.polls} polls failed`);
  replace(entry.meta, parts.join(' · '), d.error ? h('span', { class: 'err' }, `${parts.length ? ' · ' : ''}error: ${d.error}`) : null);
}

/** "12s ago" in a tag's Updated cell; " ago" is left out on a phone (CSS), to save room. */
function setAge(cell, ts) {
  const text = fmtAgo(ts);
  if (cell.dataset.text === text) return;
  cell.dataset.text = text;
  const m = /^(.*) ago$/.exec(text);
  if (m) replace(cell, m[1], h('span', { class: 'ago' }, ' ago'));
  else setText(cell, text);
}

function updateRow(row) {
  const v = live.values.get(`${row.device}/${row.tag}`);
  if (!v) {
    setText(row.value, '—');
    return;
  }
  setText(row.value, `${fmtValue(v.value)}${v.unit ? ` ${v.unit}` : ''}`);
  const bad = v.quality !== 'good';
  row.tr.classList.toggle('bad-row', bad);
  if (bad) replace(row.quality, h('span', { class: 'badge bad' }, String(v.quality)), ' ', h('span', { class: 'err' }, v.error ? String(v.error) : ''));
  else if (row.quality.textContent !== 'good') replace(row.quality, h('span', { class: 'badge good' }, 'good'));
  row.spark = sparkline(row.spark, v.history, `${row.device}/${row.tag}`);
  if (!row.spark.isConnected) row.trend.append(row.spark);
  setAge(row.age, v.ts);
  row.age.title = fmtTime(v.ts);
}

export function mount(main) {
  const root = h('div', { class: 'devices' });
  main.append(h('h1', {}, 'Devices'), root);
  let rows = new Map();
  let cards = new Map();
  let shape = '';

  const build = () => {
    const list = deviceList();
    const next = JSON.stringify(list.map((d) => [d.name, d.driver, d.tagNames, d.tagNames.map((t) => writableOf(d, t))]));
    if (next !== shape) {
      shape = next;
      // Keep open forms (test read, write) of devices that stay.
      const old = cards;
      rows = new Map();
      cards = new Map();
      const nodes = list.map((d) => {
        const prev = old.get(d.name);
        if (prev && JSON.stringify([prev.d.driver, prev.d.tagNames, prev.d.tagNames.map((t) => writableOf(prev.d, t))]) === JSON.stringify([d.driver, d.tagNames, d.tagNames.map((t) => writableOf(d, t))])) {
          for (const t of d.tagNames) rows.set(`${d.name}/${t}`, prev.rows.get(`${d.name}/${t}`));
          cards.set(d.name, prev);
          prev.d = d;
          return prev.card;
        }
        const own = new Map();
        const entry = deviceCard(d, own);
        entry.rows = own;
        for (const [k, r] of own) rows.set(k, r);
        cards.set(d.name, entry);
        return entry.card;
      });
      if (!list.length) {
        replace(root, h('p', { class: 'muted' }, live.status ? 'No devices configured. Add one on the Config page.' : 'Loading…'));
      } else {
        // Move nodes into place without recreating the ones that stay (keeps focus and forms).
        root.querySelectorAll(':scope > :not(section)').forEach((n) => n.remove());
        nodes.forEach((n, i) => { if (root.children[i] !== n) root.insertBefore(n, root.children[i] || null); });
        while (root.children.length > nodes.length) root.lastElementChild.remove();
      }
    }
    for (const d of list) {
      const entry = cards.get(d.name);
      if (entry) { entry.d = d; updateMeta(entry, d); }
    }
    for (const r of rows.values()) updateRow(r);
  };

  build();
  const offStatus = live.subscribe('status', build);
  // Values can arrive by the thousand per second: rows are updated once per frame.
  const pending = new Set();
  let frame = 0;
  let rebuild = false;
  const flush = () => {
    frame = 0;
    if (rebuild) { rebuild = false; pending.clear(); build(); return; }
    for (const k of pending) { const r = rows.get(k); if (r) updateRow(r); }
    pending.clear();
  };
  const offValues = live.subscribe('values', (changed) => {
    if (!changed) rebuild = true;
    else for (const v of changed) {
      const k = `${v.device}/${v.tag}`;
      if (!rows.has(k)) rebuild = true;
      pending.add(k);
    }
    if (!frame) frame = requestAnimationFrame(flush);
  });
  const ages = setInterval(() => {
    for (const entry of cards.values()) updateMeta(entry, entry.d);
    for (const r of rows.values()) {
      const v = live.values.get(`${r.device}/${r.tag}`);
      if (v) setAge(r.age, v.ts);
    }
  }, 1000);
  return { destroy() { offStatus(); offValues(); clearInterval(ages); cancelAnimationFrame(frame); } };
}
