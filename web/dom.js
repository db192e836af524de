// Small DOM helpers. Everything the server sends reaches the page as text nodes or attribute
// values set through the DOM API, never as HTML: no innerHTML anywhere in the UI.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value' && 'value' in el) el.value = v;
    else if (k === 'checked' || k === 'disabled' || k === 'selected') el[k] = !!v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** h('div', {class: 'x'}, 'text', child, [more]) — an HTML element. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** s('path', {d: ...}) — an SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Sets the text of `el` only when it changed (keeps selection and avoids layout work). */
export function setText(el, text) {
  const t = text === undefined || text === null ? '' : String(text);
  if (el.textContent !== t) el.textContent = t;
}

let uid = 0;
/** A unique id for label/for pairs. */
export function id(prefix = 'f') {
  uid += 1;
  return `${prefix}-${uid}`;
}

/** A labelled form field: returns {wrap, input}. */
export function field(label, input, hint) {
  if (!input.id) input.id = id();
  const wrap = h('div', { class: 'field' }, h('label', { for: input.id }, label), input,
    hint ? h('small', { class: 'hint' }, hint) : null);
  return { wrap, input };
}

/**
 * Runs `render()` (which rebuilds the children of `root`) and puts keyboard focus back on the
 * element at the same place, so periodic refreshes do not throw a keyboard user out.
 */
export function keepFocus(root, render) {
  const a = document.activeElement;
  let path = null;
  if (a && a !== root && root.contains(a)) {
    path = [];
    for (let n = a; n !== root; n = n.parentElement) path.unshift([...n.parentElement.children].indexOf(n));
  }
  render();
  if (path) {
    let n = root;
    for (const i of path) n = n && n.children[i];
    if (n && typeof n.focus === 'function') n.focus({ preventScroll: true });
  }
}
