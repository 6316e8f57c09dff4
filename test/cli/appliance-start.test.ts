/**
 * `memfabric appliance` refusing to start: a one-line message that says what to do (no stack
 * trace), exit status 2, and an error-level log line with the code for whoever collects logs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Appliance } from '../../src/index.js';
import { memfabricCommand } from '../support/cli.js';

const run = promisify(execFile);
const source = memfabricCommand();

async function refusedStart(args: string[]): Promise<{ stderr: string; stdout: string }> {
  try {
    await run(process.execPath, [...source, 'appliance', '--memory', '16MiB', ...args], { timeout: 60_000 });
  } catch (error) {
    const failed = error as { code: number; stderr: string; stdout: string };
    assert.equal(failed.code, 2, failed.stderr);
    return failed;
  }
  assert.fail('the appliance started');
}

function errorLines(stdout: string): { msg: string; error: { code: string; message: string } }[] {
  return stdout
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line))
    .filter((line) => line.level === 50);
}

test('a busy port: MF_LISTEN_FAILED in one line naming the flag, and an error log line', async (t) => {
  const running = await Appliance.start({ memory: '4MiB', nbd: { port: 0 }, http: { port: 0 } });
  t.after(() => running.stop());
  const { stderr, stdout } = await refusedStart([
    '--nbd',
    `127.0.0.1:${running.nbdAddress.port}`,
    '--http',
    '127.0.0.1:0',
  ]);
  assert.match(
    stderr,
    /cannot listen for NBD on 127\.0\.0\.1:\d+: the address is in use.*--nbd HOST:PORT.*MF_LISTEN_FAILED/,
  );
  assert.doesNotMatch(stderr, /^\s+at /m, 'no stack trace');
  const [line] = errorLines(stdout);
  assert.equal(line?.msg, 'appliance failed to start');
  assert.equal(line?.error.code, 'MF_LISTEN_FAILED');
});

test('a corrupt file in the data directory: the same, with MF_CORRUPT_FILE', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'memfabric-start-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'names.json'), 'not json');
  const { stderr, stdout } = await refusedStart([
    '--nbd',
    '127.0.0.1:0',
    '--http',
    '127.0.0.1:0',
    '--data-dir',
    dir,
  ]);
  assert.match(stderr, /names table .*names\.json is not JSON; restore it from a backup.*MF_CORRUPT_FILE/);
  assert.doesNotMatch(stderr, /^\s+at /m);
  assert.equal(errorLines(stdout)[0]?.error.code, 'MF_CORRUPT_FILE');
});
