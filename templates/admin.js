// The back office's pages (served from /assets/admin.js): each page is filled from
// /api/admin/* and changes things through it; which page this is comes from <body data-page>.
const money = (amount) => SITE.symbol + amount;
const PAGE = document.body.dataset.page;
const fail = (e) => showError('admin-error', e ? e.message || String(e) : '');
let confirmAction = null;

function confirmThen(text, action) {
  confirmAction = action;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm').showModal();
}

if (document.getElementById('confirm')) {
  document.getElementById('confirm-no').addEventListener('click', () => { confirmAction = null; document.getElementById('confirm').close(); });
  document.getElementById('confirm-yes').addEventListener('click', async () => {
    document.getElementById('confirm').close();
    const action = confirmAction;
    confirmAction = null;
    if (action) { try { await action(); fail(null); } catch (e) { fail(e); } }
  });
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) tr.appendChild(c instanceof HTMLTableCellElement ? c : cell(c));
  return tr;
}

function emptyRow(table, columns) {
  const td = cell(T('admin.none'));
  td.colSpan = columns;
  td.className = 'muted';
  return row([td]);
}

function badge(on, onText, offText) {
  const span = document.createElement('span');
  span.className = 'badge ' + (on ? 'on' : 'off');
  span.textContent = on ? onText : offText;
  return span;
}

function actions(...buttons) {
  const td = document.createElement('td');
  td.className = 'actions';
  td.append(...buttons);
  return td;
}

// A paged list: `load(page)` fills the table and reports whether a next page exists.
function pager(load) {
  let page = 1;
  const refresh = async () => {
    show('list-loading', true);
    try {
      const { total, pageSize } = await load(page);
      const pages = Math.max(1, Math.ceil(total / pageSize));
      document.getElementById('page-info').textContent = T('admin.page_of', { page, pages, total });
      document.getElementById('prev-page').disabled = page <= 1;
      document.getElementById('next-page').disabled = page >= pages;
      fail(null);
    } catch (e) {
      fail(e);
    } finally {
      show('list-loading', false);
    }
  };
  document.getElementById('prev-page').addEventListener('click', () => { if (page > 1) { page -= 1; refresh(); } });
  document.getElementById('next-page').addEventListener('click', () => { page += 1; refresh(); });
  return { refresh, first: () => { page = 1; return refresh(); } };
}

