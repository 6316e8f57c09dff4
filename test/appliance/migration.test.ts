/**
 * Region migration between real appliances (in-process, real sockets): bytes, zero pages and
 * holes arrive intact and A's memory is freed; a client writing all along loses nothing it was
 * told was written; failures leave A serving and nothing on B; the admin API refuses bad
 * requests; the CLI drives a migration.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { Appliance } from '../../src/appliance/index.js';
import type { MigrationStatus } from '../../src/appliance/migration.js';
import { GATE_BLACKOUT, GATE_OPEN } from '../../src/appliance/region.js';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import { resolveRegion } from '../../src/fabric/follow.js';
import { ESHUTDOWN } from '../../src/nbd/protocol/constants.js';
import { NbdClient, NbdRequestError } from '../../src/nbd/index.js';
import { adminProxy } from './admin-proxy.js';
import { TEST_TOKEN, bearer, testAuth } from './harness.js';
import { memfabricCommand } from '../support/cli.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE = 4 * KiB;
/** Status polls while waiting for a migration to finish (every POLL_MS). */
const POLLS_MAX = 6000;
const POLL_MS = 5;

async function start(memory = '64MiB'): Promise<{ appliance: Appliance; url: string }> {
  const appliance = await Appliance.start({
    memory,
    nbd: { port: 0 },
    http: { port: 0 },
    defaultRegion: false,
    merge: false,
    auth: testAuth,
  });
  return { appliance, url: `http://127.0.0.1:${appliance.httpAddress.port}` };
}

