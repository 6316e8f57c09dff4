/**
 * `memfabric region migrate` follows a migration with one progress bar per round and one for
 * the blackout (each its bytes so far against what is left), stopped before each round's line,
 * and sends the downtime target it was given. Against a scripted admin API on 127.0.0.1.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage } from 'node:http';
import { once } from 'node:events';
import { runMigrate } from '../../src/cli/migrate-command.js';
import type { MigrationStatus } from '../../src/appliance/migration.js';

function status(fields: Partial<MigrationStatus>): MigrationStatus {
  return {
    id: 'm1',
    region: 'vm',
    target: { appliance: 'http://b', region: 'vm' },
    state: 'copying',
    round: 1,
    pagesCopied: 0,
    bytesSent: 0,
    dirtyRemaining: 0,
    dirtyPages: 0,
    dirtyRatePagesPerSec: 0,
    dirtyRateBytesPerSec: 0,
    bandwidthBytesPerSec: 0,
    expectedDowntimeMs: null,
    rttMs: 0.1,
    rounds: [],
    stopReason: null,
    blackout: null,
    throttle: { level: 0, levelMax: 0, pagesDelayed: 0, delayMs: 0, parkedMs: 0, awaitedMs: 0 },
    movedTo: null,
    error: null,
    targetCleanedUp: null,
    maxRounds: 30,
    maxDowntimeMs: 30,
    autoConverge: false,
    startedAt: new Date(0).toISOString(),
    finishedAt: null,
    ...fields,
  };
}

const round1 = { round: 1, pages: 100, bytes: 409_600, ms: 5, dirtyAfter: 10 };
const script: MigrationStatus[] = [
  status({ pagesCopied: 0, dirtyRemaining: 100 }),
  status({ pagesCopied: 50, bytesSent: 204_800, dirtyRemaining: 50 }),
  status({ round: 2, pagesCopied: 105, bytesSent: 430_080, dirtyRemaining: 5, rounds: [round1] }),
  status({
    state: 'blackout',
    round: 2,
    pagesCopied: 111,
    bytesSent: 454_656,
    dirtyRemaining: 2,
    rounds: [round1, { round: 2, pages: 10, bytes: 40_960, ms: 1, dirtyAfter: 3 }],
  }),
  status({
    state: 'done',
    round: 2,
    pagesCopied: 113,
    bytesSent: 462_848,
    rounds: [round1, { round: 2, pages: 10, bytes: 40_960, ms: 1, dirtyAfter: 3 }],
    blackout: { pages: 3, ms: 2 },
    movedTo: { appliance: 'http://b', region: 'vm', nbd: { host: '127.0.0.1', port: 10809 } },
  }),
];

async function body(request: IncomingMessage): Promise<Record<string, unknown>> {
  let text = '';
  for await (const chunk of request) text += String(chunk);
  return text ? (JSON.parse(text) as Record<string, unknown>) : {};
}

test('a bar per round and for the blackout, stopped before each line; the downtime target is sent', async () => {
  let next = 0;
  let posted: Record<string, unknown> = {};
  const server = createServer(async (request, response) => {
    if (request.method === 'POST') posted = await body(request);
    const reply = script[Math.min(next++, script.length - 1)]!;
    response.setHeader('content-type', 'application/json');
    response.end(JSON.stringify(reply));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const events: string[] = [];
  try {
    const final = await runMigrate(
      'vm',
      { to: 'http://b', wait: true, timeout: 60, maxDowntime: 50, appliance: `http://127.0.0.1:${port}` },
      (line) => events.push(`line ${line.split(':')[0]}`),
      (label, total) => {
        events.push(`bar ${label} of ${total}`);
        return {
          update: (done, all) => events.push(`update ${done}/${all}`),
          stop: () => events.push('stop'),
        };
      },
    );
    assert.equal(final.state, 'done');
  } finally {
    server.close();
  }
  assert.equal(posted.maxDowntimeMs, 50);
  assert.equal(posted.blackoutPages, undefined);
  assert.deepEqual(events, [
    'line migrating vm to http',
    'bar vm: round 1 of 409600',
    'update 0/409600',
    'update 204800/409600',
    'stop',
    'line round 1',
    'bar vm: round 2 of 40960',
    'update 20480/40960',
    'stop',
    'line round 2',
    'bar vm: blackout of 12288',
    'update 4096/12288',
    'stop',
    'line moved vm to http',
  ]);
});