function debounce(fn, ms) {
  let timer;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

const todayUtc = () => new Date().toISOString().slice(0, 10);

// --- /admin ---------------------------------------------------------------------------------
async function home() {
  try {
    const month = todayUtc().slice(0, 8) + '01';
    const days = await api('GET', `/api/admin/revenue?granularity=day&start=${month}&end=${todayUtc()}`);
    const today = days.periods.find((p) => p.period === todayUtc());
    document.getElementById('charged-today').textContent = money(today ? today.charged : '0.00');
    document.getElementById('requests-today').textContent = number(today ? today.requests : 0);
    document.getElementById('charged-month').textContent = money(days.totals.charged);
    document.getElementById('topups-month').textContent = money(days.totals.topups);
    document.getElementById('tokens-month').textContent = number(days.totals.tokens);
    const months = await api('GET', `/api/admin/revenue?granularity=month&start=${month}&end=${todayUtc()}`);
    const current = months.periods[months.periods.length - 1];
    document.getElementById('paying-month').textContent = number(current ? current.payingUsers : 0);
  } catch (e) {
    fail(e);
  }
}

// --- /admin/models --------------------------------------------------------------------------
function editModel(m) {
  document.getElementById('m-id').value = m ? m.id : '';
  document.getElementById('m-name').value = m ? m.name : '';
  document.getElementById('m-upstream').value = m ? m.upstreamModel : '';
  document.getElementById('m-input').value = m ? m.inputPrice : '';
  document.getElementById('m-output').value = m ? m.outputPrice : '';
  document.getElementById('m-cache-read').value = m && m.cacheReadPrice !== null ? m.cacheReadPrice : '';
  document.getElementById('m-cache-write').value = m && m.cacheWritePrice !== null ? m.cacheWritePrice : '';
  document.getElementById('m-request').value = m ? m.requestPrice : '';
  document.getElementById('m-max-output').value = m ? m.maxOutputTokens : '';
  document.getElementById('m-context').value = m ? m.contextWindow : '';
  document.getElementById('m-cap').value = m ? m.capField : 'max_completion_tokens';
  document.getElementById('m-enabled').checked = m ? m.enabled : true;
  document.getElementById('model-form-title').textContent = m ? T('admin.models.edit', { name: m.name }) : T('admin.models.new');
  show('m-cancel', !!m);
  if (m) document.getElementById('m-name').focus();
}

async function loadModels() {
  const body = await api('GET', '/api/admin/models');
  const rows = body.data.map((m) => {
    const tr = row([m.name, m.upstreamModel, money(m.inputPrice), money(m.outputPrice),
      m.cacheReadPrice === null ? T('admin.models.default_price') : money(m.cacheReadPrice),
      m.cacheWritePrice === null ? T('admin.models.default_price') : money(m.cacheWritePrice),
      money(m.requestPrice), number(m.maxOutputTokens),
      number(m.contextWindow), number(m.requestsLast30Days), badge(m.enabled, T('admin.models.on'), T('admin.models.off')),
      actions(
        button(T('admin.edit'), 'secondary small', { edit: m.id }),
        button(m.enabled ? T('keys.disable') : T('keys.enable'), 'secondary small', { toggle: m.id }),
        button(T('admin.delete'), 'danger small', { remove: m.id }),
      )]);
    tr.dataset.model = m.name;
    tr.model = m;
    return tr;
  });
  document.querySelector('#models tbody').replaceChildren(...(rows.length ? rows : [emptyRow('models', 12)]));
  show('list-loading', false);
}

function models() {
  const form = document.getElementById('model-form');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const id = document.getElementById('m-id').value;
    const int = (fid) => { const v = document.getElementById(fid).value.trim(); return v === '' ? undefined : Number(v); };
    const text = (fid) => { const v = document.getElementById(fid).value.trim(); return v === '' ? undefined : v; };
    // An empty cache price is sent as null: the price goes back to its default.
    const cachePrice = (fid) => text(fid) ?? null;
    const body = {
      name: text('m-name'), upstreamModel: text('m-upstream'), inputPrice: text('m-input'), outputPrice: text('m-output'),
      cacheReadPrice: cachePrice('m-cache-read'), cacheWritePrice: cachePrice('m-cache-write'), requestPrice: text('m-request'),
      maxOutputTokens: int('m-max-output'), contextWindow: int('m-context'),
      capField: document.getElementById('m-cap').value, enabled: document.getElementById('m-enabled').checked,
    };
    try {
      await api(id ? 'PATCH' : 'POST', id ? `/api/admin/models/${id}` : '/api/admin/models', body);
      editModel(null);
      await loadModels();
      fail(null);
    } catch (e) {
      fail(e);
    }
  });
  document.getElementById('m-cancel').addEventListener('click', () => editModel(null));
  document.querySelector('#models tbody').addEventListener('click', async (event) => {
    const b = event.target.closest('button');
    if (!b) return;
    const m = b.closest('tr').model;
    if (b.dataset.edit) { editModel(m); window.scrollTo(0, 0); return; }
    if (b.dataset.toggle) {
      try { await api('PATCH', `/api/admin/models/${m.id}`, { enabled: !m.enabled }); await loadModels(); fail(null); } catch (e) { fail(e); }
      return;
    }
    if (b.dataset.remove) {
      confirmThen(T('admin.models.delete_confirm', { name: m.name }), async () => { await api('DELETE', `/api/admin/models/${m.id}`); await loadModels(); });
    }
  });
  loadModels().catch(fail);
}

