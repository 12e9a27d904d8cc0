// /admin/channels (served from /assets/channels.js, after admin.js whose helpers it uses): the
// upstream accounts, filled from /api/admin/channels. Keys are write-only: the dialog sends them,
// the list shows masked hints only.
(() => {
  const dialog = document.getElementById('channel-dialog');
  const field = (id) => document.getElementById(id);
  let current = [];

  const modelText = (m) => (m.upstream ? `${m.name}=${m.upstream}` : m.name);
  const lines = (id) => field(id).value.split('\n').map((l) => l.trim()).filter((l) => l !== '');

  function stateCell(c) {
    const td = document.createElement('td');
    if (!c.enabled) td.append(badge(false, '', T('admin.channels.disabled')));
    else if (c.health === 'cooling') td.append(badge(false, '', T('admin.channels.cooling')));
    else if (c.health === 'probing') td.append(badge(false, '', T('admin.channels.probing')));
    else if (!c.routable) td.append(badge(false, '', T('admin.channels.no_key')));
    else td.append(badge(true, T('admin.channels.healthy'), ''));
    if (!c.enabled && c.disabledReason) {
      const why = document.createElement('span');
      why.className = 'reason muted';
      why.textContent = c.disabledReason;
      td.append(why);
    }
    return td;
  }

  function keysCell(c) {
    const td = document.createElement('td');
    td.className = 'keys';
    if (!c.keys.length) td.textContent = T('admin.channels.keyless');
    for (const k of c.keys) {
      const code = document.createElement('code');
      code.textContent = k.hint;
      td.append(code);
      if (!k.enabled) {
        code.className = 'off';
        code.title = k.disabledReason || T('admin.channels.disabled');
        code.textContent += ' ✕';
        td.append(button(T('admin.channels.enable_key'), 'secondary small', { enableKey: k.id }));
        const why = document.createElement('span');
        why.className = 'reason muted';
        why.textContent = k.disabledReason || T('admin.channels.disabled');
        td.append(why);
      }
    }
    return td;
  }

  async function load() {
    const body = await api('GET', '/api/admin/channels');
    current = body.data;
    const rows = current.map((c) => {
      const tr = row([c.name, c.type, c.baseUrl, c.models.map(modelText).join(', '), String(c.priority), String(c.weight),
        stateCell(c), keysCell(c),
        actions(
          button(T('admin.channels.test'), 'secondary small', { test: c.id }),
          button(T('admin.edit'), 'secondary small', { edit: c.id }),
          button(c.enabled ? T('keys.disable') : T('keys.enable'), 'secondary small', { toggle: c.id }),
          button(T('admin.delete'), 'danger small', { remove: c.id }),
        )]);
      tr.dataset.channel = c.name;
      tr.channel = c;
      return tr;
    });
    document.querySelector('#channels tbody').replaceChildren(...(rows.length ? rows : [emptyRow('channels', 9)]));
    show('list-loading', false);
  }

  function edit(c) {
    field('ch-id').value = c ? c.id : '';
    field('ch-name').value = c ? c.name : '';
    field('ch-type').value = c ? c.type : 'openai';
    field('ch-base-url').value = c ? c.baseUrl : '';
    field('ch-models').value = c ? c.models.map(modelText).join(', ') : '';
    field('ch-priority').value = c ? c.priority : 0;
    field('ch-weight').value = c ? c.weight : 1;
    field('ch-enabled').checked = c ? c.enabled : true;
    // Write-only: never filled from the server, which never sends them.
    field('ch-keys').value = '';
    field('ch-headers').value = '';
    field('ch-headers').placeholder = c && c.headerNames.length ? c.headerNames.map((n) => `${n}: …`).join('\n') : T('admin.channels.headers_hint');
    show('ch-keys-note', !!c);
    field('channel-form-title').textContent = c ? T('admin.channels.edit', { name: c.name }) : T('admin.channels.new');
    showError('channel-error', '');
    dialog.showModal();
    field('ch-name').focus();
  }

  function formBody(editing) {
    const body = {
      name: field('ch-name').value.trim(),
      type: field('ch-type').value,
      baseUrl: field('ch-base-url').value.trim(),
      models: field('ch-models').value.split(',').map((m) => m.trim()).filter((m) => m !== ''),
      priority: Number(field('ch-priority').value || 0),
      weight: Number(field('ch-weight').value || 1),
      enabled: field('ch-enabled').checked,
    };
    const keys = lines('ch-keys');
    // New keys replace the old ones; none typed while editing keeps them.
    if (keys.length || !editing) body.keys = keys;
    const headers = lines('ch-headers');
    if (headers.length) {
      body.headers = {};
      for (const h of headers) {
        const at = h.indexOf(':');
        if (at < 1) throw new Error(T('admin.channels.header_invalid', { line: h }));
        body.headers[h.slice(0, at).trim()] = h.slice(at + 1).trim();
      }
    }
    return body;
  }

  function showResult(c, r) {
    const el = field('ch-test-result');
    const status = r.status ? `HTTP ${r.status}` : T('admin.channels.no_answer');
    el.textContent = r.ok
      ? T('admin.channels.test_ok', { name: c.name, status, ms: number(r.latencyMs) })
      : T('admin.channels.test_failed', { name: c.name, status, ms: number(r.latencyMs), error: r.error || '' });
    el.className = 'result ' + (r.ok ? 'ok' : 'bad');
    el.dataset.status = r.status || '';
    el.hidden = false;
  }

  field('ch-add').addEventListener('click', () => edit(null));
  field('ch-cancel').addEventListener('click', () => dialog.close());
  field('channel-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const id = field('ch-id').value;
    try {
      const body = formBody(!!id);
      await api(id ? 'PATCH' : 'POST', id ? `/api/admin/channels/${id}` : '/api/admin/channels', body);
      field('ch-keys').value = '';
      dialog.close();
      await load();
      fail(null);
    } catch (e) {
      showError('channel-error', e.message || String(e));
    }
  });
  document.querySelector('#channels tbody').addEventListener('click', async (event) => {
    const b = event.target.closest('button');
    if (!b) return;
    const c = b.closest('tr').channel;
    if (b.dataset.edit) { edit(c); return; }
    if (b.dataset.test) {
      b.disabled = true;
      try { showResult(c, await api('POST', `/api/admin/channels/${c.id}/test`)); fail(null); } catch (e) { fail(e); } finally { b.disabled = false; }
      return;
    }
    if (b.dataset.enableKey) {
      try { await api('PATCH', `/api/admin/channels/${c.id}`, { enableKeys: [Number(b.dataset.enableKey)] }); await load(); fail(null); } catch (e) { fail(e); }
      return;
    }
    if (b.dataset.toggle) {
      try { await api('PATCH', `/api/admin/channels/${c.id}`, { enabled: !c.enabled }); await load(); fail(null); } catch (e) { fail(e); }
      return;
    }
    if (b.dataset.remove) {
      confirmThen(T('admin.channels.delete_confirm', { name: c.name }), async () => { await api('DELETE', `/api/admin/channels/${c.id}`); await load(); });
    }
  });
  load().catch(fail);
})();
