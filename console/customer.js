// A customer's pages: instances (list, launch, detail), usage, spot prices, invoices, SSH keys, volumes.
import {all, api, newIdempotencyKey, session} from './api.js';
import {timeChart} from './chart.js';
import {clear, errorBox, field, h, kv, money, onSubmit, stateBadge, table, toast, when} from './dom.js';

const LIVE = new Set(['pending', 'provisioning', 'running', 'preempting', 'terminating']);

function terminateButton(inst, after) {
  return h('button', {type: 'button', class: 'danger', 'aria-label': `Terminate ${inst.name || inst.id}`,
                      onclick: async e => {
    if (!confirm(`Terminate ${inst.name || inst.id}?`)) return;
    e.target.disabled = true;
    try {
      await api('DELETE', `/v1/instances/${encodeURIComponent(inst.id)}`);
      toast('Terminating ' + inst.id);
      after();
    } catch (err) {
      e.target.after(errorBox(err));
      e.target.disabled = false;
    }
  }}, 'Terminate');
}

export async function instances(main, _params, ctx) {
  const list = h('div', {});
  clear(main, h('h1', {}, 'Instances'), h('p', {}, h('a', {href: '#/launch'}, 'Launch an instance')), list);
  const draw = async () => {
    let rows;
    try {
      rows = await all('/v1/instances?limit=200', 500);
    } catch (err) {
      if (ctx.live()) clear(list, errorBox(err));
      return;
    }
    if (!ctx.live()) return;
    clear(list, table('Your instances, newest first; states update every few seconds', [
      {title: 'Instance', value: i => h('a', {href: `#/instances/${i.id}`}, i.name || i.id)},
      {title: 'Type', value: i => i.instance_type},
      {title: 'Region', value: i => i.region},
      {title: 'Market', value: i => i.market},
      {title: 'State', value: i => stateBadge(i.state)},
      {title: 'GPUs', value: i => i.gpus, num: true},
      {title: 'Created', value: i => when(i.created_at)},
      {title: '', value: i => LIVE.has(i.state) && i.state !== 'terminating' ? terminateButton(i, draw) : ''},
    ], rows.sort((a, b) => b.id.localeCompare(a.id)), 'No instances yet.'));
  };
  await draw();
  ctx.every(3000, draw);
}

export async function instance(main, {id}, ctx) {
  const body = h('div', {});
  clear(main, h('h1', {}, 'Instance ', h('code', {}, id)), body);
  const draw = async () => {
    const i = await api('GET', `/v1/instances/${encodeURIComponent(id)}`);
    if (!ctx.live()) return;
    const sshLine = i.ssh ? `ssh -p ${i.ssh.port} ${i.ssh.user}@${i.ssh.host}` : null;
    clear(body, kv([
      ['Name', i.name], ['State', stateBadge(i.state)], ['Type', `${i.instance_type} (${i.gpus} × ${i.gpu_model || 'GPU'})`],
      ['Region', i.region], ['Market', i.market + (i.max_price_per_gpu_hour ? ` (max ${money(i.max_price_per_gpu_hour)}/GPU-hour)` : '')],
      ['Image', i.image], ['Command', (i.command || []).join(' ') || null],
      ['Created', when(i.created_at)], ['Started', when(i.started_at)], ['Ended', i.ended_at ? `${when(i.ended_at)} (${i.end_reason})` : null],
      i.preempt_at ? ['Preempted at', `${when(i.preempt_at)} (${i.preempt_reason})`] : null,
      ['SSH', sshLine ? h('code', {class: 'ssh'}, sshLine) : 'no SSH (it takes SSH keys, and runs)'],
      ['Ports', (i.port_mappings || []).length
        ? h('ul', {}, i.port_mappings.map(p => h('li', {}, `${p.internal}/${p.protocol} → `,
            p.protocol === 'http' ? h('a', {href: p.url, rel: 'noopener noreferrer', target: '_blank'}, p.url) : h('code', {}, p.url))))
        : 'none'],
    ]), LIVE.has(i.state) && i.state !== 'terminating' ? h('p', {}, terminateButton(i, draw)) : null);
  };
  await draw();
  ctx.every(3000, () => draw().catch(err => ctx.live() && clear(body, errorBox(err))));
}

