/**
 * Sub-allocation from the client side, against a real in-process appliance: claimChunk and
 * SubAllocator, views bounded to their chunk, release ordering, and several client processes
 * claiming chunks of one region at the same time without ever sharing one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Appliance } from '../../src/appliance/index.js';
import { regionChunks } from '../../src/appliance/chunk-routes.js';
import { SubAllocator, claimChunk } from '../../src/fabric/suballocation.js';
import { ErrorCodes, MemfabricError } from '../../src/index.js';
import { chunkPattern, type WorkerReport } from './suballocation-worker.js';
import { TEST_TOKEN, testAuth } from '../appliance/harness.js';

const KiB = 1024;
const MiB = 1024 * KiB;

async function start() {
  const appliance = await Appliance.start({
    memory: '64MiB',
    nbd: { port: 0 },
    http: { port: 0 },
    merge: false,
    defaultRegion: false,
    auth: testAuth,
  });
  const url = `http://127.0.0.1:${appliance.httpAddress.port}`;
  return { appliance, url };
}

/** Waits for a condition the server reaches after a client call resolves (a socket close). */
async function eventually(condition: () => boolean, what: string, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`not within ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function withCode(expected: string, pattern?: RegExp) {
  return (error: unknown) => {
    assert.ok(error instanceof MemfabricError, String(error));
    assert.equal(error.code, expected, error.message);
    if (pattern) assert.match(error.message, pattern);
    return true;
  };
}

test('claimChunk: a chunk, a view bounded to it, and release', async (t) => {
  const { appliance, url } = await start();
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'pool', size: '8MiB' });
  const region = appliance.registry.require('pool');

  const first = await claimChunk({
    appliance: url,
    token: TEST_TOKEN,
    region: 'pool',
    owner: 'job-1',
    chunkSize: '256KiB',
  });
  const chunk = await claimChunk({
    appliance: url,
    token: TEST_TOKEN,
    region: 'pool',
    owner: 'job-2',
    size: 300 * KiB,
  });
  assert.equal(first.offset, 0);
  assert.equal(chunk.offset, 256 * KiB);
  assert.equal(chunk.length, 512 * KiB);
  assert.equal(chunk.chunkSize, 256 * KiB);

  const view = await chunk.open();
  assert.ok(
    (await view.read(0, chunk.length)).every((x) => x === 0),
    'a fresh chunk reads as zeros',
  );
  await view.write(0, Buffer.alloc(chunk.length, 0x5a));
  const edge = Buffer.from('the last bytes!');
  await view.write(chunk.length - edge.length, edge);
  assert.deepEqual(await view.read(chunk.length - edge.length, edge.length), edge);
  const direct = Buffer.alloc(edge.length);
  region.read(chunk.offset + chunk.length - edge.length, direct);
  assert.deepEqual(direct, edge, 'view offsets are relative to the chunk');
  const around = Buffer.alloc(16);
  region.read(chunk.offset - 16, around);
  assert.ok(
    around.every((x) => x === 0),
    "the neighbour's bytes are untouched",
  );

  for (const [offset, length] of [
    [chunk.length - 1, 2],
    [-1, 1],
    [chunk.length, 1],
    [0, chunk.length + 1],
  ] as const) {
    await assert.rejects(view.read(offset, length), withCode(ErrorCodes.OUT_OF_RANGE, /outside the/));
    await assert.rejects(view.write(offset, Buffer.alloc(length)), withCode(ErrorCodes.OUT_OF_RANGE));
  }
  await assert.rejects(view.readInto(chunk.length, Buffer.alloc(1)), withCode(ErrorCodes.OUT_OF_RANGE));
  await assert.rejects(view.read(0.5, 1), withCode(ErrorCodes.INVALID_ARGUMENT));

  // Release waits for the writes already issued, then frees (and the appliance trims).
  const pending = Array.from({ length: 16 }, (_, i) => view.write(i * 4 * KiB, Buffer.alloc(4 * KiB, i + 1)));
  const released = chunk.release();
  assert.equal(chunk.released, true);
  await assert.rejects(view.write(0, Buffer.alloc(1)), withCode(ErrorCodes.DESTROYED, /released/));
  await assert.rejects(chunk.open(), withCode(ErrorCodes.DESTROYED));
  await Promise.all(pending);
  await released;
  await chunk.release(); // idempotent
  const listing = regionChunks(region)!.list().allocations;
  assert.deepEqual(listing, [{ offset: 0, length: 256 * KiB, owner: 'job-1' }]);
  const bytes = Buffer.alloc(chunk.length, 1);
  region.read(chunk.offset, bytes);
  assert.ok(
    bytes.every((x) => x === 0),
    'the released chunk was trimmed after its last write',
  );
  await eventually(
    () => appliance.nbdServer.stats().connectionsOpen === 0,
    "the lone chunk's NBD connection closes with it",
  );
  await first.release();
  assert.equal(regionChunks(region)!.stats().chunksUsed, 0);
});

test('SubAllocator: many chunks over one connection, typed errors, list() after a restart', async (t) => {
  const { appliance, url } = await start();
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'pool', size: '1MiB' });
  const sub = new SubAllocator({
    appliance: url,
    token: TEST_TOKEN,
    region: 'pool',
    owner: 'svc-a',
    chunkSize: 128 * KiB,
  });
  const chunks = [];
  for (let i = 0; i < 6; i++) chunks.push(await sub.claim());
  const views = await Promise.all(chunks.map((chunk) => chunk.open()));
  await Promise.all(views.map((view, i) => view.write(0, Buffer.alloc(view.length, i + 1))));
  for (const [i, view] of views.entries()) {
    assert.ok((await view.read(0, view.length)).every((x) => x === i + 1));
  }
  assert.equal(appliance.nbdServer.stats().connectionsTotal, 1, 'one NBD connection for all views');

  await assert.rejects(sub.claim({ count: 3 }), withCode(ErrorCodes.CHUNKS_EXHAUSTED, /2 of 8 are free/));
  const other = new SubAllocator({
    appliance: url,
    token: TEST_TOKEN,
    region: 'pool',
    owner: 'svc-b',
    chunkSize: '64KiB',
  });
  await assert.rejects(other.claim(), withCode(ErrorCodes.CONFLICT, /131072/));
  const missing = new SubAllocator({ appliance: url, token: TEST_TOKEN, region: 'nope', owner: 'svc-b' });
  await assert.rejects(missing.claim(), withCode(ErrorCodes.NOT_FOUND));
  const bad = new SubAllocator({ appliance: url, token: TEST_TOKEN, region: 'pool', owner: 'no spaces' });
  await assert.rejects(bad.claim(), withCode(ErrorCodes.INVALID_ARGUMENT, /owner/));
  assert.throws(
    () => new SubAllocator({ appliance: url, token: TEST_TOKEN, region: '', owner: 'x' }),
    withCode(ErrorCodes.INVALID_ARGUMENT),
  );

  // The process "restarts": a new SubAllocator with the same owner finds its chunks.
  await sub.close();
  await assert.rejects(sub.claim(), withCode(ErrorCodes.DESTROYED));
  const again = new SubAllocator({ appliance: url, token: TEST_TOKEN, region: 'pool', owner: 'svc-a' });
  const found = await again.list();
  assert.deepEqual(
    found.map((chunk) => chunk.offset),
    chunks.map((chunk) => chunk.offset),
  );
  const view = await found[2]!.open();
  assert.ok(
    (await view.read(0, 16)).every((x) => x === 3),
    'the data is still there',
  );
  await Promise.all(found.map((chunk) => chunk.release()));
  assert.deepEqual(await again.list(), []);
  await again.close();
  const unreachable = new SubAllocator({ appliance: 'http://127.0.0.1:9', region: 'pool', owner: 'x' });
  await assert.rejects(unreachable.claim(), withCode(ErrorCodes.CONNECTION_CLOSED));
});

// ---- concurrent client processes ---------------------------------------------------------

const WORKER = fileURLToPath(new URL('./suballocation-worker.ts', import.meta.url));
const WORKERS = 6;
const CHUNK_BYTES = 16 * KiB;
const REGION_BYTES = 2 * MiB; // 128 chunks: fewer than the workers together ask for
const CLAIMS_MAX = 60;
/** How long workers claim. */
const WORKER_DEADLINE_MS = 15_000;
/** How long a worker may take to load (tsx compiles on start) and to finish. */
const READY_MS_MAX = 60_000;
const EXIT_MS_MAX = WORKER_DEADLINE_MS + 20_000;

interface Worker {
  child: ChildProcess;
  owner: string;
  lines: string[];
  stderr: string;
  exited: Promise<number | null>;
}

function spawnWorker(url: string, owner: string): Worker {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      WORKER,
      url,
      'pool',
      owner,
      String(CHUNK_BYTES),
      String(CLAIMS_MAX),
      String(WORKER_DEADLINE_MS),
    ],
    { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, MEMFABRIC_TOKEN: TEST_TOKEN } },
  );
  const worker: Worker = {
    child,
    owner,
    lines: [],
    stderr: '',
    exited: new Promise((resolve) => child.once('exit', (code) => resolve(code))),
  };
  let partial = '';
  child.stdout!.setEncoding('utf8').on('data', (text: string) => {
    const parts = (partial + text).split('\n');
    partial = parts.pop()!;
    worker.lines.push(...parts.filter(Boolean));
    child.emit('lines');
  });
  child.stderr!.setEncoding('utf8').on('data', (text: string) => {
    if (worker.stderr.length < 64 * KiB) worker.stderr += text;
  });
  return worker;
}

/** Resolves when `done()` holds, checked on every stdout line; fails at the deadline. */
function until(worker: Worker, done: () => boolean, ms: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (!done()) return;
      clearTimeout(timer);
      worker.child.off('lines', check);
      resolve();
    };
    const timer = setTimeout(() => {
      worker.child.off('lines', check);
      reject(new Error(`${worker.owner}: no ${what} within ${ms} ms; stderr: ${worker.stderr}`));
    }, ms);
    worker.child.on('lines', check);
    void worker.exited.then(() => {
      if (!done()) {
        clearTimeout(timer);
        reject(new Error(`${worker.owner} exited before ${what}; stderr: ${worker.stderr}`));
      }
    });
    check();
  });
}

async function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

test('concurrent client processes never get overlapping chunks', { timeout: 150_000 }, async (t) => {
  const { appliance, url } = await start();
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'pool', size: REGION_BYTES });
  const region = appliance.registry.require('pool');

  const workers = Array.from({ length: WORKERS }, (_, i) => spawnWorker(url, `proc-${i}`));
  t.after(() => {
    for (const worker of workers) {
      if (worker.child.exitCode === null && worker.child.signalCode === null && worker.child.pid) {
        try {
          process.kill(worker.child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  });
  await Promise.all(
    workers.map((w) =>
      until(w, () => w.lines.some((l) => l.includes('"ready"')), READY_MS_MAX, 'ready line'),
    ),
  );
  for (const worker of workers) worker.child.stdin!.write('go\n');
  const codes = await withDeadline(
    Promise.all(workers.map((w) => w.exited)),
    EXIT_MS_MAX,
    'workers claiming chunks',
  );
  for (const [i, code] of codes.entries()) assert.equal(code, 0, `worker ${i}: ${workers[i]!.stderr}`);

  const reports = workers.map((w) => JSON.parse(w.lines.at(-1)!) as WorkerReport);
  const held = reports.flatMap((r) => r.held.map((chunk) => ({ ...chunk, owner: r.owner })));
  held.sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < held.length; i++) {
    const [a, b] = [held[i - 1]!, held[i]!];
    assert.ok(a.offset + a.length <= b.offset, `${a.owner} and ${b.owner} overlap at ${b.offset}`);
  }
  // The appliance agrees with the processes about who holds what.
  const allocator = regionChunks(region)!;
  allocator.check();
  assert.deepEqual(allocator.list().allocations, held);
  // Every chunk reads back its owner's pattern: nobody wrote into anybody else's chunk.
  for (const chunk of held) {
    const bytes = Buffer.alloc(chunk.length);
    region.read(chunk.offset, bytes);
    assert.ok(
      bytes.equals(chunkPattern(chunk.owner, chunk.offset, chunk.length)),
      `chunk at ${chunk.offset}`,
    );
  }
  // It was a real contest: every process claimed, chunks were released and reused, and the
  // region ran out.
  const claims = reports.reduce((n, r) => n + r.claims, 0);
  const releases = reports.reduce((n, r) => n + r.releases, 0);
  for (const report of reports) assert.ok(report.claims > 0, `${report.owner} claimed nothing`);
  assert.ok(releases > 0);
  assert.ok(
    reports.some((r) => r.exhausted > 0),
    `nobody saw the region run out (${claims} claims)`,
  );
  const stats = allocator.stats();
  assert.equal(stats.chunksUsed, held.reduce((n, c) => n + c.length, 0) / CHUNK_BYTES);
  assert.equal(stats.owners, new Set(held.map((c) => c.owner)).size);
  t.diagnostic(
    `${WORKERS} processes: ${claims} claims, ${releases} releases, ${held.length} chunks held, ` +
      `${stats.chunksFree} of ${stats.chunksTotal} chunks free; claiming took ` +
      reports.map((r) => `${r.elapsedMs} ms`).join(', '),
  );
});