async function call(
  base: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const response = await fetch(base + path, {
    method,
    headers: { ...bearer(TEST_TOKEN), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  return { status: response.status, json: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

async function migrate(base: string, name: string, body: Record<string, unknown>): Promise<MigrationStatus> {
  const started = await call(base, 'POST', `/v1/regions/${name}/migrate`, {
    targetToken: TEST_TOKEN,
    ...body,
  });
  assert.equal(started.status, 202, JSON.stringify(started.json));
  return started.json as unknown as MigrationStatus;
}

/** Polls GET …/migration until the migration is done or failed (bounded). */
async function finished(base: string, name: string): Promise<MigrationStatus> {
  for (let poll = 0; poll < POLLS_MAX; poll++) {
    const { json } = await call(base, 'GET', `/v1/regions/${name}/migration`);
    const status = json as unknown as MigrationStatus;
    if (status.state === 'done' || status.state === 'failed') return status;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  throw new Error(`migration of ${name} did not finish within ${POLLS_MAX} polls`);
}

/** Every extent of a region, as [length, flags] pairs. */
function extentsOf(appliance: Appliance, name: string): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const region = appliance.registry.require(name);
  region.blockStatus(0, region.size, (length, flags) => out.push([length, flags]));
  return out;
}

function bytesOf(appliance: Appliance, name: string): Buffer {
  const region = appliance.registry.require(name);
  const bytes = Buffer.alloc(region.size);
  region.read(0, bytes);
  return bytes;
}

function pattern(seed: number, length: number): Buffer {
  const bytes = Buffer.alloc(length);
  let x = seed * 2654435761 + 1;
  for (let i = 0; i < length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    bytes[i] = x >>> 24;
  }
  return bytes;
}

function comparePages(actual: Buffer, expected: Buffer, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: size`);
  for (let offset = 0; offset < expected.length; offset += PAGE) {
    const end = Math.min(offset + PAGE, expected.length);
    if (actual.compare(expected, offset, end, offset, end) !== 0) {
      assert.fail(`${what}: page ${offset / PAGE} differs`);
    }
  }
}

test('a region with data, zero pages and holes moves intact; A frees it and points at B', async (t) => {
  const a = await start();
  const b = await start();
  const c = await start();
  t.after(() => Promise.all([a.appliance.stop(), b.appliance.stop(), c.appliance.stop()]));

  // 32 MiB and a partial last page: data, zero pages, holes punched into written leaves,
  // untouched holes, a data page of zeros, and the partial page.
  const size = 32 * MiB + 1000;
  const region = await a.appliance.registry.create({ name: 'vm', size, tenant: 'blue' });
  region.write(0, pattern(1, 100 * PAGE));
  region.writeZeroes(200 * PAGE, 100 * PAGE, false);
  region.write(400 * PAGE, pattern(2, 100 * PAGE));
  region.trim(420 * PAGE, 30 * PAGE);
  region.write(3000 * PAGE, Buffer.alloc(PAGE));
  region.write(5000 * PAGE + 123, pattern(3, 3 * PAGE));
  region.write(size - 900, pattern(4, 900));
  const bytes = bytesOf(a.appliance, 'vm');
  const extents = extentsOf(a.appliance, 'vm');
  const dataPages = region.space.stats().dataPages;
  assert.ok(extents.some(([, flags]) => flags === 3) && extents.some(([, flags]) => flags === 2));

  // An idle client on A: it is disconnected when the region moves.
  const idle = await NbdClient.connect({ port: a.appliance.nbdAddress.port, exportName: 'vm' });
  t.after(() => idle.destroy());

  const started = await migrate(a.url, 'vm', { target: b.url, targetName: 'vm2' });
  assert.ok(['preparing', 'copying'].includes(started.state));
  const done = await finished(a.url, 'vm');
  assert.equal(done.state, 'done', JSON.stringify(done.error));
  const nbdB = { host: '127.0.0.1', port: b.appliance.nbdAddress.port };
  assert.deepEqual(done.movedTo, { appliance: b.url, region: 'vm2', nbd: nbdB });
  assert.ok(done.rounds.length >= 1);
  assert.equal(done.rounds[0]!.pages, dataPages + 100, 'round 1 sends data and zero pages, not holes');
  assert.equal(done.blackout!.pages, 0, 'nothing was written during the copy');
  t.diagnostic(`rounds ${JSON.stringify(done.rounds)}; blackout ${JSON.stringify(done.blackout)}`);

  // B holds the same bytes and the same extents, except that the data page of zeros arrives
  // as a zero page (the engine sends a page that reads as zeros as one); holes and zero pages
  // cost B nothing.
  const moved = b.appliance.registry.require('vm2');
  assert.equal(moved.size, size);
  assert.equal(moved.tenant, 'blue');
  comparePages(bytesOf(b.appliance, 'vm2'), bytes, 'B');
  const zeroData = extents.findIndex(([length, flags], i) => {
    const at = extents.slice(0, i).reduce((sum, [l]) => sum + l, 0);
    return at === 3000 * PAGE && length === PAGE && flags === 0;
  });
  assert.ok(zeroData >= 0, 'A reports the page of zeros as data');
  const expectedOnB = extents.map(([length, flags], i): [number, number] => [
    length,
    i === zeroData ? 2 : flags,
  ]);
  assert.deepEqual(extentsOf(b.appliance, 'vm2'), expectedOnB);
  assert.equal(b.appliance.pool.used, dataPages - 1, 'B holds one frame per data page that is not zeros');
  const viaNbd = await NbdClient.connect({ ...nbdB, exportName: 'vm2' });
  const status = await viaNbd.blockStatus(420 * PAGE, 30 * PAGE);
  assert.deepEqual(
    status.map((e) => [e.length, e.flags]),
    [[30 * PAGE, 3]],
    'a punched hole is a hole on B',
  );
  await viaNbd.disconnect();

  // A forgot it: memory freed, NBD connections ended and refused, the name points at B.
  assert.equal(a.appliance.pool.used, 0);
  assert.equal(a.appliance.registry.find('vm'), undefined);
  assert.equal((await idle.closed)?.code ?? 'clean', ErrorCodes.CONNECTION_CLOSED);
  await assert.rejects(NbdClient.connect({ port: a.appliance.nbdAddress.port, exportName: 'vm' }));
  const record = await call(a.url, 'GET', '/v1/regions/vm');
  assert.equal(record.status, 200);
  assert.deepEqual(record.json.movedTo, done.movedTo);
  assert.deepEqual(await resolveRegion(a.url, 'vm'), { appliance: b.url, region: 'vm2', nbd: nbdB, hops: 1 });

  // Again, B to C: resolveRegion follows both records.
  await migrate(b.url, 'vm2', { target: c.url, targetName: 'vm3' });
  assert.equal((await finished(b.url, 'vm2')).state, 'done');
  comparePages(bytesOf(c.appliance, 'vm3'), bytes, 'C');
  assert.deepEqual(extentsOf(c.appliance, 'vm3'), expectedOnB);
  assert.equal(b.appliance.pool.used, 0);
  assert.deepEqual(await resolveRegion(a.url, 'vm'), {
    appliance: c.url,
    region: 'vm3',
    nbd: { host: '127.0.0.1', port: c.appliance.nbdAddress.port },
    hops: 2,
  });
  await assert.rejects(resolveRegion(a.url, 'vm', { hopsMax: 1 }), { code: ErrorCodes.NOT_FOUND });

  // A new region may take the name back; deleting a forwarding record forgets it.
  assert.equal((await call(b.url, 'DELETE', '/v1/regions/vm2')).status, 204);
  assert.equal((await call(b.url, 'GET', '/v1/regions/vm2')).status, 404);
});

/** Page p's content at version v: a (p, v) stamp, then a byte derived from both. */
function stamped(p: number, v: number): Buffer {
  const page = Buffer.alloc(PAGE, (p * 7 + v * 13) & 0xff);
  page.writeUInt32LE(p, 0);
  page.writeUInt32LE(v, 4);
  return page;
}

/** Pages of the region holding data, and the hot set the writers keep rewriting. */
const DATA_PAGES = 8192;
const HOT_PAGES = 512;
const WRITERS = 4;
/** Writes each writer makes at most, and at least after the region has moved. */
const WRITES_MAX = 200_000;
const WRITES_AFTER_MOVE = 300;
/** Reconnections a single write may need (each waits out a blackout through resolveRegion). */
const RETRIES_MAX = 50;

test('a client writing all along loses nothing it was told was written', async (t) => {
  const a = await start('256MiB');
  const b = await start('256MiB');
  t.after(() => Promise.all([a.appliance.stop(), b.appliance.stop()]));
  const region = await a.appliance.registry.create({ name: 'live', size: 64 * MiB });
  for (let p = 0; p < DATA_PAGES; p++) region.write(p * PAGE, stamped(p, 0));
  /** The latest acknowledged version of every page. */
  const acked = new Uint32Array(DATA_PAGES);
  let moved = false;
  let writesBeforeMigration = 0;
  let refused = 0;

  const retryable = (error: unknown): boolean =>
    error instanceof MemfabricError &&
    (error.code === ErrorCodes.CONNECTION_CLOSED ||
      (error instanceof NbdRequestError && error.errno === ESHUTDOWN));

  async function connect(): Promise<{ client: NbdClient; appliance: string }> {
    for (let attempt = 0; attempt < RETRIES_MAX; attempt++) {
      const where = await resolveRegion(a.url, 'live', { waitMs: 5000 });
      try {
        const client = await NbdClient.connect({ ...where.nbd, exportName: where.region });
        return { client, appliance: where.appliance };
      } catch (error) {
        if (!(error instanceof MemfabricError)) throw error;
      }
    }
    throw new Error('could not connect to the region');
  }

  async function writer(w: number): Promise<number> {
    let { client, appliance } = await connect();
    let x = w + 1;
    let atTarget = 0;
    for (let i = 0; i < WRITES_MAX && atTarget < WRITES_AFTER_MOVE; i++) {
      x = (x * 1103515245 + 12345) >>> 0;
      const p = ((x >>> 8) % (HOT_PAGES / WRITERS)) * WRITERS + w;
      const v = acked[p]! + 1;
      for (let attempt = 0; ; attempt++) {
        try {
          await client.write(p * PAGE, stamped(p, v));
          break;
        } catch (error) {
          if (!retryable(error) || attempt >= RETRIES_MAX) throw error;
          refused++;
          client.destroy();
          ({ client, appliance } = await connect());
        }
      }
      acked[p] = v;
      if (!moved) writesBeforeMigration++;
      if (appliance === b.url) {
        moved = true;
        atTarget++;
      }
    }
    await client.disconnect();
    return atTarget;
  }

  const writers = Array.from({ length: WRITERS }, (_, w) => writer(w));
  // Let the writers get going, then migrate under them.
  for (let poll = 0; poll < POLLS_MAX && writesBeforeMigration < 400; poll++) {
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  // A downtime target no blackout can meet (two round trips already exceed 0 ms): the copy
  // goes round after round under the writers, and stops at maxRounds.
  await migrate(a.url, 'live', { target: b.url, maxDowntimeMs: 0, maxRounds: 4 });
  const done = await finished(a.url, 'live');
  const atTarget = await Promise.all(writers);
  assert.equal(done.state, 'done', JSON.stringify(done.error));
  assert.deepEqual(atTarget, [WRITES_AFTER_MOVE, WRITES_AFTER_MOVE, WRITES_AFTER_MOVE, WRITES_AFTER_MOVE]);

  // Every acknowledged write's latest version is on B.
  const target = b.appliance.registry.require('live');
  const page = Buffer.alloc(PAGE);
  for (let p = 0; p < DATA_PAGES; p++) {
    target.read(p * PAGE, page);
    if (!page.equals(stamped(p, acked[p]!))) {
      assert.fail(`page ${p}: expected version ${acked[p]}, found ${page.readUInt32LE(4)}`);
    }
  }
  const rounds = done.rounds;
  t.diagnostic(
    `rounds ${rounds.length}: ${rounds.map((r) => `${r.pages} pages/${r.ms} ms`).join(', ')}; ` +
      `stop ${done.stopReason}; blackout ${done.blackout!.pages} pages in ${done.blackout!.ms} ms; ` +
      `writes refused and retried ${refused}`,
  );
  assert.equal(rounds.length, 4, 'the downtime target kept the copy going');
  assert.equal(done.stopReason, 'max-rounds');
  assert.equal(rounds[0]!.pages, DATA_PAGES);
  // At most the hot set: whatever the writers managed to dirty since the last round began.
  assert.ok(done.blackout!.pages <= HOT_PAGES, 'the blackout copied few pages');
  assert.ok(refused >= 1, 'the writers were switched over');
  assert.equal(a.appliance.pool.used, 0);
});

test('a failed migration leaves A serving with all its data and nothing on B', async (t) => {
  const a = await start();
  t.after(() => a.appliance.stop());
  const region = await a.appliance.registry.create({ name: 'vm', size: 16 * MiB });
  region.write(0, pattern(5, 4 * MiB));
  region.trim(MiB, MiB);
  const bytes = bytesOf(a.appliance, 'vm');
  const extents = extentsOf(a.appliance, 'vm');
  const intact = async (what: string) => {
    assert.equal(a.appliance.registry.require('vm').migrating, false);
    comparePages(bytesOf(a.appliance, 'vm'), bytes, what);
    assert.deepEqual(extentsOf(a.appliance, 'vm'), extents);
    // Still writable over NBD.
    const client = await NbdClient.connect({ port: a.appliance.nbdAddress.port, exportName: 'vm' });
    await client.write(8 * MiB, Buffer.alloc(PAGE, 9));
    await client.trim(8 * MiB, PAGE);
    await client.disconnect();
  };

  // Target unreachable: a port nobody listens on.
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const port = (closed.address() as { port: number }).port;
  await new Promise((resolve) => closed.close(resolve));
  await migrate(a.url, 'vm', { target: `http://127.0.0.1:${port}` });
  const unreachable = await finished(a.url, 'vm');
  assert.equal(unreachable.state, 'failed');
  assert.equal(unreachable.error!.code, ErrorCodes.CONNECTION_CLOSED);
  assert.equal(unreachable.targetCleanedUp, null, 'nothing was created there');
  await intact('after an unreachable target');

  // Target too small: refused before anything is created there.
  const tiny = await start('1MiB');
  t.after(() => tiny.appliance.stop());
  await migrate(a.url, 'vm', { target: tiny.url });
  const full = await finished(a.url, 'vm');
  assert.equal(full.state, 'failed');
  assert.equal(full.error!.code, ErrorCodes.POOL_EXHAUSTED);
  assert.match(full.error!.message, /bytes free/);
  assert.equal(tiny.appliance.registry.size, 0);
  await intact('after a target without memory');

  // Target's NBD server gone: the region created there is deleted again.
  const broken = await start();
  t.after(() => broken.appliance.stop());
  await broken.appliance.nbdServer.close();
  await migrate(a.url, 'vm', { target: broken.url, targetName: 'copy' });
  const cut = await finished(a.url, 'vm');
  assert.equal(cut.state, 'failed');
  assert.equal(cut.targetCleanedUp, true);
  assert.equal(broken.appliance.registry.size, 0);
  assert.equal(broken.appliance.pool.used, 0);
  await intact('after the target lost its NBD server');
});

/** Resolves with the first connection `server` accepts; rejects if none comes in `POLLS_MAX * POLL_MS`. */
function firstConnection(server: ReturnType<typeof createServer>): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      server.off('connection', resolve);
      reject(new Error('the migration never connected to the target'));
    }, POLLS_MAX * POLL_MS);
    server.once('connection', (socket: Socket) => {
      clearTimeout(timer);
      resolve(socket);
    });
  });
}

