import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Appliance } from '../../src/index.js';
import { memfabricCommand } from '../support/cli.js';

const run = promisify(execFile);
// The tree under test, never a possibly stale dist/ (test/support/cli.ts).
const source = memfabricCommand();

test('region create / clone / ls / rm and stats drive a real appliance', async (t) => {
  const appliance = await Appliance.start({ memory: '16MiB', nbd: { port: 0 }, http: { port: 0 } });
  t.after(() => appliance.stop());
  const url = `http://127.0.0.1:${appliance.httpAddress.port}`;
  const cli = (...args: string[]) =>
    run(process.execPath, [...source, ...args, '--appliance', url], {
      timeout: 60_000,
      env: { ...process.env, MEMFABRIC_TOKEN: appliance.adminToken },
    });

  const created = await cli('region', 'create', 'vm1', '--size', '2GiB', '--tenant', 'blue');
  assert.match(created.stdout, /vm1\s+2 GiB\s+blue/);
  assert.equal(appliance.registry.require('vm1').size, 2 * 1024 ** 3);
  await cli('region', 'clone', 'vm1', 'vm1-ro', '--read-only');
  assert.equal(appliance.registry.require('vm1-ro').readOnly, true);
  const listed = JSON.parse((await cli('region', 'ls', '--json')).stdout) as Array<{ name: string }>;
  assert.deepEqual(
    listed.map((r) => r.name),
    ['default', 'vm1', 'vm1-ro'],
  );
  await cli('region', 'rm', 'vm1-ro');
  assert.equal(appliance.registry.find('vm1-ro'), undefined);
  const stats = JSON.parse((await cli('stats', '--json')).stdout) as {
    regions: number;
    memory: { capacityBytes: number };
  };
  assert.equal(stats.regions, 2);
  assert.equal(stats.memory.capacityBytes, 16 * 1024 * 1024);
  // For people: sizes and counts, one line per subject.
  const human = (await cli('stats')).stdout;
  assert.match(human, /^memory +\d[\d.]* \S+ used of 16 MiB \(\d+\.\d%\), [\d.]+ \S+ free$/m);
  assert.match(human, /^regions +2 serving$/m);
  assert.match(
    human,
    new RegExp(
      `^endpoints +nbd 127.0.0.1:${appliance.nbdAddress.port}, admin 127.0.0.1:${appliance.httpAddress.port}$`,
      'm',
    ),
  );
  assert.match(human, /^traffic +\d+ requests: /m);

  // A size the appliance refuses is explained by field, not as schema text.
  await assert.rejects(
    cli('region', 'create', 'zero', '--size', '0'),
    (error: { code: number; stderr: string }) => {
      assert.equal(error.code, 2);
      assert.match(
        error.stderr,
        /field 'size' must be a size: a whole number of bytes, 1 or more.*MF_BAD_REQUEST/,
      );
      return true;
    },
  );

  // The appliance may be named HOST:PORT, and by MEMFABRIC_APPLIANCE.
  const bare = await run(
    process.execPath,
    [...source, 'region', 'ls', '--json', '--appliance', url.replace('http://', '')],
    {
      timeout: 60_000,
      env: { ...process.env, MEMFABRIC_TOKEN: appliance.adminToken },
    },
  );
  assert.equal(JSON.parse(bare.stdout).length, 2);
  const fromEnv = await run(process.execPath, [...source, 'region', 'ls', '--json'], {
    timeout: 60_000,
    env: { ...process.env, MEMFABRIC_TOKEN: appliance.adminToken, MEMFABRIC_APPLIANCE: url },
  });
  assert.equal(JSON.parse(fromEnv.stdout).length, 2);

  await assert.rejects(
    cli('region', 'create', 'vm1', '--size', '1GiB'),
    (error: { code: number; stderr: string }) => {
      assert.equal(error.code, 2);
      assert.match(error.stderr, /already exists.*MF_ALREADY_EXISTS/);
      return true;
    },
  );
});

test('the region commands say clearly when no appliance answers', async () => {
  await assert.rejects(
    run(process.execPath, [...source, 'region', 'ls', '--appliance', 'http://127.0.0.1:9'], {
      timeout: 60_000,
    }),
    (error: { code: number; stderr: string }) => {
      assert.equal(error.code, 2);
      assert.match(error.stderr, /cannot reach the appliance at http:\/\/127.0.0.1:9.*MF_CONNECTION_CLOSED/);
      return true;
    },
  );
});

test('an appliance URL that cannot be one is refused before any call, saying how to write it', async () => {
  for (const [value, message] of [
    ['127.0.0.1', /has no port: the appliance's admin API listens on 10880/],
    ['ftp://127.0.0.1:10880', /must be an http:\/\/ or https:\/\/ URL/],
    ['http://[::1', /is not an admin URL: write http:\/\/HOST:PORT/],
  ] as const) {
    await assert.rejects(
      run(process.execPath, [...source, 'region', 'ls', '--appliance', value], { timeout: 60_000 }),
      (error: { code: number; stderr: string }) => {
        assert.notEqual(error.code, 0);
        assert.match(error.stderr, message);
        return true;
      },
    );
  }
});
