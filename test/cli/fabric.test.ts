/**
 * `memfabric fabric ls|open|rebuild|rm` against real appliances (in-process, real sockets): a
 * region allocated by a library client and detached is listed, reopened, rebuilt after an
 * appliance stops, and deleted by name from the command line.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Appliance } from '../../src/index.js';
import { Fabric, type ExternalRegion } from '../../src/fabric/index.js';
import { TEST_TOKEN, testAuth } from '../appliance/harness.js';
import { seededBytes } from '../fabric/seeded-bytes.js';
import { memfabricCommand } from '../support/cli.js';

const run = promisify(execFile);
// The tree under test, never a possibly stale dist/ (test/support/cli.ts).
const source = memfabricCommand();
const MiB = 1024 * 1024;

test('fabric ls / open / rebuild / rm find a region by the descriptors its shards carry', async (t) => {
  const appliances = await Promise.all(
    Array.from({ length: 4 }, () =>
      Appliance.start({
        memory: '32MiB',
        nbd: { port: 0 },
        http: { port: 0 },
        defaultRegion: false,
        merge: false,
        auth: testAuth,
      }),
    ),
  );
  t.after(() => Promise.all(appliances.map((a) => a.stop())));
  const urls = appliances.map((a) => `http://127.0.0.1:${a.httpAddress.port}`);
  const cli = (...args: string[]) =>
    run(process.execPath, [...source, 'fabric', ...args], {
      timeout: 60_000,
      env: { ...process.env, MEMFABRIC_TOKEN: TEST_TOKEN, MEMFABRIC_APPLIANCES: urls.join(',') },
    });

  const fabric = new Fabric({ appliances: urls.slice(0, 3), token: TEST_TOKEN });
  const region = (await fabric.allocate({
    size: 2 * MiB,
    redundancy: { data: 2, parity: 1 },
    name: 'cli-region',
  })) as ExternalRegion;
  await region.write(0, seededBytes(3, 2 * MiB));
  const holders = region.health().shards.map((s) => s.appliance);
  await region.detach();

  const listed = await cli('ls');
  assert.match(
    listed.stdout,
    /cli-region\s+default\s+2 MiB\s+Reed–Solomon 2\+1\s+1\s+ready\s+3\/3 live, 3 found/,
  );
  const json = JSON.parse((await cli('ls', '--json')).stdout) as Array<{ name: string; generation: number }>;
  assert.deepEqual(
    json.map((r) => [r.name, r.generation]),
    [['cli-region', 1]],
  );

  const opened = await cli('open', 'cli-region');
  assert.match(opened.stdout, /generation 1, healthy/);

  // Stop the appliance of shard 1: the CLI reopens the region degraded, rebuilds it onto the
  // fourth appliance, and the bytes survive.
  await appliances[urls.indexOf(holders[1]!)]!.stop();
  const rebuilt = await cli('rebuild', 'cli-region');
  assert.match(rebuilt.stdout, /rebuilt 1 shard\(s\) of cli-region/);
  assert.match(rebuilt.stdout, /healthy/);
  const after = await new Fabric({ appliances: urls, token: TEST_TOKEN }).open('cli-region');
  assert.equal(after.health().shards[1]!.appliance, urls[3]);
  assert.ok((await after.read(0, 2 * MiB)).equals(seededBytes(3, 2 * MiB)));
  // Open elsewhere: rm refuses without --force.
  await assert.rejects(cli('rm', 'cli-region'), (error: { code: number; stderr: string }) => {
    assert.equal(error.code, 2);
    assert.match(error.stderr, /open elsewhere.*MF_BUSY/s);
    return true;
  });
  await after.detach();

  const removed = await cli('rm', 'cli-region');
  assert.match(removed.stdout, /deleted cli-region: 3 shard\(s\)/);
  assert.equal((await cli('ls')).stdout.trim().split('\n').length, 1, 'only the header is left');
  await assert.rejects(cli('open', 'cli-region'), (error: { code: number; stderr: string }) => {
    assert.equal(error.code, 2);
    assert.match(error.stderr, /no fabric region named cli-region.*MF_NOT_FOUND/s);
    return true;
  });
  await assert.rejects(
    run(process.execPath, [...source, 'fabric', 'ls'], { env: { ...process.env, MEMFABRIC_APPLIANCES: '' } }),
    (error: { code: number; stderr: string }) => {
      assert.match(error.stderr, /--appliances/);
      return true;
    },
  );
});