test('bad requests: unknown region, bad target, a second migration, deleting while migrating', async (t) => {
  const a = await start();
  t.after(() => a.appliance.stop());
  await a.appliance.registry.create({ name: 'vm', size: MiB });
  await a.appliance.registry.create({ name: 'ro', size: MiB, readOnly: true });
  const expect = async (path: string, body: unknown, status: number, code: string) => {
    const answer = await call(a.url, 'POST', path, body);
    assert.equal(answer.status, status, JSON.stringify(answer.json));
    assert.equal((answer.json.error as { code: string }).code, code);
  };
  await expect('/v1/regions/nope/migrate', { target: 'http://127.0.0.1:1' }, 404, ErrorCodes.NOT_FOUND);
  for (const target of ['not a url', 'ftp://127.0.0.1:1', 'http://127.0.0.1:1/v1', 'http://u:p@h:1']) {
    await expect('/v1/regions/vm/migrate', { target }, 400, ErrorCodes.INVALID_ARGUMENT);
  }
  await expect('/v1/regions/vm/migrate', { target: 'http://h:1', extra: 1 }, 400, ErrorCodes.BAD_REQUEST);
  await expect('/v1/regions/vm/migrate', { target: 'http://h:1', maxRounds: 0 }, 400, ErrorCodes.BAD_REQUEST);
  await expect('/v1/regions/vm/migrate', {}, 400, ErrorCodes.BAD_REQUEST);
  const h = 'http://h:1';
  await expect('/v1/regions/vm/migrate', { target: h, maxDowntimeMs: -1 }, 400, ErrorCodes.BAD_REQUEST);
  await expect('/v1/regions/vm/migrate', { target: h, maxDowntimeMs: 'fast' }, 400, ErrorCodes.BAD_REQUEST);
  // blackoutPages is gone: the downtime target replaced it.
  await expect('/v1/regions/vm/migrate', { target: h, blackoutPages: 16 }, 400, ErrorCodes.BAD_REQUEST);
  // Slowing a region's writers would stall the appliance: refused, saying what to do instead.
  const converge = await call(a.url, 'POST', '/v1/regions/vm/migrate', { target: h, autoConverge: true });
  assert.equal(converge.status, 400);
  assert.equal((converge.json.error as { code: string }).code, ErrorCodes.INVALID_ARGUMENT);
  assert.match((converge.json.error as { message: string }).message, /raise maxDowntimeMs or maxRounds/);
  await expect('/v1/regions/ro/migrate', { target: 'http://h:1' }, 409, ErrorCodes.READ_ONLY);
  const none = await call(a.url, 'GET', '/v1/regions/vm/migration');
  assert.equal(none.status, 404);

  // A target that accepts connections and never answers keeps the migration in 'preparing'.
  const sockets = new Set<Socket>();
  const hanging = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => hanging.listen(0, '127.0.0.1', resolve));
  const target = `http://127.0.0.1:${(hanging.address() as { port: number }).port}`;
  const connected = firstConnection(hanging);
  const first = await migrate(a.url, 'vm', { target });
  assert.equal(first.state, 'preparing');
  assert.ok(sockets.has(await connected), 'the migration connected to the target');
  assert.equal((await call(a.url, 'GET', '/v1/regions/vm/migration')).json.state, 'preparing');
  assert.equal(await metric(a.url, 'memfabric_migration_in_progress'), 1, 'the metrics see it under way');
  assert.equal(await metric(a.url, 'memfabric_migration_last_blackout_ms'), 0, 'no blackout yet');
  await expect('/v1/regions/vm/migrate', { target }, 409, ErrorCodes.MIGRATING);
  const deleting = await call(a.url, 'DELETE', '/v1/regions/vm');
  assert.equal(deleting.status, 409);
  assert.equal((deleting.json.error as { code: string }).code, ErrorCodes.MIGRATING);

  // The target hangs up: the migration fails and the region can migrate (or go) again.
  for (const socket of sockets) socket.destroy();
  await new Promise((resolve) => hanging.close(resolve));
  const failed = await finished(a.url, 'vm');
  assert.equal(failed.state, 'failed');
  assert.equal(failed.id, first.id);
  assert.equal(await metric(a.url, 'memfabric_migration_in_progress'), 0);
  assert.equal(await metric(a.url, 'memfabric_migration_finished_total{outcome="failed"}'), 1);
  assert.equal((await call(a.url, 'DELETE', '/v1/regions/vm')).status, 204);
});

