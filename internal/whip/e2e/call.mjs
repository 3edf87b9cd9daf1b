// Places a call from the callrouter call page in headless Chromium and reports what the page saw.
// Usage: node call.mjs <page url> <fake microphone wav (16-bit PCM)> <screenshot.png> <talk ms>
// Prints one JSON line: {state, call, codec, events: [{kind, source, text}], packetsSent}.
import { chromium } from 'playwright-core';

const [pageURL, wavFile, shot, talkMS] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    `--use-file-for-fake-audio-capture=${wavFile}`,
    '--allow-loopback-in-peer-connection', '--autoplay-policy=no-user-gesture-required',
  ],
});
let code = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  await context.grantPermissions(['microphone']);
  const page = await context.newPage();
  page.on('console', (m) => process.stderr.write(`page ${m.type()}: ${m.text()}\n`));
  await page.goto(pageURL);
  await page.click('#call');
  await page.waitForSelector('body[data-state="connected"]', { timeout: 20000 });
  await page.waitForSelector('#events li[data-kind="start"]', { timeout: 10000 });
  await page.waitForTimeout(Number(talkMS));
  const packetsSent = Number(await page.textContent('#sent'));
  await page.click('#hangup');
  await page.waitForSelector('#events li[data-kind="accounting"]', { timeout: 20000 });
  await page.waitForSelector('#events li[data-kind="media"]', { timeout: 10000 });
  await page.screenshot({ path: shot, fullPage: true });
  const events = await page.$$eval('#events li', (lis) => lis.map((li) => ({
    kind: li.dataset.kind, source: li.dataset.source, text: li.textContent,
  })));
  const state = await page.textContent('#state');
  const call = await page.textContent('#callid');
  const codec = await page.textContent('#codec');
  console.log(JSON.stringify({ state, call, codec, events, packetsSent }));
} catch (e) {
  console.error(`call.mjs: ${e.stack || e}`);
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
