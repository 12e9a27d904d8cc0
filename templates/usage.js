// /dashboard/usage: a 30-day chart (inline SVG), the per-model breakdown and the call history
// with filters, paging and a CSV export of the same filters.
const SYMBOL = SITE.symbol;
const PAGE_SIZE = 20;
let page = 1;
let series = [];

const money = (amount) => SYMBOL + amount;
const compactMoney = (v) => SYMBOL + Number(v.toPrecision(2)).toLocaleString(LANG, { maximumSignificantDigits: 2 });

// Two lines over the same days: tokens (left axis) and cost (right axis).
function drawChart() {
  const points = series.map((d) => ({
    id: d.day,
    label: new Date(d.day + 'T00:00:00Z').toLocaleDateString(LANG, { month: 'numeric', day: 'numeric', timeZone: 'UTC' }),
    title: `${d.day}: ${number(d.totalTokens)} ${T('usage.tokens')} · ${money(d.cost)} · ${number(d.requests)} ${T('usage.requests')}`,
  }));
  lineChart(document.getElementById('chart'), points,
    { values: series.map((d) => d.totalTokens), format: (v) => number(Math.round(v)), cls: 'tokens', integer: true },
    { values: series.map((d) => Number(d.cost)), format: compactMoney, cls: 'cost' });
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
        cell(number(r.totalTokens)), cell(number(r.cacheReadTokens)), cell(number(r.cacheWriteTokens)),
        cell(number(r.reasoningTokens)), cell(money(r.cost)));
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