test('stopping the appliance fails a migration under way and keeps the region', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'memfabric-migration-'));
  t.after(() => rmSync(dataDir, { recursive: true, force: true }));
  const options = {
    memory: '16MiB',
    nbd: { port: 0 },
    http: { port: 0 },
    defaultRegion: false as const,
    dataDir,
    auth: testAuth,
  };
  // The appliance's log says how the migration ended (its status API stops with it).
  const logged: Array<{ level: number; msg: string; error?: { message?: string } }> = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void logged.push(JSON.parse(line)) });
  const a = await Appliance.start({ ...options, logger });
  const region = await a.registry.create({ name: 'kept', size: 4 * MiB, file: true });
  region.write(0, pattern(7, MiB));
  const url = `http://127.0.0.1:${a.httpAddress.port}`;
  const sockets = new Set<Socket>();
  const hanging = createServer((socket) => sockets.add(socket.on('error', () => undefined)));
  await new Promise<void>((resolve) => hanging.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    return new Promise((resolve) => hanging.close(resolve));
  });
  const connected = firstConnection(hanging);
  await migrate(url, 'kept', { target: `http://127.0.0.1:${(hanging.address() as { port: number }).port}` });
  assert.ok(sockets.has(await connected), 'the migration connected to the target');
  assert.equal(region.migrating, true, 'the migration is under way when the appliance stops');
  await a.stop(); // cancels the migration instead of waiting for the silent target
  assert.equal(region.migrating, false);
  const failed = logged.filter((entry) => entry.msg === 'migration failed; the region stays here');
  assert.equal(failed.length, 1, JSON.stringify(logged.map((entry) => entry.msg)));
  assert.match(failed[0]!.error?.message ?? '', /the appliance is stopping/);
  assert.equal(
    logged.some((entry) => entry.msg === 'migration done'),
    false,
  );
  const again = await Appliance.start(options);
  t.after(() => again.stop());
  await again.loaded; // file-backed regions load after the appliance listens
  comparePages(bytesOf(again, 'kept').subarray(0, MiB), pattern(7, MiB), 'after a restart');
});

