/**
 * The fabric's fileDirectory, a path the user passes in: a missing directory is created (with
 * its parents) when the first file region needs it, including when the fabric falls back to a
 * file because no appliance answers; a path that cannot be the directory, or cannot be written,
 * is MF_BAD_PATH naming it; a file region name already taken is MF_ALREADY_EXISTS; a size the
 * file system refuses leaves no file behind. Nothing here may surface a bare ENOENT.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorCodes } from '../../src/index.js';
import { Fabric } from '../../src/fabric/index.js';
import { typedError } from '../typed-error.js';

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'memfabric-file-directory-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('a missing fileDirectory is created, with its parents, and the region works', async (t) => {
  const directory = join(tempDir(t), 'a', 'b', 'regions');
  const fabric = new Fabric({ fileDirectory: directory });
  t.after(() => fabric.close());
  const region = await fabric.allocate({ size: '1MiB', prefer: 'file', name: 'r1' });
  assert.equal(region.kind, 'file');
  assert.ok(statSync(directory).isDirectory());
  await region.write(4096, Buffer.from('kept'));
  assert.equal((await region.read(4096, 4)).toString(), 'kept');
  await region.close();
  assert.deepEqual(readdirSync(directory), [], 'closing a file region removes its file');
});

test('falling back to a file region when no appliance answers creates the missing fileDirectory', async (t) => {
  const directory = join(tempDir(t), 'fallback');
  const fabric = new Fabric({
    appliances: ['http://127.0.0.1:1'],
    fileDirectory: directory,
    requestTimeoutMs: 2000,
  });
  t.after(() => fabric.close());
  const region = await fabric.allocate({ size: '64KiB' });
  assert.equal(region.kind, 'file');
  assert.ok(existsSync(join(directory, `${region.name}.fabric`)));
});

test('a fileDirectory that is a file, or lies under one, is BAD_PATH naming it; the file is untouched', async (t) => {
  const base = tempDir(t);
  const file = join(base, 'not-a-directory');
  writeFileSync(file, 'mine');
  for (const directory of [file, join(file, 'below')]) {
    const fabric = new Fabric({ fileDirectory: directory });
    await assert.rejects(
      fabric.allocate({ size: '64KiB', prefer: 'file' }),
      typedError(ErrorCodes.BAD_PATH, `fileDirectory ${directory}`, 'not a directory'),
    );
    await fabric.close();
  }
  assert.equal(readFileSync(file, 'utf8'), 'mine');
});

test(
  'a fileDirectory this process may not write is BAD_PATH naming the path',
  { skip: process.getuid?.() === 0 ? 'root may write anywhere' : false },
  async (t) => {
    const directory = join(tempDir(t), 'read-only');
    mkdirSync(directory, { mode: 0o500 });
    const fabric = new Fabric({ fileDirectory: directory });
    await assert.rejects(
      fabric.allocate({ size: '64KiB', prefer: 'file', name: 'r' }),
      typedError(ErrorCodes.BAD_PATH, join(directory, 'r.fabric'), 'cannot be opened for writing'),
    );
  },
);

test('a region file that already exists is ALREADY_EXISTS and stays as it was', async (t) => {
  const directory = tempDir(t);
  writeFileSync(join(directory, 'taken.fabric'), 'someone else');
  const fabric = new Fabric({ fileDirectory: directory });
  await assert.rejects(
    fabric.allocate({ size: '64KiB', prefer: 'file', name: 'taken' }),
    typedError(ErrorCodes.ALREADY_EXISTS, join(directory, 'taken.fabric')),
  );
  assert.equal(readFileSync(join(directory, 'taken.fabric'), 'utf8'), 'someone else');
});

test('a size the file system refuses for one file is INVALID_ARGUMENT and leaves no file', async (t) => {
  const directory = tempDir(t);
  const fabric = new Fabric({ fileDirectory: directory });
  // 2^52 bytes (4 PiB) is beyond ext4's, xfs's and tmpfs's largest file; a file system that
  // takes it anyway makes a sparse file, which is fine too.
  let region;
  try {
    region = await fabric.allocate({ size: 2 ** 52, prefer: 'file', name: 'huge' });
  } catch (error) {
    typedError(ErrorCodes.INVALID_ARGUMENT, directory, 'ask for less')(error);
    assert.deepEqual(readdirSync(directory), [], 'nothing left behind');
    return;
  }
  await region.close();
});

test('fileDirectory must be a non-empty path', () => {
  assert.throws(
    () => new Fabric({ fileDirectory: '' }),
    typedError(ErrorCodes.INVALID_ARGUMENT, 'fileDirectory'),
  );
});
