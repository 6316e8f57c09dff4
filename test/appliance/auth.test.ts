/**
 * Authentication and tenant isolation on the admin API of real in-process appliances (real
 * sockets): every mutating route refuses a missing or wrong token and changes nothing; a tenant
 * token reaches only its own regions (another tenant's region answers exactly as an absent one)
 * and no appliance-wide route; the token file is private, created once and reused; the rules
 * for anonymous reads and for start-up warnings, by address.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request as httpRequest } from 'node:http';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { ROUTE_ACCESS, anonymousReadAllowed, routeAccess } from '../../src/appliance/auth.js';
import { exposureWarnings, isLoopback } from '../../src/appliance/exposure.js';
import {
  generateToken,
  loadOrCreateTokenFile,
  readTenantTokens,
  tenantTokenMap,
} from '../../src/appliance/auth-token.js';
import { Appliance } from '../../src/appliance/index.js';
import { ErrorCodes, MemfabricError } from '../../src/index.js';
import { resolveRegion } from '../../src/fabric/follow.js';
import { startAppliance } from './harness.js';

const MiB = 1024 * 1024;
const TOKEN_A = generateToken();
const TOKEN_B = generateToken();

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'memfabric-auth-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Two tenants, a and b, with a region each ('ra', 'rb') and a claimed chunk in each. */
async function twoTenants() {
  const started = await startAppliance({
    defaultRegion: false,
    merge: false,
    auth: { tenantTokens: { a: TOKEN_A, b: TOKEN_B } },
  });
  for (const [name, tenant] of [
    ['ra', 'a'],
    ['rb', 'b'],
  ] as const) {
    assert.equal((await started.call('POST', '/v1/regions', { name, size: '4MiB', tenant })).status, 201);
    const claim = await started.call('POST', `/v1/regions/${name}/chunks`, { owner: 'o', chunkSize: '1MiB' });
    assert.equal(claim.status, 201);
  }
  return started;
}

/** A request for each mutating route, on region `name` (bodies valid for the schemas). */
function mutations(name: string): Array<[string, string, unknown]> {
  return [
    ['POST', '/v1/regions', { name: 'fresh', size: MiB }],
    ['DELETE', `/v1/regions/${name}`, undefined],
    ['POST', `/v1/regions/${name}/clone`, { name: 'copy' }],
    ['POST', `/v1/regions/${name}/chunks`, { owner: 'x' }],
    ['DELETE', `/v1/regions/${name}/chunks/0`, undefined],
    ['POST', `/v1/regions/${name}/migrate`, { target: 'http://127.0.0.1:9' }],
    ['PUT', `/v1/regions/${name}/descriptor`, { descriptor: { generation: 1 } }],
    ['POST', '/v1/names', { name: 'n', tenant: 'a', id: 'i' }],
    ['DELETE', '/v1/names/a/n?id=i', undefined],
  ];
}

test('every mutating route is in the access table, and the list above covers them all', () => {
  const mutating = Object.keys(ROUTE_ACCESS).filter((key) => !key.startsWith('GET '));
  const covered = mutations(':name').map(
    ([method, path]) =>
      `${method} ${path.replace(/\/0$/, '/:offset').replace('/a/n?id=i', '/:tenant/:name')}`,
  );
  assert.deepEqual(covered.sort(), mutating.sort());
  // A route nobody classed fails closed: appliance-wide.
  assert.equal(routeAccess('PUT', '/v1/new-thing'), 'appliance-write');
  assert.equal(routeAccess('GET', undefined), 'appliance-read');
  assert.equal(routeAccess('HEAD', '/v1/regions'), 'region-list');
});

