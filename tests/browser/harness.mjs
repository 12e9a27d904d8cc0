// What every browser run shares: Chromium (Debian's, headless), failing with a JSON line,
// watching pages for anything the content security policy blocks or any script error, and
// photographing a page at 1280 px and at 375 px, where nothing may scroll sideways.
// Environment: TOLLGATE_URL (the app), CHROMIUM (the browser binary), SCREENSHOT_DIR.
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

export const base = process.env.TOLLGATE_URL;
const shots = process.env.SCREENSHOT_DIR || '/tmp/tollgate-screenshots';
mkdirSync(shots, { recursive: true });

export const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});

// Ends the run: the last line of stdout says why.
export const fail = async (message) => { console.log(JSON.stringify({ ok: false, message })); await browser.close(); process.exit(1); };
export const check = async (condition, message) => { if (!condition) await fail(message); };

const violations = [];
export const watch = (page) => {
  page.on('console', (msg) => { if (/Content Security Policy|Refused to/i.test(msg.text())) violations.push(msg.text()); });
  page.on('pageerror', (error) => violations.push(String(error)));
};

// Ends the run successfully with `summary`, unless a page had a blocked resource or an error.
export const finish = async (summary) => {
  await check(violations.length === 0, `blocked or failed in the page: ${violations.join(' | ')}`);
  console.log(JSON.stringify({ ok: true, ...summary }));
  await browser.close();
};

export const text = async (page, selector) => (await page.textContent(selector)).trim();

export const photograph = async (page, name) => {
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  await page.setViewportSize({ width: 375, height: 812 });
  await page.waitForTimeout(250);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await page.screenshot({ path: `${shots}/${name}-phone.png`, fullPage: true });
  await page.setViewportSize({ width: 1280, height: 800 });
  await check(overflow <= 0, `${name} scrolls sideways at 375 px by ${overflow} px`);
};
