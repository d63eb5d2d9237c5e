// The console: sign-in, the pages each role has, and hash routing (#/instances, #/finance/revenue…).
import {resume, session, signIn, signOut, whenSignedOut} from './api.js';
import {clear, errorBox, field, h} from './dom.js';
import * as customer from './customer.js';
import * as finance from './finance.js';
import * as operator from './operator.js';

const pages = [
  ['instances', customer.instances], ['instances/:id', customer.instance], ['launch', customer.launch],
  ['usage', customer.usage], ['spot', customer.spot], ['invoices', customer.invoices], ['invoices/:id', customer.invoice],
  ['ssh-keys', customer.sshKeys], ['volumes', customer.volumes],
  ['finance/invoices', finance.invoices], ['finance/periods', finance.periods], ['finance/prices', finance.prices],
  ['finance/revenue', finance.revenue],
  ['operator/capacity', operator.capacity], ['operator/hosts', operator.hosts],
];

const financeNav = [['finance/invoices', 'All invoices'], ['finance/periods', 'Periods'], ['finance/prices', 'Price book'],
                    ['finance/revenue', 'Revenue']];
const operatorNav = [['operator/capacity', 'Capacity'], ['operator/hosts', 'Hosts']];
const navs = {
  member: [['instances', 'Instances'], ['launch', 'Launch'], ['usage', 'Usage'], ['spot', 'Spot prices'],
           ['invoices', 'Invoices'], ['ssh-keys', 'SSH keys'], ['volumes', 'Volumes']],
  finance: [...financeNav, ['spot', 'Spot prices']],
  operator: [...operatorNav, ['finance/revenue', 'Revenue'], ['spot', 'Spot prices']],
  admin: [...financeNav, ...operatorNav, ['spot', 'Spot prices']],
};

const main = document.getElementById('main');
let generation = 0;
let timers = [];

function stopTimers() {
  for (const t of timers) clearInterval(t);
  timers = [];
}

function match(path) {
  const parts = path.split('/');
  for (const [pattern, page] of pages) {
    const want = pattern.split('/');
    if (want.length !== parts.length) continue;
    const params = {};
    if (want.every((w, i) => w.startsWith(':') ? (params[w.slice(1)] = decodeURIComponent(parts[i]), true) : w === parts[i]))
      return {page, params};
  }
  return null;
}

function renderNav(current) {
  const items = navs[session.role] || [];
  clear(document.getElementById('nav'), items.map(([path, title]) =>
    h('a', {href: '#/' + path, 'aria-current': current === path ? 'page' : null}, title)));
  document.getElementById('who').textContent = session.role ? `${session.role} · ${session.tenantId}` : '';
  document.getElementById('sign-out').hidden = !session.role;
}

async function route() {
  stopTimers();
  const mine = ++generation;
  if (!session.csrf) return showSignIn();
  // #/finance/invoices?period=2026-11: the page is the part before "?"; it reads the rest itself.
  const path = location.hash.replace(/^#\/?/, '').split('?')[0] || (navs[session.role] || [['instances']])[0][0];
  renderNav(path);
  const found = match(path);
  if (!found) {
    clear(main, h('h1', {}, 'Not found'), h('p', {}, 'There is no page ', h('code', {}, '#/' + path), '.'));
    return;
  }
  const ctx = {
    live: () => mine === generation,
    every(ms, fn) { timers.push(setInterval(() => { if (mine === generation) fn(); }, ms)); },
    go(to) { location.hash = '#/' + to; },
    refresh: () => route(),
  };
  try {
    await found.page(main, found.params, ctx);
  } catch (err) {
    if (mine === generation && session.csrf) main.append(errorBox(err));
  }
  if (mine === generation) document.title = `${main.querySelector('h1')?.textContent || 'Console'} · Spillway`;
}

function showSignIn(message) {
  stopTimers();
  generation++;
  renderNav('');
  document.title = 'Sign in · Spillway';
  const key = h('input', {type: 'password', name: 'api_key', autocomplete: 'off', required: true, spellcheck: 'false',
                          id: 'api-key'});
  const problem = h('div', {});
  const form = h('form', {class: 'panel signin', onsubmit: async e => {
    e.preventDefault();
    clear(problem);
    try {
      await signIn(key.value.trim());
      key.value = '';  // the key goes no further than this request: the browser keeps only the cookie
      route();
    } catch (err) {
      problem.append(errorBox(err));
    }
  }},
  h('h1', {}, 'Sign in'),
  h('p', {}, 'Sign in with a Spillway API key. The console exchanges it for a session and does not keep it.'),
  field('API key', key), h('p', {}, h('button', {type: 'submit'}, 'Sign in')), problem);
  clear(main, message ? h('p', {class: 'note', role: 'status'}, message) : null, form);
}

whenSignedOut(() => showSignIn('Your session has ended (signed out, expired or its key revoked). Sign in again.'));
document.getElementById('sign-out').addEventListener('click', async () => {
  try { await signOut(); } catch { /* already ended */ }
  showSignIn('Signed out.');
});
window.addEventListener('hashchange', route);

(async () => {
  try {
    await resume();
  } catch {
    return showSignIn();
  }
  route();
})();

