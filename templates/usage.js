// /dashboard/usage: a 30-day chart (inline SVG), the per-model breakdown and the call history
// with filters, paging and a CSV export of the same filters.
const SYMBOL = JSON.parse(document.getElementById('currency').textContent).symbol;
const SVG = 'http://www.w3.org/2000/svg';
const PAGE_SIZE = 20;
let page = 1;
let series = [];

const money = (amount) => SYMBOL + amount;
const number = (n) => Number(n).toLocaleString(LANG);

function svg(name, attrs, text) {
  const el = document.createElementNS(SVG, name);
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

// Two lines over the same days: tokens (left axis) and cost (right axis).
function drawChart() {
  const box = document.getElementById('chart');
  const width = Math.max(box.clientWidth, 280);
  const height = 220;
  const tokens = series.map((d) => d.totalTokens);
  const costs = series.map((d) => Number(d.cost));
  const maxT = niceMax(Math.max(0, ...tokens));
  const maxC = niceMax(Math.max(0, ...costs));
  const tokenLabel = (i) => number(Math.round(maxT * (4 - i) / 4));
  const costLabel = (i) => SYMBOL + Number((maxC * (4 - i) / 4).toPrecision(2)).toLocaleString(LANG, { maximumSignificantDigits: 2 });
  // Room for the longest label on each side (about 7 px a character at 11 px).
  const room = (label) => 12 + 7 * Math.max(...[0, 1, 2, 3, 4].map((i) => label(i).length));
  const pad = { l: room(tokenLabel), r: room(costLabel), t: 12, b: 28 };
  const w = width - pad.l - pad.r;
  const h = height - pad.t - pad.b;
  const x = (i) => pad.l + (series.length < 2 ? w / 2 : (i * w) / (series.length - 1));
  const yT = (v) => pad.t + h - (v / maxT) * h;
  const yC = (v) => pad.t + h - (v / maxC) * h;
  const chart = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, class: 'chart-svg' });
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + (h * i) / 4;
    chart.appendChild(svg('line', { x1: pad.l, x2: pad.l + w, y1: y, y2: y, class: 'grid' }));
    chart.appendChild(svg('text', { x: pad.l - 6, y: y + 4, 'text-anchor': 'end', class: 'axis tokens' }, tokenLabel(i)));
    chart.appendChild(svg('text', { x: pad.l + w + 6, y: y + 4, class: 'axis cost' }, costLabel(i)));
  }
  const step = Math.max(1, Math.ceil(series.length / Math.max(2, Math.floor(w / 70))));
  series.forEach((d, i) => {
    if (i % step === 0 || i === series.length - 1) {
      const label = new Date(d.day + 'T00:00:00Z').toLocaleDateString(LANG, { month: 'numeric', day: 'numeric', timeZone: 'UTC' });
      chart.appendChild(svg('text', { x: x(i), y: height - 8, 'text-anchor': 'middle', class: 'axis' }, label));
    }
  });
  const line = (ys, cls) => svg('polyline', { points: series.map((d, i) => `${x(i)},${ys(i)}`).join(' '), class: 'line ' + cls });
  chart.appendChild(line((i) => yT(tokens[i]), 'tokens'));
  chart.appendChild(line((i) => yC(costs[i]), 'cost'));
  series.forEach((d, i) => {
    const dot = svg('circle', { cx: x(i), cy: yT(tokens[i]), r: 3, class: 'dot tokens', 'data-day': d.day });
    dot.appendChild(svg('title', {}, `${d.day}: ${number(d.totalTokens)} ${T('usage.tokens')} · ${money(d.cost)} · ${number(d.requests)} ${T('usage.requests')}`));
    chart.appendChild(dot);
  });
  box.replaceChildren(chart);
}

