// A customer's first visit in a real browser: sees the prices, signs in through the (fake)
// GitHub provider, gets the one-time key, creates, copies, renames, disables, enables and
// revokes a second key, makes calls through the gateway, finds them in the usage chart and the
// history, filters by model, exports the CSV, switches to Chinese, and logs out. Every page is
// photographed at 1280 px and at 375 px, where nothing may scroll sideways; nothing may be
// blocked by the content security policy. Prints a JSON summary on the last line.
// Environment: see harness.mjs.
import { base, browser, check, fail, finish, photograph, text, watch } from './harness.mjs';

// A call through the gateway with an API key, as any OpenAI client makes it.
const call = async (key, model) => {
  const res = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello.' }] }),
  });
  await res.text();
  return res.status;
};

try {
  // A visitor sees the prices before signing up, in Chinese when the browser asks for it.
  const visitor = await browser.newContext({ locale: 'zh-CN', viewport: { width: 1280, height: 800 } });
  const vpage = await visitor.newPage();
  watch(vpage);
  await vpage.goto(`${base}/pricing`);
  await check(await text(vpage, 'h1') === '模型与价格', `the pricing page is not in Chinese: ${await text(vpage, 'h1')}`);
  const priced = await vpage.locator('#prices tbody tr td:first-child').allTextContents();
  await check(priced.includes('test-model') && priced.includes('other-model'), `the pricing page lists ${priced}`);
  await photograph(vpage, 'pricing-zh');
  await vpage.click('#pricing-signin');
  await vpage.waitForURL(/\/login$/);
  await check((await text(vpage, '#signin-github')).includes('GitHub'), 'no GitHub button on the login page');
  await check(await text(vpage, 'h1') === '登录 Tollgate', `the login page is not in Chinese: ${await text(vpage, 'h1')}`);
  await visitor.close();

  const context = await browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 800 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  const page = await context.newPage();
  watch(page);

  await page.goto(`${base}/login`);
  await photograph(page, 'login');
  await page.click('#signin-github');
  await page.waitForURL(`${base}/dashboard`);
  const firstKey = await text(page, '#new-key');
  await check(/^sk-[A-Za-z0-9_-]{32}$/.test(firstKey), `no one-time key on the dashboard: ${firstKey}`);
  const balance = await text(page, '#balance');
  await check((await text(page, '#snippet-python')).includes(`base_url="${base}/v1"`), 'the Python snippet lacks the base URL');
  // Claude Code takes the address without /v1 (it adds /v1/messages); Codex a Responses provider.
  const claude = await text(page, '#snippet-claude');
  await check(claude.includes(`ANTHROPIC_BASE_URL="${base}"`) && claude.includes(`ANTHROPIC_API_KEY="${firstKey.slice(0, 7)}`),
    `the Claude Code snippet lacks the address or the key: ${claude}`);
  const codex = await text(page, '#snippet-codex');
  await check(codex.includes(`base_url = "${base}/v1"`) && codex.includes('wire_api = "responses"'),
    `the Codex snippet lacks the provider: ${codex}`);
  await page.reload();
  await check(await page.locator('#new-key').count() === 0, 'the first key was shown twice');
  await photograph(page, 'dashboard');

  // Keys: create one, copy it, rename it, disable and enable it.
  await page.click('#nav-keys');
  await page.waitForURL(`${base}/dashboard/keys`);
  await page.waitForFunction(() => document.querySelectorAll('#keys tbody tr').length === 1);
  await check(await text(page, '#keys tbody tr td:nth-child(4)') === 'never', 'an unused key does not say "never"');
  await page.fill('#key-name', 'second');
  await page.click('#create-key');
  await page.waitForSelector('#created:not([hidden])');
  const secondKey = await text(page, '#created-key');
  await check(/^sk-[A-Za-z0-9_-]{32}$/.test(secondKey) && secondKey !== firstKey, `bad second key: ${secondKey}`);
  await page.waitForFunction(() => document.querySelectorAll('#keys tbody tr').length === 2);
  await page.click('#copy-created');
  await page.waitForFunction(() => document.getElementById('copy-created').textContent === 'Copied');
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  await check(copied === secondKey, `the clipboard holds ${copied}, not the new key`);
  const second = page.locator('#keys tbody tr').nth(1);
  const secondId = await second.getAttribute('data-key-id');
  await second.locator('[data-rename]').click();
  await second.locator('.rename-form input').fill('ci-laptop');
  await second.locator('.rename-form button[type=submit]').click();
  await page.waitForFunction((id) => document.querySelector(`#keys tr[data-key-id="${id}"] .key-name`).textContent === 'ci-laptop', secondId);
  await page.locator(`#keys tr[data-key-id="${secondId}"] [data-toggle]`).click();
  await page.waitForFunction((id) => document.querySelector(`#keys tr[data-key-id="${id}"] .badge`).textContent === 'Disabled', secondId);
  const whileDisabled = await call(secondKey, 'test-model');
  await check(whileDisabled === 401, `a disabled key was answered ${whileDisabled}`);
  await page.locator(`#keys tr[data-key-id="${secondId}"] [data-toggle]`).click();
  await page.waitForFunction((id) => document.querySelector(`#keys tr[data-key-id="${id}"] .badge`).textContent === 'Active', secondId);

  // Calls through the gateway: two with the first key, one with the second on another model.
  const statuses = [await call(firstKey, 'test-model'), await call(firstKey, 'test-model'), await call(secondKey, 'other-model')];
  await check(statuses.every((s) => s === 200), `calls answered ${statuses}`);
  await page.reload();
  await page.waitForFunction(() => document.querySelectorAll('#keys tbody tr').length === 2);
  await photograph(page, 'keys');

  // The first key's settings: two models, a daily cap and a rate limit, saved from the dialog.
  const firstId = await page.locator('#keys tbody tr').first().getAttribute('data-key-id');
  await page.locator(`#keys tr[data-key-id="${firstId}"] [data-settings]`).click();
  await page.waitForSelector('#key-settings[open]');
  await page.fill('#ks-models', 'test-model, other-model');
  await page.fill('#ks-limit', '5.00');
  await page.selectOption('#ks-period', 'day');
  await page.fill('#ks-rpm', '60');
  await photograph(page, 'key-settings');
  await page.click('#ks-save');
  await page.waitForSelector('#key-settings', { state: 'hidden' });
  await page.waitForFunction((id) => /5\.00\/day/.test(document.querySelector(`#keys tr[data-key-id="${id}"] .key-summary`)?.textContent || ''), firstId);
  const saved = await page.evaluate(async () => (await (await fetch('/api/internal/keys')).json()).data[0].settings);
  await check(saved.spendLimit === '5.00' && saved.spendLimitPeriod === 'day' && saved.rpm === 60
    && saved.allowedModels.join() === 'test-model,other-model', `the settings saved: ${JSON.stringify(saved)}`);
  // A bad value is refused in the dialog, which stays open.
  await page.locator(`#keys tr[data-key-id="${firstId}"] [data-settings]`).click();
  await page.waitForSelector('#key-settings[open]');
  await page.fill('#ks-ips', 'not-an-address');
  await page.click('#ks-save');
  await page.waitForSelector('#ks-error:not([hidden])');
  await page.click('#ks-cancel');

  // Revoke the second key, after a confirmation.
  await page.locator(`#keys tr[data-key-id="${secondId}"] [data-revoke]`).click();
  await page.waitForSelector('#confirm-revoke[open]');
  await check((await text(page, '#confirm-text')).includes('ci-laptop'), 'the confirmation does not name the key');
  await page.click('#confirm-yes');
  await page.waitForFunction(() => document.querySelectorAll('#keys tbody tr').length === 1);
  const afterRevoke = await call(secondKey, 'test-model');
  await check(afterRevoke === 401, `a revoked key was answered ${afterRevoke}`);

  // Usage: the chart, the breakdown and the history show the calls.
  await page.click('#nav-usage');
  await page.waitForURL(`${base}/dashboard/usage`);
  await page.waitForFunction(() => document.querySelectorAll('#history tbody tr').length === 3);
  await page.waitForFunction(() => document.querySelectorAll('#chart circle').length === 30);
  const today = new Date().toISOString().slice(0, 10);
  const todayPoint = await page.locator(`#chart circle[data-point="${today}"] title`).textContent();
  await check(/: [1-9][\d,]* Tokens/.test(todayPoint), `today's point shows no tokens: ${todayPoint}`);
  await check(await text(page, '#sum-requests') === '3', `the 30-day total is ${await text(page, '#sum-requests')} requests`);
  const breakdown = await page.locator('#by-model tbody tr').count();
  await check(breakdown === 2, `the per-model breakdown has ${breakdown} rows`);
  const keyNames = await page.locator('#history tbody tr td:nth-child(3)').allTextContents();
  await check(keyNames.filter((n) => n === 'ci-laptop').length === 1, `the history's key names: ${keyNames}`);
  await photograph(page, 'usage');

  // Filter by model; the export carries the same filter.
  await page.selectOption('#f-model', 'test-model');
  await page.waitForFunction(() => document.querySelectorAll('#history tbody tr').length === 2);
  const models = await page.locator('#history tbody tr td:nth-child(2)').allTextContents();
  await check(models.every((m) => m === 'test-model'), `the model filter shows ${models}`);
  const href = await page.getAttribute('#export-csv', 'href');
  await check(href.includes('model=test-model'), `the export link ignores the filter: ${href}`);
  const csv = await page.evaluate(async (url) => (await fetch(url)).text(), href);
  const lines = csv.trim().split('\n');
  await check(lines.length === 3, `the CSV has ${lines.length} lines`);
  await check(lines.slice(1).every((l) => l.includes('test-model')), `CSV rows: ${lines.slice(1)}`);
  await check(lines[0].includes('key_name'), `the CSV header lacks the key name: ${lines[0]}`);

  // 中文: the switch is remembered.
  await page.click('#lang-switch a[data-lang="zh-CN"]');
  await page.waitForURL(`${base}/dashboard/usage`);
  await check(await text(page, '#nav-usage') === '用量', `the navigation is not in Chinese: ${await text(page, '#nav-usage')}`);
  await page.waitForFunction(() => document.querySelectorAll('#history tbody tr').length === 3);
  await check(await text(page, '#export-csv') === '导出 CSV', 'the export button is not in Chinese');
  await photograph(page, 'usage-zh');
  await page.goto(`${base}/dashboard/keys`);
  await page.waitForFunction(() => document.querySelectorAll('#keys tbody tr').length === 1);
  await check(await text(page, '#create-key') === '创建密钥', 'the keys page is not in Chinese');
  await photograph(page, 'keys-zh');
  await page.locator('#keys tbody tr [data-settings]').first().click();
  await page.waitForSelector('#key-settings[open]');
  await check(await text(page, '#ks-save') === '保存', 'the key settings dialog is not in Chinese');
  await photograph(page, 'key-settings-zh');
  await page.click('#ks-cancel');
  await page.goto(`${base}/dashboard`);
  await check(await text(page, '#nav-overview') === '概览', 'the dashboard is not in Chinese');
  await photograph(page, 'dashboard-zh');

  // Log out: a signed-out notice, and the dashboard is closed.
  await page.click('#logout');
  await page.waitForURL(/\/login\?signed_out=1$/);
  await check(await text(page, '#signed-out') === '您已退出登录。', 'no signed-out notice in Chinese');
  await photograph(page, 'login-zh-signed-out');
  await page.goto(`${base}/dashboard`);
  await check(page.url().includes('/login'), `the dashboard is still open after logout: ${page.url()}`);

  await finish({ firstKey, secondKey, secondId, balance });
} catch (error) {
  await fail(String(error && error.stack || error));
}
