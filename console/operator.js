// An operator's pages: capacity per pool and hosts with their health.
import {all, api} from './api.js';
import {barChart} from './chart.js';
import {clear, h, table, when} from './dom.js';

export async function capacity(main, _params, ctx) {
  const draw = async () => {
    const c = await api('GET', '/v1/capacity');
    if (!ctx.live()) return;
    const pools = c.data.map(p => `${p.region}/${p.gpu_model}`);
    clear(main, h('h1', {}, 'Capacity'),
      pools.length ? barChart('GPUs per pool', pools, [
        {name: 'spare (free)', values: c.data.map(p => p.spare_gpus)},
        {name: 'internal reserved', values: c.data.map(p => p.internal_reserved_gpus)},
        {name: 'spot', values: c.data.map(p => p.spot_gpus)},
        {name: 'on-demand', values: c.data.map(p => p.on_demand_gpus)}], {unit: 'GPUs'}) : null,
      table('Each pool (region and GPU model)', [
        {title: 'Region', value: p => p.region}, {title: 'GPU', value: p => p.gpu_model},
        {title: 'Hosts', value: p => p.hosts ?? '—', num: true}, {title: 'GPUs', value: p => p.total_gpus, num: true},
        {title: 'Free', value: p => p.spare_gpus, num: true}, {title: 'Reserved', value: p => p.internal_reserved_gpus, num: true},
        {title: 'Spot', value: p => p.spot_gpus, num: true}, {title: 'On-demand', value: p => p.on_demand_gpus, num: true},
        {title: 'Spot price', value: p => p.spot_price_per_gpu_hour ? '$' + p.spot_price_per_gpu_hour : '—', num: true},
      ], c.data, 'No pools yet: no host has registered.'));
  };
  await draw();
  ctx.every(5000, () => draw().catch(() => {}));
}

export async function hosts(main, _params, ctx) {
  const rows = await all('/v1/hosts?limit=200', 2000);
  if (!ctx.live()) return;
  const down = rows.filter(r => r.health === 'down').length;
  clear(main, h('h1', {}, 'Hosts'),
    h('p', {class: 'note'}, `${rows.length} hosts, ${down} down.`),
    table('Hosts and their health', [
      {title: 'Host', value: r => r.hostname}, {title: 'Region', value: r => `${r.region} ${r.zone}`},
      {title: 'GPUs', value: r => `${r.gpus_allocated ?? 0}/${r.gpu_count} × ${r.gpu_model}`},
      {title: 'State', value: r => r.state},
      {title: 'Health', value: r => h('span', {class: 'state ' + (r.health === 'up' ? 'state-running' : 'state-failed')},
                                        r.health + (r.down_reason ? ` (${r.down_reason})` : ''))},
      {title: 'Last heartbeat', value: r => when(r.last_heartbeat)},
      {title: 'Agent', value: r => r.agent_version || '—'},
    ], rows, 'No hosts have registered.'));
}
