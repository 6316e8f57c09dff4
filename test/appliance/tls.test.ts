/**
 * Tenants over NBD TLS on real appliances (in process, real sockets): a PSK identity lists and
 * opens only its tenant's regions and cannot tell another tenant's region from a missing one;
 * an admin identity and a client certificate's CN; a Fabric region and a migration between two
 * `--tls require` appliances; the warning for exposed listeners.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Appliance, isLoopback, nbdExposureWarning } from '../../src/appliance/index.js';
import type { MigrationStatus } from '../../src/appliance/migration.js';
import { ErrorCodes } from '../../src/errors.js';
import { Fabric } from '../../src/fabric/index.js';
import { SubAllocator } from '../../src/fabric/suballocation.js';
import { NbdClient, type NbdClientTls, type NbdServerTlsOptions } from '../../src/nbd/index.js';
import { credentialsDir, makePsk, makeX509 } from '../nbd/tls-credentials.js';
import { TEST_TOKEN, bearer, testAuth } from './harness.js';

const MiB = 1024 * 1024;
/** Status polls while waiting for a migration to finish (every POLL_MS). */
const POLLS_MAX = 6000;
const POLL_MS = 5;

async function start(t: test.TestContext, tls: NbdServerTlsOptions): Promise<Appliance> {
  const appliance = await Appliance.start({
    memory: '64MiB',
    nbd: { port: 0 },
    http: { port: 0 },
    defaultRegion: { name: 'shared', size: '1MiB' },
    merge: false,
    tls,
    auth: testAuth,
  });
  t.after(() => appliance.stop());
  return appliance;
}

async function tenants(appliance: Appliance): Promise<void> {
  await appliance.registry.create({ name: 'a-disk', size: '4MiB', tenant: 'tenant-a' });
  await appliance.registry.create({ name: 'a-scratch', size: '1MiB', tenant: 'tenant-a' });
  await appliance.registry.create({ name: 'b-disk', size: '4MiB', tenant: 'tenant-b' });
}

function names(list: Array<{ name: string }>): string[] {
  return list.map((e) => e.name).sort();
}

/** The error message of a failed connect with the export name replaced, to compare two failures. */
async function refusal(port: number, exportName: string, tls: NbdClientTls): Promise<[string, string]> {
  const err = await NbdClient.connect({ port, exportName, tls }).then(
    (client) => {
      client.destroy();
      throw new Error(`opening ${exportName} succeeded`);
    },
    (e: Error & { code: string }) => e,
  );
  return [err.code, err.message.replaceAll(exportName, 'NAME')];
}

test('a PSK identity sees only its tenant; another tenant answers exactly as a missing export', async (t) => {
  const psk = makePsk(credentialsDir(t), ['tenant-a', 'tenant-b', 'ops']);
  const appliance = await start(t, { mode: 'require', psk: psk.file, adminIdentities: ['ops'] });
  await tenants(appliance);
  const port = appliance.nbdAddress.port;
  const asA: NbdClientTls = { psk: { identity: 'tenant-a', file: psk.file } };
  const asB: NbdClientTls = { psk: { identity: 'tenant-b', file: psk.file } };

  assert.deepEqual(names(await NbdClient.list({ port, tls: asA })), ['a-disk', 'a-scratch']);
  assert.deepEqual(names(await NbdClient.list({ port, tls: asB })), ['b-disk']);
  const ops = { psk: { identity: 'ops', file: psk.file } };
  assert.deepEqual(names(await NbdClient.list({ port, tls: ops })), [
    'a-disk',
    'a-scratch',
    'b-disk',
    'shared',
  ]);

  // Open, info, and the default export ('shared' belongs to the default tenant): all unknown.
  const missing = await refusal(port, 'no-such-region', asA);
  assert.equal(missing[0], ErrorCodes.NOT_FOUND);
  assert.deepEqual(await refusal(port, 'b-disk', asA), missing);
  assert.deepEqual(await refusal(port, 'shared', asA), missing);
  await assert.rejects(NbdClient.info({ port, exportName: 'b-disk', tls: asA }), {
    code: ErrorCodes.NOT_FOUND,
  });
  await assert.rejects(NbdClient.connect({ port, exportName: '', tls: asA }), { code: ErrorCodes.NOT_FOUND });

  // B writes its region; A cannot read it, B and the admin can.
  const data = randomBytes(64 * 1024);
  const b = await NbdClient.connect({ port, exportName: 'b-disk', tls: asB });
  t.after(() => b.destroy());
  await b.write(MiB, data);
  await b.flush();
  const admin = await NbdClient.connect({ port, exportName: 'b-disk', tls: ops });
  t.after(() => admin.destroy());
  assert.deepEqual(await admin.read(MiB, data.length), data);
  const a = await NbdClient.connect({ port, exportName: 'a-disk', tls: asA });
  t.after(() => a.destroy());
  assert.deepEqual(await a.read(MiB, data.length), Buffer.alloc(data.length), 'a-disk is its own region');
  assert.equal(appliance.registry.find('b-disk')!.connections, 2);
});

test('tls on: plain connections keep seeing every region, PSK connections their tenant', async (t) => {
  const psk = makePsk(credentialsDir(t), ['tenant-a']);
  const appliance = await start(t, { mode: 'on', psk: psk.file });
  await tenants(appliance);
  const port = appliance.nbdAddress.port;
  assert.deepEqual(names(await NbdClient.list({ port })), ['a-disk', 'a-scratch', 'b-disk', 'shared']);
  assert.deepEqual(
    names(await NbdClient.list({ port, tls: { psk: { identity: 'tenant-a', file: psk.file } } })),
    ['a-disk', 'a-scratch'],
  );
});

