// /dashboard/keys: list, create (shown once), rename, settings, disable/enable and revoke,
// without reloads.
const tbody = document.querySelector('#keys tbody');
let pendingRevoke = null;
const keysById = new Map();

function keyRow(k) {
  keysById.set(String(k.id), k);
  const row = document.createElement('tr');
  row.dataset.keyId = k.id;
  const name = cell(k.name);
  name.className = 'key-name';
  const summary = keySettingsSummary(k.settings);
  if (summary) {
    const small = document.createElement('div');
    small.className = 'muted key-summary';
    small.textContent = summary;
    name.appendChild(small);
  }
  row.appendChild(name);
  const masked = document.createElement('code');
  masked.textContent = k.prefix + '…' + k.last4;
  row.appendChild(cell(masked));
  row.appendChild(cell(timeElement(k.createdAt, 'datetime')));
  row.appendChild(cell(timeElement(k.lastUsedAt, 'relative')));
  const status = document.createElement('span');
  status.className = 'badge ' + (k.disabled ? 'off' : 'on');
  status.textContent = k.disabled ? T('keys.disabled') : T('keys.active');
  row.appendChild(cell(status));
  const actions = document.createElement('td');
  actions.className = 'actions';
  actions.append(
    button(T('keys.rename'), 'secondary small', { rename: k.id }),
    button(T('keys.settings'), 'secondary small', { settings: k.id }),
    button(k.disabled ? T('keys.enable') : T('keys.disable'), 'secondary small', { toggle: k.id, disabled: k.disabled ? '1' : '' }),
    button(T('keys.revoke'), 'danger small', { revoke: k.id, name: k.name }),
  );
  row.appendChild(actions);
  return row;
}

async function load() {
  try {
    const body = await api('GET', '/api/internal/keys');
    tbody.replaceChildren(...body.data.map(keyRow));
    show('keys-empty', body.data.length === 0);
    show('keys', body.data.length > 0);
    showError('key-error', '');
  } catch (e) {
    showError('key-error', e.message);
  } finally {
    show('keys-loading', false);
  }
}

function startRename(row, id) {
  const nameCell = row.querySelector('.key-name');
  const old = keysById.get(String(id)).name;
  const restore = () => { row.replaceWith(keyRow(keysById.get(String(id)))); };
  const form = document.createElement('form');
  form.className = 'row rename-form';
  const input = document.createElement('input');
  input.value = old;
  input.maxLength = 64;
  input.name = 'name';
  input.setAttribute('aria-label', T('keys.name'));
  const save = button(T('common.save'), 'small');
  save.type = 'submit';
  const cancel = button(T('common.cancel'), 'secondary small');
  cancel.addEventListener('click', restore);
  form.append(input, save, cancel);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const k = await api('PATCH', '/api/internal/keys/' + id, { name: input.value });
      row.replaceWith(keyRow(k));
      showError('key-error', '');
    } catch (e) {
      showError('key-error', e.message);
    }
  });
  nameCell.replaceChildren(form);
  input.focus();
  input.select();
}

tbody.addEventListener('click', async (event) => {
  const target = event.target.closest('button');
  if (!target) return;
  const row = target.closest('tr');
  if (target.dataset.rename) { startRename(row, target.dataset.rename); return; }
  if (target.dataset.settings) {
    openKeySettings(keysById.get(target.dataset.settings), '/api/internal/keys/' + target.dataset.settings, (k) => {
      row.replaceWith(keyRow(k));
      showError('key-error', '');
    });
    return;
  }
  if (target.dataset.toggle) {
    try {
      const k = await api('PATCH', '/api/internal/keys/' + target.dataset.toggle, { disabled: !target.dataset.disabled });
      row.replaceWith(keyRow(k));
      showError('key-error', '');
    } catch (e) {
      showError('key-error', e.message);
    }
    return;
  }
  if (target.dataset.revoke) {
    pendingRevoke = { id: target.dataset.revoke, row };
    document.getElementById('confirm-text').textContent = T('keys.revoke_confirm', { name: target.dataset.name });
    document.getElementById('confirm-revoke').showModal();
  }
});

document.getElementById('confirm-no').addEventListener('click', () => {
  pendingRevoke = null;
  document.getElementById('confirm-revoke').close();
});

document.getElementById('confirm-yes').addEventListener('click', async () => {
  document.getElementById('confirm-revoke').close();
  if (!pendingRevoke) return;
  const { id, row } = pendingRevoke;
  pendingRevoke = null;
  try {
    await api('DELETE', '/api/internal/keys/' + id);
    row.remove();
    show('keys-empty', tbody.children.length === 0);
    show('keys', tbody.children.length > 0);
    showError('key-error', '');
  } catch (e) {
    showError('key-error', e.message);
  }
});

document.getElementById('create-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const nameInput = document.getElementById('key-name');
  try {
    const k = await api('POST', '/api/internal/keys', { name: nameInput.value });
    document.getElementById('created-key').textContent = k.key;
    document.getElementById('copy-created').textContent = T('common.copy');
    show('created', true);
    tbody.appendChild(keyRow(k));
    show('keys-empty', false);
    show('keys', true);
    nameInput.value = '';
    showError('key-error', '');
  } catch (e) {
    showError('key-error', e.message);
  }
});

load();
