/**
 * The names table on a real appliance (in-process, real sockets): claim, idempotent re-claim,
 * refusal naming the holder, release by the holder only, validation, tenant confinement, one
 * winner among concurrent claims, a model of any sequence of claims and releases, persistence
 * in the data directory (atomic file, read at start, a damaged file stops the start), and the
 * ApplianceDirectory calls.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { Appliance, nodeFileLayer, type FileLayer } from '../../src/appliance/index.js';
import { NAMES_FILE } from '../../src/appliance/names.js';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import { ApplianceDirectory } from '../../src/fabric/directory.js';
import { TEST_TOKEN, startAppliance, testAuth } from './harness.js';

const TOKEN_A = 'token-of-tenant-a-0123456789';
const TOKEN_B = 'token-of-tenant-b-0123456789';

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'memfabric-names-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('claim, claim again, refuse another id, release by the holder only', async (t) => {
  const { appliance, call } = await startAppliance({ defaultRegion: false, merge: false });
  t.after(() => appliance.stop());
  const claimed = await call('POST', '/v1/names', { name: 'vol:1', tenant: 'blue', id: 'id-one' });
  assert.equal(claimed.status, 201);
  assert.deepEqual(Object.keys(claimed.json).sort(), ['createdAt', 'id', 'name', 'tenant']);
  assert.equal(claimed.json.id, 'id-one');
  assert.ok(!Number.isNaN(Date.parse(claimed.json.createdAt)));

  const again = await call('POST', '/v1/names', { name: 'vol:1', tenant: 'blue', id: 'id-one' });
  assert.equal(again.status, 200, 'the same id again is a retry');
  assert.deepEqual(again.json, claimed.json);

  const taken = await call('POST', '/v1/names', { name: 'vol:1', tenant: 'blue', id: 'id-two' });
  assert.equal(taken.status, 409);
  assert.equal(taken.json.error.code, ErrorCodes.ALREADY_EXISTS);
  assert.match(taken.json.error.message, /id-one/);
  assert.ok(taken.json.error.message.includes(claimed.json.createdAt), 'names when it was claimed');

  // The same name in another tenant is another name.
  assert.equal((await call('POST', '/v1/names', { name: 'vol:1', tenant: 'red', id: 'id-two' })).status, 201);

  const wrong = await call('DELETE', '/v1/names/blue/vol:1?id=id-two');
  assert.equal(wrong.status, 409);
  assert.equal(wrong.json.error.code, ErrorCodes.CONFLICT);
  assert.match(wrong.json.error.message, /id-one/);
  assert.equal((await call('GET', '/v1/names')).json.names.length, 2);

  assert.equal((await call('DELETE', '/v1/names/blue/vol:1?id=id-one')).status, 204);
  assert.equal((await call('DELETE', '/v1/names/blue/vol:1?id=id-one')).status, 204, 'absent: done');
  assert.deepEqual(
    (await call('GET', '/v1/names')).json.names.map((r: { tenant: string; name: string }) => [
      r.tenant,
      r.name,
    ]),
    [['red', 'vol:1']],
  );
  // Free again: another id may take it.
  assert.equal(
    (await call('POST', '/v1/names', { name: 'vol:1', tenant: 'blue', id: 'id-two' })).status,
    201,
  );
  // Tenant left out: the default tenant.
  const plain = await call('POST', '/v1/names', { name: 'solo', id: 'x' });
  assert.equal(plain.json.tenant, 'default');
});

test('bad names, tenants, ids and bodies are refused with 400 and change nothing', async (t) => {
  const { appliance, call } = await startAppliance({ defaultRegion: false, merge: false });
  t.after(() => appliance.stop());
  const bad: Array<Record<string, unknown>> = [
    { name: '', tenant: 't', id: 'i' },
    { name: 'a/b', tenant: 't', id: 'i' },
    { name: '.hidden', tenant: 't', id: 'i' },
    { name: 'x'.repeat(201), tenant: 't', id: 'i' },
    { name: 'sp ace', tenant: 't', id: 'i' },
    { name: 'ok', tenant: 'bad/tenant', id: 'i' },
    { name: 'ok', tenant: 't', id: '' },
    { name: 'ok', tenant: 't', id: 'has space' },
    { name: 'ok', tenant: 't', id: 'i'.repeat(129) },
    { name: 'ok', tenant: 't' },
    { tenant: 't', id: 'i' },
    { name: 'ok', tenant: 't', id: 'i', extra: true },
    { name: 5, tenant: 't', id: 'i' },
  ];
  for (const body of bad) {
    const answer = await call('POST', '/v1/names', body);
    assert.equal(answer.status, 400, JSON.stringify(body));
    assert.ok([ErrorCodes.INVALID_ARGUMENT, ErrorCodes.BAD_REQUEST].includes(answer.json.error.code));
  }
  assert.equal(
    (await call('POST', '/v1/names', { name: 'x'.repeat(200), tenant: 't', id: 'i' })).status,
    201,
  );
  assert.equal((await call('DELETE', '/v1/names/t/ok')).status, 400, 'id is required');
  assert.equal((await call('DELETE', '/v1/names/t/ok?id=bad%20id')).status, 400);
  assert.equal((await call('GET', '/v1/names')).json.names.length, 1);
});

test('a tenant token claims, releases and sees its own tenant’s names only', async (t) => {
  const { appliance, call, callAs } = await startAppliance({
    defaultRegion: false,
    merge: false,
    auth: { tenantTokens: { a: TOKEN_A, b: TOKEN_B } },
  });
  t.after(() => appliance.stop());
  const mine = await callAs(TOKEN_A, 'POST', '/v1/names', { name: 'n', id: 'ia' });
  assert.equal(mine.status, 201);
  assert.equal(mine.json.tenant, 'a', 'left out: the token’s tenant');
  assert.equal(
    (await callAs(TOKEN_A, 'POST', '/v1/names', { name: 'm', tenant: 'a', id: 'ia' })).status,
    201,
  );
  const other = await callAs(TOKEN_A, 'POST', '/v1/names', { name: 'n', tenant: 'b', id: 'ia' });
  assert.equal(other.status, 403);
  assert.equal(other.json.error.code, ErrorCodes.FORBIDDEN);
  assert.equal((await callAs(TOKEN_B, 'POST', '/v1/names', { name: 'n', id: 'ib' })).status, 201);
  assert.deepEqual(
    (await callAs(TOKEN_A, 'GET', '/v1/names')).json.names.map((r: { name: string }) => r.name),
    ['m', 'n'],
  );
  assert.equal((await callAs(TOKEN_A, 'DELETE', '/v1/names/b/n?id=ib')).status, 403);
  assert.equal((await call('GET', '/v1/names')).json.names.length, 3, 'the admin sees every tenant');
  assert.equal((await callAs(TOKEN_B, 'DELETE', '/v1/names/b/n?id=ib')).status, 204);
  assert.equal((await callAs(undefined, 'POST', '/v1/names', { name: 'z', id: 'i' })).status, 401);
  assert.equal((await callAs(undefined, 'DELETE', '/v1/names/a/n?id=ia')).status, 401);
});

test('concurrent claims of one name by different ids: exactly one wins', async (t) => {
  const dataDir = tempDir(t);
  const { appliance, call } = await startAppliance({ defaultRegion: false, merge: false, dataDir });
  t.after(() => appliance.stop());
  for (let round = 0; round < 5; round++) {
    const answers = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        call('POST', '/v1/names', { name: `race-${round}`, tenant: 't', id: `client-${i}` }),
      ),
    );
    const winners = answers.filter((a) => a.status === 201);
    assert.equal(winners.length, 1);
    for (const loser of answers.filter((a) => a.status !== 201)) {
      assert.equal(loser.status, 409);
      assert.ok(loser.json.error.message.includes(winners[0]!.json.id), 'names the winner');
    }
  }
  const file = JSON.parse(readFileSync(join(dataDir, NAMES_FILE), 'utf8'));
  assert.equal(file.names.length, 5);
});

test('any sequence of claims and releases agrees with a model, in memory and on disk', async (t) => {
  const dataDir = tempDir(t);
  let appliance: Appliance | undefined;
  t.after(() => appliance?.stop());
  const op = fc.record({
    kind: fc.constantFrom('claim', 'release'),
    name: fc.constantFrom('a', 'b', 'c'),
    tenant: fc.constantFrom('t1', 't2'),
    id: fc.constantFrom('x', 'y'),
  });
  let run = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(op, { maxLength: 20 }), fc.boolean(), async (ops, restart) => {
      const dir = join(dataDir, `run-${run++}`);
      const started = await startAppliance({
        defaultRegion: false,
        merge: false,
        dataDir: dir,
        auth: testAuth,
      });
      appliance = started.appliance;
      const model = new Map<string, string>();
      for (const { kind, name, tenant, id } of ops) {
        const key = `${tenant}/${name}`;
        const holder = model.get(key);
        if (kind === 'claim') {
          const answer = await started.call('POST', '/v1/names', { name, tenant, id });
          if (holder === undefined) {
            assert.equal(answer.status, 201);
            model.set(key, id);
          } else {
            assert.equal(answer.status, holder === id ? 200 : 409);
          }
        } else {
          const answer = await started.call('DELETE', `/v1/names/${tenant}/${name}?id=${id}`);
          if (holder === undefined || holder === id) {
            assert.equal(answer.status, 204);
            model.delete(key);
          } else {
            assert.equal(answer.status, 409);
          }
        }
      }
      let call = started.call;
      if (restart) {
        await started.appliance.stop();
        const again = await startAppliance({
          defaultRegion: false,
          merge: false,
          dataDir: dir,
          auth: testAuth,
        });
        appliance = again.appliance;
        call = again.call;
      }
      const listed = (await call('GET', '/v1/names')).json.names as Array<{
        tenant: string;
        name: string;
        id: string;
      }>;
      assert.deepEqual(
        listed.map((r) => [`${r.tenant}/${r.name}`, r.id]),
        [...model.entries()].sort(([a], [b]) => (a < b ? -1 : 1)),
      );
      await appliance.stop();
      appliance = undefined;
    }),
    { numRuns: 15 },
  );
});

test('the table lives in DATA_DIR/names.json (no temporary left), survives a restart, and a damaged file stops the start', async (t) => {
  const dataDir = tempDir(t);
  const first = await startAppliance({ defaultRegion: false, merge: false, dataDir, auth: testAuth });
  const record = (await first.call('POST', '/v1/names', { name: 'kept', tenant: 't', id: 'owner' })).json;
  await first.appliance.stop();
  assert.deepEqual(
    readdirSync(dataDir).filter((f) => f.startsWith('names')),
    [NAMES_FILE],
    'the file is replaced atomically: no temporary file stays',
  );

  const second = await startAppliance({ defaultRegion: false, merge: false, dataDir, auth: testAuth });
  assert.deepEqual((await second.call('GET', '/v1/names')).json.names, [record]);
  const held = await second.call('POST', '/v1/names', { name: 'kept', tenant: 't', id: 'thief' });
  assert.equal(held.status, 409, 'a name held before the restart is held after it');
  await second.appliance.stop();

  writeFileSync(join(dataDir, NAMES_FILE), '{"magic":"memfabric-names","version":1,"names":[{"name":');
  await assert.rejects(
    Appliance.start({ memory: '16MiB', nbd: { port: 0 }, http: { port: 0 }, dataDir, auth: testAuth }),
    (error: unknown) => {
      assert.ok(error instanceof MemfabricError);
      assert.equal(error.code, ErrorCodes.CORRUPT_FILE);
      assert.match(error.message, /names\.json/);
      assert.match(error.message, /move it away/);
      return true;
    },
  );
});

test('without a data directory the table is memory-only: no file operation at all', async (t) => {
  const touched: string[] = [];
  const layer = Object.fromEntries(
    Object.entries(nodeFileLayer).map(([key, fn]) => [
      key,
      (...args: unknown[]) => {
        touched.push(`${key} ${String(args[0])}`);
        return (fn as (...a: unknown[]) => unknown)(...args);
      },
    ]),
  ) as unknown as FileLayer;
  const { appliance, call } = await startAppliance({ defaultRegion: false, merge: false, fileLayer: layer });
  t.after(() => appliance.stop());
  assert.equal((await call('POST', '/v1/names', { name: 'm', tenant: 't', id: 'i' })).status, 201);
  assert.equal((await call('DELETE', '/v1/names/t/m?id=i')).status, 204);
  assert.deepEqual(touched, []);
});

test('ApplianceDirectory: claimName, releaseName, listNames with typed errors', async (t) => {
  const { appliance, base } = await startAppliance({ defaultRegion: false, merge: false, auth: testAuth });
  t.after(() => appliance.stop());
  const directory = new ApplianceDirectory([base], 5000, { token: TEST_TOKEN });
  const claim = await directory.claimName(base, { name: 'fab:vol', tenant: 'blue', id: 'r1' });
  assert.equal(claim.id, 'r1');
  assert.deepEqual(await directory.claimName(base, { name: 'fab:vol', tenant: 'blue', id: 'r1' }), claim);
  await assert.rejects(directory.claimName(base, { name: 'fab:vol', tenant: 'blue', id: 'r2' }), {
    code: ErrorCodes.ALREADY_EXISTS,
  });
  await assert.rejects(directory.releaseName(base, 'blue', 'fab:vol', 'r2'), { code: ErrorCodes.CONFLICT });
  assert.deepEqual(await directory.listNames(base), [claim]);
  await directory.releaseName(base, 'blue', 'fab:vol', 'r1');
  await directory.releaseName(base, 'blue', 'fab:vol', 'r1');
  assert.deepEqual(await directory.listNames(base), []);
});

test('any JSON sent to the new routes is answered below 500, and the appliance goes on serving', async (t) => {
  const { appliance, call } = await startAppliance({ defaultRegion: false, merge: false });
  t.after(() => appliance.stop());
  assert.equal((await call('POST', '/v1/regions', { name: 'r', size: 4096 })).status, 201);
  const routes: Array<[string, string, (v: unknown) => unknown]> = [
    ['POST', '/v1/names', (v) => v],
    ['POST', '/v1/names', (v) => ({ name: 'n', tenant: 't', id: v })],
    ['PUT', '/v1/regions/r/descriptor', (v) => ({ descriptor: v })],
    ['PUT', '/v1/regions/r/descriptor', (v) => v],
    ['POST', '/v1/regions', (v) => ({ name: 'fz', size: 4096, descriptor: v })],
  ];
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: routes.length - 1 }),
      fc.oneof(fc.jsonValue(), fc.record({ generation: fc.jsonValue() }, { requiredKeys: [] })),
      async (route, value) => {
        const [method, path, body] = routes[route]!;
        const answer = await call(method, path, undefined, JSON.stringify(body(value)) ?? 'null');
        assert.ok(
          answer.status < 500,
          `${method} ${path} ${JSON.stringify(value)}: ${answer.status} ${answer.text}`,
        );
        if (answer.status >= 400) assert.equal(typeof answer.json.error.code, 'string');
        if (appliance.registry.find('fz')) await appliance.registry.delete('fz');
      },
    ),
    { numRuns: 150 },
  );
  // Path parameters too.
  for (const path of [
    '/v1/names/%2e%2e/x?id=i',
    '/v1/names/t/%00?id=i',
    `/v1/names/t/${'x'.repeat(5000)}?id=i`,
  ]) {
    assert.ok((await call('DELETE', path)).status < 500, path);
  }
  assert.equal((await call('GET', '/v1/names')).status, 200);
});