export async function launch(main, _params, ctx) {
  clear(main, h('h1', {}, 'Launch an instance'), h('p', {class: 'note'}, 'Loading the catalog…'));
  const [types, keys] = await Promise.all([api('GET', '/v1/instance-types'), all('/v1/ssh-keys?limit=200')]);
  if (!ctx.live()) return;
  const choices = [];
  for (const t of types.data)
    for (const r of t.regions) choices.push({type: t, region: r});
  const pick = h('select', {name: 'offer', required: true}, choices.map((c, i) => h('option', {value: String(i)},
    `${c.type.name} in ${c.region.region}: ${c.type.gpus} × ${c.type.gpu_model}, on-demand ${money(c.type.on_demand_price_per_gpu_hour)}` +
    `, spot ${money(c.region.spot_price_per_gpu_hour)} per GPU-hour (${c.region.free_gpus} GPUs free)`)));
  const market = h('select', {name: 'market'}, h('option', {value: 'on_demand'}, 'On-demand (list price)'),
                   h('option', {value: 'spot'}, 'Spot (discounted, may be taken back with notice)'));
  const maxPrice = h('input', {name: 'max_price', inputmode: 'decimal', placeholder: 'optional, e.g. 2.50'});
  const name = h('input', {name: 'name', maxlength: 200});
  const image = h('input', {name: 'image', placeholder: 'e.g. nvcr.io/nvidia/pytorch:24.05-py3', maxlength: 255});
  const command = h('input', {name: 'command', placeholder: 'e.g. python train.py (split on spaces)'});
  const sshKeys = h('fieldset', {}, h('legend', {}, 'SSH keys to let in'),
    keys.length ? keys.map(k => h('label', {class: 'inline'}, h('input', {type: 'checkbox', value: k.id}), `${k.name} (${k.fingerprint})`))
                : h('p', {class: 'note'}, 'None yet: add one under SSH keys to reach the instance.'));
  const price = h('p', {class: 'note', role: 'status'});
  const showPrice = () => {
    const c = choices[Number(pick.value)];
    if (!c) return;
    const per = market.value === 'spot' ? c.region.spot_price_per_gpu_hour : c.type.on_demand_price_per_gpu_hour;
    price.textContent = per ? `This instance costs ${money(per)} per GPU-hour now, ${c.type.gpus} GPUs.` : 'No price for this offer now.';
  };
  pick.addEventListener('change', showPrice);
  market.addEventListener('change', showPrice);
  showPrice();
  const problem = h('div', {});
  const idempotencyKey = newIdempotencyKey();  // one per form: a double submit launches one instance
  const form = h('form', {class: 'panel', onsubmit: async e => {
    e.preventDefault();
    clear(problem);
    const c = choices[Number(pick.value)];
    const body = {instance_type: c.type.name, region: c.region.region, market: market.value};
    if (name.value.trim()) body.name = name.value.trim();
    if (image.value.trim()) body.image = image.value.trim();
    if (command.value.trim()) body.command = command.value.trim().split(/\s+/);
    if (market.value === 'spot' && maxPrice.value.trim()) body.max_price_per_gpu_hour = maxPrice.value.trim();
    const ids = [...sshKeys.querySelectorAll('input:checked')].map(x => x.value);
    if (ids.length) body.ssh_key_ids = ids;
    form.querySelector('button[type=submit]').disabled = true;
    try {
      const inst = await api('POST', '/v1/instances', body, {'Idempotency-Key': idempotencyKey});
      toast('Launched ' + inst.id);
      ctx.go('instances/' + inst.id);
    } catch (err) {
      problem.append(errorBox(err));
      form.querySelector('button[type=submit]').disabled = false;
    }
  }},
  h('div', {class: 'row'}, field('Offer', pick)), h('div', {class: 'row'}, field('Market', market), field('Spot: most per GPU-hour (USD)', maxPrice)),
  price, h('div', {class: 'row'}, field('Name', name), field('Image', image), field('Command', command)), sshKeys,
  h('p', {}, h('button', {type: 'submit'}, 'Launch')), problem);
  clear(main, h('h1', {}, 'Launch an instance'), choices.length ? form : h('p', {}, 'Nothing is offered now.'));
}

