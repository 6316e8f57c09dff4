/**
 * Close leaves nothing behind (issue 11): several client processes each run allocate (coded
 * 2+1 and 4+2) / write / read / close rounds through the public Fabric API against six
 * appliance processes; afterwards every appliance lists no region at all, and no close()
 * reported a shard left behind.
 *
 * MEMFABRIC_LEAK_ROUNDS (rounds per client, default 20) and MEMFABRIC_LEAK_CLIENTS (default 3)
 * make a longer run by hand, e.g. 1,000 cycles:
 *
 *   MEMFABRIC_LEAK_ROUNDS=250 MEMFABRIC_LEAK_CLIENTS=4 node scripts/run-tests.mjs test/appliance/leak.test.ts
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { ApplianceProcess } from '../interop/appliance-process.js';
import type { LeakReport } from './leak-worker.js';

const WORKER = fileURLToPath(new URL('./leak-worker.ts', import.meta.url));
const APPLIANCES = 6;
const ROUNDS = Number(process.env.MEMFABRIC_LEAK_ROUNDS ?? 20);
const CLIENTS = Number(process.env.MEMFABRIC_LEAK_CLIENTS ?? 3);
/** Clients stop starting rounds after this long (the report says how many ran). */
const ROUNDS_MS_MAX = Number(process.env.MEMFABRIC_LEAK_MS ?? 40_000);
/** A client may take this long beyond that to load (tsx compiles on start) and finish. */
const CLIENT_EXIT_MS_MAX = ROUNDS_MS_MAX + 60_000;

interface Client {
  pid: number;
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
}

function spawnClient(urls: string[], token: string, name: string): Client {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', WORKER, urls.join(','), name, String(ROUNDS), String(ROUNDS_MS_MAX)],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MEMFABRIC_TOKEN: token } },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
  child.stderr.setEncoding('utf8').on('data', (text: string) => {
    if (stderr.length < 64 * 1024) stderr += text;
  });
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    const timer = setTimeout(() => {
      process.kill(child.pid!, 'SIGKILL');
      reject(new Error(`client ${name} did not finish within ${CLIENT_EXIT_MS_MAX} ms; stderr: ${stderr}`));
    }, CLIENT_EXIT_MS_MAX);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
  return { pid: child.pid!, done };
}

test(
  'allocate/close rounds in several client processes leave no region on any appliance',
  { timeout: CLIENT_EXIT_MS_MAX + 60_000 },
  async (t) => {
    // One at a time: six processes compiling at once on a loaded machine can each miss their start
    // deadline. Each is stopped by its PID after the test, whatever happens to the others.
    const appliances: ApplianceProcess[] = [];
    t.after(() => Promise.all(appliances.map((a) => a.stop())));
    for (let i = 0; i < APPLIANCES; i++) {
      appliances.push(await ApplianceProcess.start({ memory: '96MiB', args: ['--default-region', ''] }));
    }
    const urls = appliances.map((a) => a.httpUrl);
    const clients = Array.from({ length: CLIENTS }, (_, i) =>
      spawnClient(urls, appliances[0]!.token, `c${i}`),
    );
    t.after(() => {
      for (const client of clients) {
        try {
          process.kill(client.pid, 'SIGKILL');
        } catch {
          // exited
        }
      }
    });
    const results = await Promise.all(clients.map((client) => client.done));
    const reports = results.map(({ code, stdout, stderr }) => {
      assert.equal(code, 0, `a client failed: ${stderr}`);
      return JSON.parse(stdout.trim().split('\n').pop()!) as LeakReport;
    });
    const rounds = reports.reduce((sum, r) => sum + r.rounds, 0);
    const shards = reports.reduce(
      (sum, r) => sum + Math.ceil(r.rounds / 2) * 3 + Math.floor(r.rounds / 2) * 6,
      0,
    );
    t.diagnostic(
      `${rounds} allocate/write/close cycles (${shards} shards) in ${CLIENTS} processes over ${APPLIANCES} appliances; ` +
        `per client: ${reports.map((r) => `${r.rounds} in ${r.elapsedMs} ms`).join(', ')}`,
    );
    assert.ok(rounds >= Math.min(ROUNDS * CLIENTS, CLIENTS), 'every client ran rounds');
    assert.deepEqual(
      reports.flatMap((r) => r.closeFailures),
      [],
      'no close() reported a shard left behind',
    );
    assert.equal(
      reports.reduce((sum, r) => sum + r.mismatches, 0),
      0,
      'every round read back its bytes',
    );
    const left = await Promise.all(
      appliances.map(
        async (a) => (await a.api<{ regions: Array<{ name: string }> }>('GET', '/v1/regions')).body.regions,
      ),
    );
    assert.deepEqual(
      left.map((regions) => regions.map((r) => r.name)),
      appliances.map(() => []),
      'no appliance holds a region',
    );
  },
);
