/**
 * Fabric.close() ends when every etcd member is gone. It once waited for ever in this state (a
 * CI run hung 20 min in a test's teardown): etcd3's watch creation waits without end while no
 * member answers, and close waited for it. A fleet client here holds open, detached and closed
 * coded regions (so it watches rebuild requests and the live appliances), then the whole etcd
 * cluster stops, the client keeps working through the outage (allocations fail, a new region
 * asks for a new watch), and close() must finish within the etcd retry bounds.
 */
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Fabric } from '../../src/fabric/fabric.js';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import { EtcdConnection } from '../../src/catalog/etcd.js';
import { ApplianceProcess } from '../interop/appliance-process.js';
import { EtcdCluster, until } from '../support/etcd-cluster.js';

const SIZE = 256 * 1024;
const CALL_MS = 500;
const RETRY_MS = 2_000;
/** close() does a handful of bounded etcd steps one after another; each gives up within the retry bound. */
const CLOSE_MS_MAX = 30_000;

test('Fabric.close() finishes when every etcd member is down', { timeout: 180_000 }, async (t) => {
  const fabrics: Fabric[] = [];
  const processes: ApplianceProcess[] = [];
  const cluster = await EtcdCluster.start(t, { members: 1 });
  if (!cluster) return;
  // Registered after the cluster's own stop, so it runs after it too (the order that hung); the
  // test below closes the fabric itself and only the appliances are left for this hook.
  t.after(async () => {
    await Promise.allSettled(processes.map((app) => app.stop()));
  });
  const endpoints = cluster.endpoints;
  const apps = await Promise.all(
    Array.from({ length: 3 }, async () => {
      const app = await ApplianceProcess.start({
        memory: '32MiB',
        args: ['--etcd', endpoints.join(','), '--etcd-ttl', '2', '--no-merge'],
      });
      processes.push(app);
      return app;
    }),
  );
  const fabric = new Fabric({
    etcd: { endpoints, callTimeoutMs: CALL_MS, retryMs: RETRY_MS },
    token: apps[0]!.token,
  });
  fabrics.push(fabric);
  await until(
    'the client to see the three appliances',
    async () => (await fabric.appliances()).length === 3,
    60_000,
  );
  const bytes = randomBytes(SIZE);
  const open = await fabric.allocate({ size: SIZE, redundancy: { data: 2, parity: 1 }, name: 'open' });
  await open.write(0, bytes);
  const kept = await fabric.allocate({ size: SIZE, redundancy: { data: 2, parity: 1 }, name: 'kept' });
  await kept.detach();
  const freed = await fabric.allocate({ size: SIZE, redundancy: { data: 2, parity: 1 }, name: 'freed' });
  await freed.close();

  await cluster.stop();
  // The data path does not need etcd: the open region still reads back.
  assert.ok(Buffer.from(await open.read(0, SIZE)).equals(bytes));
  // Catalog work fails, saying etcd is away, within its retry bound.
  await assert.rejects(
    fabric.allocate({ size: SIZE, redundancy: { data: 2, parity: 1 }, name: 'late' }),
    (error) => {
      assert.ok(error instanceof MemfabricError);
      assert.equal(error.code, ErrorCodes.CATALOG_UNAVAILABLE, error.message);
      return true;
    },
  );

  const started = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const outcome = await Promise.race([
    fabric.close().then(
      () => 'closed',
      (error: unknown) => `rejected: ${String(error)}`,
    ),
    new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve('still waiting'), CLOSE_MS_MAX);
    }),
  ]);
  clearTimeout(timer);
  assert.equal(outcome, 'closed', `close() after ${Date.now() - started} ms`);
});

test('a watch no etcd member answers fails within the retry bound (etcd3 alone would wait for ever)', async () => {
  // Port 1 on loopback: nothing listens, every connection attempt is refused.
  const connection = new EtcdConnection({
    endpoints: ['http://127.0.0.1:1'],
    callTimeoutMs: 200,
    retryMs: 600,
  });
  try {
    const started = Date.now();
    await assert.rejects(
      connection.watch('watch the test prefix', (client) => client.watch().prefix('/memfabric-test/')),
      (error) => {
        assert.ok(error instanceof MemfabricError);
        assert.equal(error.code, ErrorCodes.CATALOG_UNAVAILABLE);
        assert.match(error.message, /watch the test prefix/);
        return true;
      },
    );
    // Bounded by the retry bound plus one call's deadline, with slack for a loaded machine.
    assert.ok(Date.now() - started < 600 + 200 + 10_000, `${Date.now() - started} ms`);
  } finally {
    connection.close();
  }
});
