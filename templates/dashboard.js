// The dashboard's key actions, served from /assets/dashboard.js (the CSP allows no inline script).
const error = document.getElementById('key-error');
function fail(message) { error.textContent = message; error.hidden = false; }
document.addEventListener('click', async (event) => {
  const copy = event.target.closest('[data-copy]');
  if (copy) { navigator.clipboard && navigator.clipboard.writeText(document.getElementById(copy.dataset.copy).textContent); copy.textContent = 'Copied'; return; }
  const revoke = event.target.closest('[data-revoke]');
  if (revoke) {
    if (!confirm('Revoke this key? Requests using it will be refused.')) return;
    const res = await fetch('/api/internal/keys/' + revoke.dataset.revoke, { method: 'DELETE' });
    if (res.ok) { revoke.closest('tr').remove(); } else { fail((await res.json()).error.message); }
  }
});
document.getElementById('create-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const name = document.getElementById('key-name').value;
  const res = await fetch('/api/internal/keys', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name }) });
  const body = await res.json();
  if (!res.ok) { fail(body.error.message); return; }
  document.getElementById('created-key').textContent = body.key;
  document.getElementById('created').hidden = false;
  const row = document.createElement('tr');
  row.dataset.keyId = body.id;
  for (const text of [body.name, body.prefix + '…' + body.last4, body.createdAt, '']) { const td = document.createElement('td'); td.textContent = text; row.appendChild(td); }
  const td = document.createElement('td'); const b = document.createElement('button'); b.className = 'danger'; b.type = 'button'; b.dataset.revoke = body.id; b.textContent = 'Revoke'; td.appendChild(b); row.appendChild(td);
  document.querySelector('#keys tbody').appendChild(row);
  document.getElementById('key-name').value = '';
});
