/**
 * An NBD connection's claim on its region ends when the appliance has answered NBD_CMD_DISC,
 * not only when the socket closes: a client may delete the region as soon as
 * NbdClient.disconnect() resolves. Real appliances (a separate process for the cycles, where
 * the appliance's socket 'close' really races the client's next call; in-process where the
 * test reads the counts), real NbdClients.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NbdClient } from '../../src/nbd/index.js';
import { ApplianceProcess } from '../interop/appliance-process.js';
import { startAppliance, testAuth } from './harness.js';

const MiB = 1024 * 1024;
/** Connect/write/disconnect/DELETE cycles against the appliance process. */
const CYCLES = Number(process.env.MEMFABRIC_DISC_CYCLES ?? 150);
/** Bound on the cycles' wall time, so a slow machine ends the loop instead of the suite. */
const CYCLES_MS_MAX = 60_000;
/** Polls of the appliance's counters while waiting for a socket to be seen closed. */
const POLLS_MAX = 2000;

async function until(what: string, done: () => boolean): Promise<void> {
  for (let poll = 0; poll < POLLS_MAX; poll++) {
    if (done()) return;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  throw new Error(`timed out waiting for ${what}`);
}

test('DELETE right after disconnect() succeeds, cycle after cycle (appliance in its own process)', async (t) => {
  const app = await ApplianceProcess.start({ memory: '64MiB', merge: false });
  t.after(() => app.stop());
  const started = Date.now();
  let cycles = 0;
  for (; cycles < CYCLES && Date.now() - started < CYCLES_MS_MAX; cycles++) {
    const name = `c${cycles}`;
    const created = await app.api('POST', '/v1/regions', { name, size: MiB });
    assert.equal(created.status, 201);
    // One to three connections, as a replicated or coded shard may have.
    const clients = await Promise.all(
      Array.from({ length: 1 + (cycles % 3) }, () =>
        NbdClient.connect({ host: app.nbdHost, port: app.nbdPort, exportName: name }),
      ),
    );
    await Promise.all(clients.map((client, i) => client.write(i * 4096, Buffer.alloc(4096, cycles & 0xff))));
    await Promise.all(clients.map((client) => client.disconnect()));
    const deleted = await app.api<{ error?: { code: string; message: string } }>(
      'DELETE',
      `/v1/regions/${name}`,
    );
    assert.equal(deleted.status, 204, `cycle ${cycles}: ${JSON.stringify(deleted.body)}`);
  }
  t.diagnostic(`${cycles} cycles, every DELETE answered 204`);
  assert.ok(cycles >= Math.min(CYCLES, 20), `only ${cycles} cycles ran within ${CYCLES_MS_MAX} ms`);
  const left = await app.api<{ regions: Array<{ name: string }> }>('GET', '/v1/regions');
  assert.deepEqual(
    left.body.regions.map((r) => r.name),
    ['default'],
  );
});

test('the claim is given back once: at DISC, not again when the socket closes; abrupt closes too', async (t) => {
  const { appliance } = await startAppliance({
    memory: '16MiB',
    defaultRegion: false,
    merge: false,
    auth: testAuth,
  });
  t.after(() => appliance.stop());
  const region = await appliance.registry.create({ name: 'r', size: MiB });
  const port = appliance.nbdAddress.port;
  const open = (): number => appliance.stats().nbd.connectionsOpen;
  const a = await NbdClient.connect({ port, exportName: 'r' });
  const b = await NbdClient.connect({ port, exportName: 'r' });
  const c = await NbdClient.connect({ port, exportName: 'r' });
  assert.equal(region.connections, 3);

  await a.disconnect();
  assert.equal(region.connections, 2, 'released by the time disconnect() resolves');
  await until('the server to see the socket close', () => open() === 2);
  assert.equal(region.connections, 2, 'the socket closing did not release it a second time');

  // A connection that ends without DISC is released when its socket closes.
  b.destroy();
  await until('the abrupt close', () => open() === 1);
  assert.equal(region.connections, 1);

  // A server-side shutdown of the export's connections (as after a migration) releases once too.
  assert.equal(appliance.nbdServer.disconnectExport(region, 'test'), 1);
  await until('the shutdown', () => open() === 0);
  assert.equal(region.connections, 0);
  await c.closed;
  await appliance.registry.delete('r');
  assert.equal(appliance.registry.find('r'), undefined);
});

test('a release counts against the region the connection was given, even when its name now stands for another', async (t) => {
  const { appliance } = await startAppliance({
    memory: '16MiB',
    defaultRegion: false,
    merge: false,
    auth: testAuth,
  });
  t.after(() => appliance.stop());
  const registry = appliance.registry;
  const old = await registry.create({ name: 'm', size: MiB });
  // A connection the server is still winding down when `m` moves away and a new `m` is made.
  registry.onAttach('m', 1, old);
  await registry.markMoved(old, {
    appliance: 'http://127.0.0.1:9',
    region: 'm',
    nbd: { host: '127.0.0.1', port: 9 },
  });
  const fresh = await registry.create({ name: 'm', size: MiB });
  const client = await NbdClient.connect({ port: appliance.nbdAddress.port, exportName: 'm' });
  t.after(() => client.destroy());
  assert.equal(fresh.connections, 1);
  registry.onAttach('m', -1, old);
  assert.equal(fresh.connections, 1, 'the new region keeps its own connection');
  assert.equal(old.connections, 0);
  await client.disconnect();
  assert.equal(fresh.connections, 0);
});
