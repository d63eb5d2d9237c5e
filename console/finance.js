// Finance's pages: every tenant's invoices, closing a month, the price book, the revenue report.
import {all, api, newIdempotencyKey} from './api.js';
import {barChart} from './chart.js';
import {clear, errorBox, field, h, money, onSubmit, table, when} from './dom.js';
import {invoiceTable} from './customer.js';

function lastMonth() {
  const d = new Date();
  d.setUTCDate(1);
  d.setUTCMonth(d.getUTCMonth() - 1);
  return d.toISOString().slice(0, 7);
}

export async function invoices(main, _params, ctx) {
  const params = new URLSearchParams(location.hash.split('?')[1] || '');
  const period = h('input', {name: 'period', placeholder: 'YYYY-MM', pattern: '[0-9]{4}-[0-9]{2}', value: params.get('period') || ''});
  const status = h('select', {name: 'status'}, ['', 'draft', 'finalized'].map(s => h('option', {value: s, selected: s === (params.get('status') || '')}, s || 'any')));
  const out = h('div', {});
  const draw = async () => {
    const q = new URLSearchParams({limit: '200'});
    if (period.value.trim()) q.set('period', period.value.trim());
    if (status.value) q.set('status', status.value);
    const rows = await all('/v1/billing/invoices?' + q.toString(), 2000);
    if (!ctx.live()) return;
    clear(out, invoiceTable(`Invoices${period.value ? ' of ' + period.value : ''}${status.value ? ', ' + status.value : ''}`, rows, true),
      h('p', {}, h('a', {href: '/v1/billing/invoices.csv' + (period.value ? '?period=' + encodeURIComponent(period.value) : ''),
                         download: 'invoices.csv'}, 'Download these as CSV')));
  };
  clear(main, h('h1', {}, 'All invoices'),
    h('form', {class: 'row', onsubmit: e => { e.preventDefault(); draw().catch(err => clear(out, errorBox(err))); }},
      field('Period', period), field('Status', status), h('button', {type: 'submit'}, 'Show')), out);
  await draw();
}

export async function periods(main, _params, ctx) {
  const rows = await api('GET', '/v1/billing/periods');
  if (!ctx.live()) return;
  const period = h('input', {name: 'period', required: true, pattern: '[0-9]{4}-[0-9]{2}', value: lastMonth()});
  const problem = h('div', {});
  clear(main, h('h1', {}, 'Billing periods'),
    table('Closed months', [
      {title: 'Period', value: p => h('a', {href: `#/finance/invoices?period=${p.period}`}, p.period)},
      {title: 'Closed', value: p => when(p.closed_at)}, {title: 'By', value: p => p.closed_by},
      {title: 'Invoices', value: p => p.invoices, num: true},
      {title: 'Complete', value: p => p.incomplete ? `no: hosts behind ${p.hosts_behind.join(', ')}` : 'yes'},
    ], rows.data, 'No month has been closed yet.'),
    h('h2', {}, 'Close a month'),
    h('p', {class: 'note'}, 'Closing finalizes every draft invoice of the month and numbers it, with no gaps. It is done once.'),
    h('form', {class: 'panel', onsubmit: onSubmit(problem, ctx.refresh, async () => {
      const p = period.value.trim();
      if (!confirm(`Close ${p}? Its invoices become final.`)) return null;
      const r = await api('POST', `/v1/billing/periods/${encodeURIComponent(p)}/close`, undefined, {'Idempotency-Key': newIdempotencyKey()});
      return `Closed ${r.period || p}`;
    })}, h('div', {class: 'row'}, field('Month (YYYY-MM)', period), h('button', {type: 'submit'}, 'Close month'))),
    problem);
}

