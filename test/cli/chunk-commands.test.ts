/**
 * `memfabric region chunk claim|release|ls` against a real in-process appliance. The commands
 * are registered on a fresh commander program here exactly as src/cli/main.ts registers them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Command } from 'commander';
import { Appliance } from '../../src/appliance/index.js';
import { registerChunkCommands } from '../../src/cli/chunk-commands.js';
import { ErrorCodes, MemfabricError } from '../../src/index.js';

test('region chunk claim / ls / release drive a real appliance', async (t) => {
  const appliance = await Appliance.start({
    memory: '16MiB',
    nbd: { port: 0 },
    http: { port: 0 },
    merge: false,
  });
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'pool', size: '4MiB' });
  const url = `http://127.0.0.1:${appliance.httpAddress.port}`;
  const printed: string[] = [];
  t.mock.method(console, 'log', (line: string) => printed.push(line));
  const cli = async (...args: string[]) => {
    const program = new Command().exitOverride().configureOutput({ writeErr: () => undefined });
    const region = program.command('region');
    registerChunkCommands(region, (command) =>
      command
        .option('--appliance <url>', 'admin API', url)
        .option('--token <token>', 'token', appliance.adminToken),
    );
    printed.length = 0;
    await program.parseAsync(['region', 'chunk', ...args], { from: 'user' });
    return printed.join('\n');
  };

  assert.match(await cli('ls', 'pool'), /not sub-allocated/);
  assert.equal(
    await cli('claim', 'pool', '--owner', 'job-1', '--size', '1536KiB', '--chunk-size', '512KiB'),
    'claimed offset 0, 1.5 MiB of pool for job-1',
  );
  const json = JSON.parse(await cli('claim', 'pool', '--owner', 'job-2', '--count', '2', '--json'));
  assert.deepEqual(json, {
    region: 'pool',
    offset: 1536 * 1024,
    length: 1024 * 1024,
    owner: 'job-2',
    chunkSize: 512 * 1024,
  });
  const table = await cli('ls', 'pool');
  assert.match(table, /8 chunks of 512 KiB, 5 used, 3 free \(longest free run 3\), 2 allocations, 2 owners/);
  assert.match(table, /^0\s+1.5 MiB\s+job-1$/m);
  assert.match(table, /^1572864\s+1 MiB\s+job-2$/m);
  const mine = JSON.parse(await cli('ls', 'pool', '--owner', 'job-2', '--json'));
  assert.equal(mine.allocations.length, 1);

  await assert.rejects(cli('release', 'pool', '0', '--owner', 'job-2'), (error: unknown) => {
    assert.ok(error instanceof MemfabricError);
    assert.equal(error.code, ErrorCodes.CONFLICT);
    return true;
  });
  await assert.rejects(cli('claim', 'pool', '--owner', 'job-3', '--count', '4'), (error: unknown) => {
    assert.equal((error as MemfabricError).code, ErrorCodes.CHUNKS_EXHAUSTED);
    return true;
  });
  await assert.rejects(cli('release', 'pool', 'zero', '--owner', 'job-1'), /byte offset/);
  assert.equal(await cli('release', 'pool', '0', '--owner', 'job-1'), 'released offset 0 of pool');
  assert.equal(await cli('release', 'pool', '1572864', '--force'), 'released offset 1572864 of pool');
  assert.match(await cli('ls', 'pool'), /0 used, 8 free/);
});
