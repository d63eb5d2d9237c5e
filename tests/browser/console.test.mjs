// The web console in a real browser: Debian's Chromium driven by playwright-core (no browser
// download), against a real apiserver and simulated agent that Finance.TheConsoleInARealBrowser
// (tests/e2e/finance_test.cpp) started. Each step is a user's: sign in, launch and watch it run, read
// the usage plot, download an invoice CSV and compare it with the API's, close a month and issue a
// credit note as finance, be refused a finance page as a member, sign out in one tab and lose the
// session in the other. axe-core checks every page, and every page is saved as a screenshot
// (SPILLWAY_ARTIFACTS).
import {chromium} from 'playwright-core';
import {readFileSync, mkdirSync} from 'node:fs';
import {createRequire} from 'node:module';

const require = createRequire(import.meta.url);
const env = name => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env('SPILLWAY_URL');
const keys = {member: env('SPILLWAY_MEMBER_KEY'), finance: env('SPILLWAY_FINANCE_KEY'), operator: env('SPILLWAY_OPERATOR_KEY')};
const period = env('SPILLWAY_CLOSE_PERIOD');
const offer = env('SPILLWAY_OFFER');         // text of the launch form's offer, e.g. "h100.1x in eu-north"
const region = env('SPILLWAY_REGION');
const artifacts = process.env.SPILLWAY_ARTIFACTS || '/tmp/spillway-console';
mkdirSync(artifacts, {recursive: true});
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const PUBLIC_KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPT6wxx/eQpKW3OJ4CgCjvHXG62kscaAD48rdr4++k3F console-test';

let failures = 0;
function check(ok, what) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures++;
  return ok;
}
const openPages = [];
async function step(name, fn) {
  console.log(`-- ${name}`);
  try {
    await fn();
  } catch (e) {
    check(false, `${name}: ${e.stack || e}`);
    // What each open page showed when the step failed.
    for (const [i, p] of openPages.entries())
      if (!p.isClosed()) await p.screenshot({path: `${artifacts}/failed-${name.replace(/\W+/g, '-')}-${i}.png`}).catch(() => {});
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const cspViolations = [];
async function newContext() {
  const context = await browser.newContext({baseURL: base, viewport: {width: 1280, height: 900}, acceptDownloads: true});
  context.on('page', watch);
  return context;
}
function watch(page) {
  page.on('console', m => { if (/Content.Security.Policy/i.test(m.text())) cspViolations.push(m.text()); });
  page.on('dialog', d => d.accept());
}
async function open(context) {
  const page = await context.newPage();
  openPages.push(page);
  return page;
}

// axe-core on the page as it is: no serious or critical violation. Evaluated through the DevTools
// protocol, so the page's CSP (no inline or foreign scripts) stays as served.
const audited = [];
async function audit(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, {resultTypes: ['violations']}));
  const bad = result.violations.filter(v => v.impact === 'serious' || v.impact === 'critical');
  check(bad.length === 0, `axe: ${name} has no serious or critical violation` +
        (bad.length ? ': ' + bad.map(v => `${v.id} (${v.impact}) at ${v.nodes.map(n => n.target.join(' ')).slice(0, 3).join(', ')}`).join('; ') : ''));
  audited.push(name);
}
async function shot(page, name) {
  await page.screenshot({path: `${artifacts}/console-${name}.png`, fullPage: true});
}
async function visit(page, hash, name, ready) {
  await page.goto(`/console#/${hash}`);
  await page.locator('main h1').first().waitFor();
  if (ready) await ready();
  await audit(page, name);
  await shot(page, name);
}
async function signIn(page, key) {
  await page.goto('/console');
  await page.getByLabel('API key').fill(key);
  await page.getByRole('button', {name: 'Sign in'}).click();
  await page.locator('#sign-out').waitFor({state: 'visible'});
}

await step('the console is served with its security headers', async () => {
  const res = await fetch(`${base}/console`);
  const csp = res.headers.get('content-security-policy') || '';
  const scriptSrc = (csp.split(';').find(d => d.trim().startsWith('script-src')) || '').trim();
  check(res.status === 200, 'GET /console is 200');
  check(scriptSrc === "script-src 'self'", `CSP script-src is 'self' only (${scriptSrc})`);
  check(!csp.includes('unsafe-inline') && !csp.includes('unsafe-eval'), 'the CSP allows nothing inline or eval');
  check(/frame-ancestors 'none'/.test(csp) && res.headers.get('x-frame-options') === 'DENY', 'no page may frame it');
});

const member = await newContext();
const tab = await open(member);
let instanceId = null;