export async function usage(main, _params, ctx) {
  const hourly = h('option', {value: 'hour'}, 'Last 24 hours, by hour');
  const daily = h('option', {value: 'day'}, 'Last 31 days, by day');
  const range = h('select', {name: 'range'}, hourly, daily);
  const out = h('div', {});
  clear(main, h('h1', {}, 'Usage'), h('form', {class: 'row'}, field('Period', range)), out);
  const draw = async () => {
    const granularity = range.value;
    const u = await api('GET', `/v1/usage?granularity=${granularity}`);
    if (!ctx.live()) return;
    const byPeriod = new Map();
    for (const d of u.data) {
      const t = Date.parse(d.period_start);
      const e = byPeriod.get(t) || {t, hours: 0, utilWeighted: 0, samples: 0};
      e.hours += Number(d.gpu_hours);
      e.utilWeighted += d.mean_util_pct * d.samples;
      e.samples += d.samples;
      byPeriod.set(t, e);
    }
    const points = [...byPeriod.values()].sort((a, b) => a.t - b.t);
    const t0 = Date.parse(u.from), t1 = Date.parse(u.to);
    clear(out,
      h('p', {class: 'note'}, `Metered through ${when(u.usage_complete_through)}. ${u.instances.length} instances.`),
      points.length ? [
        timeChart(`GPU-hours per ${granularity}`, [{name: 'GPU-hours', points: points.map(p => ({t: p.t, v: p.hours}))}],
                  {kind: 'bar', t0, t1, unit: 'GPU-hours'}),
        timeChart('Mean GPU utilisation', [{name: 'utilisation', points: points.filter(p => p.samples).map(p => ({t: p.t, v: p.utilWeighted / p.samples}))}],
                  {t0, t1, unit: '%'}),
      ] : h('p', {}, 'No metered usage in this period.'),
      table('GPU-hours by instance', [
        {title: 'Instance', value: i => h('a', {href: `#/instances/${i.instance_id}`}, i.instance_id)},
        {title: 'GPU-hours', value: i => i.gpu_hours, num: true},
        {title: 'Coverage', value: i => i.coverage === null ? '—' : (i.coverage * 100).toFixed(1) + ' %', num: true},
        {title: 'Complete through', value: i => when(i.complete_through)},
      ], u.instances, 'No instances ran in this period.'));
  };
  range.addEventListener('change', () => draw().catch(err => clear(out, errorBox(err))));
  await draw();
}

export async function spot(main, _params, ctx) {
  const latest = await api('GET', '/v1/spot-prices/latest');
  if (!ctx.live()) return;
  const pools = latest.data.map(p => `${p.region}/${p.gpu_model}`);
  const pool = h('select', {name: 'pool'}, pools.map(p => h('option', {value: p}, p)));
  const out = h('div', {});
  clear(main, h('h1', {}, 'Spot prices'),
    table('The spot price of each pool now', [
      {title: 'Region', value: p => p.region}, {title: 'GPU', value: p => p.gpu_model},
      {title: 'Spot per GPU-hour', value: p => money(p.price_per_gpu_hour), num: true},
      {title: 'On-demand per GPU-hour', value: p => money(p.on_demand_price_per_gpu_hour), num: true},
      {title: 'Spare', value: p => (p.spare_fraction * 100).toFixed(0) + ' %', num: true},
      {title: 'Since', value: p => when(p.effective_from)},
    ], latest.data, 'No pools yet.'),
    pools.length ? h('form', {class: 'row'}, field('Pool', pool)) : null, out);
  const draw = async () => {
    if (!pool.value) return;
    const [region, model] = pool.value.split('/');
    const since = new Date(Date.now() - 24 * 3600e3).toISOString().replace(/\.\d+Z$/, 'Z');
    const rows = await all(`/v1/spot-prices?region=${encodeURIComponent(region)}&gpu_model=${encodeURIComponent(model)}` +
                           `&since=${since}&limit=1000`, 5000);
    if (!ctx.live()) return;
    const now = Date.now();
    // A price holds until the next: draw each at its start and the last one on to now.
    const spotPts = rows.map(r => ({t: Date.parse(r.effective_from), v: Number(r.price_per_gpu_hour)}));
    const listPts = rows.map(r => ({t: Date.parse(r.effective_from), v: Number(r.on_demand_price_per_gpu_hour)}));
    if (spotPts.length) {
      spotPts.push({t: now, v: spotPts[spotPts.length - 1].v});
      listPts.push({t: now, v: listPts[listPts.length - 1].v});
    }
    clear(out, spotPts.length
      ? timeChart(`Spot price of ${pool.value}, last 24 hours`, [{name: 'spot', points: spotPts}, {name: 'on-demand', points: listPts}],
                  {t0: now - 24 * 3600e3, t1: now, unit: 'USD per GPU-hour'})
      : h('p', {}, 'No price changes in the last 24 hours.'));
  };
  pool.addEventListener('change', () => draw().catch(err => clear(out, errorBox(err))));
  await draw();
}