test('without a token, or with a wrong one, every mutating route answers 401 and changes nothing', async (t) => {
  const { appliance, callAs } = await twoTenants();
  t.after(() => appliance.stop());
  const before = JSON.stringify(appliance.registry.all().map((r) => r.info()));
  const wrong = [undefined, `${appliance.adminToken}x`, generateToken(), appliance.adminToken.slice(0, -1)];
  for (const token of wrong) {
    for (const [method, path, body] of mutations('ra')) {
      const answer = await callAs(token, method, path, body);
      assert.equal(
        answer.status,
        401,
        `${method} ${path} with ${token === undefined ? 'no' : 'a wrong'} token`,
      );
      assert.equal(answer.json.error.code, ErrorCodes.UNAUTHORIZED);
      assert.match(answer.json.error.message, /Authorization: Bearer/);
      assert.match(
        answer.json.error.message,
        /appliance\.adminToken|admin\.token/,
        'says where the token is',
      );
    }
  }
  // Headers that are not a bearer token at all.
  for (const header of ['Basic dXNlcjpwYXNz', 'Bearer', 'Bearer  ', `Token ${appliance.adminToken}`]) {
    const response = await fetch(`http://127.0.0.1:${appliance.httpAddress.port}/v1/regions/ra`, {
      method: 'DELETE',
      headers: { authorization: header },
    });
    assert.equal(response.status, 401, header);
    assert.match(response.headers.get('www-authenticate') ?? '', /^Bearer/);
  }
  // A wrong token is refused even where no token is needed: the client learns it is wrong.
  assert.equal((await callAs(generateToken(), 'GET', '/v1/regions')).status, 401);
  assert.equal(JSON.stringify(appliance.registry.all().map((r) => r.info())), before);
  assert.equal(appliance.registry.find('fresh'), undefined);
  // Unknown routes: a write without a token learns nothing about what exists.
  assert.equal((await callAs(undefined, 'PUT', '/v1/whatever', {})).status, 401);
  // Every refusal is counted for the operator.
  const metrics = await callAs(appliance.adminToken, 'GET', '/metrics');
  const refused = wrong.length * mutations('ra').length + 4 + 1 + 1;
  assert.match(
    metrics.text,
    new RegExp(`memfabric_admin_refusals_total\\{reason="unauthorized"\\} ${refused}\\n`),
  );
});