test('memfabric region migrate moves a region and reports it', async (t) => {
  const a = await start();
  const b = await start();
  t.after(() => Promise.all([a.appliance.stop(), b.appliance.stop()]));
  const region = await a.appliance.registry.create({ name: 'vm', size: 4 * MiB });
  region.write(0, pattern(6, MiB));
  const cli = memfabricCommand();
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [
      ...cli,
      'region',
      'migrate',
      'vm',
      '--to',
      b.url,
      '--to-token',
      TEST_TOKEN,
      '--as',
      'vm-b',
      '--appliance',
      a.url,
    ],
    { timeout: 60_000, env: { ...process.env, MEMFABRIC_TOKEN: TEST_TOKEN } },
  );
  assert.match(stdout, /moved vm to http:\/\/127\.0\.0\.1:\d+ as vm-b/);
  assert.match(stdout, /nbd:\/\/127\.0\.0\.1:\d+\/vm-b/);
  comparePages(bytesOf(b.appliance, 'vm-b').subarray(0, MiB), pattern(6, MiB), 'B');
  assert.equal(a.appliance.registry.find('vm'), undefined);
});

/** A sample's value in A's /metrics (`series` is the name with its labels, as printed). */
async function metric(base: string, series: string): Promise<number | undefined> {
  const response = await fetch(`${base}/metrics`, { headers: bearer(TEST_TOKEN) });
  const text = await response.text();
  for (const line of text.split('\n')) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  }
  return undefined;
}