export function invoiceLinks(inv) {
  const base = `/v1/invoices/${encodeURIComponent(inv.id)}`;
  return h('span', {class: 'downloads'},
    h('a', {href: `${base}?format=csv`, download: `${inv.number || inv.id}.csv`}, 'CSV'), ' · ',
    h('a', {href: `${base}?format=pdf`, download: `${inv.number || inv.id}.pdf`}, 'PDF'));
}

export function invoiceTable(caption, rows, withTenant) {
  return table(caption, [
    {title: 'Invoice', value: i => h('a', {href: `#/invoices/${i.id}`}, i.number || `${i.period} draft`)},
    withTenant ? {title: 'Tenant', value: i => `${i.buyer?.name || ''} (${i.tenant_id})`} : null,
    {title: 'Period', value: i => i.period},
    {title: 'Status', value: i => i.status},
    {title: 'Total', value: i => money(i.total), num: true},
    {title: 'Balance', value: i => money(i.balance), num: true},
    {title: 'Download', value: invoiceLinks},
  ].filter(Boolean), rows, 'No invoices.');
}

export async function invoices(main, _params, ctx) {
  const rows = await all('/v1/invoices?limit=200', 1000);
  if (!ctx.live()) return;
  clear(main, h('h1', {}, 'Invoices'),
    h('p', {class: 'note'}, 'The month in progress is a draft that grows as usage is rated; a closed month is finalized and numbered.'),
    invoiceTable('Your invoices', rows, false));
}

export async function invoice(main, {id}, ctx) {
  const inv = await api('GET', `/v1/invoices/${encodeURIComponent(id)}`);
  if (!ctx.live()) return;
  clear(main, h('h1', {}, inv.number ? `Invoice ${inv.number}` : `Draft invoice for ${inv.period}`),
    kv([['Tenant', `${inv.buyer?.name || ''} (${inv.tenant_id})`], ['Period', inv.period], ['Status', inv.status],
        ['Subtotal', money(inv.subtotal)], ['Tax', money(inv.tax)], ['Total', money(inv.total)],
        ['Credited', money(inv.credited)], ['Balance', money(inv.balance)],
        ['Metered through', when(inv.usage_complete_through)], ['Finalized', when(inv.finalized_at)],
        ['SHA-256', inv.sha256 ? h('code', {}, inv.sha256) : null], ['Download', invoiceLinks(inv)]]),
    h('h2', {}, 'Lines'),
    table('Invoice lines', [
      {title: '#', value: l => l.position, num: true}, {title: 'Description', value: l => l.description},
      {title: 'Quantity', value: l => `${l.quantity} ${l.unit}`, num: true},
      {title: 'Unit price', value: l => l.unit_price ? money(l.unit_price) : '—', num: true},
      {title: 'Amount', value: l => money(l.amount), num: true},
    ], inv.lines, 'No lines yet.'),
    h('h2', {}, 'Credit notes'),
    table('Credit notes against this invoice', [
      {title: 'Number', value: c => c.number}, {title: 'Reason', value: c => c.reason},
      {title: 'Total', value: c => money(c.total), num: true}, {title: 'Issued', value: c => when(c.created_at)},
    ], inv.credit_notes, 'None.'),
    session.role === 'finance' || session.role === 'admin' ? creditNoteForm(inv, ctx) : null);
}

