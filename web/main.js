// The app shell: session check, login, hash routing between the pages, the header.

import { h, replace, setText, field } from './dom.js';
import { api, get, setCsrf, onUnauthorized, ApiError } from './api.js';
import * as live from './live.js';
import * as dashboard from './dashboard.js';
import * as devices from './devices.js';
import * as config from './config.js';
import * as logs from './logs.js';
import * as account from './account.js';

const routes = { dashboard, devices, config, logs, account };
const main = document.getElementById('main');
const top = document.getElementById('top');
let page = null; // the mounted page: {destroy()}
let user = null;

function routeName() {
  const m = /^#\/([a-z]+)/.exec(location.hash);
  return m && routes[m[1]] ? m[1] : 'dashboard';
}

function showPage() {
  if (!user) return;
  const name = routeName();
  if (page && page.name === name) return;
  if (page) page.destroy();
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.route === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  main.replaceChildren();
  page = { name, ...routes[name].mount(main) };
  document.title = `${routes[name].title} · tidegate`;
  const h1 = main.querySelector('h1');
  if (h1 && document.activeElement && document.activeElement !== document.body && !main.contains(document.activeElement)) {
    h1.setAttribute('tabindex', '-1');
    h1.focus({ preventScroll: true });
  }
}

const notice = document.getElementById('pw-notice');

function enter(session) {
  user = session.username || 'admin';
  setCsrf(session.csrf_token);
  setText(document.getElementById('user'), user);
  top.hidden = false;
  notice.hidden = !session.generated_password;
  live.start();
  page = null;
  showPage();
}

function leave() {
  if (page) page.destroy();
  page = null;
  user = null;
  live.reset();
  top.hidden = true;
  notice.hidden = true;
}

function showLogin(message) {
  leave();
  document.title = 'Log in · tidegate';
  const username = h('input', { name: 'username', autocomplete: 'username', required: true, autocapitalize: 'none', spellcheck: 'false' });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Log in');
  const msg = h('p', { class: 'form-msg', role: 'alert', 'aria-live': 'assertive' });
  if (message) setText(msg, message);
  let lockTimer = null;
  const form = h('form', { class: 'login card', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, h('span', { class: 'logo', 'aria-hidden': 'true' }, '≈'), ' tidegate'),
    h('p', { class: 'muted' }, 'Log in with a web user of this gateway. On a new box the user is admin, with the password generated in data_dir/initial-admin-password until it is changed under Account.'),
    field('Username', username).wrap,
    field('Password', password).wrap,
    submit, msg);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    msg.className = 'form-msg';
    setText(msg, 'Logging in…');
    try {
      const { data } = await api('POST', '/api/login', { json: { username: username.value, password: password.value } });
      setText(msg, '');
      enter({ username: (data && data.username) || username.value, ...data });
      return;
    } catch (e) {
      msg.className = 'form-msg error';
      if (e instanceof ApiError && e.status === 429) {
        let left = parseInt(e.headers.get('Retry-After') || '60', 10);
        if (!Number.isFinite(left) || left < 1) left = 60;
        const tick = () => {
          setText(msg, `Too many failed logins: this user is locked out. Try again in ${left} s.`);
          if (left <= 0) {
            clearInterval(lockTimer);
            submit.disabled = false;
            msg.className = 'form-msg';
            setText(msg, 'You can try again now.');
          }
          left -= 1;
        };
        clearInterval(lockTimer);
        tick();
        lockTimer = setInterval(tick, 1000);
        return;
      }
      setText(msg, e.status === 401 ? 'Wrong username or password.' : `Login failed: ${e.message}`);
      password.select();
    }
    submit.disabled = false;
  });
  replace(main, h('div', { class: 'login-wrap' }, form));
  username.focus();
}

async function boot() {
  try {
    const { data } = await get('/api/session');
    enter(data || {});
  } catch (e) {
    if (e.status === 401) showLogin();
    else showLogin(`The gateway did not answer the session check: ${e.message}`);
  }
}

onUnauthorized(() => {
  if (user) showLogin('Your session ended. Please log in again.');
});

live.subscribe('conn', (ok) => {
  const el = document.getElementById('conn');
  setText(el, ok ? 'live' : 'reconnecting…');
  el.classList.toggle('ok', ok);
});

live.subscribe('status', (st) => {
  if (st && st.gateway.id) setText(document.getElementById('gw-id'), st.gateway.id);
});

document.getElementById('logout').addEventListener('click', async () => {
  try { await api('POST', '/api/logout'); } catch { /* the session is gone either way */ }
  setCsrf(null);
  showLogin('You are logged out.');
});

document.getElementById('skip').addEventListener('click', () => {
  const target = main.querySelector('h1') || main;
  target.setAttribute('tabindex', '-1');
  target.focus();
});

window.addEventListener(account.CHANGED, () => { notice.hidden = true; });
window.addEventListener('hashchange', showPage);
window.addEventListener('beforeunload', (ev) => {
  if (user && config.hasUnsavedEdits()) {
    ev.preventDefault();
    ev.returnValue = '';
  }
});

boot();