function filterParams() {
  const params = new URLSearchParams();
  const model = document.getElementById('f-model').value;
  const key = document.getElementById('f-key').value;
  const status = document.getElementById('f-status').value;
  const from = document.getElementById('f-from').value;
  const to = document.getElementById('f-to').value;
  if (model) params.set('model', model);
  if (key) params.set('keyId', key);
  if (status) params.set('statusCode', status);
  // Dates are days in the browser's time zone: send the instants they start and end at.
  if (from) { const [y, m, d] = from.split('-').map(Number); params.set('startDate', new Date(y, m - 1, d).toISOString()); }
  if (to) { const [y, m, d] = to.split('-').map(Number); params.set('endDate', new Date(new Date(y, m - 1, d + 1).getTime() - 1).toISOString()); }
  return params;
}

async function loadChart() {
  const params = new URLSearchParams({ days: '30' });
  const model = document.getElementById('f-model').value;
  const key = document.getElementById('f-key').value;
  if (model) params.set('model', model);
  if (key) params.set('keyId', key);
  try {
    const body = await api('GET', '/api/internal/usage/daily?' + params);
    series = body.series;
    drawChart();
    document.getElementById('sum-requests').textContent = number(body.totals.requests);
    document.getElementById('sum-tokens').textContent = number(body.totals.totalTokens);
    document.getElementById('sum-cost').textContent = money(body.totals.cost);
    const rows = body.models.map((m) => {
      const row = document.createElement('tr');
      row.append(cell(m.model), cell(number(m.requests)), cell(number(m.totalTokens)), cell(money(m.cost)));
      return row;
    });
    if (rows.length === 0) {
      const row = document.createElement('tr');
      const td = cell(T('usage.no_calls_period'));
      td.colSpan = 4;
      td.className = 'muted';
      row.appendChild(td);
      rows.push(row);
    }
    document.querySelector('#by-model tbody').replaceChildren(...rows);
    showError('chart-error', '');
  } catch (e) {
    showError('chart-error', e.message);
  } finally {
    show('chart-loading', false);
  }
}

function statusBadge(code) {
  const span = document.createElement('span');
  span.className = 'badge ' + (code >= 200 && code < 300 ? 'on' : 'off');
  span.textContent = code;
  return span;
}

async function loadHistory() {
  const params = filterParams();
  document.getElementById('export-csv').href = '/api/internal/usage/export?' + params;
  params.set('page', page);
  params.set('pageSize', PAGE_SIZE);
  show('history-loading', true);
  try {
    const body = await api('GET', '/api/internal/usage?' + params);
    const rows = body.data.map((r) => {
      const row = document.createElement('tr');
      row.dataset.requestId = r.requestId;
      row.append(cell(timeElement(r.createdAt, 'datetime')), cell(r.model), cell(r.keyName || '—'), cell(statusBadge(r.statusCode)),
        cell(number(r.totalTokens)), cell(money(r.cost)));
      return row;
    });
    document.querySelector('#history tbody').replaceChildren(...rows);
    const filtered = [...filterParams().keys()].length > 0;
    show('history', rows.length > 0);
    show('history-empty', rows.length === 0 && !filtered && page === 1);
    showError('history-error', rows.length === 0 && (filtered || page > 1) ? T('usage.no_match') : '');
    document.getElementById('page-info').textContent = T('usage.page', { page });
    document.getElementById('prev-page').disabled = page <= 1;
    document.getElementById('next-page').disabled = rows.length < PAGE_SIZE;
  } catch (e) {
    showError('history-error', e.message);
  } finally {
    show('history-loading', false);
  }
}

document.getElementById('filters').addEventListener('change', (event) => {
  page = 1;
  loadHistory();
  if (event.target.id === 'f-model' || event.target.id === 'f-key') loadChart();
});
document.getElementById('filters').addEventListener('submit', (event) => event.preventDefault());
document.getElementById('prev-page').addEventListener('click', () => { if (page > 1) { page -= 1; loadHistory(); } });
document.getElementById('next-page').addEventListener('click', () => { page += 1; loadHistory(); });
let resizeTimer;
window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(() => series.length && drawChart(), 150); });

loadChart();
loadHistory();
