// Account: the logged-in user changes their own password (POST /api/account/password). The
// built-in admin's new password is kept hashed in data_dir/admin-password; a user of web.users
// gets a new hash in the config file. Either way the user's other sessions end and this one
// goes on with the new session the answer brings.

import { h, setText, field } from './dom.js';
import { api, setCsrf, ApiError } from './api.js';

export const title = 'Account';

/** The minimum length the gateway accepts (src/web/account.rs MIN_PASSWORD). */
const MIN = 8;

/** Fired on window after a change, with the new session in `detail`. */
export const CHANGED = 'tidegate:password-changed';

export function mount(main) {
  const current = h('input', { name: 'current', type: 'password', autocomplete: 'current-password', required: true });
  const next = h('input', { name: 'new', type: 'password', autocomplete: 'new-password', required: true, minlength: MIN });
  const again = h('input', { name: 'again', type: 'password', autocomplete: 'new-password', required: true, minlength: MIN });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Change password');
  const msg = h('p', { class: 'form-msg', role: 'status', 'aria-live': 'polite' });
  const form = h('form', { class: 'card account', 'aria-labelledby': 'pw-title' },
    h('h2', { id: 'pw-title' }, 'Change your password'),
    h('p', { class: 'muted' }, 'You stay logged in here; every other browser logged in as you is logged out.'),
    field('Current password', current).wrap,
    field('New password', next, `At least ${MIN} characters.`).wrap,
    field('New password again', again).wrap,
    submit, msg);
  main.append(h('h1', {}, 'Account'), form);

  const say = (text, kind) => {
    msg.className = kind ? `form-msg ${kind}` : 'form-msg';
    setText(msg, text);
  };

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if ([...next.value].length < MIN) {
      say(`The new password is too short: at least ${MIN} characters.`, 'error');
      next.focus();
      return;
    }
    if (next.value !== again.value) {
      say('The two new passwords differ.', 'error');
      again.select();
      return;
    }
    submit.disabled = true;
    say('Changing the password…');
    try {
      const { data } = await api('POST', '/api/account/password', { json: { current: current.value, new: next.value } });
      setCsrf(data.csrf_token);
      form.reset();
      say(`Password changed. Its hash is kept in ${data.stored_in}.`, 'ok');
      window.dispatchEvent(new CustomEvent(CHANGED, { detail: data }));
    } catch (e) {
      if (e instanceof ApiError && e.status === 429) say(`Too many wrong passwords: ${e.message}.`, 'error');
      else if (e instanceof ApiError && e.status === 403 && /current password/.test(e.message)) {
        say('The current password is wrong.', 'error');
        current.select();
      } else say(`The password was not changed: ${e.message}`, 'error');
    }
    submit.disabled = false;
  });
  current.focus();

  return { destroy() {} };
}
