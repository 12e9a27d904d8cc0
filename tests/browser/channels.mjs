// An operator manages channels from the back office: adds one pointing at the test's fake
// upstream (its key typed once, then shown masked only), tests it (status and latency), edits
// its weight without retyping the key, disables and enables it, and deletes a second one after
// confirming, and brings back a channel whose key the upstream refused. Photographed in English, in Chinese and at 375 px; nothing may be blocked by the
// content security policy. Prints a JSON summary on the last line.
// Environment: see harness.mjs, and ADMIN_EMAIL, PASSWORD, FAKE_UPSTREAM, UPSTREAM_KEY, and
// REFUSED_KEY (the key of the channel `refused-upstream`, which the upstream refused).
import { base, browser, check, fail, finish, photograph, text, watch } from './harness.mjs';

const key = process.env.UPSTREAM_KEY;
const rowOf = (name) => `#channels tr[data-channel="${name}"]`;

try {
  const context = await browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  watch(page);
  await page.goto(`${base}/login`);
  await page.fill('#email', process.env.ADMIN_EMAIL);
  await page.fill('#password', process.env.PASSWORD);
  await page.click('#signin-password');
  await page.waitForURL(`${base}/dashboard`);
  await page.click('#nav-admin');
  await page.waitForURL(`${base}/admin`);
  await page.click('#nav-admin-channels');
  await page.waitForURL(`${base}/admin/channels`);
  await page.waitForSelector('#channels tbody tr');

  const add = async (name, models, priority, weight, keys) => {
    await page.click('#ch-add');
    await page.waitForSelector('#channel-dialog[open]');
    await page.fill('#ch-name', name);
    await page.selectOption('#ch-type', 'openai');
    await page.fill('#ch-base-url', process.env.FAKE_UPSTREAM);
    await page.fill('#ch-models', models);
    await page.fill('#ch-priority', String(priority));
    await page.fill('#ch-weight', String(weight));
    await page.fill('#ch-keys', keys);
    await page.click('#ch-save');
    await page.waitForSelector(rowOf(name));
  };

  // Added with its key; listed with the key masked, never in the clear.
  await add('browser-upstream', 'test-model, other-model=upstream-other', 3, 2, `${key}\n`);
  const cells = await page.locator(`${rowOf('browser-upstream')} td`).allTextContents();
  await check(cells[0] === 'browser-upstream' && cells[1] === 'openai' && cells[2] === process.env.FAKE_UPSTREAM, `the row: ${cells}`);
  await check(cells[3] === 'test-model, other-model=upstream-other' && cells[4] === '3' && cells[5] === '2', `the row: ${cells}`);
  await check(cells[6].includes('Healthy') && cells[7].trim() === 'sk-…cdef', `the row: ${cells}`);
  await check(!(await page.content()).includes(key), 'the page holds the plaintext key');

  // The test action: status and latency.
  await page.click(`${rowOf('browser-upstream')} button[data-test]`);
  await page.waitForSelector('#ch-test-result:not([hidden])');
  const result = await text(page, '#ch-test-result');
  await check(/HTTP 200 in \d+ ms/.test(result) && (await page.getAttribute('#ch-test-result', 'class')).includes('ok'), `the test result: ${result}`);

  // Edit: the key box starts empty and left empty keeps the key.
  await page.click(`${rowOf('browser-upstream')} button[data-edit]`);
  await page.waitForSelector('#channel-dialog[open]');
  await check(await page.inputValue('#ch-keys') === '', 'the edit dialog shows a key');
  await check(await page.inputValue('#ch-name') === 'browser-upstream', 'the edit dialog is not filled');
  await photograph(page, 'admin-channels-dialog');
  await page.fill('#ch-weight', '5');
  await page.click('#ch-save');
  await page.waitForFunction((sel) => document.querySelector(sel + ' td:nth-child(6)').textContent === '5', rowOf('browser-upstream'));
  await check((await text(page, `${rowOf('browser-upstream')} td:nth-child(8)`)) === 'sk-…cdef', 'editing lost the key');

  // Bad input is refused in the dialog and changes nothing.
  await page.click('#ch-add');
  await page.fill('#ch-name', 'browser-upstream');
  await page.fill('#ch-base-url', process.env.FAKE_UPSTREAM);
  await page.fill('#ch-models', 'test-model');
  await page.click('#ch-save');
  await page.waitForSelector('#channel-error:not([hidden])');
  const refused = await text(page, '#channel-error');
  await check(refused.includes('already exists'), `a taken name: ${refused}`);
  await page.click('#ch-cancel');

  // Disable, then enable.
  await page.click(`${rowOf('browser-upstream')} button[data-toggle]`);
  await page.waitForFunction((sel) => document.querySelector(sel + ' td:nth-child(7)').textContent.includes('Disabled'), rowOf('browser-upstream'));
  await page.click(`${rowOf('browser-upstream')} button[data-toggle]`);
  await page.waitForFunction((sel) => document.querySelector(sel + ' td:nth-child(7)').textContent.includes('Healthy'), rowOf('browser-upstream'));

  // A second channel, deleted after confirming.
  await add('spare-upstream', '*', 0, 1, '');
  await check((await text(page, `${rowOf('spare-upstream')} td:nth-child(8)`)) === 'none', 'a keyless channel shows keys');
  await page.click(`${rowOf('spare-upstream')} button[data-remove]`);
  await page.waitForSelector('#confirm[open]');
  await check((await text(page, '#confirm-text')).includes('spare-upstream'), 'the confirmation names the channel');
  await page.click('#confirm-yes');
  await page.waitForSelector(rowOf('spare-upstream'), { state: 'detached' });

  // A channel whose key the upstream refused: disabled, with the reason; its key enabled again,
  // then the channel.
  const refusedState = await text(page, `${rowOf('refused-upstream')} td:nth-child(7)`);
  await check(refusedState.includes('Disabled') && refusedState.includes('HTTP 401'), `the refused channel's state: ${refusedState}`);
  await check((await text(page, `${rowOf('refused-upstream')} td:nth-child(8)`)).includes('sk-…wxyz'), 'the refused key is not listed');
  await check(!(await page.content()).includes(process.env.REFUSED_KEY), 'the page holds the refused plaintext key');
  await photograph(page, 'admin-channels');
  await page.click(`${rowOf('refused-upstream')} button[data-enable-key]`);
  await page.waitForSelector(`${rowOf('refused-upstream')} button[data-enable-key]`, { state: 'detached' });
  await page.click(`${rowOf('refused-upstream')} button[data-toggle]`);
  await page.waitForFunction((sel) => document.querySelector(sel + ' td:nth-child(7)').textContent.includes('Healthy'), rowOf('refused-upstream'));

  // In Chinese.
  await page.click('#lang-switch a[data-lang="zh-CN"]');
  await page.waitForURL(`${base}/admin/channels`);
  await page.waitForSelector(rowOf('browser-upstream'));
  await check((await text(page, '#nav-admin-channels')) === '渠道', 'the navigation is not in Chinese');
  await check((await text(page, `${rowOf('browser-upstream')} td:nth-child(7)`)).includes('健康'), 'the state is not in Chinese');
  await page.click(`${rowOf('browser-upstream')} button[data-test]`);
  await page.waitForSelector('#ch-test-result:not([hidden])');
  await photograph(page, 'admin-channels-zh');

  await finish({ testResult: result });
} catch (error) {
  await fail(String(error && error.stack || error));
}
