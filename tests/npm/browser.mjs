// The console's browser-test bridge (tests/src/browser.rs speaks to it): drives Debian's Chromium
// through playwright-core, headless, one command per JSON line on stdin, one JSON line answered on
// stdout for each, in order: {"ok":true,...} or {"ok":false,"error":"..."}.
//
// Why a bridge: Playwright is the browser driver the web knows best, and it is JavaScript; the
// tests are Rust. A line protocol keeps the Rust side a plain child process with no WebDriver
// server to start. Playwright never downloads a browser here: playwright-core ships none, and
// the executable is Debian's (/usr/bin/chromium, or $KEYWARD_CHROMIUM).
//
// Each context is its own cookie jar (a reviewer and an author are two contexts) with one page.
// Every command is bounded (10 s unless it says otherwise), so a broken page fails the test
// instead of hanging it. Console errors, uncaught exceptions and Content-Security-Policy
// violations are collected per context for `consoleErrors` and `cspViolations`.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const DEFAULT_TIMEOUT_MS = 10_000;
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// Runs in every page before its own content: reports `securitypolicyviolation` events through a
// binding (a binding is not script the page's CSP governs).
const CSP_LISTENER = () => {
  document.addEventListener('securitypolicyviolation', (e) => {
    window.__keywardCsp(`${e.violatedDirective} blocked ${e.blockedURI || 'inline'} (${e.sourceFile || e.documentURI}:${e.lineNumber})`);
  });
};

// launch() gives Chromium a fresh user-data directory of its own and removes it on close.
const browser = await chromium.launch({
  executablePath: process.env.KEYWARD_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ARGS,
  timeout: 30_000,
});

/** name -> { context, page, console: [], csp: [] } */
const contexts = new Map();

function contextNamed(name) {
  const found = contexts.get(name);
  if (!found) throw new Error(`no context named ${JSON.stringify(name)} (newContext first)`);
  return found;
}

function timeoutOf(command) {
  const ms = command.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isInteger(ms) || ms <= 0 || ms > 120_000) throw new Error(`timeoutMs must be 1..120000, not ${ms}`);
  return ms;
}

async function newContext({ id, viewport, headers }) {
  if (typeof id !== 'string' || !id) throw new Error('newContext needs an id');
  if (contexts.has(id)) throw new Error(`context ${JSON.stringify(id)} exists`);
  const context = await browser.newContext({
    viewport: viewport ?? { width: 1280, height: 800 },
    extraHTTPHeaders: headers ?? {},
    serviceWorkers: 'block',
  });
  const entry = { context, page: null, console: [], csp: [] };
  await context.exposeBinding('__keywardCsp', (_source, message) => entry.csp.push(String(message)));
  await context.addInitScript(CSP_LISTENER);
  const page = await context.newPage();
  page.setDefaultTimeout(DEFAULT_TIMEOUT_MS);
  page.setDefaultNavigationTimeout(DEFAULT_TIMEOUT_MS);
  page.on('console', (message) => {
    if (message.type() === 'error') entry.console.push(`${message.text()} (${message.location().url || page.url()})`);
  });
  page.on('pageerror', (error) => entry.console.push(`uncaught: ${error.message}`));
  entry.page = page;
  contexts.set(id, entry);
  return {};
}

let axeSource;

async function axe(page) {
  axeSource ??= readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
  // Evaluated through DevTools, which the page's CSP does not govern (the page runs no script).
  await page.evaluate(axeSource);
  const results = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  return results.violations.map((v) => ({
    id: v.id,
    impact: v.impact ?? null,
    help: v.help,
    nodes: v.nodes.map((n) => n.target.map(String).join(' ')),
  }));
}

const COMMANDS = {
  newContext,
  async goto({ context, url, timeoutMs }) {
    const { page } = contextNamed(context);
    const response = await page.goto(url, { timeout: timeoutOf({ timeoutMs }), waitUntil: 'load' });
    return { status: response?.status() ?? null, url: page.url() };
  },
  async click({ context, selector, timeoutMs }) {
    const { page } = contextNamed(context);
    // Playwright waits for a navigation the click starts; then for the new page to load.
    await page.click(selector, { timeout: timeoutOf({ timeoutMs }) });
    await page.waitForLoadState('load', { timeout: timeoutOf({ timeoutMs }) });
    return { url: page.url() };
  },
  async fill({ context, selector, value, timeoutMs }) {
    await contextNamed(context).page.fill(selector, String(value), { timeout: timeoutOf({ timeoutMs }) });
    return {};
  },
  async text({ context, selector, timeoutMs }) {
    const text = await contextNamed(context).page.locator(selector).first().innerText({ timeout: timeoutOf({ timeoutMs }) });
    return { text };
  },
  async texts({ context, selector }) {
    return { texts: await contextNamed(context).page.locator(selector).allInnerTexts() };
  },
  async waitForText({ context, selector, text, timeoutMs }) {
    const { page } = contextNamed(context);
    await page.locator(selector, { hasText: String(text) }).first().waitFor({ timeout: timeoutOf({ timeoutMs }) });
    return {};
  },
  async screenshot({ context, path, fullPage }) {
    await contextNamed(context).page.screenshot({ path, fullPage: fullPage ?? true, animations: 'disabled' });
    return {};
  },
  async setViewport({ context, width, height }) {
    await contextNamed(context).page.setViewportSize({ width, height });
    return {};
  },
  async axe({ context }) {
    return { violations: await axe(contextNamed(context).page) };
  },
  async consoleErrors({ context }) {
    return { messages: [...contextNamed(context).console] };
  },
  async cspViolations({ context }) {
    return { messages: [...contextNamed(context).csp] };
  },
  async close() {
    return {};
  },
};

/** Runs one command, never for longer than its timeout plus a margin. */
async function run(command) {
  const handler = Object.hasOwn(COMMANDS, command?.cmd) ? COMMANDS[command.cmd] : null;
  if (!handler) throw new Error(`unknown command ${JSON.stringify(command?.cmd)}`);
  let timer;
  const limit = new Promise((_, reject) => {
    const ms = timeoutOf(command) + 5_000;
    timer = setTimeout(() => reject(new Error(`${command.cmd} did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([handler(command), limit]);
  } finally {
    clearTimeout(timer);
  }
}

async function shutdown(code) {
  await browser.close().catch(() => {});
  process.exit(code);
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
process.stdout.write(JSON.stringify({ ok: true, ready: true, version: browser.version() }) + '\n');
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  let command;
  try {
    command = JSON.parse(line);
    answer = { ok: true, ...(await run(command)) };
  } catch (error) {
    // Playwright colours its call logs; the test prints the message as plain text.
    answer = { ok: false, error: String(error?.message ?? error).replace(/\u001b\[[0-9;]*m/g, '') };
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
  if (command?.cmd === 'close') break;
}
await shutdown(0);
