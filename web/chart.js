// Inline SVG charts: a sparkline for tag values and a small time chart for queue depth.
// Points are [ms, number]; both scale to their data and draw nothing for fewer than 2 points.

import { s } from './dom.js';
import { fmtNumber } from './format.js';

function scale(points, w, h, pad, minSpan) {
  let t0 = Infinity; let t1 = -Infinity; let y0 = Infinity; let y1 = -Infinity;
  for (const [t, y] of points) {
    if (t < t0) t0 = t;
    if (t > t1) t1 = t;
    if (y < y0) y0 = y;
    if (y > y1) y1 = y;
  }
  if (minSpan && t1 - t0 < minSpan) t0 = t1 - minSpan;
  if (y1 === y0) { y1 += 1; y0 -= 1; }
  const sx = (w - 2 * pad) / Math.max(1, t1 - t0);
  const sy = (h - 2 * pad) / (y1 - y0);
  const xy = ([t, y]) => `${(pad + (t - t0) * sx).toFixed(1)},${(h - pad - (y - y0) * sy).toFixed(1)}`;
  return { xy, t0, t1, y0, y1 };
}

/** A sparkline of `points` into `svg` (created when absent); `label` names it for screen readers. */
export function sparkline(svg, points, label, { w = 120, h = 28 } = {}) {
  if (!svg) {
    svg = s('svg', { class: 'spark', viewBox: `0 0 ${w} ${h}`, width: w, height: h, role: 'img', preserveAspectRatio: 'none' });
    svg.append(s('title'), s('polyline', { class: 'line', points: '' }), s('circle', { class: 'dot', r: 2, cx: -5, cy: -5 }));
  }
  const [title, line, dot] = svg.children;
  if (points.length < 2) {
    line.setAttribute('points', '');
    dot.setAttribute('cx', -5);
    title.textContent = `${label}: not enough readings yet for a trend`;
    svg.setAttribute('aria-label', title.textContent);
    return svg;
  }
  const { xy, y0, y1 } = scale(points, w, h, 2);
  line.setAttribute('points', points.map(xy).join(' '));
  const [cx, cy] = xy(points[points.length - 1]).split(',');
  dot.setAttribute('cx', cx);
  dot.setAttribute('cy', cy);
  const mins = Math.max(1, Math.round((points[points.length - 1][0] - points[0][0]) / 60000));
  title.textContent = `${label}: last ${mins} min, between ${fmtNumber(y0, 4)} and ${fmtNumber(y1, 4)}`;
  svg.setAttribute('aria-label', title.textContent);
  return svg;
}

/** A time chart with a filled area, labelled with the peak and the latest value; returns
 *  {svg, span} (span: the time it covers, as text). */
export function areaChart(points, label, { w = 320, h = 90, span = 0 } = {}) {
  const pad = 4;
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${w} ${h}`, role: 'img' });
  if (points.length < 2) {
    svg.setAttribute('aria-label', `${label}: collecting samples`);
    svg.append(s('title', {}, `${label}: collecting samples`),
      s('text', { x: w / 2, y: h / 2, 'text-anchor': 'middle', class: 'empty' }, 'collecting samples…'));
    return { svg, span: '' };
  }
  const data = points.map(([t, y]) => [t, Math.max(0, y)]);
  data.push([data[data.length - 1][0], 0]);
  const top = Math.max(1, ...points.map((p) => p[1]));
  const sc = scale([...data, [data[0][0], top]], w, h, pad, span);
  const line = points.map(sc.xy).join(' ');
  const first = sc.xy([points[0][0], 0]);
  const last = sc.xy([points[points.length - 1][0], 0]);
  const spanS = Math.round((sc.t1 - sc.t0) / 1000);
  const spanText = spanS < 120 ? `${spanS} s` : `${Math.round(spanS / 60)} min`;
  const cur = points[points.length - 1][1];
  const text = `${label}: now ${fmtNumber(cur)}, peak ${fmtNumber(top)} over the last ${spanText}`;
  svg.setAttribute('aria-label', text);
  svg.append(
    s('title', {}, text),
    s('line', { class: 'grid', x1: pad, x2: w - pad, y1: pad, y2: pad }),
    s('polygon', { class: 'area', points: `${first} ${line} ${last}` }),
    s('polyline', { class: 'line', points: line }),
    s('text', { class: 'label', x: pad + 2, y: pad + 11 }, `peak ${fmtNumber(top)}`),
    s('text', { class: 'label', x: w - pad - 2, y: pad + 11, 'text-anchor': 'end' }, `now ${fmtNumber(cur)}`),
  );
  return { svg, span: spanText };
}
