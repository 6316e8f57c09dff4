/**
 * Failover from a real primary process (standby-primary.ts) to a standby in this process, over
 * loopback TCP: SIGKILL at random moments (after a random number of confirmed steps, plus a
 * random delay), with large epochs so kills land in the middle of one; and SIGSTOP past the
 * heartbeat. The activated copy must hold every step durable() confirmed, be one whole epoch
 * (every page of a step carries the same generation), and, for a heap, pass its collections'
 * structural checks. A second standby is then brought up behind the activated one.
 *
 * A few kills here; STANDBY_KILLS=50 (npm run test:soak) for more.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressSpace } from '../../src/index.js';
import { HeapBTree, HeapHashMap } from '../../src/heap/index.js';
import { replicate } from '../../src/migrate/replica.js';
import { StandbyListener, type Activation } from '../../src/migrate/standby.js';

const ROOT = new URL('../..', import.meta.url).pathname;
const PRIMARY = join(ROOT, 'test/migrate/standby-primary.ts');
const KILLS = Number(process.env.STANDBY_KILLS ?? 3);
const SEED = Number(process.env.STANDBY_SEED ?? Date.now() % 100_000);
const PAGE = 4096;

let rng = SEED || 1;
function random(n: number): number {
  rng ^= rng << 13;
  rng ^= rng >>> 17;
  rng ^= rng << 5;
  rng >>>= 0;
  return rng % n;
}

interface Primary {
  child: ChildProcess;
  /** The highest step durable() confirmed, from every line read so far. */
  confirmed: () => number;
  /** Resolves once the primary confirmed step `n`. */
  until: (n: number) => Promise<void>;
  exited: Promise<void>;
}

async function startPrimary(job: {
  port: number;
  mode: 'space' | 'heap';
  pages?: number;
  path?: string;
}): Promise<Primary> {
  const child = spawn(process.execPath, ['--import', 'tsx', PRIMARY, JSON.stringify(job)], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  let confirmed = 0;
  const waiting: Array<{ n: number; resolve: () => void }> = [];
  let readyResolve!: () => void;
  const ready = new Promise<void>((resolve) => (readyResolve = resolve));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const message = JSON.parse(line) as { ready?: boolean; durable?: number };
    if (message.ready) readyResolve();
    if (message.durable !== undefined) {
      confirmed = Math.max(confirmed, message.durable);
      for (let i = waiting.length - 1; i >= 0; i--) {
        if (waiting[i]!.n <= confirmed) waiting.splice(i, 1)[0]!.resolve();
      }
    }
  });
  await Promise.race([
    ready,
    exited.then(() => {
      throw new Error(`the primary exited before it was ready: ${stderr}`);
    }),
  ]);
  return {
    child,
    confirmed: () => confirmed,
    until: (n) =>
      n <= confirmed
        ? Promise.resolve()
        : Promise.race([
            new Promise<void>((resolve) => waiting.push({ n, resolve })),
            exited.then(() => {
              throw new Error(`the primary exited: ${stderr}`);
            }),
          ]),
    exited,
  };
}

/** The space is one whole step g ≥ `confirmed`: every page carries g at both ends. */
function checkSpace(space: AddressSpace, pages: number, confirmed: number, context: string): number {
  const g = space.readU32(0);
  assert.ok(g >= confirmed, `${context}: the standby holds step ${g}, durable() confirmed ${confirmed}`);
  for (let p = 1; p <= pages; p++) {
    const start = space.readU32(p * PAGE);
    const end = space.readU32(p * PAGE + PAGE - 4);
    if (start !== g || end !== g) {
      assert.fail(
        `${context}: page ${p} holds steps ${start}/${end} beside step ${g}: a torn epoch was applied`,
      );
    }
  }
  return g;
}

async function killAt(primary: Primary, signal: NodeJS.Signals): Promise<void> {
  await primary.until(1 + random(12));
  await new Promise((resolve) => setTimeout(resolve, random(25)));
  primary.child.kill(signal);
}