/** One op of the writer below: pages [page, page + count) written, zeroed or trimmed. */
interface WriterOp {
  kind: 'write' | 'zero-data' | 'write-zeroes' | 'trim';
  page: number;
  count: number;
}

/** Writes the writer makes at most (it stops at its first refusal, or when the region moves). */
const WRITER_OPS_MAX = 100_000;
/** Acknowledged ops before the migration starts. */
const WRITER_OPS_BEFORE = 50;

/**
 * A real NBD client on A dirtying random pages with data, data pages of zeros, WRITE_ZEROES and
 * TRIMs, one request at a time, applying each acknowledged op to `model`. It stops at its first
 * error: a refusal (ESHUTDOWN, the blackout) changed nothing; any other error (the move ended
 * the connection) leaves its op `uncertain`: applied or not, B must hold one of the two.
 */
function nbdWriter(
  port: number,
  name: string,
  model: Buffer,
  seed: number,
): {
  acked: () => number;
  done: Promise<{ acked: number; uncertain: { op: WriterOp; after: Buffer } | undefined }>;
} {
  let acked = 0;
  const pages = model.length / PAGE;
  const run = async () => {
    const client = await NbdClient.connect({ port, exportName: name });
    let x = seed;
    const next = (n: number) => {
      x = (x * 1103515245 + 12345) >>> 0;
      return (x >>> 8) % n;
    };
    for (let i = 0; i < WRITER_OPS_MAX; i++) {
      const kinds = ['write', 'write', 'write', 'write', 'zero-data', 'write-zeroes', 'trim'] as const;
      const op: WriterOp = { kind: kinds[next(kinds.length)]!, page: next(pages), count: 1 + next(8) };
      op.count = Math.min(op.count, pages - op.page);
      const offset = op.page * PAGE;
      const length = op.count * PAGE;
      const after = op.kind === 'write' ? pattern(seed * 1_000_003 + i, length) : Buffer.alloc(length);
      try {
        if (op.kind === 'write' || op.kind === 'zero-data') await client.write(offset, after);
        else if (op.kind === 'write-zeroes') await client.writeZeroes(offset, length);
        else await client.trim(offset, length);
      } catch (error) {
        client.destroy();
        const refused = error instanceof NbdRequestError && error.errno === ESHUTDOWN;
        return { acked, uncertain: refused ? undefined : { op, after } };
      }
      after.copy(model, offset);
      acked++;
    }
    await client.disconnect();
    return { acked, uncertain: undefined };
  };
  return { acked: () => acked, done: run() };
}

