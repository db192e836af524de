// Config: the YAML file in an editor with line numbers, validated as you type (errors listed
// and marked at their lines; click one to jump there), the diff against the running config
// before apply, apply with If-Match (a 409 says the file changed meanwhile), and the kept
// history with view and restore. The draft survives switching pages.

import { h, replace, setText } from './dom.js';
import { api, get, seg } from './api.js';
import { fmtTime, fmtBytes, fmtAgo } from './format.js';
import { asMs, refreshStatus, loadValues } from './live.js';

export const title = 'Config';

const VALIDATE_DELAY_MS = 500;

// Kept across page switches: {text, base: {yaml, version}}.
let draft = null;

/** The editor's text when there is a draft (kept across pages), else null. */
export function draftText() {
  return draft ? draft.text : null;
}

/** Puts `text` in the editor as the draft (its base, the running config, stays or is loaded
 *  when the Config page opens), e.g. after "add as tag" on the Devices page. */
export function setDraftText(text) {
  if (draft) draft.text = text;
  else draft = { text, base: null };
}

export function hasUnsavedEdits() {
  return !!(draft && draft.base && draft.text !== draft.base.yaml);
}

function lineStart(text, line) {
  let pos = 0;
  for (let i = 1; i < line; i += 1) {
    const nl = text.indexOf('\n', pos);
    if (nl < 0) return text.length;
    pos = nl + 1;
  }
  return pos;
}

function errorText(e) {
  const where = e.line ? `line ${e.line}${e.column ? `, column ${e.column}` : ''}` : 'file';
  return { where, path: e.path || '', message: e.message || String(e) };
}

function diffView(diff) {
  const lines = String(diff || '').replace(/\n$/, '').split('\n');
  let add = 0;
  let del = 0;
  const pre = h('pre', { class: 'diff', tabindex: 0, 'aria-label': 'Changes against the running config' },
    lines.map((l) => {
      let cls = null;
      if (l.startsWith('+++') || l.startsWith('---')) cls = 'file';
      else if (l.startsWith('@@')) cls = 'hunk';
      else if (l.startsWith('+')) { cls = 'add'; add += 1; }
      else if (l.startsWith('-')) { cls = 'del'; del += 1; }
      return h('span', { class: ['dl', cls] }, `${l}\n`);
    }));
  return { pre, add, del };
}

/** Normalizes GET /api/config/history: a list, or {history|versions|entries: [...]}. */
function historyList(data) {
  const list = Array.isArray(data) ? data : (data && (data.history || data.versions || data.entries)) || [];
  return list.map((e) => (typeof e === 'string' ? { id: e } : e)).map((e) => ({
    id: String(e.id ?? e.name ?? e.file ?? ''),
    ts: asMs(e.saved ?? e.ts ?? e.time ?? e.saved_at ?? e.timestamp),
    size: e.size ?? e.bytes,
    version: e.version ?? e.sha256,
    note: e.reason ?? e.note ?? e.source,
    appliedBy: e.applied_by ?? null,
    appliedAt: asMs(e.applied_at),
    replacedBy: e.replaced_by ?? null,
  })).filter((e) => e.id);
}

