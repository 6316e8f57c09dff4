/**
 * The admin API over HTTPS with a self-signed certificate made at test time by the openssl
 * CLI: the admin client, the Fabric, the CLI and a migration's calls to its target all speak
 * it when given the CA, and refuse an untrusted certificate with a message that says what to do.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { adminRequest } from '../../src/appliance/admin-client.js';
import type { Appliance } from '../../src/appliance/index.js';
import { Fabric } from '../../src/fabric/index.js';
import { ErrorCodes, MemfabricError } from '../../src/index.js';
import { makeSelfSigned } from '../nbd/tls-credentials.js';
import { startAppliance } from './harness.js';
import { memfabricCommand } from '../support/cli.js';

const MiB = 1024 * 1024;
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = memfabricCommand();

let dir = '';
let certFile = '';
let cert: Buffer;
let key: Buffer;

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'memfabric-https-'));
  // A self-signed certificate is its own CA; it names 127.0.0.1, where the appliances listen.
  const made = makeSelfSigned(dir, 'memfabric test appliance', 'IP:127.0.0.1,DNS:localhost');
  certFile = made.certFile;
  const keyFile = made.keyFile;
  cert = readFileSync(certFile);
  key = readFileSync(keyFile);
});
after(() => rmSync(dir, { recursive: true, force: true }));

function secure(options: Parameters<typeof Appliance.start>[0] = {}) {
  return startAppliance({ defaultRegion: false, merge: false, httpTls: { cert, key }, ...options });
}

test('the admin client speaks HTTPS with the CA, and says why without it', async (t) => {
  const { appliance } = await secure();
  t.after(() => appliance.stop());
  assert.match(appliance.httpUrl, /^https:\/\/127\.0\.0\.1:\d+$/);
  const target = { url: appliance.httpUrl, token: appliance.adminToken, ca: cert };
  const created = await adminRequest<{ name: string }>(target, 'POST', '/v1/regions', {
    name: 's',
    size: MiB,
  });
  assert.equal(created.name, 's');
  await assert.rejects(
    adminRequest({ url: appliance.httpUrl, token: appliance.adminToken }, 'GET', '/v1/regions'),
    (error: unknown) => {
      assert.ok(error instanceof MemfabricError);
      assert.equal(error.code, ErrorCodes.CONNECTION_CLOSED);
      assert.match(error.message, /certificate .* is not trusted.*--ca FILE/);
      return true;
    },
  );
  // Plain HTTP to the HTTPS port gets nowhere (and the appliance keeps serving).
  await assert.rejects(
    adminRequest(appliance.httpUrl.replace('https:', 'http:'), 'GET', '/v1/regions', undefined, 5000),
    { code: ErrorCodes.CONNECTION_CLOSED },
  );
  // Without the token, over HTTPS too: 401.
  await assert.rejects(adminRequest({ url: appliance.httpUrl, ca: cert }, 'DELETE', '/v1/regions/s'), {
    code: ErrorCodes.UNAUTHORIZED,
  });
  assert.ok(appliance.registry.find('s'));
});

test('a Fabric on HTTPS appliances: { url, token, ca } entries', async (t) => {
  const started = await Promise.all([secure(), secure()]);
  t.after(() => Promise.all(started.map(({ appliance }) => appliance.stop())));
  const fabric = new Fabric({
    appliances: started.map(({ appliance }) => ({ url: appliance.httpUrl, token: appliance.adminToken })),
    ca: cert,
  });
  const region = await fabric.allocate({ size: MiB, redundancy: { copies: 2 } });
  await region.write(4096, Buffer.from('over https'));
  assert.equal((await region.read(4096, 10)).toString(), 'over https');
  for (const { appliance } of started) assert.equal(appliance.registry.all().length, 1);
  await fabric.close();
});

test('the CLI over HTTPS: --ca trusts the certificate, without it the CLI says what to do', async (t) => {
  const { appliance } = await secure();
  t.after(() => appliance.stop());
  const cli = (args: string[], env: Record<string, string>) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(
        process.execPath,
        [...CLI, ...args, '--appliance', appliance.httpUrl],
        {
          cwd: ROOT,
          timeout: 60_000,
          env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
        },
        (error, stdout, stderr) =>
          resolve({
            code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1,
            stdout,
            stderr,
          }),
      );
    });
  const token = { MEMFABRIC_TOKEN: appliance.adminToken };
  const made = await cli(['region', 'create', 'c1', '--size', '2MiB', '--ca', certFile], token);
  assert.equal(made.code, 0, made.stderr);
  const viaEnv = await cli(['region', 'ls', '--json'], { ...token, MEMFABRIC_CA: certFile });
  assert.deepEqual(
    JSON.parse(viaEnv.stdout).map((r: { name: string }) => r.name),
    ['c1'],
  );
  const untrusted = await cli(['region', 'ls'], token);
  assert.equal(untrusted.code, 2);
  assert.match(untrusted.stderr, /not trusted.*--ca FILE.*MF_CONNECTION_CLOSED/);
});

test("a migration to an HTTPS appliance: the source trusts the target's CA and sends its token", async (t) => {
  const a = await startAppliance({ defaultRegion: false, merge: false, peerCa: cert });
  const b = await secure();
  t.after(() => Promise.all([a.appliance.stop(), b.appliance.stop()]));
  const region = await a.appliance.registry.create({ name: 'vm', size: MiB });
  region.write(0, Buffer.alloc(8192, 0x5a));
  const started = await a.call('POST', '/v1/regions/vm/migrate', {
    target: b.appliance.httpUrl,
    targetToken: b.appliance.adminToken,
  });
  assert.equal(started.status, 202, started.text);
  let status = started.json;
  for (let poll = 0; poll < 5000 && status.state !== 'done' && status.state !== 'failed'; poll++) {
    await new Promise((resolve) => setTimeout(resolve, 5));
    status = (await a.call('GET', '/v1/regions/vm/migration')).json;
  }
  assert.equal(status.state, 'done', JSON.stringify(status));
  const moved = Buffer.alloc(8192);
  b.appliance.registry.require('vm').read(0, moved);
  assert.ok(moved.every((byte) => byte === 0x5a));
});
