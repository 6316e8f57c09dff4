/**
 * An appliance's registration in etcd (src/catalog/registration.ts), in process, against a real
 * one-member etcd on loopback:
 *   - started with `etcd`, the appliance's key holds its record (admin URL, NBD endpoint,
 *     capacity), free memory is published again when writes use frames, and a clean stop
 *     revokes the lease: the key is gone when stop() resolves;
 *   - with etcd unreachable the appliance starts and serves NBD, logs at warn, and stops
 *     cleanly; bad endpoints or TTLs fail the start with MF_INVALID_ARGUMENT;
 *   - etcd away for longer than the lease: the appliance keeps serving, and registers again
 *     (taking over its own key under the lease it lost) once etcd is back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { Appliance } from '../../src/appliance/index.js';
import { EtcdKeys } from '../../src/catalog/etcd.js';
import {
  APPLIANCE_ID_FILE,
  ApplianceRegistration,
  type ApplianceRecord,
} from '../../src/catalog/registration.js';
import { ErrorCodes } from '../../src/errors.js';
import { NbdClient } from '../../src/nbd/index.js';
import { EtcdCluster, until } from '../support/etcd-cluster.js';

const MiB = 1024 * 1024;
/** Waits here are for events on a loaded machine, never timing assertions. */
const WAIT_MS = 30_000;