// --- /admin/users ---------------------------------------------------------------------------
function users() {
  const list = pager(async (page) => {
    const params = new URLSearchParams({ page, pageSize: 25 });
    for (const [id, name] of [['u-q', 'q'], ['u-role', 'role'], ['u-status', 'status']]) {
      const v = document.getElementById(id).value.trim();
      if (v) params.set(name, v);
    }
    const body = await api('GET', '/api/admin/users?' + params);
    const rows = body.data.map((u) => {
      const link = document.createElement('a');
      link.href = `/admin/users/${u.id}`;
      link.textContent = u.email;
      return row([link, T('admin.role.' + u.role), badge(!u.disabled, T('keys.active'), T('keys.disabled')), money(u.balance),
        number(u.subscriptionTokens), number(u.keys), money(u.spendLast30Days), timeElement(u.lastActiveAt, 'relative')]);
    });
    document.querySelector('#users tbody').replaceChildren(...(rows.length ? rows : [emptyRow('users', 8)]));
    return body;
  });
  const again = debounce(() => list.first(), 250);
  document.getElementById('user-filters').addEventListener('input', again);
  document.getElementById('user-filters').addEventListener('submit', (e) => e.preventDefault());
  list.refresh();
}

// --- /admin/users/{id} ----------------------------------------------------------------------
function userDetail() {
  const id = document.getElementById('user-detail').dataset.userId;
  let user = null;
  const keysById = new Map();
  const load = async () => {
    user = await api('GET', `/api/admin/users/${id}`);
    document.getElementById('u-email').textContent = user.email + (user.name ? ` (${user.name})` : '');
    const status = document.getElementById('u-status');
    status.className = 'badge ' + (user.disabled ? 'off' : 'on');
    status.textContent = user.disabled ? T('keys.disabled') : T('keys.active');
    document.getElementById('u-role').textContent = T('admin.role.' + user.role);
    document.getElementById('u-balance').textContent = money(user.balance);
    document.getElementById('u-spend').textContent = money(user.spendLast30Days);
    document.getElementById('u-last-active').replaceChildren(timeElement(user.lastActiveAt, 'relative'));
    document.getElementById('u-toggle-disabled').textContent = user.disabled ? T('admin.user.enable') : T('admin.user.disable');
    document.getElementById('u-toggle-role').textContent = user.role === 'admin' ? T('admin.user.make_user') : T('admin.user.make_admin');
    const subs = user.subscriptions.map((s) => {
      const tr = row([s.name, `${number(s.tokensRemaining)} / ${number(s.tokensTotal)}`, timeElement(s.expiresAt, 'date'),
        actions(button(T('admin.user.renew'), 'secondary small', { renew: s.id }))]);
      return tr;
    });
    document.querySelector('#u-subscriptions tbody').replaceChildren(...(subs.length ? subs : [emptyRow('u-subscriptions', 4)]));
    const limit = (v) => (v == null ? '' : String(v));
    document.getElementById('l-rpm').value = limit(user.limits.rpm);
    document.getElementById('l-tpm').value = limit(user.limits.tpm);
    document.getElementById('l-concurrent').value = limit(user.limits.maxConcurrent);
    const keyRows = user.apiKeys.map((k) => {
      const masked = document.createElement('code');
      masked.textContent = `${k.prefix}…${k.last4 || ''}`;
      const state = k.revokedAt ? badge(false, '', T('admin.user.revoked')) : badge(!k.disabled, T('keys.active'), T('keys.disabled'));
      const name = document.createElement('span');
      name.textContent = k.name;
      const summary = keySettingsSummary(k.settings);
      if (summary) {
        const small = document.createElement('div');
        small.className = 'muted key-summary';
        small.textContent = summary;
        name.appendChild(small);
      }
      keysById.set(String(k.id), k);
      const tr = row([name, masked, timeElement(k.createdAt, 'datetime'), timeElement(k.lastUsedAt, 'relative'), state,
        k.revokedAt ? cell('') : actions(button(T('keys.settings'), 'secondary small', { settings: k.id }),
          button(T('keys.revoke'), 'danger small', { revoke: k.id, name: k.name }))]);
      return tr;
    });
    document.querySelector('#u-keys tbody').replaceChildren(...(keyRows.length ? keyRows : [emptyRow('u-keys', 6)]));
    const ledger = user.ledger.map((t) => row([timeElement(t.createdAt, 'datetime'), t.kind, money(t.amount), t.reason || '']));
    document.querySelector('#u-ledger tbody').replaceChildren(...(ledger.length ? ledger : [emptyRow('u-ledger', 4)]));
    const usage = user.recentUsage.map((r) => row([timeElement(r.createdAt, 'datetime'), r.model, String(r.statusCode), number(r.totalTokens),
      number(r.cacheReadTokens), number(r.cacheWriteTokens), number(r.reasoningTokens), money(r.cost),
      r.channel || '–', String(r.attempts)]));
    document.querySelector('#u-usage tbody').replaceChildren(...(usage.length ? usage : [emptyRow('u-usage', 10)]));
  };
  const run = async (fn) => { try { await fn(); await load(); fail(null); } catch (e) { fail(e); } };
  // One idempotency key per intended change: a retried submit of the same form is a no-op.
  let pendingKey = null;
  document.getElementById('balance-form').addEventListener('input', () => { pendingKey = null; });
  document.getElementById('balance-form').addEventListener('submit', (event) => {
    event.preventDefault();
    pendingKey = pendingKey || crypto.randomUUID();
    show('balance-done', false);
    const amount = document.getElementById('b-amount').value.trim();
    const reason = document.getElementById('b-reason').value.trim();
    run(async () => {
      const res = await fetch(`/api/admin/users/${id}/balance`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': pendingKey },
        body: JSON.stringify({ amount, reason }),
      });
      const body = await res.json();
      if (!res.ok) {
        const extra = body.error && body.error.balance ? ' ' + T('admin.user.current_balance', { balance: money(body.error.balance) }) : '';
        const message = /[.。]$/.test(body.error.message) ? body.error.message : body.error.message + '.';
        throw new Error(T('common.failed', { message }) + extra);
      }
      pendingKey = null;
      document.getElementById('b-amount').value = '';
      document.getElementById('b-reason').value = '';
      const done = document.getElementById('balance-done');
      done.textContent = T('admin.user.balance_done', { before: money(body.balanceBefore), after: money(body.balance) });
      done.hidden = false;
    });
  });
  document.getElementById('u-toggle-disabled').addEventListener('click', () => {
    const text = user.disabled ? T('admin.user.enable_confirm', { email: user.email }) : T('admin.user.disable_confirm', { email: user.email });
    confirmThen(text, () => run(() => api('PATCH', `/api/admin/users/${id}`, { disabled: !user.disabled })));
  });
  document.getElementById('u-toggle-role').addEventListener('click', () => {
    const role = user.role === 'admin' ? 'user' : 'admin';
    confirmThen(T('admin.user.role_confirm', { email: user.email, role: T('admin.role.' + role) }), () => run(() => api('PATCH', `/api/admin/users/${id}`, { role })));
  });
  // The same for grants: a double click or a retried submit grants one package.
  let grantKey = null;
  document.getElementById('grant-form').addEventListener('input', () => { grantKey = null; });
  document.getElementById('grant-form').addEventListener('submit', (event) => {
    event.preventDefault();
    grantKey = grantKey || crypto.randomUUID();
    const name = document.getElementById('g-name').value.trim();
    const body = { tokens: Number(document.getElementById('g-tokens').value), days: Number(document.getElementById('g-days').value) };
    if (name) body.name = name;
    run(async () => {
      await api('POST', `/api/admin/users/${id}/subscriptions`, body, { 'idempotency-key': grantKey });
      grantKey = null;
      document.getElementById('grant-form').reset();
    });
  });
  document.getElementById('limits-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = (id) => { const v = document.getElementById(id).value.trim(); return v === '' ? null : Number(v); };
    const body = { rpm: value('l-rpm'), tpm: value('l-tpm'), maxConcurrent: value('l-concurrent') };
    run(() => api('PATCH', `/api/admin/users/${id}`, body));
  });
  document.getElementById('user-detail').addEventListener('click', (event) => {
    const b = event.target.closest('button');
    if (!b) return;
    if (b.dataset.settings) {
      openKeySettings(keysById.get(b.dataset.settings), `/api/admin/keys/${b.dataset.settings}`, () => run(async () => {}));
    }
    if (b.dataset.revoke) {
      confirmThen(T('keys.revoke_confirm', { name: b.dataset.name }), () => run(() => api('DELETE', `/api/admin/keys/${b.dataset.revoke}`)));
    }
    if (b.dataset.renew) {
      const days = Number(prompt(T('admin.user.renew_days'), '30'));
      const once = { 'idempotency-key': crypto.randomUUID() };
      if (days > 0) run(() => api('POST', `/api/admin/subscriptions/${b.dataset.renew}/renew`, { days }, once));
    }
  });
  load().catch(fail);
}

