// Drives the registration page (examples/web) in a real headless Chromium with playwright-core
// (the npm package that brings no browser of its own: it runs the executable it is given).
//
//   node tests/examples/drive_page.mjs --url URL --chromium PATH --profile DIR
//        --fixed FILE --moving FILE [--screenshot PNG] [--repeat N] [--timeout-ms MS]
//
// Prints one JSON object: state, result, runtime, error, the durations of each run and the
// page's own timings of each (benchmarks/one_graph_latency.py), and problems (console errors,
// page exceptions, failed or off-origin requests).
// Exit code 0 whenever the page was driven, whatever it answered; the caller judges.

import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const WEB = path.join(HERE, '..', '..', 'examples', 'web');
// playwright-core is a development dependency of the page's package, installed there.
const { chromium } = createRequire(path.join(WEB, 'package.json'))('playwright-core');

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    chromium: { type: 'string' },
    profile: { type: 'string' },
    fixed: { type: 'string' },
    moving: { type: 'string' },
    screenshot: { type: 'string' },
    repeat: { type: 'string', default: '1' },
    'timeout-ms': { type: 'string', default: '600000' },
  },
});
const timeout = Number(args['timeout-ms']);

const context = await chromium.launchPersistentContext(args.profile, {
  executablePath: args.chromium,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--no-first-run'],
  viewport: { width: 1400, height: 900 },
});
const problems = [];
const origin = new URL(args.url).origin;
const report = { problems, durations_ms: [], timings_ms: [] };
try {
  const page = context.pages()[0] ?? await context.newPage();
  page.on('console', (message) => {
    if (['error', 'warning'].includes(message.type())) problems.push(`console: ${message.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`exception: ${error.message}`));
  page.on('requestfailed', (request) => {
    problems.push(`failed: ${request.url()} (${request.failure()?.errorText})`);
  });
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(origin) && !url.startsWith('blob:') && !url.startsWith('data:')) {
      problems.push(`off-origin request: ${url}`);
    }
  });
  await page.goto(args.url);
  // A function, not a string: the page's Content-Security-Policy forbids eval.
  const settle = (states) => page.waitForFunction(
    (wanted) => wanted.includes(window.ophregState), states, { timeout, polling: 100 });
  await settle(['ready', 'error']);
  if (await page.evaluate(() => window.ophregState) === 'ready') {
    await page.setInputFiles('#fixed', args.fixed);
    const started = Date.now();
    await page.setInputFiles('#moving', args.moving); // both chosen: the page registers
    await settle(['done', 'error']);
    report.durations_ms.push(Date.now() - started);
    report.timings_ms.push(await page.evaluate(() => window.ophregResult?.timings_ms ?? null));
    for (let i = 1; i < Number(args.repeat); i += 1) {
      const again = Date.now();
      await page.click('#register');
      await settle(['done', 'error']);
      report.durations_ms.push(Date.now() - again);
      report.timings_ms.push(await page.evaluate(() => window.ophregResult?.timings_ms ?? null));
    }
  }
  Object.assign(report, await page.evaluate(() => ({
    state: window.ophregState,
    result: window.ophregResult ?? null,
    runtime: window.ophregRuntime ?? null,
    error: window.ophregError ?? null,
    stages: window.ophregStages ?? [],
    has_progress_bar: document.querySelector('progress') !== null,
    progress_text: document.getElementById('progress-text').textContent,
  })));
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
} finally {
  await context.close();
}
process.stdout.write(`${JSON.stringify(report)}\n`);
