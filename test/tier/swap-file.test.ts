/**
 * The lifetime of the pager's swap file (issue 12, point 8). The default one is temporary: it
 * is unlinked as soon as it is open, so a process that never closes its pager, or is killed,
 * leaves nothing in the temp directory. A swap file the user named stays, as asked. Each case
 * runs a real child process (fixtures/swap-file-child.ts) with TMPDIR pointed at a fresh
 * directory (where tsx, which runs the child, keeps its cache: that entry is not ours). A swap
 * directory that does not exist is MF_BAD_PATH naming it.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import { Pager } from '../../src/tier/pager.js';

const CHILD = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'swap-file-child.ts');
const CHILD_MS = 60_000;

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'memfabric-swap-file-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** What the pager left in `dir`: everything but tsx's cache. */
function leftIn(dir: string): string[] {
  return readdirSync(dir).filter((name) => !name.startsWith('tsx-'));
}

/** Runs the child until it printed "ready" and then ended (by itself, or by SIGKILL). */
async function runChild(t: TestContext, env: NodeJS.ProcessEnv, args: string[]): Promise<void> {
  const kill = args[1] === 'wait';
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let stdout = '';
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  let timer: NodeJS.Timeout | undefined;
  const ended = await new Promise<{ code: number | null; signal: NodeJS.Signals | null } | 'late'>(
    (resolve) => {
      timer = setTimeout(() => resolve('late'), CHILD_MS);
      child.stdout.setEncoding('utf8').on('data', (text: string) => {
        stdout += text;
        if (kill && stdout.includes('ready\n')) process.kill(child.pid!, 'SIGKILL');
      });
      child.once('exit', (code, signal) => resolve({ code, signal }));
    },
  );
  clearTimeout(timer);
  assert.notEqual(ended, 'late', `the child did not end within ${CHILD_MS} ms:\n${stderr}`);
  assert.ok(stdout.includes('ready\n'), `the child never got ready:\n${stderr}`);
  if (ended !== 'late') {
    if (kill) assert.equal(ended.signal, 'SIGKILL');
    else assert.equal(ended.code, 0, stderr);
  }
}

test('the default swap file does not outlive a process that exits without closing its pager', async (t) => {
  const dir = tempDir(t);
  await runChild(t, { TMPDIR: dir }, ['default', 'exit']);
  assert.deepEqual(leftIn(dir), []);
});

test('the default swap file does not outlive a process killed with SIGKILL', async (t) => {
  const dir = tempDir(t);
  await runChild(t, { TMPDIR: dir }, ['default', 'wait']);
  assert.deepEqual(leftIn(dir), []);
});

test('a swap file the user named stays after the process, as asked', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'mine.swap');
  await runChild(t, { TMPDIR: tempDir(t) }, ['named', 'exit', path]);
  assert.ok(existsSync(path));
});

test('a swap directory that does not exist is BAD_PATH naming it, from Pager.open', async (t) => {
  // The default is the same spec with directory: tmpdir(). (Pointing TMPDIR at a missing
  // directory in-process would not test it: tsx, which runs the pager's worker in tests,
  // creates its cache directory inside TMPDIR first.)
  const missing = join(tempDir(t), 'gone');
  await assert.rejects(
    Pager.open({ budget: '256KiB', store: { kind: 'file', directory: missing } }),
    (error: unknown) => {
      assert.ok(error instanceof MemfabricError, String(error));
      assert.equal(error.code, ErrorCodes.BAD_PATH, error.message);
      assert.ok(error.message.includes(`swap directory ${missing} does not exist`), error.message);
      assert.equal((error.cause as { code?: string } | undefined)?.code, 'ENOENT');
      return true;
    },
  );
});