test(`SIGKILL of a primary writing large epochs at ${KILLS} random moments (seed ${SEED}): every confirmed step survives, no torn epoch`, async (t) => {
  const listener = await StandbyListener.listen({ port: 0, heartbeatTimeoutMs: 5000 });
  let midEpoch = 0;
  try {
    for (let run = 0; run < KILLS; run++) {
      const pages = 1024 + random(3072);
      const accepted = listener.accept();
      const primary = await startPrimary({ port: listener.port, mode: 'space', pages });
      const standby = await accepted;
      await killAt(primary, 'SIGKILL');
      const activation: Activation = await standby.activated;
      await primary.exited;
      assert.match(activation.reason, /closed|ECONNRESET/);
      if (activation.discardedBytes > 0) midEpoch++;
      checkSpace(activation.space, pages, primary.confirmed(), `run ${run} (seed ${SEED})`);
      if (run === 0) {
        // A second standby behind the activated copy, which is now the primary.
        const second = await StandbyListener.listen({ port: 0 });
        const next = second.accept();
        const replica = await replicate(activation.space, { host: '127.0.0.1', port: second.port });
        const standby2 = await next;
        activation.space.writeU32(0, 0xffff);
        await replica.durable();
        assert.equal(standby2.space!.readU32(0), 0xffff);
        assert.equal(standby2.space!.readU32(PAGE), activation.space.readU32(PAGE));
        await replica.close();
        await standby2.close();
        await second.close();
      }
      activation.space.destroy();
    }
    t.diagnostic(`${midEpoch} of ${KILLS} kills landed in the middle of an epoch (dropped, not applied)`);
  } finally {
    await listener.close();
  }
});

test('SIGKILL of a primary writing a heap: the activated heap holds every confirmed key and its map and tree check out', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mf-standby-'));
  try {
    for (let run = 0; run < Math.max(1, Math.ceil(KILLS / 3)); run++) {
      const listener = await StandbyListener.listen({
        port: 0,
        heartbeatTimeoutMs: 5000,
        heap: { path: join(dir, `standby-${run}.heap`), checkpointIntervalMs: 0 },
      });
      const accepted = listener.accept();
      const primary = await startPrimary({
        port: listener.port,
        mode: 'heap',
        path: join(dir, `primary-${run}.heap`),
      });
      const standby = await accepted;
      await primary.until(50 * (1 + random(8)));
      await new Promise((resolve) => setTimeout(resolve, random(25)));
      primary.child.kill('SIGKILL');
      const { heap } = await standby.activated;
      await primary.exited;
      const confirmed = primary.confirmed();
      const map = HeapHashMap.open<string, number>(heap!, heap!.root('map'));
      const tree = HeapBTree.open<number, number>(heap!, heap!.root('tree'));
      assert.deepEqual(map.check().problems, []);
      assert.deepEqual(tree.check().problems, []);
      assert.ok(map.size >= confirmed, `run ${run}: ${map.size} keys, ${confirmed} confirmed (seed ${SEED})`);
      // One whole epoch: both collections hold the same prefix of steps (a step sets both in
      // one synchronous stretch, so no cut falls between them).
      assert.equal(tree.size, map.size);
      for (let i = 0; i < map.size; i++) assert.equal(map.get(`k${i}`), i);
      for (let i = 0; i < tree.size; i++) assert.equal(tree.get(i), i);
      assert.ok((await heap!.check()).ok);
      await heap!.close();
      await listener.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SIGSTOP of the primary past the heartbeat timeout fails over', async () => {
  const listener = await StandbyListener.listen({ port: 0, heartbeatTimeoutMs: 400 });
  try {
    const pages = 256;
    const accepted = listener.accept();
    const primary = await startPrimary({ port: listener.port, mode: 'space', pages });
    const standby = await accepted;
    const lost = new Promise<{ reason: string }>((resolve) => standby.once('primary-lost', resolve));
    await killAt(primary, 'SIGSTOP');
    const activation = await standby.activated;
    assert.match((await lost).reason, /nothing came from the primary for \d+ ms/);
    primary.child.kill('SIGKILL');
    await primary.exited;
    checkSpace(activation.space, pages, primary.confirmed(), 'SIGSTOP');
    activation.space.destroy();
  } finally {
    await listener.close();
  }
});
