// Shared by every page (served from /assets/pages.js; the CSP allows no inline script): the
// string catalogue, times in the browser's time zone, copy buttons and the JSON API helper.
const STRINGS = JSON.parse(document.getElementById('strings').textContent);
const LANG = document.documentElement.lang || 'en';
// The currency: {currency, symbol}.
const SITE = JSON.parse(document.getElementById('site').textContent);

function T(key, vars) {
  let text = STRINGS[key] || key;
  for (const [name, value] of Object.entries(vars || {})) text = text.split('{' + name + '}').join(String(value));
  return text;
}

function localDate(iso) {
  return new Date(iso).toLocaleDateString(LANG, { year: 'numeric', month: 'short', day: 'numeric' });
}

function localDateTime(iso) {
  return new Date(iso).toLocaleString(LANG, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

// "3 minutes ago", "in 12 days", in the page's language.
function relativeTime(iso) {
  const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
  const format = new Intl.RelativeTimeFormat(LANG, { numeric: 'auto' });
  const units = [['year', 31536000], ['month', 2592000], ['day', 86400], ['hour', 3600], ['minute', 60]];
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size) return format.format(Math.round(seconds / size), unit);
  }
  return format.format(Math.round(seconds), 'second');
}

function formatTime(iso, how) {
  if (!iso) return T('keys.never');
  if (how === 'relative') return relativeTime(iso);
  if (how === 'date') return localDate(iso);
  return localDateTime(iso);
}

// <time datetime="…" data-format="date|datetime|relative"> elements show local times.
function renderTimes(root) {
  for (const el of (root || document).querySelectorAll('time[data-format]')) {
    el.textContent = formatTime(el.getAttribute('datetime'), el.dataset.format);
    el.title = localDateTime(el.getAttribute('datetime'));
  }
}

function timeElement(iso, how) {
  const el = document.createElement('time');
  if (iso) { el.setAttribute('datetime', iso); el.dataset.format = how; el.title = localDateTime(iso); }
  el.textContent = formatTime(iso, how);
  return el;
}

function cell(content) {
  const td = document.createElement('td');
  if (content instanceof Node) td.appendChild(content); else td.textContent = content == null ? '' : String(content);
  return td;
}

function button(label, className, data) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = className;
  b.textContent = label;
  for (const [k, v] of Object.entries(data || {})) b.dataset[k] = v;
  return b;
}

function show(id, visible) { document.getElementById(id).hidden = !visible; }

function showError(id, message) {
  const el = document.getElementById(id);
  el.textContent = message;
  el.hidden = !message;
}

// Calls the dashboard's JSON API; resolves to the body, rejects with a message for the page.
async function api(method, path, body, headers) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...(headers || {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new Error(T('common.network_error'));
  }
  if (res.status === 401) { window.location.href = '/login?next=' + encodeURIComponent(location.pathname); throw new Error(T('common.signed_out')); }
  if (res.status === 204) return null;
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) throw new Error(T('common.failed', { message: (data && data.error && data.error.message) || res.status }));
  return data;
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try { await navigator.clipboard.writeText(text); return true; } catch (e) { /* fall back below */ }
  }
  const area = document.createElement('textarea');
  area.value = text;
  area.setAttribute('readonly', '');
  area.className = 'offscreen';
  document.body.appendChild(area);
  area.select();
  const ok = document.execCommand('copy');
  area.remove();
  return ok;
}

document.addEventListener('click', async (event) => {
  const copy = event.target.closest('[data-copy]');
  if (!copy) return;
  const ok = await copyText(document.getElementById(copy.dataset.copy).textContent.trim());
  copy.textContent = ok ? T('common.copied') : T('common.copy_failed');
  setTimeout(() => { copy.textContent = T('common.copy'); }, 2000);
});

const number = (n) => Number(n).toLocaleString(LANG);
const SVG_NS = 'http://www.w3.org/2000/svg';

