// Browser end-to-end test of tidegate's web UI against the real daemon (started by
// tests/web_e2e.rs): node run.mjs URL PASSWORD [SCREENSHOT_DIR [CONFIG_FILE DAEMON_PID]]
//
// Logs in with the generated admin password, changes it under Account, reads the Sparkplug
// uplink's card (node, primary host, births, bdSeq), watches a simulated tag's value change live on
// Devices, writes a writable tag through the confirmation step, types an invalid config and
// sees the error marked at its line, applies a valid one that adds a device and sees that
// device's values arrive, restores the previous version from the history, reads the live log,
// checks the phone layout, logs out and sees the login lockout. Exits 0 when every step
// passed; on a failure prints the step and the page's errors, saves failure.png, exits 1.

import fs from 'node:fs';
import path from 'node:path';
import { launch } from './lib.mjs';

const [url, generated, shotDir, configFile, daemonPid] = process.argv.slice(2);
let password = generated; // until the step that changes it
if (!url || !password) {
  console.error('usage: node run.mjs URL PASSWORD [SCREENSHOT_DIR]');
  process.exit(2);
}
const outDir = shotDir || fs.mkdtempSync('/tmp/tidegate-e2e-');
fs.mkdirSync(outDir, { recursive: true });
fs.rmSync(path.join(outDir, 'failure.png'), { force: true });
const T = 30_000; // the longest any single wait may take

const browser = await launch();
const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
// The daemon serves the UI under a strict Content-Security-Policy (no inline script, style or
// handler); any violation the page causes fails the test (see the console listener below).
const page = await context.newPage();
page.setDefaultTimeout(T);
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(`uncaught: ${e.message}`));
page.on('console', (m) => {
  // A refused inline script or style (Content-Security-Policy) is a bug in the UI.
  if (m.type() === 'error' && /Content Security Policy|Refused to/.test(m.text())) pageErrors.push(`console: ${m.text()}`);
});

