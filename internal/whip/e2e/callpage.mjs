// Watches a call on the callrouter call page in headless Chromium and reports what the page drew.
// Usage: node callpage.mjs <page url with ?call=<id>> <screenshot.png> [<second call id>]
// (and <screenshot>-live.png, 6 s in).
// Prints "READY" once the page's watch stream is subscribed (the caller then starts the call),
// then one JSON line: {state, legs: [{leg, name, segs: [[start, end]], digits: [{digit, ms}],
// meter: [dBFS samples while the call ran], updates}], overtalk: [[start, end]], accounting:
// [{leg, lost, processed, cells}], lost, verdict, gaps, note, escaped}.
import { chromium } from 'playwright-core';

const [pageURL, shot, lossyCall] = process.argv.slice(2);
const t0 = Date.now();
const lap = (w) => process.stderr.write(`callpage.mjs: ${w} at ${Date.now() - t0} ms\n`);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let code = 0;
try {
  const page = await (await browser.newContext({ viewport: { width: 1200, height: 820 } })).newPage();
  page.on('console', (m) => process.stderr.write(`page ${m.type()}: ${m.text()}\n`));
  page.on('pageerror', (e) => { process.stderr.write(`page error: ${e}\n`); code = 1; });
  lap('browser up');
  await page.goto(pageURL);
  await page.click('#watch');
  await page.waitForSelector('body[data-state="watching"]', { timeout: 20000 });
  lap('watching');
  console.log('READY');
  // Sample the meters while the call runs, until the page shows the accounting.
  const meter = {};
  const watchingAt = Date.now() - t0;
  let live = false;
  const deadline = Date.now() + 60000;
  while (Date.now() < deadline) {
    const m = await page.$$eval('#legs .row.leg', (rows) => rows.map((r) => [r.dataset.leg, r.querySelector('.meter').dataset.dbfs]));
    for (const [leg, db] of m) if (db !== undefined) (meter[leg] ||= []).push(Number(db));
    if (await page.$('body[data-lost]')) break;
    if (!live && Date.now() - t0 > watchingAt + 6000) { // mid-call: meters, open segments, the cursor
      live = true;
      await page.screenshot({ path: shot.replace(/\.png$/, '-live.png') });
    }
    await page.waitForTimeout(150);
  }
  lap('meters sampled');
  await page.waitForSelector('body[data-lost]', { timeout: 30000 });
  await page.waitForFunction(() => document.getElementById('acct-note').textContent !== '', null, { timeout: 15000 });
  lap('accounting shown');
  await page.screenshot({ path: shot }); // the viewport: the call and its accounting
  const view = await page.evaluate(() => ({
    state: document.getElementById('state').textContent,
    legs: [...document.querySelectorAll('#legs .row.leg')].map((r) => ({
      leg: Number(r.dataset.leg),
      name: r.querySelector('.name').textContent,
      segs: [...r.querySelectorAll('.seg')].map((s) => [Number(s.dataset.start), Number(s.dataset.end)]),
      digits: [...r.querySelectorAll('.dtmf')].map((d) => ({ digit: d.querySelector('.digit').textContent, ms: Number(d.dataset.ms) })),
      updates: Number(r.querySelector('.meter').dataset.updates),
    })),
    overtalk: [...document.querySelectorAll('#overtalk-track .overtalk')].map((o) => [Number(o.dataset.start), Number(o.dataset.end)]),
    accounting: [...document.querySelectorAll('#acct-legs tr')].map((tr) => ({
      leg: Number(tr.dataset.leg), lost: Number(tr.dataset.lost), processed: Number(tr.dataset.processed),
      cells: [...tr.children].map((td) => td.textContent),
    })),
    lost: document.body.dataset.lost,
    verdict: document.getElementById('verdict').textContent,
    gaps: document.querySelectorAll('#gaps li').length,
    note: document.getElementById('acct-note').textContent,
    // Event text is drawn as text: markup in an event (the call's meta) must not become an element.
    escaped: document.querySelectorAll('img').length === 0 && document.title === 'callrouter call' &&
      document.getElementById('events').textContent.includes('<img'),
  }));
  for (const l of view.legs) l.meter = meter[String(l.leg)] || [];
  console.log(JSON.stringify(view));
  if (lossyCall) {
    // Then watch a second call, one that loses frames: prints "READY", then {lost, verdict,
    // gaps: [{cause, text}], lostByCause: [cells]}.
    await page.fill('#watchid', lossyCall);
    await page.click('#watch');
    await page.waitForSelector('body[data-state="watching"]', { timeout: 20000 });
    console.log('READY');
    await page.waitForSelector('body[data-lost]', { timeout: 30000 });
    await page.screenshot({ path: shot.replace(/\.png$/, '-loss.png') });
    console.log(JSON.stringify(await page.evaluate(() => ({
      lost: document.body.dataset.lost,
      verdict: document.getElementById('verdict').textContent,
      gaps: [...document.querySelectorAll('#gaps li')].map((li) => ({ cause: li.dataset.cause, text: li.textContent })),
      marked: [...document.querySelectorAll('#legs .row.leg')].map((r) => r.querySelectorAll('.gapmark').length),
      rows: [...document.querySelectorAll('#acct-legs tr')].map((tr) => [...tr.children].map((td) => td.textContent)),
    }))));
  }
} catch (e) {
  console.error(`callpage.mjs: ${e.stack || e}`);
  code = 1;
} finally {
  await browser.close();
  lap('browser closed');
}
process.exit(code);