// --- /admin/revenue -------------------------------------------------------------------------
function revenue() {
  const load = async () => {
    const params = new URLSearchParams({ granularity: document.getElementById('r-granularity').value });
    const start = document.getElementById('r-start').value;
    const end = document.getElementById('r-end').value;
    if (start) params.set('start', start);
    if (end) params.set('end', end);
    try {
      const r = await api('GET', '/api/admin/revenue?' + params);
      const points = r.periods.map((p) => ({
        id: p.period, label: p.period.length > 7 ? p.period.slice(5) : p.period,
        title: `${p.period}: ${money(p.charged)} · ${number(p.requests)} ${T('usage.requests')}`,
      }));
      const compact = (v) => SITE.symbol + Number(v.toPrecision(3)).toLocaleString(LANG, { maximumSignificantDigits: 3 });
      lineChart(document.getElementById('revenue-chart'), points,
        { values: r.periods.map((p) => Number(p.charged)), format: compact, cls: 'cost' },
        { values: r.periods.map((p) => p.requests), format: (v) => number(Math.round(v)), cls: 'tokens', integer: true });
      document.getElementById('r-total-charged').textContent = money(r.totals.charged);
      document.getElementById('r-total-topups').textContent = money(r.totals.topups);
      document.getElementById('r-total-requests').textContent = number(r.totals.requests);
      const periods = r.periods.slice().reverse().map((p) => row([p.period, money(p.charged), number(p.tokens), number(p.requests), number(p.payingUsers), money(p.topups)]));
      document.querySelector('#r-periods tbody').replaceChildren(...(periods.length ? periods : [emptyRow('r-periods', 6)]));
      const byModel = r.models.map((m) => row([m.model, money(m.charged), number(m.tokens), number(m.requests)]));
      document.querySelector('#r-models tbody').replaceChildren(...(byModel.length ? byModel : [emptyRow('r-models', 4)]));
      fail(null);
    } catch (e) {
      fail(e);
    }
  };
  document.getElementById('revenue-filters').addEventListener('change', load);
  load();
}

