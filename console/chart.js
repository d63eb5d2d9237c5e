// Small SVG charts, drawn from data with no library: a time series (lines with a marker per point,
// or bars) and grouped bars over categories. Each is an <svg role="img"> named by its title, with
// the numbers also in a table beside it for screen readers.
import {h} from './dom.js';

const NS = 'http://www.w3.org/2000/svg';
const W = 800, H = 260, L = 64, R = 16, T = 16, B = 40;
const COLORS = ['#0b5cad', '#c2571a', '#1d6b2f', '#6b2f8f'];

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// Round steps (1, 2, 5 × 10^n) from 0 to at least max.
function ticks(max, count = 5) {
  if (!(max > 0)) max = 1;
  const raw = max / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(v => v >= raw);
  const out = [];
  for (let v = 0; v <= max + step * 1e-9; v += step) out.push(v);
  if (out[out.length - 1] < max) out.push(out[out.length - 1] + step);
  return out;
}

function fmt(v) {
  if (Math.abs(v) >= 1000) return v.toLocaleString('en-US', {maximumFractionDigits: 0});
  return Number(v.toPrecision(3)).toString();
}

function frame(title, yMax) {
  const ys = ticks(yMax);
  const top = ys[ys.length - 1];
  const y = v => T + (H - T - B) * (1 - v / top);
  const svg = s('svg', {viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title}, s('title', {}, title));
  for (const v of ys) {
    svg.append(s('line', {x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: '#e3e7ec'}),
               s('text', {x: L - 6, y: y(v) + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#4a5360'}, fmt(v)));
  }
  svg.append(s('line', {x1: L, x2: W - R, y1: y(0), y2: y(0), stroke: '#8a94a3'}));
  return {svg, y};
}

function legend(series) {
  return h('div', {class: 'legend', 'aria-hidden': 'true'},
    series.map((se, i) => h('span', {}, h('span', {class: `swatch s${i}`}), se.name)));
}

// series: [{name, points: [{t: ms, v: number}]}]; kind 'line' or 'bar'. Time runs from t0 to t1.
export function timeChart(title, series, {kind = 'line', t0, t1, unit = ''} = {}) {
  const all = series.flatMap(se => se.points);
  const first = t0 ?? Math.min(...all.map(p => p.t));
  const last = t1 ?? Math.max(...all.map(p => p.t));
  const span = Math.max(last - first, 1);
  const {svg, y} = frame(title + (unit ? ` (${unit})` : ''), Math.max(0, ...all.map(p => p.v)));
  const x = t => L + (W - L - R) * (t - first) / span;
  for (let i = 0; i <= 4; i++) {  // five dates along the axis
    const t = first + span * i / 4;
    const d = new Date(t).toISOString();
    const label = span > 3 * 86400e3 ? d.slice(5, 10) : d.slice(5, 10) + ' ' + d.slice(11, 16);
    svg.append(s('text', {x: x(t), y: H - B + 18, 'text-anchor': 'middle', 'font-size': 11, fill: '#4a5360'}, label));
  }
  series.forEach((se, i) => {
    const pts = [...se.points].sort((a, b) => a.t - b.t);
    const color = COLORS[i % COLORS.length];
    if (kind === 'bar') {
      const bw = Math.max(2, Math.min(24, (W - L - R) / Math.max(pts.length, 1) * 0.6));
      for (const p of pts)
        svg.append(s('rect', {class: 'pt', x: x(p.t) - bw / 2, y: y(p.v), width: bw, height: Math.max(0, y(0) - y(p.v)), fill: color},
                     s('title', {}, `${new Date(p.t).toISOString()}: ${fmt(p.v)} ${unit}`)));
    } else {
      if (pts.length > 1)
        svg.append(s('polyline', {fill: 'none', stroke: color, 'stroke-width': 2,
                                  points: pts.map(p => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' ')}));
      for (const p of pts)
        svg.append(s('circle', {class: 'pt', cx: x(p.t), cy: y(p.v), r: 3, fill: color},
                     s('title', {}, `${new Date(p.t).toISOString()}: ${fmt(p.v)} ${unit}`)));
    }
  });
  return h('figure', {class: 'chart', 'data-points': String(all.length)},
           h('figcaption', {}, title + (unit ? ` (${unit})` : '')), svg, legend(series));
}

// categories: ['us-east/H100', …]; series: [{name, values: [number per category]}].
export function barChart(title, categories, series, {unit = ''} = {}) {
  const all = series.flatMap(se => se.values);
  const {svg, y} = frame(title + (unit ? ` (${unit})` : ''), Math.max(0, ...all));
  const slot = (W - L - R) / Math.max(categories.length, 1);
  const bw = Math.min(40, slot * 0.8 / Math.max(series.length, 1));
  categories.forEach((c, ci) => {
    const x0 = L + slot * ci + (slot - bw * series.length) / 2;
    series.forEach((se, si) => {
      const v = se.values[ci] || 0;
      svg.append(s('rect', {class: 'pt', x: x0 + bw * si, y: y(v), width: bw, height: Math.max(0, y(0) - y(v)),
                            fill: COLORS[si % COLORS.length]}, s('title', {}, `${c} ${se.name}: ${fmt(v)} ${unit}`)));
    });
    svg.append(s('text', {x: L + slot * (ci + 0.5), y: H - B + 18, 'text-anchor': 'middle', 'font-size': 11, fill: '#4a5360'}, c));
  });
  return h('figure', {class: 'chart', 'data-points': String(all.length)},
           h('figcaption', {}, title + (unit ? ` (${unit})` : '')), svg, legend(series));
}
