/**
 * SIGKILL of either side of a live migration at random points (real processes, real TCP on
 * 127.0.0.1). Before the handover the source keeps everything and goes on; after it the
 * destination holds everything the source acknowledged. RUNS kills of each side (5 in the
 * suite, MIGRATE_RUNS in the soak); the kill points are drawn from a logged seed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { setImmediate as yieldNow } from 'node:timers/promises';
import { AddressSpace, ErrorCodes, FramePool, MemfabricError } from '../../src/index.js';
import { MigrationListener, migrateSpace, type MigrationProgress } from '../../src/migrate/index.js';
import { RUNS, checkPattern, fillPage, initialCounters, pageOf, replay, FIRST_WRITE } from './pattern.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '..', '..');
const CHILD = join(HERE, 'migrate-child.ts');
const PAGE = 4096;
const PAGES = 4096;
const SEED = Number(process.env.MIGRATE_KILL_SEED ?? Date.now() % 100_000);
console.log(`migrate-kill seed ${SEED} (set MIGRATE_KILL_SEED to replay)`);

/** A small deterministic generator for kill points. */
function random(seed: number): () => number {
  let x = seed * 2654435761 + 1;
  return () => {
    x = (Math.imul(x ^ (x >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    return x / 2 ** 32;
  };
}

interface Child {
  child: ChildProcess;
  next(): Promise<Record<string, unknown>>;
  /** Every line so far. */
  seen: Record<string, unknown>[];
  kill(): Promise<void>;
}

function start(args: string[]): Child {
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const queue: Record<string, unknown>[] = [];
  const seen: Record<string, unknown>[] = [];
  const waiting: ((line: Record<string, unknown>) => void)[] = [];
  createInterface({ input: child.stdout! }).on('line', (text) => {
    const line = JSON.parse(text) as Record<string, unknown>;
    seen.push(line);
    const waiter = waiting.shift();
    if (waiter) waiter(line);
    else queue.push(line);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const died = exited.then(() => {
    throw new Error(`child exited: ${stderr}`);
  });
  died.catch(() => undefined);
  return {
    child,
    seen,
    next: () =>
      Promise.race([
        new Promise<Record<string, unknown>>((resolve) => {
          const line = queue.shift();
          if (line !== undefined) resolve(line);
          else waiting.push(resolve);
        }),
        died,
      ]),
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/** A kill point: the blackout, round 2's start, a share of round 1's pages sent, or after the handover. */
function killPoint(
  rand: () => number,
): (p: MigrationProgress | { phase: string; pagesReceived: number }) => boolean {
  const kind = Math.floor(rand() * 4);
  const share = rand();
  if (kind === 0) return (p) => p.phase === 'blackout' || p.phase === 'handover' || p.phase === 'done';
  if (kind === 1) return (p) => ('round' in p ? p.round >= 2 : p.pagesReceived > PAGES) || p.phase === 'done';
  if (kind === 2) {
    return (p) =>
      ('pagesSent' in p ? p.pagesSent : p.pagesReceived) >= share * PAGES * 0.9 || p.phase === 'done';
  }
  return (p) => p.phase === 'done';
}

test(`SIGKILL of the destination at random points: before the handover the source keeps everything (${RUNS} runs)`, async (t) => {
  const rand = random(SEED);
  for (let run = 0; run < RUNS; run++) {
    const dest = start(['dest']);
    const { port } = (await dest.next()) as { port: number };
    const pool = new FramePool({ pageSize: PAGE, capacity: PAGES * PAGE + 64 * PAGE });
    const space = new AddressSpace(pool, { size: PAGES * PAGE });
    const counters = initialCounters(PAGES);
    const buf = new Uint8Array(PAGE);
    for (let p = 0; p < PAGES; p++)
      if (counters[p] !== 0) space.write(p * PAGE, fillPage(buf, p, counters[p]!));
    const shouldKill = killPoint(rand);
    let killed: Promise<void> | undefined;
    const migration = migrateSpace(space, {
      host: '127.0.0.1',
      port,
      maxDowntimeMs: rand() < 0.5 ? 0 : 30,
      maxRounds: 6,
      onProgress: (p) => {
        if (killed === undefined && shouldKill(p)) killed = dest.kill();
      },
    });
    let s = FIRST_WRITE + run * 1_000_000;
    let finished = false;
    void migration.done.finally(() => (finished = true)).catch(() => undefined);
    while (!finished) {
      try {
        await migration.writable();
        for (let k = 0; k < 8; k++) {
          const p = pageOf(SEED, s, PAGES);
          space.write(p * PAGE, fillPage(buf, p, s));
          counters[p] = s++;
        }
      } catch (error) {
        if (!(error instanceof MemfabricError && error.code === ErrorCodes.MIGRATING)) throw error;
      }
      if (killed === undefined && shouldKill(migration.progress())) killed = dest.kill();
      await yieldNow();
    }
    const outcome = await migration.done.then(
      () => 'moved',
      (error: MemfabricError) => error,
    );
    await (killed ?? dest.kill());
    t.diagnostic(
      `run ${run}: ${outcome === 'moved' ? 'killed after the handover' : `failed: ${(outcome as MemfabricError).code}`}`,
    );
    if (outcome === 'moved') {
      // Killed after the handover: the destination owned it; the source still reads as it was.
      assert.throws(
        () => space.writeU32(0, 1),
        (e: MemfabricError) => e.code === ErrorCodes.MIGRATING,
      );
    } else {
      assert.ok(outcome instanceof MemfabricError, String(outcome));
      assert.equal(space.writeGate, undefined);
      space.write(0, fillPage(buf, 0, 7));
      counters[0] = 7;
    }
    assert.equal(checkPattern(space, counters), undefined);
    space.destroy();
  }
});

test(`SIGKILL of the source at random points: after the handover the destination holds every acknowledged write (${RUNS} runs)`, async (t) => {
  const rand = random(SEED + 1);
  const listener = await MigrationListener.listen();
  try {
    for (let run = 0; run < RUNS; run++) {
      const seed = SEED + run;
      const source = start(['source', String(listener.port), String(PAGES), String(seed)]);
      const incoming = await listener.accept();
      const shouldKill = killPoint(rand);
      const received = incoming.space().then(
        (space) => space,
        (error: unknown) => error as MemfabricError,
      );
      let settled = false;
      void received.then(() => (settled = true));
      while (!settled && !shouldKill(incoming.progress())) await yieldNow();
      await source.kill();
      const result = await received;
      t.diagnostic(
        `run ${run}: ${result instanceof AddressSpace ? 'destination owns it' : `discarded: ${result.code}`}`,
      );
      if (result instanceof AddressSpace) {
        // After the handover: a prefix of the writer's sequence, containing every write acknowledged.
        const probe = new Uint32Array(2);
        const bytes = new Uint8Array(probe.buffer);
        let last = 1;
        for (let p = 0; p < PAGES; p++) {
          result.read(p * PAGE, bytes);
          last = Math.max(last, probe[1]!);
        }
        const acked = Math.max(
          1,
          ...source.seen.map((line) => (typeof line.ack === 'number' ? line.ack : 1)),
        );
        assert.ok(
          last >= acked,
          `the destination holds writes up to ${last}, the source acknowledged ${acked}`,
        );
        assert.equal(checkPattern(result, replay(seed, PAGES, last)), undefined);
        result.destroy();
      } else {
        // Before the handover: the destination discarded its copy and says why.
        assert.ok(result instanceof MemfabricError, String(result));
        assert.equal(result.code, ErrorCodes.CONNECTION_CLOSED);
      }
    }
  } finally {
    await listener.close();
  }
});