export async function prices(main, _params, ctx) {
  const [book, types] = await Promise.all([api('GET', '/v1/billing/prices'), api('GET', '/v1/instance-types')]);
  if (!ctx.live()) return;
  const models = [...new Set(types.data.map(t => t.gpu_model))];
  const kind = h('select', {name: 'kind'}, h('option', {value: 'gpu'}, 'GPU-hour'), h('option', {value: 'storage'}, 'Storage GB-month'));
  const model = h('select', {name: 'gpu_model'}, models.map(m => h('option', {value: m}, m)));
  const price = h('input', {name: 'price', required: true, inputmode: 'decimal', placeholder: 'e.g. 2.490000'});
  const from = h('input', {name: 'effective_from', required: true, placeholder: 'YYYY-MM-DDTHH:00:00Z',
                           value: new Date(Date.now() + 86400e3).toISOString().slice(0, 11) + '00:00:00Z'});
  const problem = h('div', {});
  clear(main, h('h1', {}, 'Price book'),
    table('List prices, past, current and scheduled', [
      {title: 'Kind', value: p => p.kind}, {title: 'GPU', value: p => p.gpu_model || '—'},
      {title: 'Price', value: p => p.kind === 'gpu' ? `${money(p.price_per_gpu_hour)}/GPU-hour` : `${money(p.price_per_gb_month)}/GB-month`, num: true},
      {title: 'From', value: p => when(p.effective_from)}, {title: 'Status', value: p => p.status},
    ], book.data),
    h('h2', {}, 'Schedule a price change'),
    h('form', {class: 'panel', onsubmit: onSubmit(problem, ctx.refresh, async () => {
      const body = {kind: kind.value, effective_from: from.value.trim()};
      if (kind.value === 'gpu') Object.assign(body, {gpu_model: model.value, price_per_gpu_hour: price.value.trim()});
      else body.price_per_gb_month = price.value.trim();
      await api('POST', '/v1/billing/prices', body, {'Idempotency-Key': newIdempotencyKey()});
      return 'Price scheduled';
    })}, h('div', {class: 'row'}, field('Kind', kind), field('GPU model', model), field('Price (USD)', price),
      field('Effective from (UTC, on the hour)', from), h('button', {type: 'submit'}, 'Schedule'))),
    problem);
}

export async function revenue(main, _params, ctx) {
  const now = new Date().toISOString().slice(0, 7);
  const period = h('input', {name: 'period', required: true, pattern: '[0-9]{4}-[0-9]{2}', value: now});
  const out = h('div', {});
  const draw = async () => {
    const p = period.value.trim();
    const r = await api('GET', `/v1/billing/reports/revenue?period=${encodeURIComponent(p)}`);
    if (!ctx.live()) return;
    const pools = [...new Set([...r.usage, ...r.spare].map(u => `${u.region}/${u.gpu_model}`))];
    const sum = (rows, pool, key, market) => rows.filter(u => `${u.region}/${u.gpu_model}` === pool && (!market || u.market === market))
      .reduce((a, u) => a + Number(u[key]), 0);
    clear(out,
      h('p', {class: 'note'}, `${r.period}: ${r.closed ? 'closed' : 'open, so far'}. Revenue ${money(r.totals.revenue)} (GPU ${money(r.totals.gpu_revenue)}, storage ${money(r.totals.storage_revenue)}); spot discount given ${money(r.totals.spot_discount_given)}; spare GPU-hours offered ${r.totals.spare_gpu_hours_offered}, sold ${r.totals.spare_gpu_hours_sold}.`),
      pools.length ? [
        barChart('GPU revenue by pool', pools, [{name: 'on-demand', values: pools.map(p => sum(r.usage, p, 'revenue', 'on_demand'))},
                                                {name: 'spot', values: pools.map(p => sum(r.usage, p, 'revenue', 'spot'))}], {unit: 'USD'}),
        barChart('Spot discount given by pool', pools, [{name: 'discount', values: pools.map(p => sum(r.usage, p, 'spot_discount_given', 'spot'))}], {unit: 'USD'}),
        barChart('Spare GPU-hours offered and sold', pools, [{name: 'offered', values: pools.map(p => sum(r.spare, p, 'spare_gpu_hours_offered'))},
                                                            {name: 'sold', values: pools.map(p => sum(r.spare, p, 'spare_gpu_hours_sold'))}], {unit: 'GPU-hours'}),
      ] : h('p', {}, 'Nothing was sold in this month.'),
      table('Usage by pool and market', [
        {title: 'Region', value: u => u.region}, {title: 'GPU', value: u => u.gpu_model}, {title: 'Market', value: u => u.market},
        {title: 'GPU-hours sold', value: u => u.gpu_hours_sold, num: true}, {title: 'Revenue', value: u => money(u.revenue), num: true},
        {title: 'List value', value: u => money(u.list_value), num: true}, {title: 'Spot discount', value: u => money(u.spot_discount_given), num: true},
      ], r.usage, 'No usage.'));
  };
  clear(main, h('h1', {}, 'Revenue'),
    h('form', {class: 'row', onsubmit: e => { e.preventDefault(); draw().catch(err => clear(out, errorBox(err))); }},
      field('Month (YYYY-MM)', period), h('button', {type: 'submit'}, 'Show')), out);
  await draw();
}