export function mount(main) {
  const status = h('p', { class: 'v-status', role: 'status', 'aria-live': 'polite' }, 'Loading the config…');
  const banner = h('div', { class: 'banner-slot', 'aria-live': 'polite' });
  const fileSlot = h('div', { class: 'file-slot' });
  const gutter = h('div', { class: 'gutter', 'aria-hidden': 'true' });
  const marks = h('div', { class: 'marks', 'aria-hidden': 'true' });
  const errList = h('ul', { class: 'errors', id: 'config-errors' });
  const ta = h('textarea', {
    class: 'code', id: 'config-yaml', spellcheck: 'false', autocapitalize: 'off', autocomplete: 'off',
    wrap: 'off', 'aria-label': 'Config file (YAML)', 'aria-describedby': 'config-errors', disabled: true,
  });
  const editor = h('div', { class: 'editor' }, h('div', { class: 'gutter-clip' }, gutter), h('div', { class: 'area' }, marks, ta));
  const applyBtn = h('button', { type: 'button', class: 'primary', disabled: true }, 'Apply…');
  const reloadBtn = h('button', { type: 'button', class: 'ghost' }, 'Reload from gateway');
  const confirmSlot = h('div', { class: 'confirm-slot', 'aria-live': 'polite' });
  const diffSlot = h('div', { class: 'diff-slot' });
  const histSlot = h('div', { class: 'history' });
  const viewSlot = h('div', { class: 'history-view' });

  main.append(
    h('h1', {}, 'Config'),
    banner,
    fileSlot,
    h('section', { class: 'block', 'aria-labelledby': 'cfg-edit' },
      h('div', { class: 'toolbar' }, h('h2', { id: 'cfg-edit' }, 'Edit'), status, h('span', { class: 'grow' }), reloadBtn, applyBtn),
      editor,
      h('div', { class: 'err-box' }, errList),
      confirmSlot),
    h('section', { class: 'block', 'aria-labelledby': 'cfg-diff' },
      h('h2', { id: 'cfg-diff' }, 'Changes against the running config'), diffSlot),
    h('section', { class: 'block', 'aria-labelledby': 'cfg-hist' },
      h('h2', { id: 'cfg-hist' }, 'History'),
      h('p', { class: 'muted' }, 'Each apply keeps the version it replaced. Restoring one applies it like an edit.'),
      histSlot, viewSlot));

  let seq = 0; // validation requests; only the newest answer counts
  let timer = null;
  let result = null; // {ok, errors, diff} for the current text
  let lh = 20;
  let gutterCount = 0;
  let alive = true;

  const showBanner = (cls, ...content) => replace(banner, content.length ? h('div', { class: ['banner', cls], role: cls === 'error' ? 'alert' : 'status' }, ...content) : null);

  function renderGutter() {
    const n = ta.value.split('\n').length;
    if (n !== gutterCount) {
      gutterCount = n;
      const frag = document.createDocumentFragment();
      for (let i = 1; i <= n; i += 1) frag.append(h('div', { class: 'ln' }, String(i)));
      replace(gutter, frag);
      markErrors();
    }
  }

  function syncScroll() {
    gutter.style.transform = `translateY(${-ta.scrollTop}px)`;
    marks.style.transform = `translate(${-ta.scrollLeft}px, ${-ta.scrollTop}px)`;
  }

  function markErrors() {
    for (const el of gutter.querySelectorAll('.ln.bad')) { el.classList.remove('bad'); el.removeAttribute('title'); }
    marks.replaceChildren();
    if (!result || result.ok) return;
    const byLine = new Map();
    for (const e of result.errors) if (e.line) byLine.set(e.line, [...(byLine.get(e.line) || []), e.message]);
    for (const [line, msgs] of byLine) {
      const ln = gutter.children[line - 1];
      if (ln) { ln.classList.add('bad'); ln.title = msgs.join('\n'); }
      const m = h('div', { class: 'mark', dataset: { line: String(line) } });
      m.style.top = `${(line - 1) * lh + parseFloat(getComputedStyle(ta).paddingTop)}px`;
      m.style.height = `${lh}px`;
      marks.append(m);
    }
  }

  function jumpTo(line, column) {
    const text = ta.value;
    const start = lineStart(text, line);
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    const caret = Math.min(end, start + Math.max(0, (column || 1) - 1));
    ta.focus();
    ta.setSelectionRange(caret, end);
    ta.scrollTop = Math.max(0, (line - 1) * lh - ta.clientHeight / 3);
    syncScroll();
  }

  function renderResult() {
    applyBtn.disabled = true;
    replace(confirmSlot);
    if (!result) return;
    if (!result.ok) {
      const n = result.errors.length;
      setText(status, `${n} error${n === 1 ? '' : 's'}`);
      status.className = 'v-status bad';
      replace(errList, result.errors.map((e) => {
        const t = errorText(e);
        const b = h('button', { type: 'button', class: 'err-item', dataset: { line: String(e.line || '') } },
          h('span', { class: 'where' }, t.where), ' ', t.path ? h('code', {}, t.path) : null, t.path ? ': ' : '', t.message);
        if (e.line) b.addEventListener('click', () => jumpTo(e.line, e.column));
        else b.disabled = true;
        return h('li', {}, b);
      }));
      ta.setAttribute('aria-invalid', 'true');
      replace(diffSlot, h('p', { class: 'muted' }, 'Fix the errors to see the changes.'));
    } else {
      replace(errList);
      ta.removeAttribute('aria-invalid');
      const diff = result.diff || '';
      if (!diff.trim()) {
        setText(status, 'Valid · no changes');
        status.className = 'v-status good';
        replace(diffSlot, h('p', { class: 'muted' }, 'No changes: this is the running config.'));
      } else {
        const d = diffView(diff);
        setText(status, `Valid · +${d.add} −${d.del} lines`);
        status.className = 'v-status good';
        replace(diffSlot, d.pre);
        applyBtn.disabled = !!readOnly;
      }
    }
    markErrors();
  }

  /** When the file on disk is not what runs (a SIGHUP refused it, or it was edited and not
   *  reloaded), say so above the editor, with the difference. */
  function noteFile(data) {
    if (!data || !data.file_differs) { replace(fileSlot); return; }
    const d = diffView(data.running_diff);
    replace(fileSlot, h('div', { class: 'banner warn file-differs', role: 'status' },
      h('strong', {}, 'The file on disk differs from the running config. '),
      `The gateway runs the previous version: a reload (SIGHUP) refuses a file${data.path ? ` (${data.path})` : ''} with errors and keeps what runs. “Reload from gateway” puts the file in the editor, to fix and apply it; applying your text replaces the file.`,
      h('details', {}, h('summary', {}, `What differs (+${d.add} −${d.del} lines, running → file)`), d.pre)));
  }

  function noteWritable(data) {
    noteFile(data);
    readOnly = data && data.writable === false
      ? 'This gateway runs on its built-in defaults, without a config file, so changes cannot be applied from here. Start tidegate with `-c FILE` (the package does) to edit its config in the browser. You can still check a config below.'
      : null;
    if (readOnly) showBanner('warn', readOnly);
  }

  async function validate() {
    clearTimeout(timer);
    const mine = ++seq;
    const text = ta.value;
    setText(status, 'Checking…');
    status.className = 'v-status';
    try {
      const { data } = await api('POST', '/api/config/validate', { text, type: 'application/yaml', accept: [422] });
      if (mine !== seq || !alive) return;
      result = { ok: !!(data && data.ok), errors: (data && data.errors) || [], diff: data && data.diff };
    } catch (e) {
      if (mine !== seq || !alive) return;
      result = null;
      setText(status, `Could not validate: ${e.message}`);
      status.className = 'v-status bad';
      return;
    }
    renderResult();
  }

  function scheduleValidate() {
    clearTimeout(timer);
    result = null;
    applyBtn.disabled = true;
    replace(confirmSlot);
    setText(status, 'Editing…');
    status.className = 'v-status';
    timer = setTimeout(validate, VALIDATE_DELAY_MS);
  }

  let readOnly = null; // why the config cannot be changed here, when it cannot

  async function load(keepDraft) {
    const { data } = await get('/api/config');
    noteWritable(data);
    const base = { yaml: data.yaml, version: data.version };
    if (keepDraft && draft) draft.base = base;
    else draft = { text: base.yaml, base };
    ta.value = draft.text;
    ta.disabled = false;
    renderGutter();
    syncScroll();
    await validate();
  }

  async function apply() {
    const text = ta.value;
    applyBtn.disabled = true;
    replace(confirmSlot, h('p', { class: 'muted' }, 'Applying…'));
    try {
      const headers = draft && draft.base && draft.base.version ? { 'If-Match': draft.base.version } : {};
      const { data } = await api('PUT', '/api/config', { text, type: 'application/yaml', headers });
      replace(confirmSlot);
      const what = data && typeof data === 'object' ? (data.changes || data.applied) : null;
      showBanner('ok', `Applied at ${fmtTime(Date.now())} without a restart.`,
        Array.isArray(what) && what.length ? h('ul', { class: 'changes' }, what.map((c) => h('li', {}, String(c)))) : ' Nothing needed a restart.');
      await load(false);
      loadHistory();
      refreshStatus();
      loadValues().catch(() => {});
    } catch (e) {
      replace(confirmSlot);
      if (e.status === 422 && e.body && e.body.errors) {
        result = { ok: false, errors: e.body.errors };
        renderResult();
        showBanner('error', 'Not applied: the gateway found errors. The running config is unchanged.');
      } else if (e.status === 409 && !(e.body && e.body.version)) {
        showBanner('error', `Not applied: ${e.message}`);
      } else if (e.status === 409) {
        showBanner('error', h('strong', {}, 'Conflict: not applied. '),
          'The config file changed on the gateway since you loaded it (edited by hand, reloaded with SIGHUP, or applied from another browser). ',
          'Your text is kept; the changes below now compare it with the new running config. Review them and apply again, or reload the gateway\'s version.');
        try { await load(true); } catch { /* keep the text */ }
        loadHistory();
      } else {
        showBanner('error', `Not applied: ${e.message}. The gateway keeps its previous config.`);
        applyBtn.disabled = false;
      }
    }
  }

  applyBtn.addEventListener('click', () => {
    const d = result && result.diff ? diffView(result.diff) : { add: 0, del: 0 };
    const yes = h('button', { type: 'button', class: 'primary' }, 'Apply now');
    const no = h('button', { type: 'button', class: 'ghost' }, 'Cancel');
    replace(confirmSlot, h('div', { class: 'confirm', role: 'alertdialog', 'aria-label': 'Confirm apply' },
      h('p', {}, `Apply these changes (+${d.add} −${d.del} lines, shown below) to the running gateway? Only the parts that changed are restarted.`),
      yes, no));
    yes.addEventListener('click', apply);
    no.addEventListener('click', () => { replace(confirmSlot); applyBtn.focus(); });
    yes.focus();
  });

  reloadBtn.addEventListener('click', async () => {
    if (hasUnsavedEdits() && !window.confirm('Discard your edits and load the gateway\'s config?')) return;
    showBanner();
    try { await load(false); } catch (e) { showBanner('error', `Could not load the config: ${e.message}`); }
  });

  ta.addEventListener('input', () => {
    if (draft) draft.text = ta.value;
    renderGutter();
    scheduleValidate();
  });
  ta.addEventListener('scroll', syncScroll);

  async function viewVersion(entry) {
    replace(viewSlot, h('p', { class: 'muted' }, 'Loading…'));
    try {
      const { data } = await get(`/api/config/history/${seg(entry.id)}`);
      const yaml = typeof data === 'string' ? data : (data.yaml ?? data.text ?? JSON.stringify(data, null, 2));
      const diff = data && typeof data === 'object' && typeof data.diff === 'string' ? data.diff : null;
      const close = h('button', { type: 'button', class: 'ghost' }, 'Close');
      close.addEventListener('click', () => replace(viewSlot));
      replace(viewSlot, h('div', { class: 'card' },
        h('div', { class: 'toolbar' }, h('h3', {}, `Version ${entry.id}`), h('span', { class: 'grow' }), close),
        entry.ts ? h('p', { class: 'muted' }, `In use until ${fmtTime(entry.ts)}.`) : null,
        diff !== null ? h('h4', {}, 'What restoring it would change') : null,
        diff !== null ? (diff.trim() ? diffView(diff).pre : h('p', { class: 'muted' }, 'Nothing: it is the running config.')) : null,
        h('h4', {}, 'The file'),
        h('pre', { class: 'code-view', tabindex: 0, 'aria-label': `Config version ${entry.id}` }, yaml)));
      close.focus();
    } catch (e) {
      replace(viewSlot, h('p', { class: 'banner error', role: 'alert' }, `Could not load version ${entry.id}: ${e.message}`));
    }
  }

  async function restore(entry, row) {
    const slot = row.querySelector('.row-confirm');
    const yes = h('button', { type: 'button', class: 'danger small' }, 'Restore now');
    const no = h('button', { type: 'button', class: 'ghost small' }, 'Cancel');
    const lose = hasUnsavedEdits() ? ' Your unsaved edits in the editor are replaced.' : '';
    replace(slot, h('span', {}, `Restore ${entry.ts ? fmtTime(entry.ts) : entry.id} and apply it now?${lose}`), ' ', yes, ' ', no);
    no.addEventListener('click', () => replace(slot));
    yes.addEventListener('click', async () => {
      yes.disabled = true;
      try {
        await api('POST', `/api/config/history/${seg(entry.id)}/restore`);
        showBanner('ok', `Restored the version of ${entry.ts ? fmtTime(entry.ts) : entry.id} and applied it at ${fmtTime(Date.now())}.`);
        await load(false);
        await loadHistory();
        refreshStatus();
        loadValues().catch(() => {});
      } catch (e) {
        replace(slot);
        if (e.status === 422 && e.body && e.body.errors) {
          showBanner('error', `Not restored: that version is not valid with this gateway (${e.body.errors.map((x) => `${errorText(x).where}: ${x.message}`).join('; ')}).`);
        } else {
          showBanner('error', `Not restored: ${e.message}`);
        }
      }
    });
    yes.focus();
  }

  async function loadHistory() {
    try {
      const { data } = await get('/api/config/history');
      const list = historyList(data).sort((a, b) => (b.ts || 0) - (a.ts || 0));
      if (!list.length) {
        replace(histSlot, h('p', { class: 'muted' }, 'No earlier versions yet.'));
        return;
      }
      replace(histSlot, h('div', { class: 'table-wrap' }, h('table', { class: 'hist' },
        h('caption', { class: 'sr-only' }, 'Kept config versions, newest first'),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'in use'), h('th', { scope: 'col' }, 'applied by'), h('th', { scope: 'col' }, 'replaced by'), h('th', { scope: 'col' }, 'version'), h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'actions')))),
        h('tbody', {}, list.map((e) => {
          const view = h('button', { type: 'button', class: 'small ghost', 'aria-label': `View version ${e.id}` }, 'View');
          const rest = h('button', { type: 'button', class: 'small', 'aria-label': `Restore version ${e.id}` }, 'Restore…');
          const row = h('tr', { dataset: { id: e.id } },
            h('td', {}, e.ts ? [e.appliedAt ? `${fmtTime(e.appliedAt)} – ` : 'until ', fmtTime(e.ts), h('br'), h('span', { class: 'muted small' }, `replaced ${fmtAgo(e.ts)}`)] : '—'),
            h('td', {}, e.appliedBy ?? h('span', { class: 'muted' }, 'not recorded')),
            h('td', {}, e.replacedBy ?? h('span', { class: 'muted' }, 'not recorded')),
            h('td', {}, h('code', {}, e.id), e.size !== undefined ? h('span', { class: 'muted small' }, ` ${fmtBytes(e.size)}`) : null,
              e.note ? h('span', { class: 'muted small' }, ` ${e.note}`) : null),
            h('td', { class: 'act' }, view, ' ', rest, h('div', { class: 'row-confirm', 'aria-live': 'polite' })));
          view.addEventListener('click', () => viewVersion(e));
          rest.addEventListener('click', () => restore(e, row));
          return row;
        })))));
    } catch (e) {
      replace(histSlot, h('p', { class: 'banner error' }, `Could not load the history: ${e.message}`));
    }
  }

  // Line height of the editor, for marks and jumps (the textarea does not wrap lines).
  requestAnimationFrame(() => {
    const cs = getComputedStyle(ta);
    lh = parseFloat(cs.lineHeight) || parseFloat(cs.fontSize) * 1.5 || 20;
    markErrors();
  });

  if (draft) {
    ta.value = draft.text;
    ta.disabled = false;
    renderGutter();
    get('/api/config').then(({ data }) => {
      noteWritable(data);
      if (draft.base && data.version !== draft.base.version) {
        showBanner('warn', 'The config changed on the gateway since you started editing. Your draft is kept; the diff compares it with the running config.');
      }
      draft.base = { yaml: data.yaml, version: data.version };
      validate();
    }).catch((e) => showBanner('error', `Could not load the config: ${e.message}`));
  } else {
    load(false).catch((e) => { setText(status, ''); showBanner('error', `Could not load the config: ${e.message}`); });
  }
  loadHistory();

  return { destroy() { alive = false; clearTimeout(timer); } };
}