test('a verified client certificate names the tenant by its CN', async (t) => {
  const x509 = makeX509(credentialsDir(t), ['tenant-b']);
  const appliance = await start(t, {
    mode: 'require',
    certificates: x509.serverDir,
    verifyClientCertificates: true,
  });
  await tenants(appliance);
  const port = appliance.nbdAddress.port;
  const tls = { certificates: x509.clientDir('tenant-b') };
  assert.deepEqual(names(await NbdClient.list({ port, tls })), ['b-disk']);
  await assert.rejects(NbdClient.connect({ port, exportName: 'a-disk', tls }), {
    code: ErrorCodes.NOT_FOUND,
  });
});

test('a Fabric region over TLS against --tls require appliances', async (t) => {
  const psk = makePsk(credentialsDir(t), ['tenant-a']);
  const appliances = [
    await start(t, { mode: 'require', psk: psk.file }),
    await start(t, { mode: 'require', psk: psk.file }),
  ];
  const urls = appliances.map((a) => `http://127.0.0.1:${a.httpAddress.port}`);
  const plainFabric = new Fabric({ appliances: urls, tenant: 'tenant-a', token: TEST_TOKEN });
  t.after(() => plainFabric.close());
  await assert.rejects(plainFabric.allocate({ size: '1MiB', prefer: 'external' }), { code: ErrorCodes.TLS });

  const fabric = new Fabric({
    appliances: urls,
    token: TEST_TOKEN,
    tenant: 'tenant-a',
    tls: { psk: { identity: 'tenant-a', file: psk.file } },
  });
  t.after(() => fabric.close());
  const region = await fabric.allocate({ size: 2 * MiB, redundancy: { copies: 2 } });
  const data = randomBytes(300_000);
  await region.write(4096, data);
  await region.flush();
  assert.deepEqual(await region.read(4096, data.length), data);
  for (const appliance of appliances) {
    const held = appliance.registry.all().filter((r) => r.tenant === 'tenant-a');
    assert.equal(held.length, 1, 'one shard on each appliance');
    const copy = Buffer.alloc(data.length);
    held[0].read(4096, copy);
    assert.deepEqual(copy, data, 'the bytes went over TLS to both copies');
  }
});

test('a SubAllocator chunk over TLS against a --tls require appliance', async (t) => {
  const psk = makePsk(credentialsDir(t), ['tenant-a']);
  const appliance = await start(t, { mode: 'require', psk: psk.file });
  await appliance.registry.create({ name: 'pool', size: '8MiB', tenant: 'tenant-a' });
  const url = `http://127.0.0.1:${appliance.httpAddress.port}`;
  const sub = new SubAllocator({
    appliance: url,
    region: 'pool',
    owner: 'worker-1',
    token: TEST_TOKEN,
    tls: { psk: { identity: 'tenant-a', file: psk.file } },
  });
  t.after(() => sub.close());
  const chunk = await sub.claim({ size: '1MiB' });
  const view = await chunk.open();
  await view.write(0, Buffer.alloc(4096, 0x42));
  assert.deepEqual(await view.read(0, 4096), Buffer.alloc(4096, 0x42));
  const direct = Buffer.alloc(4096);
  appliance.registry.require('pool').read(chunk.offset, direct);
  assert.deepEqual(direct, Buffer.alloc(4096, 0x42));
});

test('migration between two --tls require appliances sharing a PSK file', async (t) => {
  const psk = makePsk(credentialsDir(t), ['tenant-a', 'ops']);
  const tls: NbdServerTlsOptions = { mode: 'require', psk: psk.file, adminIdentities: ['ops'] };
  const a = await start(t, tls);
  const b = await start(t, tls);
  await a.registry.create({ name: 'vm', size: '4MiB', tenant: 'tenant-a' });
  const asA = { psk: { identity: 'tenant-a', file: psk.file } };
  const data = randomBytes(2 * MiB);
  const writer = await NbdClient.connect({ port: a.nbdAddress.port, exportName: 'vm', tls: asA });
  await writer.write(MiB, data);
  await writer.disconnect();

  const aUrl = `http://127.0.0.1:${a.httpAddress.port}`;
  const bUrl = `http://127.0.0.1:${b.httpAddress.port}`;
  const started = await fetch(`${aUrl}/v1/regions/vm/migrate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...bearer(TEST_TOKEN) },
    body: JSON.stringify({ target: bUrl, targetToken: TEST_TOKEN }),
  });
  assert.equal(started.status, 202, await started.clone().text());
  let status: MigrationStatus | undefined;
  for (let poll = 0; poll < POLLS_MAX; poll++) {
    status = (await (await fetch(`${aUrl}/v1/regions/vm/migration`)).json()) as MigrationStatus;
    if (status.state === 'done' || status.state === 'failed') break;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  assert.equal(status?.state, 'done', JSON.stringify(status));
  const reader = await NbdClient.connect({ port: b.nbdAddress.port, exportName: 'vm', tls: asA });
  t.after(() => reader.destroy());
  assert.deepEqual(await reader.read(MiB, data.length), data);
});

test('the exposure warning: loopback is quiet; any other address without required TLS is not', () => {
  for (const host of ['127.0.0.1', '127.3.2.1', '::1', '[::1]', 'localhost', '::ffff:127.0.0.1']) {
    assert.ok(isLoopback(host), host);
    assert.equal(nbdExposureWarning(host, 'off'), undefined);
  }
  for (const host of ['0.0.0.0', '', '::', '10.0.0.5', 'appliance.example', '128.0.0.1']) {
    assert.ok(!isLoopback(host), host);
    assert.match(nbdExposureWarning(host, 'off') ?? '', /without TLS/);
    assert.match(nbdExposureWarning(host, 'on') ?? '', /optional TLS/);
    assert.equal(nbdExposureWarning(host, 'require'), undefined);
  }
});