function svg(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// A line chart in inline SVG: `points` ({id, label, title}) along the x axis, the `left` line
// on the left axis and the optional `right` line on the right one ({values, format, cls, integer}).
// Points carry `data-point` (their id) and a `<title>` tooltip.
function lineChart(box, points, left, right) {
  const width = Math.max(box.clientWidth, 280);
  const height = 220;
  // A count axis (`integer`) spans at least 0–4, so its five labels are whole and distinct.
  const axes = [left, right].filter(Boolean).map((a) => ({ ...a, max: niceMax(Math.max(a.integer ? 4 : 0, ...a.values)) }));
  const label = (a, i) => a.format((a.max * (4 - i)) / 4);
  // Room for the longest label on each side (about 7 px a character at 11 px).
  const room = (a) => (a ? 12 + 7 * Math.max(...[0, 1, 2, 3, 4].map((i) => label(a, i).length)) : 16);
  const pad = { l: room(axes[0]), r: room(axes[1]), t: 12, b: 28 };
  const w = width - pad.l - pad.r;
  const h = height - pad.t - pad.b;
  const x = (i) => pad.l + (points.length < 2 ? w / 2 : (i * w) / (points.length - 1));
  const y = (a, v) => pad.t + h - (v / a.max) * h;
  const chart = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, class: 'chart-svg' });
  for (let i = 0; i <= 4; i++) {
    const gy = pad.t + (h * i) / 4;
    chart.appendChild(svg('line', { x1: pad.l, x2: pad.l + w, y1: gy, y2: gy, class: 'grid' }));
    chart.appendChild(svg('text', { x: pad.l - 6, y: gy + 4, 'text-anchor': 'end', class: 'axis ' + axes[0].cls }, label(axes[0], i)));
    if (axes[1]) chart.appendChild(svg('text', { x: pad.l + w + 6, y: gy + 4, class: 'axis ' + axes[1].cls }, label(axes[1], i)));
  }
  const step = Math.max(1, Math.ceil(points.length / Math.max(2, Math.floor(w / 70))));
  points.forEach((p, i) => {
    if (i % step === 0 || i === points.length - 1) {
      chart.appendChild(svg('text', { x: x(i), y: height - 8, 'text-anchor': 'middle', class: 'axis' }, p.label));
    }
  });
  for (const a of axes) {
    chart.appendChild(svg('polyline', { points: a.values.map((v, i) => `${x(i)},${y(a, v)}`).join(' '), class: 'line ' + a.cls }));
  }
  points.forEach((p, i) => {
    const dot = svg('circle', { cx: x(i), cy: y(axes[0], axes[0].values[i]), r: 3, class: 'dot ' + axes[0].cls, 'data-point': p.id });
    dot.appendChild(svg('title', {}, p.title));
    chart.appendChild(dot);
  });
  box.replaceChildren(chart);
}

renderTimes(document);

// The key settings dialog (templates/key_settings.html), shared by the dashboard and the back
// office: fills it from a key's `settings`, and PATCHes only what changed to `path` (an
// empty field clears its control). `onSaved` gets the updated key.
function openKeySettings(key, path, onSaved) {
  const dialog = document.getElementById('key-settings');
  const s = key.settings || {};
  const field = (id) => document.getElementById(id);
  const list = (v) => (v || []).join(', ');
  const localInput = (iso) => {
    if (!iso) return '';
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  };
  const initial = {
    models: list(s.allowedModels), limit: s.spendLimit || '', period: s.spendLimitPeriod || 'total',
    expires: localInput(s.expiresAt), ips: list(s.allowedIps), rpm: s.rpm == null ? '' : String(s.rpm),
    tpm: s.tpm == null ? '' : String(s.tpm),
  };
  field('ks-name').textContent = key.name;
  field('ks-models').value = initial.models;
  field('ks-limit').value = initial.limit;
  field('ks-period').value = initial.period;
  field('ks-expires').value = initial.expires;
  field('ks-ips').value = initial.ips;
  field('ks-rpm').value = initial.rpm;
  field('ks-tpm').value = initial.tpm;
  showError('ks-error', '');
  const split = (v) => { const items = v.split(/[\s,]+/).filter(Boolean); return items.length ? items : null; };
  const int = (v) => (v.trim() === '' ? null : Number(v));
  const form = field('ks-form');
  form.onsubmit = async (event) => {
    event.preventDefault();
    const now = {
      models: field('ks-models').value.trim(), limit: field('ks-limit').value.trim(), period: field('ks-period').value,
      expires: field('ks-expires').value, ips: field('ks-ips').value.trim(), rpm: field('ks-rpm').value.trim(),
      tpm: field('ks-tpm').value.trim(),
    };
    const body = {};
    if (now.models !== initial.models) body.allowedModels = split(now.models);
    if (now.limit !== initial.limit || (now.limit && now.period !== initial.period)) {
      body.spendLimit = now.limit || null;
      if (now.limit) body.spendLimitPeriod = now.period;
    }
    if (now.expires !== initial.expires) body.expiresAt = now.expires ? new Date(now.expires).toISOString() : null;
    if (now.ips !== initial.ips) body.allowedIps = split(now.ips);
    if (now.rpm !== initial.rpm) body.rpm = int(now.rpm);
    if (now.tpm !== initial.tpm) body.tpm = int(now.tpm);
    if (Object.keys(body).length === 0) { dialog.close(); return; }
    try {
      const updated = await api('PATCH', path, body);
      dialog.close();
      onSaved(updated);
    } catch (e) {
      showError('ks-error', e.message);
    }
  };
  field('ks-cancel').onclick = () => dialog.close();
  dialog.showModal();
}

// A one-line summary of a key's controls, for its row ('' when it has none).
function keySettingsSummary(settings) {
  const s = settings || {};
  const parts = [];
  if (s.allowedModels) parts.push(T('keys.settings.summary_models', { n: s.allowedModels.length }));
  if (s.spendLimit) parts.push(T('keys.settings.limit_per.' + s.spendLimitPeriod, { amount: s.spendLimit }));
  if (s.expiresAt) parts.push(T('keys.settings.summary_expires', { date: new Date(s.expiresAt).toLocaleDateString() }));
  if (s.allowedIps) parts.push(T('keys.settings.summary_ips', { n: s.allowedIps.length }));
  if (s.rpm) parts.push(T('keys.settings.summary_rpm', { n: s.rpm }));
  if (s.tpm) parts.push(T('keys.settings.summary_tpm', { n: s.tpm }));
  return parts.join(' · ');
}