// --- /admin/audit ---------------------------------------------------------------------------
function audit() {
  const json = (v) => {
    const code = document.createElement('code');
    code.className = 'json';
    code.textContent = v == null ? '' : JSON.stringify(v);
    return code;
  };
  const list = pager(async (page) => {
    const params = new URLSearchParams({ page, pageSize: 50 });
    for (const [id, name] of [['a-actor', 'actor'], ['a-action', 'action'], ['a-target', 'target']]) {
      const v = document.getElementById(id).value.trim();
      if (v) params.set(name, v);
    }
    const body = await api('GET', '/api/admin/audit-logs?' + params);
    const rows = body.data.map((e) => row([timeElement(e.createdAt, 'datetime'), e.actorEmail || (e.actorUserId ? `#${e.actorUserId}` : T('admin.audit.system')),
      e.action, `${e.targetType}:${e.targetId}`, json(e.before), json(e.after), e.ip || '']));
    document.querySelector('#audit tbody').replaceChildren(...(rows.length ? rows : [emptyRow('audit', 7)]));
    return body;
  });
  const again = debounce(() => list.first(), 300);
  document.getElementById('audit-filters').addEventListener('input', again);
  document.getElementById('audit-filters').addEventListener('submit', (e) => e.preventDefault());
  list.refresh();
}

