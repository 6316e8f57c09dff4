import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { memfabricCommand } from '../support/cli.js';

const run = promisify(execFile);
// The tree under test, never a possibly stale dist/ (test/support/cli.ts).
const source = memfabricCommand();

test('memfabric demo forks, merges and reports savings as a real process', async () => {
  const { stdout } = await run(process.execPath, [...source, 'demo', '--clones', '4', '--size', '4MiB'], {
    timeout: 60_000,
  });
  const frames = (label: RegExp) => Number(label.exec(stdout)?.[1]);
  const forked = frames(/still (\d+) frames/);
  const rewritten = frames(/rewrote a quarter of its pages: (\d+) frames/);
  const merged = frames(/merge pass 2: (\d+) frames/);
  assert.equal(forked, 1024);
  assert.equal(rewritten, 1024 + 4 * 256);
  assert.ok(merged <= 1024 + 256, `merging left ${merged} frames`);
  assert.match(stdout, /clone 0 reads 1, clone 1 reads 0/);
  assert.match(stdout, /destroyed everything: 0 frames in use/);
});

test('memfabric rejects a bad option with a message and a non-zero exit', async () => {
  await assert.rejects(
    run(process.execPath, [...source, 'demo', '--size', 'huge'], { timeout: 60_000 }),
    (error: unknown) => {
      const failure = error as { code: number; stderr: string };
      assert.notEqual(failure.code, 0);
      assert.match(failure.stderr, /not a size/);
      return true;
    },
  );
});
