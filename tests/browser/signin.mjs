// Signs in through the (fake) GitHub provider in a real browser, sees the one-time key,
// creates and revokes a second key, and logs out, with nothing blocked by the content security
// policy. Prints a JSON summary on the last line.
// Environment: TOLLGATE_URL (the app), CHROMIUM (the browser binary).
import { chromium } from 'playwright-core';

const base = process.env.TOLLGATE_URL;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const fail = async (message) => { console.log(JSON.stringify({ ok: false, message })); await browser.close(); process.exit(1); };
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('dialog', (dialog) => dialog.accept());
  // Anything the content security policy blocks (or a script error) fails the run.
  const violations = [];
  page.on('console', (msg) => { if (/Content Security Policy|Refused to/i.test(msg.text())) violations.push(msg.text()); });
  page.on('pageerror', (error) => violations.push(String(error)));

  await page.goto(`${base}/login`);
  await page.click('#signin-github');
  await page.waitForURL(`${base}/dashboard`);
  const firstKey = (await page.textContent('#new-key')).trim();
  if (!/^sk-[A-Za-z0-9_-]{32}$/.test(firstKey)) await fail(`no one-time key on the dashboard: ${firstKey}`);
  const balance = (await page.textContent('#balance')).trim();

  // The key is shown once: a reload does not show it again.
  await page.reload();
  if (await page.locator('#new-key').count() !== 0) await fail('the first key was shown twice');

  // A second key.
  await page.fill('#key-name', 'second');
  await page.click('#create-key');
  await page.waitForSelector('#created:not([hidden])');
  const secondKey = (await page.textContent('#created-key')).trim();
  if (!/^sk-[A-Za-z0-9_-]{32}$/.test(secondKey) || secondKey === firstKey) await fail(`bad second key: ${secondKey}`);
  await page.waitForFunction(() => document.querySelectorAll('#keys tbody tr').length === 2);

  // Revoke it.
  const secondRow = page.locator('#keys tbody tr').nth(1);
  const secondId = await secondRow.getAttribute('data-key-id');
  await secondRow.locator('[data-revoke]').click();
  await page.waitForFunction(() => document.querySelectorAll('#keys tbody tr').length === 1);
  await page.reload();
  const rows = await page.locator('#keys tbody tr').count();
  if (rows !== 1) await fail(`after revoking, ${rows} keys are listed`);
  // The dashboard as a customer sees it (styles come from /assets under the page's CSP).
  await page.screenshot({ path: process.env.DASHBOARD_SCREENSHOT || '/tmp/tollgate-dashboard.png', fullPage: true });
  // At phone width the page must fit without sideways scrolling.
  await page.setViewportSize({ width: 375, height: 812 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await page.screenshot({ path: '/tmp/tollgate-dashboard-phone.png', fullPage: true });
  await page.setViewportSize({ width: 1280, height: 720 });
  if (overflow > 0) await fail(`the dashboard scrolls sideways at 375 px by ${overflow} px`);

  // Log out: back to the login page, and the dashboard is closed.
  await page.click('#logout');
  await page.waitForURL(/\/login$/);
  await page.goto(`${base}/dashboard`);
  if (!page.url().includes('/login')) await fail(`the dashboard is still open after logout: ${page.url()}`);

  if (violations.length) await fail(`blocked or failed in the page: ${violations.join(' | ')}`);

  await page.screenshot({ path: process.env.SCREENSHOT || '/tmp/tollgate-login.png' });
  await page.setViewportSize({ width: 375, height: 812 });
  await page.screenshot({ path: '/tmp/tollgate-login-phone.png', fullPage: true });
  console.log(JSON.stringify({ ok: true, firstKey, secondKey, secondId, balance }));
  await browser.close();
} catch (error) {
  await fail(String(error && error.stack || error));
}