function capture(): { logger: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino(
    { level: 'info' },
    { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
  );
  return { logger, lines };
}

function startAppliance(
  etcd: string[],
  extra: Parameters<typeof Appliance.start>[0] = {},
): Promise<Appliance> {
  return Appliance.start({
    nbd: { port: 0 },
    http: { port: 0 },
    memory: '32MiB',
    defaultRegion: { name: 'd', size: '8MiB' },
    merge: false,
    etcd,
    etcdTtl: 1,
    ...extra,
  });
}

async function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

test('appliance registration in a real etcd', async (t) => {
  const cluster = await EtcdCluster.start(t, { members: 1 });
  if (!cluster) return;
  const client = cluster.client();
  t.after(() => client.close());
  const read = async (key: string) => {
    const kv = (await client.get(key).exec()).kvs[0];
    return kv ? { record: JSON.parse(kv.value.toString()) as ApplianceRecord, lease: kv.lease } : undefined;
  };

  await t.test('registers its record, publishes free memory, and a clean stop removes the key', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'memfabric-reg-'));
    t.after(() => rmSync(dataDir, { recursive: true, force: true }));
    const appliance = await startAppliance(cluster.endpoints, { dataDir });
    let stopped = false;
    t.after(async () => {
      if (!stopped) await appliance.stop();
    });
    const registration = appliance.registration!;
    await registration.registered();
    assert.equal(registration.id, readFileSync(join(dataDir, APPLIANCE_ID_FILE), 'utf8').trim());
    const key = EtcdKeys.appliance(registration.id);
    const first = (await read(key))!;
    assert.equal(first.record.url, appliance.httpUrl);
    assert.deepEqual(first.record.nbd, appliance.nbdAddress);
    assert.equal(first.record.capacityBytes, 32 * MiB);
    assert.equal(first.record.freeBytes, appliance.stats().memory.freeBytes);
    assert.notEqual(first.lease, '0', 'the key lives under a lease');

    // Writes take frames; the published free memory follows.
    const nbd = await NbdClient.connect({ ...appliance.nbdAddress, exportName: 'd' });
    await nbd.write(0, Buffer.alloc(4 * MiB, 0x5a));
    await nbd.flush();
    await nbd.disconnect();
    const expected = appliance.stats().memory.freeBytes;
    assert.ok(expected < first.record.freeBytes);
    await until(
      'the new free memory in etcd',
      async () => (await read(key))?.record.freeBytes === expected,
      WAIT_MS,
    );

    await appliance.stop();
    stopped = true;
    assert.equal(await read(key), undefined, 'revoked at stop, not left to expire');
    assert.equal(registration.state, 'stopped');
  });

  await t.test('etcd unreachable: the appliance serves anyway and logs at warn', async () => {
    const { logger, lines } = capture();
    const port = await closedPort();
    const appliance = await startAppliance([`http://127.0.0.1:${port}`], { logger });
    try {
      const nbd = await NbdClient.connect({ ...appliance.nbdAddress, exportName: 'd' });
      await nbd.write(0, Buffer.alloc(4096, 7));
      assert.deepEqual(await nbd.read(0, 4096), Buffer.alloc(4096, 7));
      await nbd.disconnect();
      await until(
        'a warning about etcd',
        () => lines.some((l) => l.level === 40 && l.component === 'etcd'),
        WAIT_MS,
      );
      const warning = lines.find((l) => l.level === 40 && l.component === 'etcd')!;
      assert.match(String(warning.msg), /not registered.*keeps serving/);
      assert.match(String(warning.reason), new RegExp(`127\\.0\\.0\\.1:${port}`));
      assert.equal(appliance.registration!.state, 'registering');
    } finally {
      await appliance.stop();
    }
    await assert.rejects(startAppliance(['127.0.0.1:2379']), { code: ErrorCodes.INVALID_ARGUMENT });
    await assert.rejects(startAppliance(cluster.endpoints, { etcdTtl: 0 }), {
      code: ErrorCodes.INVALID_ARGUMENT,
    });
  });

  await t.test('loopback addresses with etcd on another machine: a warning', async () => {
    const { logger, lines } = capture();
    const fake = {
      httpUrl: 'http://127.0.0.1:10880',
      nbdAddress: { host: '127.0.0.1', port: 10809 },
      stats: () => ({ memory: { capacityBytes: 1, freeBytes: 1 } }),
    };
    // 192.0.2.1 (TEST-NET-1) is never routed: only the warning matters here.
    const remote = await ApplianceRegistration.start(fake, {
      endpoints: ['http://192.0.2.1:2379'],
      callTimeoutMs: 200,
      logger,
    });
    await remote.stop();
    assert.ok(lines.some((l) => /loopback addresses that other machines cannot reach/.test(String(l.msg))));
    lines.length = 0;
    const local = await ApplianceRegistration.start(fake, { endpoints: cluster.endpoints, logger });
    await local.registered();
    await local.stop();
    assert.ok(!lines.some((l) => /cannot reach/.test(String(l.msg))), 'no warning with etcd on loopback too');
  });

  await t.test('etcd away longer than the lease: the appliance serves, then registers again', async () => {
    const { logger, lines } = capture();
    const appliance = await startAppliance(cluster.endpoints, { logger });
    t.after(() => appliance.stop());
    const registration = appliance.registration!;
    await registration.registered();
    const key = EtcdKeys.appliance(registration.id);
    const before = (await read(key))!;

    await cluster.kill('m0');
    await until(
      'the appliance to notice its lease is lost',
      () => lines.some((l) => /lease expired/.test(String(l.msg))),
      WAIT_MS,
    );
    assert.equal(registration.state, 'registering');
    const nbd = await NbdClient.connect({ ...appliance.nbdAddress, exportName: 'd' });
    await nbd.write(8192, Buffer.alloc(4096, 9));
    assert.deepEqual(await nbd.read(8192, 4096), Buffer.alloc(4096, 9));
    await nbd.disconnect();

    await cluster.restart('m0');
    await until(
      'the key under a new lease',
      async () => {
        const now = await read(key);
        return now !== undefined && now.lease !== before.lease && registration.state === 'registered';
      },
      WAIT_MS,
    );
    // The old lease expiring does not take the key with it: the key is under the new one.
    await until(
      'the old lease to expire',
      async () => (await client.leaseClient.leaseTimeToLive({ ID: before.lease })).TTL === '-1',
      WAIT_MS,
    );
    const after = (await read(key))!;
    assert.equal(after.record.url, appliance.httpUrl);
    assert.equal(after.record.freeBytes, appliance.stats().memory.freeBytes);
  });
});
