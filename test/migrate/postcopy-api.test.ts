/**
 * Post-copy through the public API: a source process calls migrateSpace({ mode: 'postcopy' })
 * while its writer keeps writing, and this process receives with MigrationListener and
 * incoming.postCopy(). The space is ours at the switchover; every write the source
 * acknowledged is in it (faulted in or pushed), and none after the switchover was accepted.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { MigrationListener } from '../../src/migrate/index.js';
import { checkPattern, replay } from './pattern.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const CHILD = join(HERE, 'migrate-child.ts');
const PAGES = 2048;
const SEED = 11;

test('post-copy by migrateSpace and incoming.postCopy: the destination holds every acknowledged write', async (t) => {
  const listener = await MigrationListener.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => listener.close());
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', CHILD, 'source', String(listener.port), String(PAGES), String(SEED), 'postcopy'],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let lastAck = 1;
  const outcome = new Promise<Record<string, unknown>>((resolve) =>
    createInterface({ input: child.stdout! }).on('line', (text) => {
      const line = JSON.parse(text) as Record<string, unknown>;
      if (typeof line.ack === 'number') lastAck = Math.max(lastAck, line.ack);
      if ('done' in line || 'failed' in line) resolve(line);
    }),
  );
  const incoming = await listener.accept();
  assert.equal(incoming.mode, 'postcopy');
  const destination = await incoming.postCopy({ budget: '4MiB' });
  assert.equal(destination.space.size, PAGES * 4096);
  const report = await destination.completed;
  assert.equal(report.remaining, 0);
  assert.equal(report.byFault + report.byPush + report.notNeeded, report.pages);
  assert.deepEqual(await outcome, { done: true });
  // Every write the source acknowledged, and nothing else.
  assert.equal(checkPattern(destination.space, replay(SEED, PAGES, lastAck)), undefined);
  destination.space.destroy();
  await destination.pager.close();
});
