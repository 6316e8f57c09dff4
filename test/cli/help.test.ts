/**
 * What `--help` shows a person: default sizes as sizes ("1 GiB"), never as byte counts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { memfabricCommand } from '../support/cli.js';

const run = promisify(execFile);
const source = memfabricCommand();

async function help(...command: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, [...source, ...command, '--help'], { timeout: 60_000 });
  // Commander wraps long lines; join them so a default is one phrase.
  return stdout.replace(/\s+/g, ' ');
}

test('--help shows default sizes as sizes, not byte counts', async () => {
  const appliance = await help('appliance');
  assert.match(appliance, /--memory <size> memory budget for all regions \(default: 1 GiB\)/);
  assert.match(appliance, /--page-size <bytes> .*?\(default: 4 KiB\)/);
  assert.match(await help('demo'), /--size <size> size of the parent space \(default: 16 MiB\)/);
  assert.match(await help('heap', 'create'), /--page-size <bytes> .*?\(default: 4 KiB\)/);
  for (const text of [appliance, await help('demo'), await help('heap', 'create')]) {
    assert.doesNotMatch(text, /default: \d{4,}\)/, 'no default printed as a byte count');
  }
});
