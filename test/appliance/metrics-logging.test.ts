/**
 * What the appliance logs for an operator: NBD connections opened and closed (peer, export,
 * tenant, duration, bytes), one line per admin request (method, route, status, ms; never the
 * token), and ENOSPC answered to clients at warn, one line per region per interval with a
 * count of the lines suppressed. The log is captured by a pino logger writing into an array.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pino, type Logger } from 'pino';
import { EnospcLog } from '../../src/appliance/enospc-log.js';
import { Region } from '../../src/appliance/region.js';
import { NbdClient, type NbdExport } from '../../src/nbd/index.js';
import { startAppliance } from './harness.js';

interface Line {
  level: number;
  msg: string;
  [field: string]: unknown;
}

function capture(level: 'info' | 'debug' = 'info'): { lines: Line[]; logger: Logger } {
  const lines: Line[] = [];
  const logger = pino({ level }, { write: (line: string) => void lines.push(JSON.parse(line) as Line) });
  return { lines, logger };
}

/** Waits (bounded) until `predicate` holds: log lines of a socket close come after the client's promise. */
async function until(predicate: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500 && !predicate(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
  assert.ok(predicate(), what);
}

test('an NBD connection is logged when it opens and when it closes, with its export, tenant, duration and bytes', async (t) => {
  const { lines, logger } = capture();
  const { appliance, call } = await startAppliance({ logger });
  t.after(() => appliance.stop());
  assert.equal(
    (await call('POST', '/v1/regions', { name: 'vol', size: '1MiB', tenant: 'acme' })).status,
    201,
  );
  const client = await NbdClient.connect({ port: appliance.nbdAddress.port, exportName: 'vol' });
  await client.write(0, Buffer.alloc(65536, 1));
  await client.read(0, 65536);
  const opened = lines.find((line) => line.event === 'nbd connection opened');
  assert.ok(opened, JSON.stringify(lines));
  assert.equal(opened.level, 30);
  assert.equal(opened.export, 'vol');
  assert.equal(opened.tenant, 'acme');
  assert.match(String(opened.peer), /^127\.0\.0\.1:\d+$/);
  await client.disconnect();
  await until(() => lines.some((line) => line.event === 'nbd connection closed'), 'a close line');
  const closed = lines.find((line) => line.event === 'nbd connection closed')!;
  assert.equal(closed.level, 30);
  assert.equal(closed.export, 'vol');
  assert.equal(closed.tenant, 'acme');
  assert.equal(closed.peer, opened.peer);
  assert.equal(closed.reason, 'client sent NBD_CMD_DISC');
  assert.ok(typeof closed.durationMs === 'number' && closed.durationMs >= 0);
  // What went over the socket: at least the payloads (plus headers and the handshake).
  assert.ok((closed.bytesIn as number) > 65536, `bytesIn ${closed.bytesIn}`);
  assert.ok((closed.bytesOut as number) > 65536, `bytesOut ${closed.bytesOut}`);
  assert.match(closed.msg, /connection closed after \d+ ms/);

  // A connection that only lists exports never uses one: its close is debug, not info.
  const before = lines.length;
  await NbdClient.list({ port: appliance.nbdAddress.port });
  await call('GET', '/v1/stats'); // a round trip for the server to see the close
  assert.equal(
    lines.slice(before).filter((line) => String(line.event ?? '').startsWith('nbd connection')).length,
    0,
  );
});

test('every admin request is logged once with method, route, status and time, never the token', async (t) => {
  const { lines, logger } = capture('debug');
  const { appliance, call, callAs } = await startAppliance({ logger });
  t.after(() => appliance.stop());
  assert.equal((await call('POST', '/v1/regions', { name: 'r1', size: '1MiB' })).status, 201);
  assert.equal((await call('GET', '/v1/regions/r1')).status, 200);
  assert.equal((await call('DELETE', '/v1/regions/nope')).status, 404);
  assert.equal((await callAs('not-the-token', 'GET', '/v1/regions')).status, 401);
  assert.equal((await call('GET', '/metrics')).status, 200);
  assert.equal((await call('GET', '/v1/dashboard')).status, 200);
  await until(() => lines.filter((line) => line.component === 'http').length >= 6, 'six request lines');
  const requests = lines.filter((line) => line.component === 'http');
  const seen = requests.map((line) => [line.level, line.method, line.route, line.status, line.caller]);
  assert.deepEqual(seen, [
    [30, 'POST', '/v1/regions', 201, 'admin'],
    [30, 'GET', '/v1/regions/:name', 200, 'admin'],
    [30, 'DELETE', '/v1/regions/:name', 404, 'admin'],
    [30, 'GET', '/v1/regions', 401, 'unidentified'],
    // What machines poll every second or so is debug.
    [20, 'GET', '/metrics', 200, 'admin'],
    [20, 'GET', '/v1/dashboard', 200, 'admin'],
  ]);
  for (const line of requests) {
    assert.ok(typeof line.ms === 'number' && line.ms >= 0, JSON.stringify(line));
    assert.match(line.msg, /^admin (GET|POST|DELETE) \S+ \d{3}$/);
  }
  const everything = JSON.stringify(lines);
  assert.ok(!everything.includes(appliance.adminToken), 'the admin token is never logged');
  assert.ok(!everything.includes('not-the-token'), 'nor a token that was refused');
});

test('ENOSPC answered to NBD clients is logged at warn, with the region and tenant', async (t) => {
  const { lines, logger } = capture();
  const { appliance, call } = await startAppliance({ logger, memory: '1MiB', defaultRegion: false });
  t.after(() => appliance.stop());
  assert.equal(
    (await call('POST', '/v1/regions', { name: 'full', size: '4MiB', tenant: 'acme' })).status,
    201,
  );
  const client = await NbdClient.connect({ port: appliance.nbdAddress.port, exportName: 'full' });
  t.after(() => client.disconnect());
  let refused = 0;
  for (let offset = 0; offset < 3 * 1024 * 1024; offset += 64 * 1024) {
    await client.write(offset, Buffer.alloc(64 * 1024, 3)).catch(() => refused++);
  }
  assert.ok(refused >= 16, `${refused} writes refused`);
  const warned = lines.filter((line) => line.level === 40 && line.component === 'nbd');
  // Many ENOSPC answers, a handful of lines at most (one per region per 10 s).
  assert.ok(warned.length >= 1 && warned.length < refused, `${warned.length} lines for ${refused} ENOSPC`);
  assert.equal(warned[0]!.region, 'full');
  assert.equal(warned[0]!.tenant, 'acme');
  assert.equal(warned[0]!.suppressed, 0);
  assert.match(warned[0]!.msg, /memory is full.*--memory/);
});

test('the ENOSPC log: one line per region per interval, the next line counting those suppressed', () => {
  const warnings: Array<{ fields: Record<string, unknown>; message: string }> = [];
  let now = 1_000_000;
  const log = new EnospcLog(
    {
      warn: ((fields: Record<string, unknown>, message: string) =>
        warnings.push({ fields, message })) as never,
    },
    10_000,
    () => now,
  );
  const region = (name: string): NbdExport =>
    Object.assign(Object.create(Region.prototype) as Region, { name, tenant: `t-${name}` });
  const a = region('a');
  const b = region('b');
  log.answered(5, a); // EIO: not logged here
  assert.equal(warnings.length, 0);
  log.answered(28, a);
  log.answered(28, a);
  log.answered(28, a);
  log.answered(28, b);
  now += 9_999;
  log.answered(28, a);
  assert.deepEqual(
    warnings.map((w) => [w.fields.region, w.fields.tenant, w.fields.suppressed]),
    [
      ['a', 't-a', 0],
      ['b', 't-b', 0],
    ],
  );
  now += 1;
  log.answered(28, a);
  assert.deepEqual(warnings[2]!.fields.suppressed, 3);
  assert.match(warnings[2]!.message, /\(3 more since the last such line\)/);
  now += 10_000;
  log.answered(28, a);
  assert.equal(warnings[3]!.fields.suppressed, 0);
});
