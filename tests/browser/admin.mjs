// An operator runs the station from the browser: a customer is refused the back office (403);
// the admin signs in, creates and prices a model, finds the customer, tops them up, is refused a
// correction below zero, sees the audit entry and the revenue chart, and makes redemption codes
// that the customer redeems on the dashboard. Every back-office page is
// photographed at 1280 px and 375 px (no sideways scrolling); nothing may be blocked by the
// content security policy. Prints a JSON summary on the last line.
// Environment: see harness.mjs, and ADMIN_EMAIL, CUSTOMER_EMAIL, PASSWORD.
import { readFileSync } from 'node:fs';
import { base, browser, check, fail, finish, photograph, text, watch } from './harness.mjs';

const signIn = async (page, email) => {
  await page.goto(`${base}/login`);
  await page.fill('#email', email);
  await page.fill('#password', process.env.PASSWORD);
  await page.click('#signin-password');
  await page.waitForURL(`${base}/dashboard`);
};

try {
  // A customer is refused, on the server.
  const customerContext = await browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 800 } });
  const customer = await customerContext.newPage();
  watch(customer);
  await signIn(customer, process.env.CUSTOMER_EMAIL);
  await check(await customer.locator('#nav-admin').count() === 0, 'a customer sees the back-office link');
  const refused = await customer.goto(`${base}/admin`);
  await check(refused.status() === 403, `a customer opening /admin got ${refused.status()}`);
  await check(await customer.locator('#forbidden').count() === 1, 'no 403 page for a customer');
  const api = await customer.evaluate(async () => (await fetch('/api/admin/users')).status);
  await check(api === 403, `a customer calling /api/admin/users got ${api}`);
  await customerContext.close();

  const context = await browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  watch(page);
  await signIn(page, process.env.ADMIN_EMAIL);
  await page.click('#nav-admin');
  await page.waitForURL(`${base}/admin`);
  await page.waitForFunction(() => document.getElementById('charged-month').textContent !== '–');
  await photograph(page, 'admin');

  // A new model, priced.
  await page.click('#nav-admin-models');
  await page.waitForURL(`${base}/admin/models`);
  await page.waitForSelector('#models tbody tr');
  await page.fill('#m-name', 'browser-model');
  await page.fill('#m-input', '1.25');
  await page.fill('#m-output', '5.00');
  await page.fill('#m-cache-write', '2.00');
  await page.fill('#m-request', '0.01');
  await page.fill('#m-max-output', '2048');
  await page.fill('#m-context', '64000');
  await page.click('#m-save');
  await page.waitForSelector('#models tr[data-model="browser-model"]');
  const modelRow = await page.locator('#models tr[data-model="browser-model"] td').allTextContents();
  await check(modelRow[2] === '$1.25' && modelRow[3] === '$5.00', `the new model's prices: ${modelRow}`);
  // No cache-read price: its default; the cache-write and request prices as entered.
  await check(modelRow[4] === 'default' && modelRow[5] === '$2.00' && modelRow[6] === '$0.01',
    `the new model's cache and request prices: ${modelRow}`);
  await photograph(page, 'admin-models');

  // Find the customer and top them up.
  await page.click('#nav-admin-users');
  await page.waitForURL(`${base}/admin/users`);
  await page.fill('#u-q', 'customer');
  await page.waitForFunction(() => document.querySelectorAll('#users tbody tr a').length === 1);
  await photograph(page, 'admin-users');
  await page.click('#users tbody tr a');
  await page.waitForURL(/\/admin\/users\/\d+$/);
  await page.waitForFunction(() => document.getElementById('u-balance').textContent !== '–');
  await page.fill('#b-amount', '12.50');
  await page.fill('#b-reason', 'welcome credit');
  await page.click('#b-submit');
  await page.waitForSelector('#balance-done:not([hidden])');
  await page.waitForFunction(() => document.getElementById('u-balance').textContent === '$12.50');
  // A correction below zero is refused with the balance.
  await page.fill('#b-amount', '-100');
  await page.fill('#b-reason', 'too much');
  await page.click('#b-submit');
  await page.waitForSelector('#admin-error:not([hidden])');
  const refusal = await text(page, '#admin-error');
  await check(refusal.includes('$12.50'), `the refusal does not say the balance: ${refusal}`);
  await check(await text(page, '#u-balance') === '$12.50', 'the refused correction changed the balance');
  await check((await page.locator('#u-ledger tbody tr').count()) === 1, 'the ledger does not show exactly the top-up');
  await photograph(page, 'admin-user');

  // The audit log shows who did it.
  await page.click('#nav-admin-audit');
  await page.waitForURL(`${base}/admin/audit`);
  await page.fill('#a-action', 'balance.adjust');
  await page.waitForFunction(() => document.querySelectorAll('#audit tbody tr').length === 1 && document.querySelector('#audit tbody tr td:nth-child(3)').textContent === 'balance.adjust');
  const entry = await page.locator('#audit tbody tr td').allTextContents();
  await check(entry[1] === process.env.ADMIN_EMAIL, `the audit entry's actor: ${entry}`);
  await photograph(page, 'admin-audit');

  // Revenue: a chart and a table, by day and by month.
  await page.click('#nav-admin-revenue');
  await page.waitForURL(`${base}/admin/revenue`);
  await page.waitForSelector('#revenue-chart svg polyline', { state: 'attached' });
  const today = new Date().toISOString().slice(0, 10);
  await page.waitForSelector(`#revenue-chart circle[data-point="${today}"]`, { state: "attached" });
  await check(await text(page, '#r-total-topups') === '$12.50', `top-ups over 30 days: ${await text(page, '#r-total-topups')}`);
  await photograph(page, 'admin-revenue');
  await page.selectOption('#r-granularity', 'month');
  await page.waitForSelector(`#revenue-chart circle[data-point="${today.slice(0, 7)}"]`, { state: "attached" });

  // Redemption codes: a batch of two, downloaded as CSV from the one answer that holds them.
  await page.click('#nav-admin-codes');
  await page.waitForURL(`${base}/admin/codes`);
  await page.waitForSelector('#batches tbody tr');
  await page.fill('#c-count', '2');
  await page.fill('#c-amount', '5.00');
  await page.fill('#c-note', 'browser batch');
  await page.click('#c-create');
  await page.waitForSelector('#c-created:not([hidden])');
  await page.waitForSelector('#batches tbody tr[data-batch]');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#c-download')]);
  const csv = readFileSync(await download.path(), 'utf8').trim().split('\n');
  await check(csv.length === 3 && csv[0] === 'code,amount,tokens,days,expires_at', `the CSV: ${csv.join(' / ')}`);
  const code = csv[1].split(',')[0];
  await check(/^TG-[0-9A-Z]{4}(-[0-9A-Z]{4}){3}$/.test(code) && csv[1].endsWith(',5.00,0,0,'), `a CSV row: ${csv[1]}`);
  const batchRow = await page.locator('#batches tbody tr[data-batch] td').allTextContents();
  await check(batchRow[1] === '$5.00' && batchRow[2] === '0 / 2', `the batch row: ${batchRow}`);
  await photograph(page, 'admin-codes');

  // The customer redeems it on the dashboard: the balance changes in place; a second try is refused.
  const redeemContext = await browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 800 } });
  const redeemer = await redeemContext.newPage();
  watch(redeemer);
  await signIn(redeemer, process.env.CUSTOMER_EMAIL);
  await check(await text(redeemer, '#balance') === '$12.50', `the dashboard balance: ${await text(redeemer, '#balance')}`);
  await redeemer.fill('#redeem-code', code.toLowerCase());
  await redeemer.click('#redeem-submit');
  await redeemer.waitForSelector('#redeem-done:not([hidden])');
  await redeemer.waitForFunction(() => document.getElementById('balance').textContent === '$17.50');
  await redeemer.fill('#redeem-code', code);
  await redeemer.click('#redeem-submit');
  await redeemer.waitForSelector('#redeem-error:not([hidden])');
  const used = await text(redeemer, '#redeem-error');
  await check(used.includes('already been used'), `a used code: ${used}`);
  await check(await text(redeemer, '#balance') === '$17.50', 'a refused code changed the balance');
  await redeemContext.close();

  await finish({});
} catch (error) {
  await fail(String(error && error.stack || error));
}