// --- /admin/codes ---------------------------------------------------------------------------
// The codes exist in this page only once, in the answer to the create request: the CSV is
// built here from that answer, never fetched again.
function codesCsv(answer) {
  const quote = (v) => (/[",\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v);
  const fields = [answer.amount, String(answer.tokens), String(answer.days), answer.expiresAt || ''];
  const lines = ['code,amount,tokens,days,expires_at'].concat(answer.codes.map((c) => [c].concat(fields).map(quote).join(',')));
  return lines.join('\n') + '\n';
}

function codes() {
  const kind = document.getElementById('c-kind');
  const showKind = () => {
    for (const el of document.querySelectorAll('[data-kind]')) el.hidden = el.dataset.kind !== kind.value;
  };
  kind.addEventListener('change', showKind);
  showKind();
  let download = null;
  const list = pager(async (page) => {
    const body = await api('GET', '/api/admin/redemption-codes?' + new URLSearchParams({ page, pageSize: 25 }));
    const rows = body.data.map((b) => {
      const value = b.kind === 'money' ? money(b.amount) : T('admin.codes.value_tokens', { tokens: number(b.tokens), days: number(b.days) });
      const tr = row([`#${b.id}`, value, `${number(b.redeemed)} / ${number(b.count)}`,
        b.expiresAt ? timeElement(b.expiresAt, 'date') : T('admin.codes.never'), b.note, timeElement(b.createdAt, 'datetime')]);
      tr.dataset.batch = b.id;
      return tr;
    });
    document.querySelector('#batches tbody').replaceChildren(...(rows.length ? rows : [emptyRow('batches', 6)]));
    return body;
  });
  document.getElementById('code-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const int = (id) => { const v = document.getElementById(id).value.trim(); return v === '' ? undefined : Number(v); };
    const body = { count: int('c-count') };
    if (kind.value === 'money') body.amount = document.getElementById('c-amount').value.trim();
    else { body.tokens = int('c-tokens'); body.days = int('c-days'); }
    if (int('c-expires') !== undefined) body.expiresInDays = int('c-expires');
    const note = document.getElementById('c-note').value.trim();
    if (note) body.note = note;
    try {
      const answer = await api('POST', '/api/admin/redemption-codes', body);
      if (download) URL.revokeObjectURL(download);
      download = URL.createObjectURL(new Blob([codesCsv(answer)], { type: 'text/csv' }));
      const link = document.getElementById('c-download');
      link.href = download;
      link.download = `redemption-codes-batch-${answer.batchId}.csv`;
      document.getElementById('c-created-text').textContent = T('admin.codes.created', { id: answer.batchId, count: number(answer.codes.length) });
      document.getElementById('c-codes').textContent = answer.codes.join('\n');
      show('c-created', true);
      await list.first();
      fail(null);
    } catch (e) {
      fail(e);
    }
  });
  list.refresh();
}

// A page with a script of its own (/admin/channels: channels.js) has no entry here.
const pageScript = ({ admin: home, 'admin-models': models, 'admin-users': users, 'admin-user': userDetail, 'admin-revenue': revenue, 'admin-audit': audit, 'admin-codes': codes })[PAGE];
if (pageScript) pageScript();