/** Runs of the test below: 5 in the suite, MIGRATE_RUNS in the soak (as test/migrate's). */
const RUNS = Number(process.env.MIGRATE_RUNS ?? 5);

test('the downtime target decides when to black out; a writer loses no acknowledged byte either way', async (t) => {
  const a = await start('128MiB');
  const b = await start('128MiB');
  t.after(() => Promise.all([a.appliance.stop(), b.appliance.stop()]));
  const size = 32 * MiB;
  assert.equal(await metric(a.url, 'memfabric_migration_finished_total{outcome="done"}'), 0);

  const runs: MigrationStatus[] = [];
  for (let run = 0; run < RUNS; run++) {
    // A target no blackout can meet (two round trips exceed 0 ms), then one any blackout meets.
    for (const [kind, options] of [
      ['tight', { maxDowntimeMs: 0, maxRounds: 5 }],
      ['loose', { maxDowntimeMs: 3_600_000 }],
    ] as const) {
      const name = `${kind}${run}`;
      const region = await a.appliance.registry.create({ name, size });
      region.write(0, pattern(run, 4096 * PAGE));
      region.writeZeroes(4096 * PAGE, 1024 * PAGE, false);
      const model = bytesOf(a.appliance, name);
      const writer = nbdWriter(a.appliance.nbdAddress.port, name, model, run * 2 + kind.length);
      for (let poll = 0; poll < POLLS_MAX && writer.acked() < WRITER_OPS_BEFORE; poll++) {
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
      assert.ok(writer.acked() >= WRITER_OPS_BEFORE, 'the writer got going');
      await migrate(a.url, name, { target: b.url, ...options });
      const done = await finished(a.url, name);
      const { acked, uncertain } = await writer.done;
      assert.equal(done.state, 'done', JSON.stringify(done.error));
      t.diagnostic(
        `${name}: ${acked} ops acknowledged; rounds ${done.rounds.map((r) => `${r.pages}p/${r.ms}ms`).join(', ')}; ` +
          `stop ${done.stopReason}; expected ${done.expectedDowntimeMs} ms, blackout ${done.blackout!.pages} pages in ${done.blackout!.ms} ms; ` +
          `bandwidth ${Math.round(done.bandwidthBytesPerSec / MiB)} MiB/s, rtt ${done.rttMs} ms`,
      );

      // Every byte on B is the model's: every acknowledged op, nothing refused.
      const onB = bytesOf(b.appliance, name);
      if (uncertain) {
        const start = uncertain.op.page * PAGE;
        const end = start + uncertain.op.count * PAGE;
        const applied = onB.subarray(start, end).equals(uncertain.after);
        if (applied) uncertain.after.copy(model, start);
        else comparePages(onB.subarray(start, end), model.subarray(start, end), `${name}: the op in flight`);
      }
      comparePages(onB, model, `${name} on B`);
      await b.appliance.registry.delete(name);

      // The downtime target decided; the engine's progress is in the status.
      if (kind === 'tight') {
        assert.equal(done.stopReason, 'max-rounds');
        assert.equal(done.rounds.length, 5);
        assert.ok(done.expectedDowntimeMs! > 0, 'the blackout went ahead over its target, and says so');
      } else {
        assert.equal(done.stopReason, 'converged');
        assert.equal(done.rounds.length, 1);
      }
      assert.ok(done.rttMs > 0 && done.bandwidthBytesPerSec > 0);
      assert.equal(done.maxDowntimeMs, options.maxDowntimeMs);
      assert.equal(done.autoConverge, false);
      assert.equal(done.throttle.level, 0);
      assert.equal(
        done.pagesCopied,
        done.rounds.reduce((sum, r) => sum + r.pages, 0) + done.blackout!.pages,
        'pages copied: every round and the blackout',
      );
      runs.push(done);
    }
  }

  // A's metrics count every migration.
  const sum = (field: 'pagesCopied' | 'bytesSent') => runs.reduce((total, r) => total + r[field], 0);
  assert.equal(await metric(a.url, 'memfabric_migration_in_progress'), 0);
  assert.equal(await metric(a.url, 'memfabric_migration_finished_total{outcome="done"}'), 2 * RUNS);
  assert.equal(await metric(a.url, 'memfabric_migration_finished_total{outcome="failed"}'), 0);
  assert.equal(await metric(a.url, 'memfabric_migration_pages_sent_total'), sum('pagesCopied'));
  assert.equal(await metric(a.url, 'memfabric_migration_bytes_sent_total'), sum('bytesSent'));
  assert.equal(await metric(a.url, 'memfabric_migration_rounds_total'), 6 * RUNS);
  assert.equal(await metric(a.url, 'memfabric_migration_last_blackout_ms'), runs.at(-1)!.blackout!.ms);
});

function descriptor(generation: number): Record<string, unknown> {
  return { format: 1, id: 'r-1', name: 'vol', generation, shards: [{ index: 0 }] };
}

test('in the blackout writes are refused with ESHUTDOWN and reads go on; a handover that fails reopens the gate', async (t) => {
  const a = await start();
  const b = await start();
  const proxy = await adminProxy(b.url);
  t.after(() => Promise.all([a.appliance.stop(), b.appliance.stop(), proxy.close()]));
  const created = await call(a.url, 'POST', '/v1/regions', {
    name: 'bx',
    size: 4 * MiB,
    descriptor: descriptor(1),
  });
  assert.equal(created.status, 201);
  const region = a.appliance.registry.require('bx');
  region.write(0, pattern(8, MiB));
  const bytes = bytesOf(a.appliance, 'bx');
  // An NBD client that meets ESHUTDOWN disconnects (the server is going away): one per request.
  const connect = async () => {
    const client = await NbdClient.connect({ port: a.appliance.nbdAddress.port, exportName: 'bx' });
    t.after(() => client.destroy());
    return client;
  };

  // B's region is made (its answer held); the descriptor is replaced on A (so the handover
  // sends it again) and on B with a higher generation (so B refuses that as stale).
  const create = proxy.hold('POST', '/v1/regions');
  const resend = proxy.hold('PUT', '/v1/regions/bx/descriptor');
  await migrate(a.url, 'bx', { target: proxy.url });
  await create.held;
  assert.equal(
    (await call(a.url, 'PUT', '/v1/regions/bx/descriptor', { descriptor: descriptor(2) })).status,
    200,
  );
  assert.equal(
    (await call(b.url, 'PUT', '/v1/regions/bx/descriptor', { descriptor: descriptor(5) })).status,
    200,
  );
  create.release();

  // The handover's PUT is answered and held: A is in its blackout.
  await resend.held;
  assert.equal((await call(a.url, 'GET', '/v1/regions/bx/migration')).json.state, 'blackout');
  const refused = { errno: ESHUTDOWN, message: /in its migration blackout; nothing was written/ };
  await assert.rejects((await connect()).write(0, Buffer.alloc(PAGE, 1)), refused);
  await assert.rejects((await connect()).writeZeroes(PAGE, PAGE), refused);
  await assert.rejects((await connect()).trim(2 * PAGE, PAGE), refused);
  assert.ok((await (await connect()).read(0, MiB)).equals(bytes.subarray(0, MiB)), 'reads go on');
  assert.equal(region.gate, GATE_BLACKOUT);
  const put = await call(a.url, 'PUT', '/v1/regions/bx/descriptor', { descriptor: descriptor(3) });
  assert.equal(put.status, 409);
  assert.equal((put.json.error as { code: string }).code, ErrorCodes.MIGRATING);
  comparePages(bytesOf(a.appliance, 'bx'), bytes, 'A in the blackout');

  // B refuses the resent descriptor: the migration fails, the gate reopens, B's copy goes.
  resend.release();
  const failed = await finished(a.url, 'bx');
  assert.equal(failed.state, 'failed');
  assert.equal(failed.error!.code, ErrorCodes.STALE_GENERATION);
  assert.equal(failed.targetCleanedUp, true);
  assert.equal(b.appliance.registry.find('bx'), undefined);
  assert.equal(region.gate, GATE_OPEN);
  assert.equal(region.space.writeGate, undefined, 'the engine took its gate off');
  assert.equal(region.migrating, false);
  assert.deepEqual(region.descriptor, descriptor(2));
  // Writes go on, and nothing was lost.
  const client = await connect();
  await client.write(0, Buffer.alloc(PAGE, 1));
  await client.disconnect();
  bytes.fill(1, 0, PAGE);
  comparePages(bytesOf(a.appliance, 'bx'), bytes, 'A after the failed handover');
});
