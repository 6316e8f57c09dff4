/**
 * Leased sub-allocation (src/catalog/leased-chunks.ts) against a real etcd and a real
 * appliance, with a real child process as the client that dies:
 *   - claim/list/release/open as SubAllocator does: fresh chunks read as zeros (trimmed),
 *     views are bounded, a different chunk size is MF_CONFLICT, too long a run is refused,
 *     close() revokes the lease and frees every chunk;
 *   - a child claims chunks and lives: another client claiming the whole region, and every
 *     chunk one by one, for several TTLs, never gets them;
 *   - the child is SIGKILLed: while its keys exist (its lease not expired) the chunks are still
 *     skipped; once etcd deletes them (waited on, with a deadline) they can be claimed, and
 *     they read as zeros although the child filled them;
 *   - etcd unreachable for longer than the TTL: the client's views refuse I/O (MF_DESTROYED)
 *     before another client could have the chunks.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Appliance } from '../../src/appliance/index.js';
import { EtcdKeys } from '../../src/catalog/etcd.js';
import { LeasedSubAllocator, RUN_CHUNKS_MAX } from '../../src/catalog/leased-chunks.js';
import type { Chunk } from '../../src/fabric/suballocation.js';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import { NbdClient } from '../../src/nbd/index.js';
import { EtcdCluster, until } from '../support/etcd-cluster.js';
import { outcome } from '../typed-error.js';

const KiB = 1024;
const CHUNK = 64 * KiB;
const CHUNKS = 16;
const TTL_S = 2;
const WAIT_MS = 30_000;
const WORKER = join(dirname(fileURLToPath(import.meta.url)), 'etcd-leased-chunks-worker.ts');

test('leased chunks in etcd', async (t) => {
  const cluster = await EtcdCluster.start(t, { members: 1 });
  if (!cluster) return;
  const appliance = await Appliance.start({
    nbd: { port: 0 },
    http: { port: 0 },
    memory: '8MiB',
    defaultRegion: { name: 'pool', size: CHUNKS * CHUNK },
    merge: false,
  });
  t.after(() => appliance.stop());
  const etcd = cluster.client();
  t.after(() => etcd.close());
  const allocator = (
    owner: string,
    extra: Partial<ConstructorParameters<typeof LeasedSubAllocator>[0]> = {},
  ) => {
    const sub = new LeasedSubAllocator({
      etcd: cluster.endpoints,
      appliance: appliance.httpUrl,
      token: appliance.adminToken,
      region: 'pool',
      owner,
      chunkSize: CHUNK,
      ttlSeconds: TTL_S,
      ...extra,
    });
    t.after(() => sub.close());
    return sub;
  };
  const raw = await NbdClient.connect({ ...appliance.nbdAddress, exportName: 'pool' });
  t.after(() => raw.disconnect());
  const chunkKeys = async () =>
    (await etcd.getAll().prefix(EtcdKeys.chunksOf('default', 'pool')).exec()).kvs.map((kv) => ({
      key: kv.key.toString(),
      lease: kv.lease,
    }));
  const overlaps = (a: { offset: number; length: number }, b: { offset: number; length: number }) =>
    a.offset < b.offset + b.length && b.offset < a.offset + a.length;

  await t.test('claim, open, list, release and close, as SubAllocator', async () => {
    await raw.write(0, Buffer.alloc(4 * CHUNK, 0xee)); // old bytes a fresh chunk must not show
    const sub = allocator('alpha');
    const chunk = await sub.claim({ size: 3 * CHUNK - 1 });
    assert.deepEqual([chunk.offset, chunk.length, chunk.chunkSize], [0, 3 * CHUNK, CHUNK]);
    const view = await chunk.open();
    assert.deepEqual(await view.read(0, chunk.length), Buffer.alloc(chunk.length), 'trimmed to zeros');
    await view.write(CHUNK, Buffer.alloc(CHUNK, 1));
    await assert.rejects(view.write(chunk.length - 1, Buffer.alloc(2)), { code: ErrorCodes.OUT_OF_RANGE });
    const second = await sub.claim();
    assert.equal(second.offset, 3 * CHUNK);
    assert.deepEqual(
      (await sub.list()).map((c) => [c.offset, c.length]),
      [
        [0, 3 * CHUNK],
        [3 * CHUNK, CHUNK],
      ],
    );
    assert.deepEqual(
      (await chunkKeys()).map((k) => k.lease),
      Array(4).fill(sub.leaseIdentifier),
    );
    await chunk.release();
    await assert.rejects(view.read(0, 1), { code: ErrorCodes.DESTROYED });
    assert.equal((await chunkKeys()).length, 1);
    assert.equal((await sub.claim({ count: 2 })).offset, 0, 'first fit reuses the released run');

    assert.equal(await outcome(allocator('beta', { chunkSize: 2 * CHUNK }).claim()), ErrorCodes.CONFLICT);
    assert.equal(await outcome(sub.claim({ count: RUN_CHUNKS_MAX + 1 })), ErrorCodes.INVALID_ARGUMENT);
    assert.equal(await outcome(sub.claim({ count: CHUNKS })), ErrorCodes.CHUNKS_EXHAUSTED);

    await sub.close();
    assert.deepEqual(await chunkKeys(), [], 'close revokes the lease: every chunk is free');
    assert.equal(await outcome(sub.claim()), ErrorCodes.DESTROYED);
  });

  await t.test(
    'a live client keeps its chunks; a killed one loses them at lease expiry, never before',
    async () => {
      const child = spawn(
        process.execPath,
        [
          '--import',
          'tsx',
          WORKER,
          cluster.endpoints.join(','),
          appliance.httpUrl,
          'pool',
          'worker',
          String(CHUNK),
          String(TTL_S),
          '4',
        ],
        { env: { ...process.env, MEMFABRIC_TOKEN: appliance.adminToken }, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      const exited = once(child, 'exit');
      t.after(() => {
        if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGKILL');
      });
      let stderr = '';
      child.stderr!.on('data', (text: Buffer) => (stderr += text.toString()));
      const [line] = (await Promise.race([
        once(child.stdout!, 'data'),
        exited.then(() => {
          throw new Error(`worker exited: ${stderr}`);
        }),
      ])) as [Buffer];
      const held = JSON.parse(line.toString()) as { lease: string; offset: number; length: number };
      assert.equal(held.length, 4 * CHUNK);
      const childKeys = () => chunkKeys().then((keys) => keys.filter((k) => k.lease === held.lease));
      assert.equal((await childKeys()).length, 4);

      // While the child lives, for several TTLs: nobody else gets its chunks.
      const other = allocator('other');
      const taken: Chunk[] = [];
      const until3Ttl = Date.now() + 3 * TTL_S * 1000;
      while (Date.now() < until3Ttl) {
        assert.equal(await outcome(other.claim({ count: CHUNKS })), ErrorCodes.CHUNKS_EXHAUSTED);
        const claimed = await other.claim().catch((error: MemfabricError) => error);
        if (claimed instanceof MemfabricError) assert.equal(claimed.code, ErrorCodes.CHUNKS_EXHAUSTED);
        else taken.push(claimed);
      }
      assert.equal(taken.length, CHUNKS - 4, 'every other chunk was claimable');
      for (const chunk of taken)
        assert.ok(!overlaps(chunk, held), `claimed ${chunk.offset} of the live child's chunks`);
      assert.equal((await childKeys()).length, 4);
      await Promise.all(taken.splice(0).map((chunk) => chunk.release()));

      // SIGKILL: nothing revokes the lease. Until etcd expires it, the chunks stay skipped.
      process.kill(child.pid!, 'SIGKILL');
      await exited;
      for (;;) {
        const outcome = await other.claim().catch((error: MemfabricError) => error);
        if (outcome instanceof MemfabricError) {
          assert.equal(outcome.code, ErrorCodes.CHUNKS_EXHAUSTED);
          break;
        }
        taken.push(outcome);
      }
      // Keys still there after the claims: the lease was alive throughout them, and they skipped it.
      if ((await childKeys()).length === 4) {
        for (const chunk of taken)
          assert.ok(!overlaps(chunk, held), "a dead client's chunk given out before expiry");
      }
      assert.deepEqual(await raw.read(held.offset, 8), Buffer.alloc(8, 0xc7), "the child's bytes are there");

      await until(
        "etcd to delete the dead client's chunk keys",
        async () => (await childKeys()).length === 0,
        WAIT_MS,
      );
      const reclaimed = await other.claim({ count: 4 });
      assert.deepEqual([reclaimed.offset, reclaimed.length], [held.offset, held.length]);
      const view = await reclaimed.open();
      assert.deepEqual(
        await view.read(0, reclaimed.length),
        Buffer.alloc(reclaimed.length),
        'trimmed to zeros',
      );
      await other.close();
      assert.deepEqual(await chunkKeys(), []);
    },
  );

  await t.test('etcd unreachable past the TTL: views refuse I/O before the lease can expire', async () => {
    const sub = allocator('fenced');
    const chunk = await sub.claim();
    const view = await chunk.open();
    await view.write(0, Buffer.alloc(4096, 3));
    await cluster.kill('m0');
    await until(
      'the view to refuse writes',
      async () => (await outcome(view.write(0, Buffer.alloc(4096, 4)))) === ErrorCodes.DESTROYED,
      WAIT_MS,
    );
    assert.ok(chunk.released, 'the chunk counts as released once its lease may be gone');
  });
});
