// Shared by every page (served from /assets/pages.js; the CSP allows no inline script): the
// string catalogue, times in the browser's time zone, copy buttons and the JSON API helper.
const STRINGS = JSON.parse(document.getElementById('strings').textContent);
const LANG = document.documentElement.lang || 'en';

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
async function api(method, path, body) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
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

renderTimes(document);
