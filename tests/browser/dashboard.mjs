// Drives the dtx dashboard in Debian's headless Chromium, as an operator would at 3 a.m.:
// sign in, find the stuck transaction on the overview, filter the list to it, open it,
// press "Retry now", confirm, and watch it succeed. A screenshot of every page goes to
// $ARTIFACTS. Exits non-zero (with a screenshot of the failing page) on any surprise.
//
// Environment: DTX_URL (coordinator), DTX_GID (the stuck transaction), DTX_GID_PREFIX
// (a prefix it shares with transactions that are not stuck), DTX_TOKEN (admin token),
// ARTIFACTS (directory), CHROMIUM (default /usr/bin/chromium).
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const need = (name) => {
  const v = process.env[name];
  if (!v) { console.error(`${name} is not set`); process.exit(2); }
  return v;
};
const base = need('DTX_URL');
const gid = need('DTX_GID');
const prefix = need('DTX_GID_PREFIX');
const token = need('DTX_TOKEN');
const artifacts = need('ARTIFACTS');
mkdirSync(artifacts, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
page.setDefaultTimeout(15000);
let step = 0;
const shot = async (name) => {
  step += 1;
  const file = `${artifacts}/${String(step).padStart(2, '0')}-${name}.png`;
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot ${file}`);
};
const expect = (cond, what) => { if (!cond) throw new Error(`expected ${what}`); };

try {
  // Unsigned, the dashboard sends us to the sign-in page.
  await page.goto(`${base}/`);
  expect(page.url().endsWith('/login'), `a redirect to /login, got ${page.url()}`);
  await page.fill('#token', token);
  await shot('sign-in');
  await page.click('#sign-in');

  // The overview lists the stuck transaction under "Needs attention".
  await page.waitForSelector('h1:text("Overview")');
  const stuckSection = await page.locator('h2#stuck + p + table').innerText();
  expect(stuckSection.includes(gid), `${gid} under "Needs attention"`);
  await shot('overview');

  // The list, filtered by gid prefix and attention, shows it and only it.
  await page.click('nav >> text=Transactions');
  await page.fill('#filter-gid-prefix', prefix);
  await page.selectOption('#filter-needs-attention', 'true');
  await page.click('#apply-filters');
  await page.waitForURL(/gid_prefix=/);
  const links = await page.locator('table.list a.gid').allInnerTexts();
  expect(links.length === 1 && links[0] === gid, `exactly [${gid}] in the filtered list, got [${links}]`);
  await shot('filtered-list');

  // The detail page says why it is stuck.
  await page.click(`a.gid:text("${gid}")`);
  await page.waitForSelector('#attention');
  const why = await page.locator('#attention').innerText();
  expect(why.includes('Needs attention'), 'the attention reason');
  expect((await page.locator('#timeline').innerText()).includes('transient'), 'failed calls in the timeline');
  await shot('detail-stuck');

  // Retry now, with a reason, confirmed.
  await page.fill('#form-retry-now input[name=reason]', 'payment service fixed (browser test)');
  await page.click('#retry-now');
  await page.waitForSelector('#confirm-text');
  await shot('confirm');
  await page.click('#confirm');
  await page.waitForSelector('#flash');

  // It succeeds: reload until the status says so.
  const deadline = Date.now() + 20000;
  for (;;) {
    const status = (await page.locator('#status').innerText()).trim();
    if (status === 'succeeded') break;
    if (Date.now() > deadline) throw new Error(`status still ${status} after the retry`);
    await page.waitForTimeout(300);
    await page.reload();
  }
  const audit = await page.locator('#audit').innerText();
  expect(audit.includes('retry_now') && audit.includes('payment service fixed (browser test)'), 'the action in the audit trail');
  await shot('detail-succeeded');
  console.log('dashboard browser test: ok');
  await browser.close();
} catch (e) {
  console.error(`dashboard browser test FAILED at step ${step + 1}: ${e.message}`);
  try { await shot('failure'); } catch { /* the page may be gone */ }
  await browser.close();
  process.exit(1);
}
