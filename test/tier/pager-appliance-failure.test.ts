/**
 * The pager whose appliances are killed with SIGKILL, or hung with SIGSTOP (issue 12, point 8): real appliance
 * processes, and the pager in a child process of its own so the test can check that it ends
 * by itself afterwards (a pager that leaves a handle open keeps its process alive). The child
 * (fixtures/pager-failure-child.ts) fills a fabric store, the test kills appliances, and the
 * child writes until MF_STORE_FAILED, flushes, destroys its space, flushes and closes. Every
 * one of those calls must settle: STORE_FAILED with the fabric's MF_DATA_LOST as cause; close
 * rejects with the failure after releasing everything — the worker is gone, the destage queue
 * is empty, every frame is back, and the process exits on its own.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ApplianceProcess } from '../interop/appliance-process.js';
import type { Outcome } from './fixtures/pager-failure-child.js';

const CHILD = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'pager-failure-child.ts');
/** Generous bounds: the child's own calls are bounded at 60 s each inside it. */
const PHASE_MS = 240_000;

interface Done {
  phase: 'done';
  write: Outcome;
  flushBefore: Outcome;
  flushAfter: Outcome;
  close: Outcome;
  closeAgain: Outcome;
  droppedDiscards: number;
  workerRunning: boolean;
  poolUsed: number;
  queued: number;
  backlog: number;
  slotsInUse: number;
}

function storeFailed(outcome: Outcome, what: string): void {
  assert.ok(!outcome.hung, `${what} did not settle`);
  assert.equal(outcome.code, 'MF_STORE_FAILED', `${what}: ${JSON.stringify(outcome)}`);
  assert.equal(
    outcome.causeCode,
    'MF_DATA_LOST',
    `${what} carries the fabric's error as cause: ${outcome.message}`,
  );
}

async function run(
  t: TestContext,
  redundancy: 'none' | { data: number; parity: number },
  kill: number,
  signal: 'SIGKILL' | 'SIGSTOP' = 'SIGKILL',
) {
  const count = redundancy === 'none' ? 1 : redundancy.data + redundancy.parity;
  const appliances = await Promise.all(
    Array.from({ length: count }, () => ApplianceProcess.start({ memory: '512MiB', merge: false })),
  );
  t.after(() => Promise.all(appliances.map((a) => a.kill())));
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      CHILD,
      JSON.stringify({
        appliances: appliances.map((a) => a.httpUrl),
        token: appliances[0]!.token,
        redundancy,
      }),
    ],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const lines: Array<Record<string, unknown>> = [];
  const waiters: Array<() => void> = [];
  let pending = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => {
    pending += text;
    for (let at = pending.indexOf('\n'); at >= 0; at = pending.indexOf('\n')) {
      lines.push(JSON.parse(pending.slice(0, at)) as Record<string, unknown>);
      pending = pending.slice(at + 1);
      for (const wake of waiters.splice(0)) wake();
    }
  });
  const phase = async (name: string): Promise<Record<string, unknown>> => {
    const deadline = Date.now() + PHASE_MS;
    for (;;) {
      const line = lines.find((l) => l.phase === name);
      if (line) return line;
      if (child.exitCode !== null)
        assert.fail(`child exited (${child.exitCode}) before "${name}":\n${stderr}`);
      if (Date.now() > deadline)
        assert.fail(`child did not reach "${name}" within ${PHASE_MS} ms:\n${stderr}`);
      await new Promise<void>((resolve) => {
        waiters.push(resolve);
        setTimeout(resolve, 1000);
      });
    }
  };

  await phase('written');
  // SIGKILL: connections reset at once. SIGSTOP: a hung appliance, lost only when a request
  // gets no answer within requestTimeoutMs (the child uses 2 s). Both by PID; t.after's
  // SIGKILL ends a stopped one too.
  for (const appliance of appliances.slice(0, kill)) process.kill(appliance.pid, signal);
  child.stdin.end('killed\n');
  const done = (await phase('done')) as unknown as Done;

  // Settling comes first: before the fix, flush and close after destroy never did.
  for (const key of ['flushBefore', 'flushAfter', 'close', 'closeAgain'] as const) {
    assert.ok(!done[key].hung, `${key} did not settle`);
  }
  storeFailed(done.write, 'the write that needed an eviction');
  storeFailed(done.flushBefore, 'flush after the failure');
  storeFailed(done.flushAfter, 'flush after destroying the space');
  storeFailed(done.close, 'close');
  storeFailed(done.closeAgain, 'a second close (the same answer)');
  assert.ok(done.droppedDiscards > 0, 'the freed slots were not sent to the dead store');
  assert.equal(done.workerRunning, false, 'the store worker is gone');
  assert.equal(done.poolUsed, 0, 'every frame is back in the pool');
  assert.equal(done.queued, 0, 'the destage queue is empty');
  assert.equal(done.backlog, 0);
  assert.equal(done.slotsInUse, 0);

  // Nothing of the pager keeps the child alive: it ends by itself, with code 0.
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([
    exited,
    new Promise<'alive'>((resolve) => {
      timer = setTimeout(() => resolve('alive'), PHASE_MS);
    }),
  ]);
  clearTimeout(timer);
  assert.equal(code, 0, `the child should exit by itself after close (${String(code)}):\n${stderr}`);
}

test('a plain fabric store whose appliance is SIGKILLed: every call settles, close releases everything', (t) =>
  run(t, 'none', 1));

test('a coded (2+1) fabric store losing two appliances to SIGKILL: the same, with MF_DATA_LOST as cause', (t) =>
  run(t, { data: 2, parity: 1 }, 2));

test('a plain fabric store whose appliance hangs (SIGSTOP): every call settles once the request times out', (t) =>
  run(t, 'none', 1, 'SIGSTOP'));