// Finance's: a credit note against a finalized invoice (its amount before tax; the tax follows).
function creditNoteForm(inv, ctx) {
  if (inv.status !== 'finalized') return h('p', {class: 'note'}, 'Credit notes are issued against finalized invoices.');
  const amount = h('input', {name: 'amount', inputmode: 'decimal', required: true, placeholder: 'e.g. 10.00'});
  const reason = h('input', {name: 'reason', required: true, maxlength: 500});
  const problem = h('div', {});
  const idempotencyKey = newIdempotencyKey();
  return h('form', {class: 'panel', onsubmit: onSubmit(problem, ctx.refresh, async () => {
    const cn = await api('POST', `/v1/billing/invoices/${encodeURIComponent(inv.id)}/credit-notes`,
                         {amount: amount.value.trim(), reason: reason.value.trim()}, {'Idempotency-Key': idempotencyKey});
    return 'Issued ' + cn.number;
  })}, h('h2', {}, 'Issue a credit note'),
  h('div', {class: 'row'}, field('Amount before tax (USD)', amount), field('Reason', reason), h('button', {type: 'submit'}, 'Issue credit note')),
  problem);
}

// A row's Delete: DELETE path, then the page again; a refusal shows in `problem`.
function deleteButton(label, path, problem, ctx) {
  return h('button', {type: 'button', class: 'secondary', 'aria-label': label, onclick: async () => {
    try {
      await api('DELETE', path);
      ctx.refresh();
    } catch (err) {
      problem.append(errorBox(err));
    }
  }}, 'Delete');
}

export async function sshKeys(main, _params, ctx) {
  const rows = await all('/v1/ssh-keys?limit=200');
  if (!ctx.live()) return;
  const name = h('input', {name: 'name', required: true, maxlength: 100});
  const key = h('textarea', {name: 'public_key', required: true, placeholder: 'ssh-ed25519 AAAA… you@laptop'});
  const problem = h('div', {});
  clear(main, h('h1', {}, 'SSH keys'),
    table('Your SSH keys', [
      {title: 'Name', value: k => k.name}, {title: 'Type', value: k => k.type},
      {title: 'Fingerprint', value: k => h('code', {}, k.fingerprint)}, {title: 'Added', value: k => when(k.created_at)},
      {title: '', value: k => deleteButton(`Delete SSH key ${k.name}`, `/v1/ssh-keys/${encodeURIComponent(k.id)}`, problem, ctx)},
    ], rows, 'No SSH keys yet.'),
    h('h2', {}, 'Add a key'),
    h('form', {class: 'panel', onsubmit: onSubmit(problem, ctx.refresh, async () => {
      await api('POST', '/v1/ssh-keys', {name: name.value.trim(), public_key: key.value.trim()});
      return 'SSH key added';
    })}, h('div', {class: 'row'}, field('Name', name), field('Public key (one authorized_keys line)', key)),
    h('p', {}, h('button', {type: 'submit'}, 'Add key'))),
    problem);
}

export async function volumes(main, _params, ctx) {
  const [rows, types] = await Promise.all([all('/v1/volumes?limit=200'), api('GET', '/v1/instance-types')]);
  if (!ctx.live()) return;
  const regions = [...new Set(types.data.flatMap(t => t.regions.map(r => r.region)))];
  const name = h('input', {name: 'name', required: true, maxlength: 100});
  const region = h('select', {name: 'region'}, regions.map(r => h('option', {value: r}, r)));
  const size = h('input', {name: 'size_gb', type: 'number', min: 1, max: 65536, required: true, value: 100});
  const problem = h('div', {});
  clear(main, h('h1', {}, 'Volumes'),
    table('Your volumes', [
      {title: 'Name', value: v => v.name}, {title: 'Region', value: v => v.region}, {title: 'Size (GB)', value: v => v.size_gb, num: true},
      {title: 'State', value: v => v.state + (v.attached_instance_id ? ` to ${v.attached_instance_id}` : '')},
      {title: 'Created', value: v => when(v.created_at)},
      {title: '', value: v => v.state === 'available'
        ? deleteButton(`Delete volume ${v.name}`, `/v1/volumes/${encodeURIComponent(v.id)}`, problem, ctx) : ''},
    ], rows.filter(v => v.state !== 'deleted'), 'No volumes yet.'),
    h('h2', {}, 'Create a volume'),
    h('form', {class: 'panel', onsubmit: onSubmit(problem, ctx.refresh, async () => {
      await api('POST', '/v1/volumes', {name: name.value.trim(), region: region.value, size_gb: Number(size.value)});
      return 'Volume created';
    })}, h('div', {class: 'row'}, field('Name', name), field('Region', region), field('Size (GB)', size),
      h('button', {type: 'submit'}, 'Create'))),
    problem);
}
