// The dashboard's "Redeem a code" card (served from /assets/redeem.js): redeems through
// /api/internal/redeem and shows the new balance without a reload.
(function () {
  const form = document.getElementById('redeem-form');
  if (!form) return;
  const input = document.getElementById('redeem-code');
  const submit = document.getElementById('redeem-submit');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    show('redeem-done', false);
    showError('redeem-error', '');
    const code = input.value.trim();
    if (!code) { showError('redeem-error', T('redeem.empty')); return; }
    submit.disabled = true;
    try {
      const body = await api('POST', '/api/internal/redeem', { code });
      document.getElementById('balance').textContent = SITE.symbol + body.balance;
      const done = document.getElementById('redeem-done');
      done.textContent = body.kind === 'money'
        ? T('redeem.done_money', { amount: SITE.symbol + body.amount })
        : T('redeem.done_tokens', { tokens: number(body.tokens), date: localDate(body.subscription.expiresAt) });
      done.hidden = false;
      input.value = '';
    } catch (e) {
      showError('redeem-error', e.message);
    } finally {
      submit.disabled = false;
    }
  });
})();
