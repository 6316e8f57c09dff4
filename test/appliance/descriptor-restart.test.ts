/**
 * Descriptors and names outlive the appliance process: a file-backed region's descriptor and
 * the names table are durable when their change is answered, so they are back after a clean
 * stop (SIGTERM) and after a crash (SIGKILL right after the answer). Real appliance processes
 * on one data directory.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApplianceProcess, tempDir } from '../interop/appliance-process.js';

interface RegionAnswer {
  name: string;
  state: string;
  descriptor?: { generation: number; [key: string]: unknown };
  connections: number;
}

function descriptor(generation: number, note: string): Record<string, unknown> {
  return { format: 1, id: 'reg-1', name: 'vol', generation, note, shards: [{ index: 0, region: 'vol-0' }] };
}

for (const ending of ['stop', 'kill'] as const) {
  test(`descriptors and names are back after the appliance process ${ending === 'stop' ? 'stops (SIGTERM)' : 'is SIGKILLed'}`, async (t) => {
    const dataDir = tempDir(t, 'memfabric-descriptor-restart-');
    const first = await ApplianceProcess.start({ memory: '64MiB', dataDir });
    t.after(() => first.stop());
    const created = await first.api('POST', '/v1/regions', {
      name: 'vol-0',
      size: '4MiB',
      file: true,
      descriptor: descriptor(1, 'created'),
    });
    assert.equal(created.status, 201);
    const memoryOnly = await first.api('POST', '/v1/regions', {
      name: 'scratch',
      size: '1MiB',
      descriptor: descriptor(1, 'memory'),
    });
    assert.equal(memoryOnly.status, 201);
    const put = await first.api('PUT', '/v1/regions/vol-0/descriptor', {
      descriptor: descriptor(2, 'rebuilt'),
    });
    assert.deepEqual(put, { status: 200, body: { generation: 2 } });
    assert.equal(
      (await first.api('POST', '/v1/names', { name: 'vol', tenant: 'default', id: 'reg-1' })).status,
      201,
    );
    assert.equal(
      (await first.api('POST', '/v1/names', { name: 'gone', tenant: 'default', id: 'reg-2' })).status,
      201,
    );
    assert.equal((await first.api('DELETE', '/v1/names/default/gone?id=reg-2')).status, 204);
    const exit = ending === 'stop' ? await first.stop() : await first.kill();
    assert.equal(ending === 'stop' ? exit.code : exit.signal, ending === 'stop' ? 0 : 'SIGKILL');

    const second = await ApplianceProcess.start({ memory: '64MiB', dataDir });
    t.after(() => second.stop());
    const regions = await second.waitLoaded();
    assert.deepEqual(
      regions.map((r) => r.name),
      ['default', 'vol-0'],
      'the memory-only region is gone, the file-backed one is back',
    );
    const vol = (await second.api<RegionAnswer>('GET', '/v1/regions/vol-0')).body;
    assert.equal(vol.state, 'ready');
    assert.deepEqual(vol.descriptor, descriptor(2, 'rebuilt'));
    assert.equal(vol.connections, 0);
    const names = (await second.api<{ names: Array<{ name: string; id: string }> }>('GET', '/v1/names')).body
      .names;
    assert.deepEqual(
      names.map((n) => [n.name, n.id]),
      [['vol', 'reg-1']],
    );
    // The generation rule and the holder survive too.
    const stale = await second.api<{ error: { code: string } }>('PUT', '/v1/regions/vol-0/descriptor', {
      descriptor: descriptor(2, 'late'),
    });
    assert.equal(stale.status, 409);
    assert.equal(stale.body.error.code, 'MF_STALE_GENERATION');
    assert.equal(
      (await second.api('POST', '/v1/names', { name: 'vol', tenant: 'default', id: 'other' })).status,
      409,
    );
  });
}