await step('a member signs in; the browser keeps a cookie, never the key', async () => {
  await tab.goto('/console');
  await tab.getByLabel('API key').waitFor();
  await audit(tab, 'sign-in');
  await shot(tab, 'sign-in');
  await signIn(tab, keys.member);
  const cookies = await member.cookies();
  const c = cookies.find(x => x.name === 'spillway_session');
  check(!!c && c.httpOnly && c.sameSite === 'Strict', `the session cookie is HttpOnly and SameSite=Strict (${JSON.stringify(c && {httpOnly: c.httpOnly, sameSite: c.sameSite})})`);
  const stored = await tab.evaluate(() => JSON.stringify({...localStorage}) + JSON.stringify({...sessionStorage}) + document.cookie);
  check(!stored.includes(keys.member) && !stored.includes('spillway_session'), 'no key or session in storage or document.cookie');
  check(!(await tab.content()).includes(keys.member), 'the key is not in the page');
});

await step('a member launches an instance and sees it go running', async () => {
  await visit(tab, 'launch', 'launch', () => tab.getByLabel('Offer').waitFor());
  const option = tab.locator('select[name=offer] option', {hasText: offer}).first();
  await tab.getByLabel('Offer').selectOption(await option.getAttribute('value'));
  await tab.getByLabel('Name').fill('from-the-console');
  await tab.getByRole('button', {name: 'Launch'}).click();
  await tab.waitForURL(/#\/instances\/ins_/);
  instanceId = tab.url().split('/').pop();
  await tab.locator('.kv .state', {hasText: 'running'}).waitFor({timeout: 60000});
  check(true, `${instanceId} is running on its page`);
  await audit(tab, 'instance');
  await shot(tab, 'instance');
  await visit(tab, 'instances', 'instances', () => tab.locator('td .state', {hasText: 'running'}).first().waitFor());
  check(await tab.getByRole('link', {name: 'from-the-console'}).count() === 1, 'the list shows it');
});

await step('a change without the session\'s CSRF token is refused', async () => {
  const r = await tab.evaluate(async () => {
    const body = JSON.stringify({instance_type: 'x', region: 'y', market: 'on_demand'});
    const none = await fetch('/v1/instances', {method: 'POST', headers: {'Content-Type': 'application/json'}, body});
    const wrong = await fetch('/v1/instances', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': 'forged'}, body});
    return [none.status, (await none.json()).error.code, wrong.status, (await wrong.json()).error.code];
  });
  check(r[0] === 403 && r[1] === 'csrf_failed' && r[2] === 403 && r[3] === 'csrf_failed', `403 csrf_failed without it and with a wrong one (${r})`);
});

await step('the usage plot is drawn with data points', async () => {
  const deadline = Date.now() + 120000;
  let points = 0;
  await tab.goto('/console#/usage');
  while (Date.now() < deadline) {
    await tab.reload();  // the page as a user opens it afresh, until the rollup has the running hour
    await tab.locator('main h1').waitFor();
    await tab.waitForLoadState('networkidle');
    points = await tab.locator('figure.chart .pt').count();
    if (points > 0) break;
    await tab.waitForTimeout(3000);
  }
  check(points > 0, `the usage plot has ${points} data points`);
  await audit(tab, 'usage');
  await shot(tab, 'usage');
});

await step('spot prices, SSH keys and volumes', async () => {
  await visit(tab, 'spot', 'spot', () => tab.locator('figure.chart, main p').first().waitFor());
  await visit(tab, 'ssh-keys', 'ssh-keys');
  await tab.getByLabel('Name').fill('laptop');
  await tab.getByLabel('Public key (one authorized_keys line)').fill(PUBLIC_KEY);
  await tab.getByRole('button', {name: 'Add key'}).click();
  await tab.locator('td', {hasText: 'laptop'}).waitFor();
  check(true, 'an SSH key added from the form is listed');
  await tab.getByRole('button', {name: 'Delete SSH key laptop'}).click();
  await tab.locator('td', {hasText: 'laptop'}).waitFor({state: 'detached'});
  check(true, 'and deleted from its row');
  await visit(tab, 'volumes', 'volumes');
  await tab.getByLabel('Name').fill('datasets');
  await tab.getByLabel('Region').selectOption(region);
  await tab.getByLabel('Size (GB)').fill('20');
  await tab.getByRole('button', {name: 'Create'}).click();
  await tab.locator('td', {hasText: 'datasets'}).waitFor();
  check(true, 'a volume created from the form is listed');
});

await step('a member cannot open a finance page', async () => {
  await tab.goto('/console#/finance/invoices');
  const box = tab.locator('[role=alert]');
  await box.waitFor();
  const text = await box.innerText();
  check(/Not allowed/.test(text) && /403/.test(text), `the page says so: "${text}"`);
  await shot(tab, 'member-refused-finance');
});

await step('finance closes a month', async () => {
  const fin = await newContext();
  const page = await open(fin);
  await signIn(page, keys.finance);
  await visit(page, 'finance/periods', 'finance-periods');
  await page.getByLabel('Month (YYYY-MM)').fill(period);
  await page.getByRole('button', {name: 'Close month'}).click();
  await page.getByRole('link', {name: period}).waitFor({timeout: 60000});
  check(true, `${period} is listed as closed`);
  await shot(page, 'finance-periods-closed');
  await visit(page, `finance/invoices?period=${period}`, 'finance-invoices', () => page.locator('td', {hasText: 'finalized'}).first().waitFor());
  await page.locator('td a[href^="#/invoices/"]').first().click();
  await page.getByLabel('Amount before tax (USD)').fill('1.00');
  await page.getByLabel('Reason').fill('goodwill');
  await page.getByRole('button', {name: 'Issue credit note'}).click();
  await page.locator('td', {hasText: 'SPW-CN-'}).first().waitFor();
  check(true, 'finance issued a credit note from the invoice page');
  await audit(page, 'finance-invoice');
  await shot(page, 'finance-invoice-credit-note');
  await visit(page, 'finance/prices', 'finance-prices', () => page.locator('table').first().waitFor());
  await page.getByLabel('Price (USD)').fill('4.250000');
  await page.getByRole('button', {name: 'Schedule'}).click();
  await page.locator('td', {hasText: '$4.250000/GPU-hour'}).waitFor();
  check(true, 'a price change scheduled from the form is in the price book');
  await visit(page, `finance/revenue`, 'finance-revenue', () => page.locator('main .note, main .error').first().waitFor());
  await page.goto(`/console#/finance/revenue`);
  await page.getByLabel('Month (YYYY-MM)').fill(period);
  await page.getByRole('button', {name: 'Show'}).click();
  await page.locator('figure.chart').first().waitFor();
  check(await page.locator('figure.chart .pt').count() > 0, `the revenue of ${period} is plotted`);
  await shot(page, 'finance-revenue-plots');
  await fin.close();
});

await step('a member downloads the invoice CSV, equal to the API\'s', async () => {
  await visit(tab, 'invoices', 'invoices', () => tab.locator('td', {hasText: 'finalized'}).first().waitFor());
  const row = tab.locator('tr', {hasText: period}).filter({hasText: 'finalized'}).first();
  const [download] = await Promise.all([tab.waitForEvent('download'), row.getByRole('link', {name: 'CSV'}).click()]);
  const got = readFileSync(await download.path(), 'utf8');
  const id = (await row.getByRole('link', {name: 'CSV'}).getAttribute('href')).split('/')[3].split('?')[0];
  const api = await (await fetch(`${base}/v1/invoices/${id}?format=csv`, {headers: {Authorization: `Bearer ${keys.member}`}})).text();
  check(got.length > 0 && got === api, `the downloaded CSV (${got.length} bytes) equals the API's (${api.length})`);
  await visit(tab, `invoices/${id}`, 'invoice', () => tab.locator('table').first().waitFor());
});

await step('an operator sees capacity and hosts', async () => {
  const op = await newContext();
  const page = await open(op);
  await signIn(page, keys.operator);
  await visit(page, 'operator/capacity', 'operator-capacity', () => page.locator('figure.chart').waitFor());
  await visit(page, 'operator/hosts', 'operator-hosts', () => page.locator('td', {hasText: 'up'}).first().waitFor());
  await op.close();
});

await step('signing out in one tab ends the session in every tab', async () => {
  const other = await open(member);
  await other.goto('/console#/instances');
  await other.locator('td .state').first().waitFor();
  await tab.getByRole('button', {name: 'Sign out'}).click();
  await tab.getByLabel('API key').waitFor();
  await other.goto('/console#/volumes');
  await other.getByLabel('API key').waitFor({timeout: 15000});
  check(true, 'the other tab is back at sign-in');
  const status = await other.evaluate(async () => (await fetch('/v1/console/session')).status);
  check(status === 401, `the ended session is refused (${status})`);
});

check(cspViolations.length === 0, `no Content Security Policy violation (${cspViolations.slice(0, 3).join(' | ')})`);
console.log(`${audited.length} pages checked with axe: ${audited.join(', ')}`);
await browser.close();
console.log(failures ? `${failures} FAILED` : 'all passed');
process.exit(failures ? 1 : 0);
