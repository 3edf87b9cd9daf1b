// Places a call from the callrouter call page in headless Chromium and reports what the page saw.
// Usage: node call.mjs <page url> <fake microphone wav (16-bit PCM)> <screenshot.png> <talk ms>
// Prints one JSON line: {state, call, codec, events: [{kind, source, text}], packetsSent,
// pageURL, insecure}. With $TOKEN set, it types the token into the page's Token field. With
// $INSECURE_URL set, it first opens that (plain http) page and reports in `insecure` whether the
// browser treats it as a secure context and offers it the microphone API. $HOST_RULES maps host
// names (Chromium --host-resolver-rules); certificate errors are ignored (a test CA).
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
    ...(process.env.HOST_RULES ? [`--host-resolver-rules=${process.env.HOST_RULES}`] : []),
  ],
});
let code = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 }, ignoreHTTPSErrors: true });
  const page = await context.newPage();
  page.on('console', (m) => process.stderr.write(`page ${m.type()}: ${m.text()}\n`));
  let insecure = null;
  if (process.env.INSECURE_URL) {
    await page.goto(process.env.INSECURE_URL);
    insecure = await page.evaluate(() => ({ secureContext: window.isSecureContext, mediaDevices: !!navigator.mediaDevices }));
  }
  await context.grantPermissions(['microphone'], { origin: new URL(pageURL).origin });
  await page.goto(pageURL);
  if (process.env.TOKEN) await page.fill('#token', process.env.TOKEN);
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
  console.log(JSON.stringify({ state, call, codec, events, packetsSent, pageURL: page.url(), insecure }));
} catch (e) {
  console.error(`call.mjs: ${e.stack || e}`);
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