let current = '';
async function step(name, fn) {
  current = name;
  const t0 = Date.now();
  await fn();
  if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join('; ')}`);
  console.log(`ok   ${name} (${Date.now() - t0} ms)`);
}

let samplesBefore = 0;
// The config has two uplinks: `cloud` (topic rules) and `scada` (Sparkplug B); the queue chart
// checks read cloud's card.
const CLOUD_CARD = 'section.uplink[aria-labelledby="uplink-cloud"]';
const samples = async () => Number((/\((\d+) samples/.exec(await page.locator(`${CLOUD_CARD} figcaption`).textContent()) || [])[1]);
const shot = (name, opts = {}) => page.screenshot({ path: path.join(outDir, `${name}.png`), ...opts });
const valueCell = (device, tag) => page.locator(`section[data-device="${device}"] tr[data-tag="${tag}"] td.value`);
const editor = () => page.locator('#config-yaml');
const vstatus = () => page.locator('.v-status');

try {
  await step('a wrong password is refused on the login page', async () => {
    await page.goto(url);
    await page.getByLabel('Username').fill('admin');
    await page.getByLabel('Password').fill('not the password');
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('alert').filter({ hasText: 'Wrong username or password' }).waitFor();
  });

  await step('log in with the generated admin password, from the keyboard alone', async () => {
    await page.goto(url);
    await page.getByLabel('Username').waitFor();
    // The username field has the focus; Tab moves to the password; Enter submits.
    await page.keyboard.type('admin');
    await page.keyboard.press('Tab');
    await page.keyboard.type(password);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { level: 1, name: 'Dashboard' }).waitFor();
    const csp = await page.evaluate(async () => (await fetch('/')).headers.get('content-security-policy'));
    if (!csp || !/script-src 'self'/.test(csp) || /unsafe-inline/.test(csp)) throw new Error(`the page's Content-Security-Policy is not strict: ${csp}`);
    await page.locator('#conn.ok').waitFor(); // the event stream is connected
  });

  await step('the generated password is changed under Account; the session goes on', async () => {
    const notice = page.locator('#pw-notice');
    await notice.filter({ hasText: 'generated admin password' }).waitFor();
    await shot('password-notice');
    await notice.getByRole('link', { name: 'Change it' }).click();
    await page.getByRole('heading', { level: 1, name: 'Account' }).waitFor();
    const chosen = 'tide gauge 7 harbour';
    const fill = async (current, next, again) => {
      await page.getByLabel('Current password').fill(current);
      await page.getByLabel('New password', { exact: true }).fill(next);
      await page.getByLabel('New password again').fill(again);
      await page.getByRole('button', { name: 'Change password' }).click();
    };
    await fill(password, chosen, `${chosen}!`);
    await page.locator('.form-msg.error', { hasText: 'differ' }).waitFor();
    await fill('not the password', chosen, chosen);
    await page.locator('.form-msg.error', { hasText: 'The current password is wrong' }).waitFor();
    await fill(password, chosen, chosen);
    await page.locator('.form-msg.ok', { hasText: /Password changed\. Its hash is kept in .*admin-password/ }).waitFor();
    if (await notice.isVisible()) throw new Error('the generated-password notice is still shown');
    await shot('account');
    // The page's new session works: the API answers and the event stream reconnects.
    const status = await page.evaluate(async () => (await fetch('/api/status')).status);
    if (status !== 200) throw new Error(`/api/status after the change answered ${status}`);
    await page.locator('#conn.ok').waitFor();
    // Another browser: the generated password no longer logs in, the chosen one does.
    const other = await browser.newContext();
    const login = async (pw) => (await other.request.post(new URL('/api/login', url).href, { data: { username: 'admin', password: pw } })).status();
    const old = await login(password);
    if (old !== 401) throw new Error(`the generated password: login answered ${old}, not 401`);
    if (await login(chosen) !== 200) throw new Error('the chosen password does not log in');
    await other.close();
    password = chosen;
    await page.getByRole('link', { name: 'Dashboard' }).click();
  });

  await step('dashboard shows the gateway, devices and the uplink', async () => {
    await page.locator('.kv dd').first().filter({ hasText: /\S/ }).waitFor();
    await page.locator('.chip.good', { hasText: 'demo' }).waitFor();
    await page.locator(CLOUD_CARD).locator('.badge').first().waitFor();
    // Two queue samples make the chart's first line.
    await page.waitForFunction(() => document.querySelectorAll('svg.chart polyline.line').length > 0, null, { timeout: T });
    samplesBefore = await samples();
  });

  await step("a Sparkplug uplink's card shows its node identity and state", async () => {
    // `scada` (format: sparkplug_b, primary_host scada01) cannot reach its server: its node is
    // named, the primary host not heard yet, no births, and each connect attempt takes a bdSeq.
    const card = page.locator('section.uplink[aria-labelledby="uplink-scada"]');
    const row = (name) => card.locator('dt', { hasText: name }).locator('xpath=following-sibling::dd[1]');
    await row('Sparkplug node').filter({ hasText: 'spBv1.0/e2e/…/e2e-node' }).waitFor();
    await row('Primary host').filter({ hasText: 'scada01' }).filter({ hasText: 'not heard yet' }).waitFor();
    await row('Births').filter({ hasText: 'not yet' }).waitFor();
    await row('bdSeq').filter({ hasText: /^\d+$/ }).waitFor();
    await card.locator('.err').filter({ hasText: /refused/i }).waitFor();
  });

  await step('a live value changes on Devices', async () => {
    await page.getByRole('link', { name: 'Devices' }).click();
    const cell = valueCell('demo', 'temperature');
    await cell.filter({ hasText: /\d/ }).waitFor();
    const first = await cell.textContent();
    await page.waitForFunction(({ sel, first }) => {
      const el = document.querySelector(sel);
      return el && el.textContent !== first && /\d/.test(el.textContent);
    }, { sel: 'section[data-device="demo"] tr[data-tag="temperature"] td.value', first }, { timeout: T });
    await page.waitForFunction(() => {
      const l = document.querySelector('section[data-device="demo"] tr[data-tag="temperature"] svg.spark polyline');
      return l && l.getAttribute('points').split(' ').length >= 3;
    }, null, { timeout: T });
    // The bad reading the test published: marked bad, with its error and the last value.
    const bad = page.locator('section[data-device="demo"] tr.bad-row[data-tag="probe"]');
    await bad.locator('.badge.bad', { hasText: 'bad' }).waitFor();
    await bad.locator('.err', { hasText: 'timeout' }).waitFor();
    await bad.locator('td.value', { hasText: '3.25 bar' }).waitFor();
    await shot('devices', { fullPage: true });
  });

  await step('a writable tag is written after confirmation', async () => {
    await page.getByRole('button', { name: 'Write demo/setpoint' }).click();
    await page.getByLabel('New value of setpoint').fill('42');
    await page.getByRole('button', { name: 'Review write…' }).click();
    await page.getByRole('button', { name: 'Confirm write' }).click();
    await page.locator('.write-panel .form-msg.ok', { hasText: 'read back: 42' }).waitFor();
    await valueCell('demo', 'setpoint').filter({ hasText: /^42/ }).waitFor();
    // Out of range: refused with the device's reason.
    await page.getByLabel('New value of setpoint').fill('1000');
    await page.getByRole('button', { name: 'Review write…' }).click();
    await page.getByRole('button', { name: 'Confirm write' }).click();
    await page.locator('.write-panel .form-msg.error', { hasText: 'out of range' }).waitFor();
  });

  await step('one write form at a time, under its own row; a refusal says why', async () => {
    await page.getByRole('button', { name: 'Write demo/mode' }).click();
    const rows = page.locator('section[data-device="demo"] tr.write-row');
    await page.getByLabel('New value of mode').waitFor();
    if ((await rows.count()) !== 1) throw new Error(`${await rows.count()} write forms open`);
    // The form is the row right after mode's.
    const after = await page.locator('section[data-device="demo"] tr[data-tag="mode"] + tr.write-row').count();
    if (after !== 1) throw new Error('the write form is not under its row');
    await page.getByLabel('New value of mode').fill('5');
    await page.getByRole('button', { name: 'Review write…' }).click();
    await page.getByRole('button', { name: 'Confirm write' }).click();
    await page.locator('.write-panel .form-msg.error', { hasText: 'out of range (0 … 3)' }).waitFor();
    // Opening another closes this one.
    await page.getByRole('button', { name: 'Write demo/setpoint' }).click();
    await page.getByLabel('New value of setpoint').waitFor();
    if ((await rows.count()) !== 1 || (await page.getByLabel('New value of mode').count()) !== 0) throw new Error('two write forms open at once');
    await page.getByRole('button', { name: 'Close' }).click();
    if ((await rows.count()) !== 0) throw new Error('Close left the form open');
  });

  await step('a tag that is not writable: no write, or the gateway refuses it', async () => {
    // The UI offers a write only for writable tags when the gateway says which ones are; when
    // it does not, the gateway's own check must answer.
    const button = page.getByRole('button', { name: 'Write demo/temperature' });
    if (await button.count()) {
      await button.click();
      await page.getByLabel('New value of temperature').fill('20');
      await page.getByRole('button', { name: 'Review write…' }).last().click();
      await page.getByRole('button', { name: 'Confirm write' }).click();
      await page.locator('.write-panel[data-tag="temperature"] .form-msg.error', { hasText: 'not writable' }).waitFor();
    }
  });

  await step('a Modbus test-read shows the gateway\'s answer', async () => {
    const card = page.locator('section[data-device="plc"]');
    await card.locator('summary', { hasText: 'Test read' }).click();
    await card.getByLabel('Register', { exact: true }).selectOption('holding');
    await card.getByLabel('Address', { exact: true }).fill('100');
    await card.getByLabel('Count', { exact: true }).fill('2');
    await card.getByRole('button', { name: 'Read' }).click();
    // Nothing listens on the device's port: a clear error, not a table.
    await card.locator('.read-out .banner.error', { hasText: /Read failed: \S/ }).waitFor();
    // A count the protocol cannot read in one request is stopped in the form.
    await card.getByLabel('Count', { exact: true }).fill('126');
    if (await card.getByLabel('Count', { exact: true }).evaluate((el) => el.validity.valid)) throw new Error('126 holding registers accepted');
    await card.getByLabel('Register', { exact: true }).selectOption('coil');
    if (!(await card.getByLabel('Count', { exact: true }).evaluate((el) => el.validity.valid))) throw new Error('126 coils refused');
  });

  await step('a test-read decoding becomes a tag through the config editor', async () => {
    const card = page.locator('section[data-device="rig"]');
    await card.locator('summary', { hasText: 'Test read' }).click();
    await card.getByLabel('Register', { exact: true }).selectOption('holding');
    await card.getByLabel('Address', { exact: true }).fill('0');
    await card.getByLabel('Count', { exact: true }).fill('2');
    await card.getByRole('button', { name: 'Read' }).click();
    // The f32 in big/big order is 21.5: add that row as a tag.
    const row = card.locator('table.pairs tbody tr', { hasText: '21.5' }).first();
    await row.getByRole('button', { name: 'Add as tag…' }).click();
    await card.getByLabel('Tag name').fill('flow');
    await card.getByLabel('Decoding').selectOption('f32');
    await card.getByRole('button', { name: 'Add to config' }).click();
    await page.getByRole('heading', { level: 1 }).filter({ hasText: /config/i }).waitFor();
    await vstatus().filter({ hasText: /Valid · \+1/ }).waitFor();
    await page.locator('pre.diff .add', { hasText: '- { name: flow, register: holding, address: 0, type: f32, byte_order: big, word_order: big }' }).waitFor();
    await page.getByRole('button', { name: 'Apply…' }).click();
    await page.getByRole('button', { name: 'Apply now' }).click();
    await page.locator('.banner.ok', { hasText: 'Applied' }).waitFor();
    await page.getByRole('link', { name: 'Devices' }).click();
    await valueCell('rig', 'flow').filter({ hasText: /^21\.5/ }).waitFor();
  });

  let original = '';
  await step('an invalid config is marked at its line', async () => {
    await page.getByRole('link', { name: 'Config' }).click();
    await vstatus().filter({ hasText: 'no changes' }).waitFor();
    original = await editor().inputValue();
    const lines = original.split('\n');
    const at = lines.findIndex((l) => /^\s+poll_interval:/.test(l));
    if (at < 0) throw new Error('no poll_interval line in the config');
    lines[at] = lines[at].replace(/poll_interval:.*/, 'poll_interval: soon');
    await editor().fill(lines.join('\n'));
    const line = at + 1;
    await page.locator(`.err-item[data-line="${line}"]`).waitFor();
    await page.locator(`.gutter .ln.bad >> nth=0`).filter({ hasText: String(line) }).waitFor();
    if (!(await page.getByRole('button', { name: 'Apply…' }).isDisabled())) throw new Error('Apply is enabled with errors');
    await page.locator(`.err-item[data-line="${line}"]`).focus();
    await page.keyboard.press('Enter');
    const caretLine = await editor().evaluate((ta) => ta.value.slice(0, ta.selectionStart).split('\n').length);
    if (caretLine !== line) throw new Error(`clicking the error put the caret on line ${caretLine}, not ${line}`);
    await shot('config-error', { fullPage: true });
  });

  await step('a valid config adds a device, applied without a restart', async () => {
    const added = `${original.replace(/\n*$/, '\n')}  - name: added\n    driver: simulated\n    poll_interval: 250ms\n    tags:\n      - { name: level, signal: ramp, min: 0, max: 100, period: 30s, unit: "%" }\n`;
    await editor().fill(added);
    await vstatus().filter({ hasText: /Valid · \+\d+/ }).waitFor();
    await page.locator('pre.diff .add', { hasText: '+  - name: added' }).waitFor();
    await page.getByRole('button', { name: 'Apply…' }).click();
    await page.getByRole('button', { name: 'Apply now' }).click();
    await page.locator('.banner.ok', { hasText: 'Applied' }).waitFor();
    await vstatus().filter({ hasText: 'no changes' }).waitFor();
    await page.getByRole('link', { name: 'Devices' }).click();
    await valueCell('added', 'level').filter({ hasText: /\d/ }).waitFor();
    await valueCell('demo', 'temperature').filter({ hasText: /\d/ }).waitFor();
  });

  await step('an apply with a stale version is refused as a conflict', async () => {
    await page.getByRole('link', { name: 'Config' }).click();
    await vstatus().filter({ hasText: 'no changes' }).waitFor();
    // Someone else changes the file meanwhile (another session of the same user, over the API).
    const text = await editor().inputValue();
    const status = await page.evaluate(async (body) => {
      const s = await (await fetch('/api/session')).json();
      const r = await fetch('/api/config', { method: 'PUT', headers: { 'Content-Type': 'application/yaml', 'X-CSRF-Token': s.csrf_token }, body });
      return r.status;
    }, text.replace('period: 30s', 'period: 40s'));
    if (status !== 200) throw new Error(`the concurrent PUT answered ${status}`);
    await editor().fill(text.replace('period: 30s', 'period: 45s'));
    await vstatus().filter({ hasText: /Valid · \+\d+/ }).waitFor();
    await page.getByRole('button', { name: 'Apply…' }).click();
    await page.getByRole('button', { name: 'Apply now' }).click();
    await page.locator('.banner.error', { hasText: 'Conflict' }).waitFor();
    if (!(await editor().inputValue()).includes('period: 45s')) throw new Error('the conflict lost the edited text');
  });

  await step('restoring the first version from the history removes the device', async () => {
    // The oldest kept version is the config before the first apply.
    const rows = page.locator('table.hist tbody tr');
    await rows.nth(1).waitFor();
    const row = rows.last();
    await row.getByRole('button', { name: /^View version/ }).click();
    const view = page.locator('pre.code-view');
    await view.waitFor();
    if ((await view.textContent()).includes('name: added')) throw new Error('the oldest version already has the added device');
    await row.getByRole('button', { name: /^Restore version/ }).click();
    await row.getByRole('button', { name: 'Restore now' }).click();
    await page.locator('.banner.ok', { hasText: 'Restored' }).waitFor();
    await page.waitForFunction(() => !document.querySelector('#config-yaml').value.includes('name: added'), null, { timeout: T });
    await page.getByRole('link', { name: 'Devices' }).click();
    await valueCell('demo', 'temperature').filter({ hasText: /\d/ }).waitFor();
    await page.locator('section[data-device="added"]').waitFor({ state: 'detached' });
  });

  await step('logs show the config changes live, filtered by level', async () => {
    await page.getByRole('link', { name: 'Logs' }).click();
    await page.locator('.logview .log', { hasText: /config/i }).first().waitFor();
    await page.getByLabel('Level').selectOption('ERROR');
    await page.waitForFunction(() => [...document.querySelectorAll('.logview .log')].every((l) => l.classList.contains('lv-error')), null, { timeout: T });
    await page.getByLabel('Level').selectOption('INFO');
    await page.locator('.logview .log').first().waitFor();
    await page.getByRole('button', { name: 'Pause' }).click();
    await page.getByRole('button', { name: 'Resume' }).waitFor();
    await page.getByRole('button', { name: 'Resume' }).click();
    await page.locator('#conn.ok').waitFor();
    await shot('logs');
  });

  await step('dashboard again: the queue chart kept its samples across pages', async () => {
    await page.getByRole('link', { name: 'Dashboard' }).click();
    await page.locator(`${CLOUD_CARD} figcaption`).waitFor();
    const now = await samples();
    if (!(samplesBefore >= 2 && now >= samplesBefore)) throw new Error(`queue samples: ${samplesBefore} when leaving the dashboard, ${now} back on it`);
    // Sampled every 3 s since the login, whichever page was open.
    await page.waitForFunction((sel) => {
      const c = document.querySelector(`${sel} figcaption`);
      return c && Number((/\((\d+) samples/.exec(c.textContent) || [])[1]) >= 4;
    }, CLOUD_CARD, { timeout: T });
    // The live stream is up (it reconnects within a second after the session was renamed).
    await page.locator('#conn.ok').waitFor();
    await shot('dashboard', { fullPage: true });
  });

  await step('phone width: no sideways scrolling, pages usable', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    for (const [route, name] of [['dashboard', 'phone-dashboard'], ['devices', 'phone-devices']]) {
      await page.getByRole('link', { name: route[0].toUpperCase() + route.slice(1) }).click();
      await page.getByRole('heading', { level: 1 }).filter({ hasText: new RegExp(route, 'i') }).waitFor();
      await page.locator(route === 'devices' ? 'section.device' : 'section.uplink').first().waitFor();
      const wide = await page.evaluate(() => document.documentElement.scrollWidth);
      if (wide > 391) throw new Error(`${route} is ${wide}px wide at a 390px viewport`);
      if (route === 'devices') {
        // Write… and Updated fit on the screen, not behind a sideways scroll of the table.
        for (const el of [page.getByRole('button', { name: 'Write demo/setpoint' }), page.locator('section[data-device="demo"] tr[data-tag="setpoint"] td.age')]) {
          const box = await el.boundingBox();
          if (!box || box.x < 0 || box.x + box.width > 390) throw new Error(`off-screen at 390px: ${JSON.stringify(box)}`);
        }
      }
      await shot(name, { fullPage: true });
    }
    await page.setViewportSize({ width: 1280, height: 860 });
  });

  if (configFile && daemonPid) {
    await step('a file that SIGHUP refused is shown as differing from the running config', async () => {
      const good = fs.readFileSync(configFile, 'utf8');
      fs.writeFileSync(configFile, good.replace(/poll_interval: 250ms/, 'poll_interval: whenever'));
      process.kill(Number(daemonPid), 'SIGHUP');
      await page.getByRole('link', { name: 'Dashboard' }).click();
      await page.locator('.banner.file-differs', { hasText: 'differs from the running config' }).waitFor();
      await page.getByRole('link', { name: 'See what differs on the Config page' }).click();
      const notice = page.locator('.file-slot .banner.file-differs');
      await notice.waitFor();
      await notice.locator('summary').click();
      await notice.locator('pre.diff .add', { hasText: 'poll_interval: whenever' }).waitFor();
      await notice.locator('pre.diff .del', { hasText: 'poll_interval: 250ms' }).waitFor();
      await shot('config-file-differs', { fullPage: true });
      // Put the file back: the notice goes.
      fs.writeFileSync(configFile, good);
      await page.getByRole('link', { name: 'Dashboard' }).click();
      await page.locator('.banner.file-differs').waitFor({ state: 'detached' });
      await page.getByRole('link', { name: 'Devices' }).click();
      await page.getByRole('heading', { level: 1, name: 'Devices' }).waitFor();
    });
  }

  await step('a session ended elsewhere sends the page back to the login', async () => {
    // End this session behind the page's back (as an idle expiry or a password change does).
    await page.evaluate(async () => {
      const s = await (await fetch('/api/session')).json();
      await fetch('/api/logout', { method: 'POST', headers: { 'X-CSRF-Token': s.csrf_token } });
    });
    await page.getByRole('alert').filter({ hasText: 'Your session ended' }).waitFor();
    await page.getByLabel('Username').fill('admin');
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Log in' }).click();
    // Back on the page the user was on.
    await page.getByRole('heading', { level: 1, name: 'Devices' }).waitFor();
    await page.locator('#conn.ok').waitFor();
  });

  await step('logging out returns to the login page; the API refuses the old session', async () => {
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByRole('heading', { name: /tidegate/ }).waitFor();
    const status = await page.evaluate(async () => (await fetch('/api/status')).status);
    if (status !== 401) throw new Error(`/api/status after logout answered ${status}`);
  });

  await step('five failed logins lock the user out, shown with the wait', async () => {
    const button = page.getByRole('button', { name: 'Log in' });
    for (let i = 0; i < 6; i += 1) {
      await page.getByLabel('Username').fill('intruder');
      await page.getByLabel('Password').fill(`guess ${i}`);
      await button.click();
      // The button is disabled while the answer is awaited, enabled again after a refusal,
      // and stays disabled during a lockout.
      await page.waitForFunction(() => {
        const msg = document.querySelector('.form-msg.error');
        const b = document.querySelector('form.login button[type=submit]');
        return msg && (!b.disabled || msg.textContent.includes('locked out'));
      }, null, { timeout: T });
      if (await page.locator('.form-msg.error', { hasText: 'locked out' }).count()) break;
    }
    await page.locator('.form-msg.error', { hasText: /locked out\. Try again in \d+ s/ }).waitFor();
    if (!(await page.getByRole('button', { name: 'Log in' }).isDisabled())) throw new Error('Log in stays enabled during the lockout');
  });

  console.log(`e2e: all steps passed; screenshots in ${outDir}`);
  await browser.close();
  process.exit(0);
} catch (e) {
  console.error(`FAIL ${current}: ${e.message}`);
  for (const err of pageErrors) console.error(`  ${err}`);
  try {
    await page.screenshot({ path: path.join(outDir, 'failure.png'), fullPage: true });
    console.error(`  screenshot: ${path.join(outDir, 'failure.png')}`);
  } catch { /* the page is gone */ }
  await browser.close();
  process.exit(1);
}
