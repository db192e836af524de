// Benchmark of the web UI (docs/BENCHMARKS.md): the size of the UI assets, and the full load
// of the dashboard from the daemon in headless chromium, cold (a fresh browser context: empty
// cache) and warm (a reload: the files revalidate with their ETag).
//   node bench.mjs URL PASSWORD [RUNS]       (run by `cargo test --test web_e2e -- --ignored`)

import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { launch, login } from './lib.mjs';

const [url, password, runsArg] = process.argv.slice(2);
const RUNS = Number(runsArg || 20);
const web = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../web');

let raw = 0;
let gz = 0;
const files = [];
for (const name of fs.readdirSync(web, { recursive: true })) {
  const p = path.join(web, name);
  if (!fs.statSync(p).isFile() || path.basename(p).startsWith('.')) continue;
  const b = fs.readFileSync(p);
  const z = zlib.gzipSync(b, { level: 9 }).length;
  raw += b.length;
  gz += z;
  files.push([name, b.length, z]);
}
files.sort((a, b) => b[1] - a[1]);
console.log(`UI assets: ${files.length} files, ${raw} bytes (${(raw / 1024).toFixed(1)} KiB) uncompressed, ${gz} bytes (${(gz / 1024).toFixed(1)} KiB) gzip -9`);
for (const [n, b, z] of files) console.log(`  ${n.padEnd(14)} ${String(b).padStart(7)} B  gzip ${String(z).padStart(6)} B`);

const browser = await launch();
const ctx0 = await browser.newContext();
const p0 = await ctx0.newPage();
await login(p0, url, 'admin', password);
const state = await ctx0.storageState();
await ctx0.close();

// Timing of one load: the navigation entry, plus when the dashboard showed the status.
async function measure(page, nav) {
  await nav();
  await page.waitForFunction(() => performance.getEntriesByName('tidegate:status-shown').length > 0 && performance.getEntriesByType('navigation')[0].loadEventEnd > 0);
  return page.evaluate(() => {
    const n = performance.getEntriesByType('navigation')[0];
    const res = performance.getEntriesByType('resource');
    return {
      ttfb: n.responseStart - n.startTime,
      dcl: n.domContentLoadedEventEnd - n.startTime,
      load: n.loadEventEnd - n.startTime,
      ready: performance.getEntriesByName('tidegate:status-shown')[0].startTime,
      session: (res.find((r) => r.name.endsWith('/api/session')) || {}).duration,
      status: (res.find((r) => r.name.endsWith('/api/status')) || {}).duration,
      statusStart: (res.find((r) => r.name.endsWith('/api/status')) || {}).startTime,
      bytes: n.transferSize + res.reduce((a, r) => a + (r.transferSize || 0), 0),
      requests: 1 + res.length,
    };
  });
}

const cold = [];
for (let i = 0; i < RUNS; i += 1) {
  const ctx = await browser.newContext({ storageState: state });
  const page = await ctx.newPage();
  cold.push(await measure(page, () => page.goto(url, { waitUntil: 'load' })));
  await ctx.close();
}
const warm = [];
{
  const ctx = await browser.newContext({ storageState: state });
  const page = await ctx.newPage();
  await measure(page, () => page.goto(url, { waitUntil: 'load' }));
  for (let i = 0; i < RUNS; i += 1) warm.push(await measure(page, () => page.reload({ waitUntil: 'load' })));
  await ctx.close();
}
await browser.close();

const q = (xs, k, p) => {
  const s = xs.map((x) => x[k]).sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))];
};
const row = (name, xs) => `| ${name} | ${['ttfb', 'dcl', 'load', 'ready'].map((k) => `${q(xs, k, 0.5).toFixed(1)} / ${q(xs, k, 0.9).toFixed(1)}`).join(' | ')} | ${q(xs, 'requests', 0.5)} | ${(q(xs, 'bytes', 0.5) / 1024).toFixed(1)} KiB |`;
console.log(`\nDashboard load, ${RUNS} runs each, milliseconds from navigation start, median / p90:`);
console.log('| load | TTFB | DOMContentLoaded | load event | status shown | requests | transferred |');
console.log('| --- | --- | --- | --- | --- | --- | --- |');
console.log(row('cold (new context, empty cache)', cold));
console.log(row('warm (reload, ETag revalidation)', warm));
for (const [name, xs] of [['cold', cold], ['warm', warm]]) {
  console.log(`${name}: GET /api/session ${q(xs, 'session', 0.5).toFixed(1)} ms, GET /api/status ${q(xs, 'status', 0.5).toFixed(1)} ms (asked at ${q(xs, 'statusStart', 0.5).toFixed(1)} ms), median`);
}
