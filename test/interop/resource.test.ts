/**
 * Issue 12 point 5, against a real appliance process: hostile NBD clients (pipelined 32 MiB
 * READs never read, stalled 32 MiB WRITEs, idle connections, a connection flood, LIST spam)
 * while a good client writes and reads back its data. The appliance's RSS must stay within
 *
 *   --memory + --nbd-buffer-budget + RESIDENT_OVERHEAD_BYTES, and grow by at most
 *   --nbd-buffer-budget + GROWTH_OVERHEAD_BYTES over its RSS before the load
 *
 * (docs/nbd.md "Resource bounds" explains the overhead: the runtime, recycled reply buffers and
 * per-connection slabs), and the good client must get every byte right. Before the bounds, the
 * same load took the appliance past 1 GiB. Bounded in time by the stall timeout (2 s here) and
 * the load's own deadline; nothing here is timed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LARGE_REPLY_KEPT_BYTES_MAX } from '../../src/nbd/server/reply-buffers.js';
import { ApplianceProcess, MiB } from './appliance-process.js';
import { hostileLoad, SUITE_LOAD } from './hostile-load.js';

const MEMORY = 256 * MiB;
const BUFFER_BUDGET = 64 * MiB;
/** What RSS may hold besides frames and NBD buffers (the runtime); documented in docs/nbd.md. */
const RESIDENT_OVERHEAD_BYTES = 128 * MiB;
/**
 * Growth under load beyond the buffer budget: recycled reply buffers, one request admitted
 * past the budget, and per-connection slabs and scratch buffers (documented in docs/nbd.md).
 */
const GROWTH_OVERHEAD_BYTES = LARGE_REPLY_KEPT_BYTES_MAX + 64 * MiB;

interface StatsBody {
  nbd: {
    connectionsRefused: number;
    replyStalls: number;
    payloadStalls: number;
    listRefusals: number;
    bufferBytesMax: number;
  };
}

test('hostile NBD clients cannot take RSS past the budget; a good client is served', async (t) => {
  const app = await ApplianceProcess.start({
    memory: '256MiB',
    defaultSize: '64MiB',
    args: ['--nbd-buffer-budget', '64MiB', '--nbd-stall-timeout', '1', '--nbd-max-connections', '48'],
  });
  t.after(() => app.stop());
  await app.createRegion('good', '16MiB');
  for (let i = 0; i < 50; i++) await app.createRegion(`r${i}`, '1MiB');

  const result = await hostileLoad({
    ...SUITE_LOAD,
    readers: 8,
    stalled: 6,
    flood: 60,
    host: app.nbdHost,
    port: app.nbdPort,
    pid: app.pid,
    region: 'default',
    goodRegion: 'good',
  });
  const stats = (await app.api<StatsBody>('GET', '/v1/stats')).body.nbd;
  const report = `${result.elapsedMs} ms; RSS ${(result.rssStartBytes / MiB) | 0} -> max ${(result.rssMaxBytes / MiB) | 0} MiB; ${JSON.stringify(stats)}`;
  t.diagnostic(report);
  assert.equal(result.goodRoundsOk, SUITE_LOAD.goodRounds, report);
  assert.ok(result.rssMaxBytes <= MEMORY + BUFFER_BUDGET + RESIDENT_OVERHEAD_BYTES, report);
  assert.ok(result.rssMaxBytes - result.rssStartBytes <= BUFFER_BUDGET + GROWTH_OVERHEAD_BYTES, report);
  assert.equal(stats.bufferBytesMax, BUFFER_BUDGET);
  assert.ok(stats.connectionsRefused > 0, report);
  assert.ok(stats.listRefusals > 0 || stats.replyStalls > 0, report);
  assert.ok(app.alive);
  // The admin API answered throughout (the stats above) and the appliance still serves.
});
