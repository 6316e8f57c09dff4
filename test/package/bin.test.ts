/**
 * bin/memfabric.js picks what to run from the package's layout: the source through tsx in a
 * checkout (src/ and tsx present, even beside a stale dist/), the build in an installed package
 * (no src/, no tsx), and a message saying what to do when there is neither.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'memfabric-bin-'));
after(() => rmSync(work, { recursive: true, force: true }));

/** A package folder with the real bin and stand-in entry points that say which one ran. */
function layout(name: string, parts: { source?: boolean; build?: boolean; tsx?: boolean }): string {
  const dir = join(work, name);
  mkdirSync(join(dir, 'bin'), { recursive: true });
  cpSync(join(root, 'bin', 'memfabric.js'), join(dir, 'bin', 'memfabric.js'));
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
  if (parts.source) {
    mkdirSync(join(dir, 'src', 'cli'), { recursive: true });
    // A type annotation: only tsx can run this file.
    writeFileSync(
      join(dir, 'src', 'cli', 'main.ts'),
      "const ran: string = 'source';\nconsole.log(ran, process.argv[2]);\n",
    );
  }
  if (parts.build) {
    mkdirSync(join(dir, 'dist', 'cli'), { recursive: true });
    writeFileSync(join(dir, 'dist', 'cli', 'main.js'), "console.log('build', process.argv[2]);\n");
  }
  if (parts.tsx) symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'));
  return dir;
}

function runBin(dir: string): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [join(dir, 'bin', 'memfabric.js'), '--flag'], {
    cwd: work,
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

test('a checkout runs the source through tsx, even beside a build', () => {
  const result = runBin(layout('checkout', { source: true, build: true, tsx: true }));
  assert.equal(result.status, 0, result.stderr);
  assert.equal(result.stdout, 'source --flag\n');
});

test('an installed package (no src/, no tsx) runs the build', () => {
  const result = runBin(layout('installed', { build: true }));
  assert.equal(result.status, 0, result.stderr);
  assert.equal(result.stdout, 'build --flag\n');
});

test('a checkout without its dev dependencies runs the build', () => {
  const result = runBin(layout('no-dev', { source: true, build: true }));
  assert.equal(result.status, 0, result.stderr);
  assert.equal(result.stdout, 'build --flag\n');
});

test('with neither, it exits 1 and says how to build', () => {
  const result = runBin(layout('empty', { source: true }));
  assert.equal(result.status, 1);
  assert.equal(result.stdout, '');
  assert.match(result.stderr, /dist\/cli\/main\.js is missing.*npm run build/s);
});
