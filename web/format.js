// Formatting of numbers, durations and times for display.

export function fmtNumber(v, digits = 3) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return v.toLocaleString('en-US').replace(/,/g, '\u202f');
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e7 || a < 1e-3)) return v.toExponential(digits);
  return String(Number(v.toFixed(Math.max(0, digits - Math.floor(Math.log10(a || 1))))));
}

export function fmtValue(v) {
  if (v === undefined) return '—';
  if (v === null) return 'null';
  if (typeof v === 'number') return fmtNumber(v, 4);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'string') return v;
  return JSON.stringify(v);
}

/** 3723 s → "1h 2m 3s"; shows the two largest units. */
export function fmtDuration(seconds) {
  if (seconds === undefined || seconds === null || !Number.isFinite(seconds)) return '—';
  let x = Math.max(0, Math.round(seconds));
  const parts = [];
  for (const [unit, n] of [['d', 86400], ['h', 3600], ['m', 60], ['s', 1]]) {
    if (x >= n || (unit === 's' && parts.length === 0)) {
      parts.push(`${Math.floor(x / n)}${unit}`);
      x %= n;
    }
  }
  return parts.slice(0, 2).join(' ');
}

/** Milliseconds with two significant digits below 100 ms ("0.42 ms", "3.5 ms", "14 ms"),
 *  whole above ("250 ms"), seconds from 1 s ("1.2 s"). */
export function fmtMs(ms) {
  if (ms === undefined || ms === null || !Number.isFinite(ms)) return '—';
  if (ms === 0) return '0 ms';
  if (ms < 100) return `${Number(ms.toPrecision(2))} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

/** A rate per second: one decimal below 100 ("0.5 /s", "14.0 /s"), whole above ("250 /s"). */
export function fmtRate(perSecond) {
  if (perSecond === undefined || perSecond === null || !Number.isFinite(perSecond)) return '—';
  return `${perSecond >= 100 ? fmtNumber(Math.round(perSecond)) : perSecond.toFixed(1)} /s`;
}

/** "1 sample", "3 samples". */
export function plural(n, word) {
  return `${fmtNumber(n)} ${word}${n === 1 ? '' : 's'}`;
}

export function fmtBytes(n) {
  if (!Number.isFinite(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

/** An absolute time (Unix ms) as local "YYYY-MM-DD HH:MM:SS". */
export function fmtTime(ms) {
  if (!Number.isFinite(ms)) return '—';
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function fmtClock(ms) {
  return fmtTime(ms).slice(11);
}

/** "12s ago" for a Unix ms timestamp. */
export function fmtAgo(ms, now = Date.now()) {
  if (!Number.isFinite(ms)) return '—';
  const d = (now - ms) / 1000;
  if (d < 0) return 'just now';
  return `${fmtDuration(d)} ago`;
}
