// Line charts drawn in SVG: one series per version, time on x, a score
// in 0..1 (or any range) on y, an optional dashed target line.

import { h, s, when } from './dom.js';

const COLORS = ['#2563eb', '#d97706', '#059669', '#9333ea', '#dc2626', '#0891b2'];

export function lineChart({ series, target, yMin = 0, yMax = 1, format = (v) => v.toFixed(2), title }) {
  const W = 560, H = 220, L = 44, R = 12, T = 12, B = 28;
  const points = series.flatMap((sr) => sr.points);
  if (points.length === 0) return h('p', { class: 'muted' }, 'No points yet.');
  const xs = points.map((p) => new Date(p.at).getTime());
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x0 === x1) { x0 -= 3600e3; x1 += 3600e3; }
  const lo = Math.min(yMin, ...points.map((p) => p.y));
  const hi = Math.max(yMax, ...points.map((p) => p.y));
  const X = (t) => L + ((t - x0) / (x1 - x0)) * (W - L - R);
  const Y = (v) => T + (1 - (v - lo) / (hi - lo || 1)) * (H - T - B);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': title || 'chart' });
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    svg.append(s('line', { x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: 'chart-grid' }),
      s('text', { x: L - 6, y: Y(v) + 4, class: 'chart-axis', 'text-anchor': 'end' }, format(v)));
  }
  svg.append(s('text', { x: L, y: H - 8, class: 'chart-axis' }, when(new Date(x0).toISOString())),
    s('text', { x: W - R, y: H - 8, class: 'chart-axis', 'text-anchor': 'end' }, when(new Date(x1).toISOString())));
  if (target != null) {
    svg.append(s('line', { x1: L, x2: W - R, y1: Y(target), y2: Y(target), class: 'chart-target' }),
      s('text', { x: W - R, y: Y(target) - 4, class: 'chart-axis', 'text-anchor': 'end' }, `target ${format(target)}`));
  }
  series.forEach((sr, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = [...sr.points].sort((a, b) => new Date(a.at) - new Date(b.at));
    svg.append(s('polyline', { points: pts.map((p) => `${X(new Date(p.at).getTime())},${Y(p.y)}`).join(' '), fill: 'none', stroke: color, 'stroke-width': 2 }));
    for (const p of pts) {
      svg.append(s('circle', { cx: X(new Date(p.at).getTime()), cy: Y(p.y), r: 3.5, fill: color },
        s('title', null, `${sr.name}: ${format(p.y)} at ${when(p.at)}`)));
    }
  });
  const legend = h('div', { class: 'legend' }, series.map((sr, i) => h('span', { class: 'legend-item' },
    h('span', { class: `legend-swatch swatch-${i % COLORS.length}` }), sr.name)));
  return h('figure', { class: 'chart-figure' }, title ? h('figcaption', null, title) : null, svg, legend);
}
