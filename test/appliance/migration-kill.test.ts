/**
 * The target's death mid-migration: B, a real appliance process, is SIGKILLed by PID at a
 * random point of a migration while a client keeps writing to A over NBD. Before the handover
 * the source simply goes on: the migration fails, A's region holds every write A acknowledged
 * and takes writes again. (After the handover B owned the region: A's record says so.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Appliance } from '../../src/appliance/index.js';
import type { MigrationStatus } from '../../src/appliance/migration.js';
import { ErrorCodes } from '../../src/errors.js';
import { ESHUTDOWN, NbdClient, NbdRequestError } from '../../src/nbd/index.js';
import { ApplianceProcess } from '../interop/appliance-process.js';
import { TEST_TOKEN, bearer, testAuth } from './harness.js';

const MiB = 1024 * 1024;
const PAGE = 4096;
const SIZE = 16 * MiB;
/** Status polls at most while waiting for a migration to end (every POLL_MS). */
const POLLS_MAX = 6000;
const POLL_MS = 5;
/** Writes the writer makes at most. */
const WRITES_MAX = 200_000;

async function call(
  base: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<Record<string, unknown>> {
  const response = await fetch(base + path, {
    method,
    headers: { ...bearer(TEST_TOKEN), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  return text ? (JSON.parse(text) as Record<string, unknown>) : {};
}

/**
 * Writes random pages of `name` one at a time until `stop()`, applying each acknowledged write
 * to `model`. A refusal (ESHUTDOWN: a blackout) changed nothing; the client then reconnects,
 * as a client that meets ESHUTDOWN must. Any other error ends it (and is returned).
 */
function writer(port: number, name: string, model: Buffer): { stop: () => void; done: Promise<unknown> } {
  let stopped = false;
  const run = async (): Promise<unknown> => {
    let client = await NbdClient.connect({ port, exportName: name });
    let x = 7;
    for (let i = 0; i < WRITES_MAX && !stopped; i++) {
      x = (x * 1103515245 + 12345) >>> 0;
      const page = (x >>> 8) % (SIZE / PAGE);
      const bytes = Buffer.alloc(PAGE, (i % 255) + 1);
      bytes.writeUInt32LE(i, 0);
      try {
        await client.write(page * PAGE, bytes);
        bytes.copy(model, page * PAGE);
      } catch (error) {
        if (!(error instanceof NbdRequestError && error.errno === ESHUTDOWN)) return error;
        client.destroy();
        try {
          client = await NbdClient.connect({ port, exportName: name });
        } catch (refused) {
          return refused; // the region moved: A no longer has the export
        }
      }
    }
    await client.disconnect();
    return undefined;
  };
  return { stop: () => (stopped = true), done: run() };
}

test('the target SIGKILLed at a random point: A keeps every acknowledged write and serves on', async (t) => {
  const a = await Appliance.start({
    memory: '128MiB',
    nbd: { port: 0 },
    http: { port: 0 },
    defaultRegion: false,
    merge: false,
    auth: testAuth,
  });
  t.after(() => a.stop());
  const url = `http://127.0.0.1:${a.httpAddress.port}`;
  let run = 0;
  await fc.assert(
    fc.asyncProperty(fc.nat({ max: 40 }), async (pollsBeforeKill) => {
      const b = await ApplianceProcess.start({ memory: '128MiB', merge: false });
      try {
        const name = `k${run++}`;
        const region = await a.registry.create({ name, size: SIZE });
        const model = Buffer.alloc(SIZE);
        for (let at = 0; at < SIZE / 2; at += PAGE) model.fill((at / PAGE) % 251, at, at + PAGE);
        region.write(0, model.subarray(0, SIZE / 2));
        const writing = writer(a.nbdAddress.port, name, model);

        const started = await call(url, 'POST', `/v1/regions/${name}/migrate`, {
          target: b.httpUrl,
          targetToken: b.token,
        });
        assert.equal(typeof started.id, 'string', JSON.stringify(started));
        // The kill lands after this many status answers: anywhere from preparing to done.
        for (let poll = 0; poll < pollsBeforeKill; poll++) {
          await call(url, 'GET', `/v1/regions/${name}/migration`);
        }
        await b.kill();
        let status: MigrationStatus | undefined;
        for (let poll = 0; poll < POLLS_MAX; poll++) {
          status = (await call(url, 'GET', `/v1/regions/${name}/migration`)) as unknown as MigrationStatus;
          if (status.state === 'done' || status.state === 'failed') break;
          await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        }
        assert.ok(status && (status.state === 'done' || status.state === 'failed'), 'the migration ended');
        t.diagnostic(`killed after ${pollsBeforeKill} polls: ${status.state} (${status.error?.code ?? ''})`);
        if (status.state === 'done') {
          // B had acknowledged the handover before it died: A forwards, and refuses writes.
          writing.stop();
          await writing.done;
          assert.equal(a.registry.find(name), undefined);
          return;
        }
        // Failed: the region serves on A with every write A acknowledged, and takes more.
        assert.notEqual(status.error!.code, ErrorCodes.INTERNAL, JSON.stringify(status.error));
        assert.equal(status.targetCleanedUp === true, false, 'B is dead: nothing could be deleted there');
        assert.equal(region.migrating, false);
        assert.equal(region.space.writeGate, undefined);
        const more = await NbdClient.connect({ port: a.nbdAddress.port, exportName: name });
        await more.write(SIZE - PAGE, Buffer.alloc(PAGE, 0xee));
        model.fill(0xee, SIZE - PAGE);
        await more.disconnect();
        writing.stop();
        assert.equal(await writing.done, undefined, 'the writer met nothing but blackout refusals');
        const bytes = Buffer.alloc(SIZE);
        region.read(0, bytes);
        for (let at = 0; at < SIZE; at += PAGE) {
          if (bytes.compare(model, at, at + PAGE, at, at + PAGE) !== 0)
            assert.fail(`page ${at / PAGE} differs`);
        }
        await a.registry.delete(name);
      } finally {
        await b.kill();
      }
    }),
    { numRuns: 4 },
  );
});