test('the admin token may do everything; a scheme in any case is accepted', async (t) => {
  const { appliance, callAs } = await twoTenants();
  t.after(() => appliance.stop());
  const response = await fetch(`http://127.0.0.1:${appliance.httpAddress.port}/v1/regions/rb/clone`, {
    method: 'POST',
    headers: { authorization: `bearer ${appliance.adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'rb2' }),
  });
  assert.equal(response.status, 201);
  assert.equal(appliance.registry.require('rb2').tenant, 'b');
  const admin = appliance.adminToken;
  assert.equal((await callAs(admin, 'GET', '/metrics')).status, 200);
  assert.equal((await callAs(admin, 'GET', '/v1/regions')).json.regions.length, 3);
  assert.equal((await callAs(admin, 'DELETE', '/v1/regions/rb2')).status, 204);
});

test("a tenant token sees another tenant's region exactly as an absent one", async (t) => {
  const { appliance, callAs } = await twoTenants();
  t.after(() => appliance.stop());
  // For every region-scoped route: the answer about rb (tenant b) equals the answer about a
  // name that does not exist, once the name is swapped. Nothing about rb changes.
  const routes = (name: string): Array<[string, string, unknown]> => [
    ['GET', `/v1/regions/${name}`, undefined],
    ['GET', `/v1/regions/${name}/chunks`, undefined],
    ['GET', `/v1/regions/${name}/migration`, undefined],
    ['DELETE', `/v1/regions/${name}`, undefined],
    ['POST', `/v1/regions/${name}/clone`, { name: 'stolen' }],
    ['POST', `/v1/regions/${name}/chunks`, { owner: 'x' }],
    ['DELETE', `/v1/regions/${name}/chunks/0?force=true`, undefined],
  ];
  const absent = routes('nobody-here');
  for (const [i, [method, path, body]] of routes('rb').entries()) {
    const other = await callAs(TOKEN_A, method, path, body);
    const none = await callAs(TOKEN_A, absent[i]![0], absent[i]![1], absent[i]![2]);
    assert.equal(other.status, 404, `${method} ${path}`);
    assert.equal(other.text.replaceAll('rb', 'nobody-here'), none.text, `${method} ${path} reveals nothing`);
  }
  assert.ok(appliance.registry.find('rb'));
  assert.equal(appliance.registry.find('stolen'), undefined);
  // The chunk tenant b claimed is still b's.
  const b = await callAs(TOKEN_B, 'GET', '/v1/regions/rb/chunks');
  assert.equal(b.json.allocations.length, 1);
  // And b reaches its own region, not a's.
  assert.equal((await callAs(TOKEN_B, 'GET', '/v1/regions/rb')).status, 200);
  assert.equal((await callAs(TOKEN_B, 'GET', '/v1/regions/ra')).status, 404);
});

test('a tenant token lists, creates, clones, claims and deletes only within its tenant', async (t) => {
  const { appliance, callAs } = await twoTenants();
  t.after(() => appliance.stop());
  const listed = await callAs(TOKEN_A, 'GET', '/v1/regions');
  assert.deepEqual(
    listed.json.regions.map((r: { name: string }) => r.name),
    ['ra'],
  );
  const created = await callAs(TOKEN_A, 'POST', '/v1/regions', { name: 'ra2', size: MiB });
  assert.equal(created.status, 201);
  assert.equal(created.json.tenant, 'a', 'a region created with a tenant token is that tenant’s');
  const same = await callAs(TOKEN_A, 'POST', '/v1/regions', { name: 'ra3', size: MiB, tenant: 'a' });
  assert.equal(same.status, 201);
  const across = await callAs(TOKEN_A, 'POST', '/v1/regions', { name: 'rx', size: MiB, tenant: 'b' });
  assert.equal(across.status, 403);
  assert.equal(across.json.error.code, ErrorCodes.FORBIDDEN);
  assert.equal(appliance.registry.find('rx'), undefined);
  const clone = await callAs(TOKEN_A, 'POST', '/v1/regions/ra/clone', { name: 'ra-snap' });
  assert.equal(clone.status, 201);
  assert.equal(clone.json.tenant, 'a');
  const claim = await callAs(TOKEN_A, 'POST', '/v1/regions/ra/chunks', { owner: 'w' });
  assert.equal(claim.status, 201);
  assert.equal(
    (await callAs(TOKEN_A, 'DELETE', `/v1/regions/ra/chunks/${claim.json.offset}?owner=w`)).status,
    204,
  );
  assert.equal((await callAs(TOKEN_A, 'DELETE', '/v1/regions/ra-snap')).status, 204);
  assert.deepEqual(
    (await callAs(TOKEN_A, 'GET', '/v1/regions')).json.regions.map((r: { name: string }) => r.name),
    ['ra', 'ra2', 'ra3'],
  );
  // Stats: what a client needs to place regions, not every tenant's counters.
  const stats = await callAs(TOKEN_A, 'GET', '/v1/stats');
  assert.equal(stats.status, 200);
  assert.deepEqual(Object.keys(stats.json).sort(), ['endpoints', 'memory', 'regions', 'tenant']);
  assert.equal(stats.json.regions, 3);
  assert.equal(stats.json.tenant, 'a');
});

test('a tenant token may not use appliance-wide routes (403)', async (t) => {
  const { appliance, callAs } = await twoTenants();
  t.after(() => appliance.stop());
  for (const [method, path, body] of [
    ['POST', '/v1/regions/ra/migrate', { target: 'http://127.0.0.1:9' }],
    ['GET', '/metrics', undefined],
    ['GET', '/', undefined],
    ['PUT', '/v1/unknown', {}],
  ] as const) {
    const answer = await callAs(TOKEN_A, method, path, body);
    assert.equal(answer.status, 403, `${method} ${path}`);
    assert.equal(answer.json.error.code, ErrorCodes.FORBIDDEN);
    assert.match(answer.json.error.message, /tenant a.*admin token/);
  }
  assert.equal(appliance.registry.require('ra').migrating, false);
  const metrics = await callAs(appliance.adminToken, 'GET', '/metrics');
  assert.match(metrics.text, /memfabric_admin_refusals_total\{reason="forbidden"\} 4\n/);
});

test('reads without a token: open to loopback clients, closed with readAccess token', async (t) => {
  const open = await startAppliance({ defaultRegion: false });
  t.after(() => open.appliance.stop());
  for (const path of ['/v1/regions', '/v1/stats', '/metrics', '/']) {
    assert.equal((await open.callAs(undefined, 'GET', path)).status, 200, path);
    // A page from another site whose name resolves to 127.0.0.1 (DNS rebinding) reads nothing.
    assert.equal(await statusWithHost(open.appliance.httpAddress.port, path, 'evil.example'), 401, path);
  }
  const closed = await startAppliance({ defaultRegion: false, auth: { readAccess: 'token' } });
  t.after(() => closed.appliance.stop());
  for (const path of ['/v1/regions', '/v1/stats', '/metrics', '/']) {
    const answer = await closed.callAs(undefined, 'GET', path);
    assert.equal(answer.status, 401, path);
    assert.equal(answer.json.error.code, ErrorCodes.UNAUTHORIZED);
    assert.equal((await closed.call('GET', path)).status, 200, `${path} with the admin token`);
  }
  await assert.rejects(
    Appliance.start({ http: { port: 0 }, nbd: { port: 0 }, auth: { readAccess: 'no' as 'open' } }),
    {
      code: ErrorCodes.INVALID_ARGUMENT,
    },
  );
});

test('an appliance on another loopback address (127.0.0.2) is local: no warning, reads open', async (t) => {
  const { appliance, callAs } = await startAppliance({ http: { host: '127.0.0.2', port: 0 } });
  t.after(() => appliance.stop());
  assert.deepEqual(appliance.warnings, []);
  assert.match(appliance.httpUrl, /^http:\/\/127\.0\.0\.2:\d+$/);
  const response = await fetch(`${appliance.httpUrl}/v1/regions`);
  assert.equal(response.status, 200);
  assert.ok(callAs);
});

test('loopback, anonymous reads and start-up warnings, decided by address', () => {
  for (const host of [
    '127.0.0.1',
    '127.0.0.2',
    '127.255.255.254',
    '::1',
    '[::1]',
    '::ffff:127.0.0.1',
    'localhost',
  ])
    assert.equal(isLoopback(host), true, host);
  for (const host of [
    '0.0.0.0',
    '::',
    '',
    '10.0.0.1',
    '192.168.1.5',
    '::ffff:10.0.0.1',
    'fe80::1',
    'example.com',
    '128.0.0.1',
  ])
    assert.equal(isLoopback(host), false, host);
  assert.equal(isLoopback(undefined), false);
  assert.equal(anonymousReadAllowed('open', '127.0.0.1', '127.0.0.1:10880'), true);
  assert.equal(anonymousReadAllowed('open', '::ffff:127.0.0.1', 'localhost:10880'), true);
  assert.equal(anonymousReadAllowed('open', '::1', '[::1]:10880'), true);
  assert.equal(anonymousReadAllowed('open', '127.0.0.1', '127.0.0.2'), true);
  assert.equal(
    anonymousReadAllowed('open', '10.1.2.3', '127.0.0.1:10880'),
    false,
    'remote clients need a token',
  );
  assert.equal(anonymousReadAllowed('open', '127.0.0.1', 'evil.example:10880'), false, 'DNS rebinding');
  assert.equal(anonymousReadAllowed('open', '127.0.0.1', '10.0.0.2:10880'), false);
  assert.equal(anonymousReadAllowed('open', '127.0.0.1', undefined), false);
  assert.equal(anonymousReadAllowed('token', '127.0.0.1', '127.0.0.1'), false);
  assert.equal(anonymousReadAllowed('open', undefined, '127.0.0.1'), false);

  assert.deepEqual(
    exposureWarnings({ http: { host: '127.0.0.1', tls: false }, nbd: { host: '::1', tls: 'off' } }),
    [],
  );
  const wide = exposureWarnings({
    http: { host: '0.0.0.0', tls: false },
    nbd: { host: '10.0.0.1', tls: 'off' },
  });
  assert.equal(wide.length, 2);
  assert.match(wide[0]!, /admin API listens on 0\.0\.0\.0.*without TLS.*--http-tls-cert/);
  assert.match(wide[1]!, /NBD listens on 10\.0\.0\.1.*without TLS/);
  assert.deepEqual(
    exposureWarnings({ http: { host: '0.0.0.0', tls: true }, nbd: { host: '0.0.0.0', tls: 'require' } }),
    [],
  );
  // Property: a warning about the admin API exactly when it is remote and plain.
  fc.assert(
    fc.property(fc.ipV4(), fc.boolean(), (host, tls) => {
      const warned = exposureWarnings({ http: { host, tls } }).length === 1;
      return warned === (!tls && !host.startsWith('127.'));
    }),
  );
});

test('the admin token file: created with mode 0600 in the data dir, reused after a restart', async (t) => {
  const dataDir = tempDir(t);
  const options = { memory: '16MiB', nbd: { port: 0 }, http: { port: 0 }, dataDir };
  const first = await Appliance.start(options);
  const file = join(dataDir, 'admin.token');
  assert.equal(first.adminTokenFile, file);
  assert.equal(statSync(file).mode & 0o777, 0o600);
  assert.equal(readFileSync(file, 'utf8').trim(), first.adminToken);
  assert.match(first.adminToken, /^[A-Za-z0-9_-]{43}$/, '32 random bytes, base64url');
  await first.stop();
  const second = await Appliance.start(options);
  t.after(() => second.stop());
  assert.equal(second.adminToken, first.adminToken);
  // Without a data dir or file, each appliance has its own token, in memory.
  const bare = await Appliance.start({ memory: '16MiB', nbd: { port: 0 }, http: { port: 0 } });
  t.after(() => bare.stop());
  assert.equal(bare.adminTokenFile, undefined);
  assert.notEqual(bare.adminToken, first.adminToken);
});

test('token files: concurrent creators agree on one complete token; bad files are refused', async (t) => {
  const dir = tempDir(t);
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 2, max: 12 }), async (creators) => {
      const path = join(dir, `t-${creators}-${Math.random().toString(36).slice(2)}`, 'admin.token');
      const made = await Promise.all(Array.from({ length: creators }, () => loadOrCreateTokenFile(path)));
      assert.equal(new Set(made.map((m) => m.token)).size, 1);
      assert.equal(made.filter((m) => m.created).length, 1, 'exactly one creator');
      assert.equal(readFileSync(path, 'utf8'), `${made[0]!.token}\n`);
      assert.equal(statSync(path).mode & 0o777, 0o600);
      assert.equal(statSync(join(path, '..')).mode & 0o777, 0o700);
    }),
    { numRuns: 20 },
  );
  const weak = join(dir, 'weak.token');
  writeFileSync(weak, 'short\n', { mode: 0o600 });
  await assert.rejects(loadOrCreateTokenFile(weak), { code: ErrorCodes.INVALID_ARGUMENT });
  const loose = join(dir, 'loose.token');
  writeFileSync(loose, `${generateToken()}\n`, { mode: 0o644 });
  assert.equal((await loadOrCreateTokenFile(loose)).looseMode, 0o644);
});

test('tenant tokens: a file of tenant to token, checked', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'tenants.json');
  writeFileSync(file, JSON.stringify({ a: TOKEN_A, b: TOKEN_B }), { mode: 0o600 });
  const read = await readTenantTokens(file);
  assert.deepEqual(
    [...read!.tokens],
    [
      ['a', TOKEN_A],
      ['b', TOKEN_B],
    ],
  );
  assert.equal(await readTenantTokens(join(dir, 'none.json'), true), undefined);
  writeFileSync(file, '{ not json');
  await assert.rejects(readTenantTokens(file), { code: ErrorCodes.CORRUPT_FILE });
  for (const bad of [
    [],
    'x',
    { a: 'short' },
    { 'bad tenant': TOKEN_A },
    { a: TOKEN_A, b: TOKEN_A },
    { a: 7 },
  ]) {
    assert.throws(
      () => tenantTokenMap(bad, 'test'),
      (error: unknown) => error instanceof MemfabricError && error.code === ErrorCodes.INVALID_ARGUMENT,
      JSON.stringify(bad),
    );
  }
  // The data dir's tenants.json is read at start; a tenant token equal to the admin token is refused.
  const dataDir = tempDir(t);
  writeFileSync(join(dataDir, 'tenants.json'), JSON.stringify({ a: TOKEN_A }), { mode: 0o600 });
  const appliance = await Appliance.start({ memory: '16MiB', nbd: { port: 0 }, http: { port: 0 }, dataDir });
  t.after(() => appliance.stop());
  const listed = await fetch(`${appliance.httpUrl}/v1/regions`, {
    headers: { authorization: `Bearer ${TOKEN_A}` },
  });
  assert.equal(listed.status, 200);
  assert.deepEqual(
    ((await listed.json()) as { regions: unknown[] }).regions,
    [],
    'tenant a owns no region yet',
  );
  await assert.rejects(
    Appliance.start({
      memory: '16MiB',
      nbd: { port: 0 },
      http: { port: 0 },
      auth: { token: TOKEN_A, tenantTokens: { a: TOKEN_A } },
    }),
    { code: ErrorCodes.INVALID_ARGUMENT },
  );
});

test('migration: needs the admin token at the source and forwards the target token', async (t) => {
  const a = await startAppliance({
    defaultRegion: false,
    merge: false,
    auth: { tenantTokens: { a: TOKEN_A } },
  });
  const b = await startAppliance({ defaultRegion: false, merge: false });
  t.after(() => Promise.all([a.appliance.stop(), b.appliance.stop()]));
  await a.appliance.registry.create({ name: 'vm', size: MiB, tenant: 'a' });
  a.appliance.registry.require('vm').write(0, Buffer.alloc(4096, 7));
  const target = b.appliance.httpUrl;
  // A tenant may not send its region to an appliance of its choosing.
  assert.equal((await a.callAs(TOKEN_A, 'POST', '/v1/regions/vm/migrate', { target })).status, 403);
  // Without the target's token the target refuses; the region stays and nothing is left on B.
  const refused = await a.call('POST', '/v1/regions/vm/migrate', { target });
  assert.equal(refused.status, 202);
  const failed = await settled(a.call, 'vm');
  assert.equal(failed.state, 'failed');
  assert.equal(failed.error.code, ErrorCodes.UNAUTHORIZED);
  assert.ok(a.appliance.registry.find('vm'));
  assert.equal(b.appliance.registry.find('vm'), undefined);
  // With it, the region moves; the token never shows in the status.
  const started = await a.call('POST', '/v1/regions/vm/migrate', {
    target,
    targetToken: b.appliance.adminToken,
  });
  assert.equal(started.status, 202);
  assert.ok(!started.text.includes(b.appliance.adminToken));
  const done = await settled(a.call, 'vm');
  assert.equal(done.state, 'done', JSON.stringify(done));
  assert.ok(!JSON.stringify(done).includes(b.appliance.adminToken));
  assert.equal(b.appliance.registry.require('vm').tenant, 'a');
});

/** GET `path` with a Host header of our choosing (fetch may not set Host). */
function statusWithHost(port: number, path: string, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const request = httpRequest({ host: '127.0.0.1', port, path, headers: { host } }, (response) => {
      response.resume();
      response.on('end', () => resolve(response.statusCode ?? 0));
    });
    request.on('error', reject);
    request.end();
  });
}

/** Polls a migration's status until it is done or failed (bounded by polls, not time). */
async function settled(
  call: (method: string, path: string) => Promise<{ json: { state: string; error: { code: string } } }>,
  name: string,
): Promise<{ state: string; error: { code: string } }> {
  for (let poll = 0; poll < 5000; poll++) {
    const { json } = await call('GET', `/v1/regions/${name}/migration`);
    if (json.state === 'done' || json.state === 'failed') return json;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  throw new Error(`the migration of ${name} did not settle`);
}

test("resolveRegion sends a token only where it was given for (never the first appliance's to the next)", async (t) => {
  const { appliance } = await startAppliance({ defaultRegion: false, merge: false });
  t.after(() => appliance.stop());
  // The appliance the region "moved to": records the Authorization header of every request.
  const seen: Array<string | undefined> = [];
  const next = createServer((request, response) => {
    seen.push(request.headers.authorization);
    response.setHeader('content-type', 'application/json');
    response.end(
      request.url === '/v1/stats'
        ? JSON.stringify({ endpoints: { nbd: { host: '127.0.0.1', port: 1 } } })
        : '{}',
    );
  });
  await new Promise<void>((resolve) => next.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => next.close(() => resolve())));
  const nextUrl = `http://127.0.0.1:${(next.address() as { port: number }).port}`;
  const region = await appliance.registry.create({ name: 'gone', size: MiB });
  await appliance.registry.markMoved(region, {
    appliance: nextUrl,
    region: 'here',
    nbd: { host: '127.0.0.1', port: 1 },
  });
  const first = { url: appliance.httpUrl, token: appliance.adminToken };
  const where = await resolveRegion(first, 'gone');
  assert.equal(where.appliance, nextUrl);
  assert.deepEqual(seen, [undefined, undefined], "the first appliance's token stays with it");
  seen.length = 0;
  const nextToken = generateToken();
  await resolveRegion(first, 'gone', { targetFor: (url) => ({ url, token: nextToken }) });
  assert.deepEqual(seen, [`Bearer ${nextToken}`, `Bearer ${nextToken}`]);
});
