/**
 * Real NBD clients against the server: libnbd's nbdinfo and nbdcopy, qemu-io, qemu-img and
 * fio's nbd engine. Clients run as child processes (asynchronously: the server lives in this
 * process) with a timeout each. A test is skipped, saying why, only when its binary is missing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { missing, startServer } from './helpers.js';

const MiB = 1024 * 1024;
const CLIENT_MS_MAX = 30_000;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], timeoutMs = CLIENT_MS_MAX): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 * MiB }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

async function runOk(cmd: string, args: string[], timeoutMs = CLIENT_MS_MAX): Promise<Run> {
  const r = await run(cmd, args, timeoutMs);
  assert.equal(r.code, 0, `${cmd} ${args.join(' ')} failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  return r;
}

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'memfabric-nbd-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test(
  'nbdinfo: size, flags, --list, and --map shows a hole after a trim',
  { skip: missing('nbdinfo', 'qemu-io') },
  async (t) => {
    const { server, port } = await startServer();
    t.after(() => server.close());
    const uri = `nbd://127.0.0.1:${port}`;

    const info = JSON.parse((await runOk('nbdinfo', ['--json', `${uri}/small`])).stdout);
    assert.equal(info.protocol, 'newstyle-fixed');
    assert.equal(info.structured, true);
    const small = info.exports[0];
    assert.equal(small['export-size'], MiB);
    assert.equal(small.is_read_only, false);
    for (const can of [
      'can_flush',
      'can_fua',
      'can_trim',
      'can_zero',
      'can_fast_zero',
      'can_cache',
      'can_df',
      'can_multi_conn',
    ]) {
      assert.equal(small[can], true, can);
    }
    assert.deepEqual(small.contexts, ['base:allocation']);
    assert.equal(small.block_size_minimum, 1);
    assert.equal(small.block_size_preferred, 512);
    assert.equal(small.block_size_maximum, 32 * MiB);

    const ro = JSON.parse((await runOk('nbdinfo', ['--json', `${uri}/ro`])).stdout).exports[0];
    assert.equal(ro.is_read_only, true);
    assert.equal(ro.can_trim, false);

    const list = JSON.parse((await runOk('nbdinfo', ['--list', '--json', uri])).stdout);
    assert.deepEqual(
      list.exports.map((e: { 'export-name': string; description: string }) => [
        e['export-name'],
        e.description,
      ]),
      [
        ['', 'default test export'],
        ['small', 'small export'],
        ['ro', 'read-only export'],
      ],
    );

    await runOk('qemu-io', [
      '-f',
      'raw',
      `${uri}/small`,
      '-c',
      'write -P 0x5a 0 256k',
      '-c',
      'discard 64k 64k',
    ]);
    const map = JSON.parse((await runOk('nbdinfo', ['--map', '--json', `${uri}/small`])).stdout);
    const simplified = map.map((e: { offset: number; length: number; type: number }) => [
      e.offset,
      e.length,
      e.type,
    ]);
    assert.deepEqual(simplified, [
      [0, 64 * 1024, 0],
      [64 * 1024, 64 * 1024, 3],
      [128 * 1024, 128 * 1024, 0],
      [256 * 1024, MiB - 256 * 1024, 3],
    ]);
  },
);

test('nbdcopy: a random 24 MiB file in and out, byte for byte', { skip: missing('nbdcopy') }, async (t) => {
  const { server, port, dir } = await startServer();
  t.after(() => server.close());
  const tmp = tempDir(t);
  const uri = `nbd://127.0.0.1:${port}/`;
  const source = randomBytes(24 * MiB);
  // A zero stretch in the middle lets nbdcopy use its sparse paths too.
  source.fill(0, 8 * MiB, 10 * MiB);
  writeFileSync(join(tmp, 'in.bin'), source);
  await runOk('nbdcopy', [join(tmp, 'in.bin'), uri]);
  const exp = dir.exports.get('');
  assert.ok(exp);
  assert.ok(Buffer.from(exp.data.buffer, 0, source.length).equals(source), 'export holds the file');
  await runOk('nbdcopy', [uri, join(tmp, 'out.bin')]);
  const out = readFileSync(join(tmp, 'out.bin'));
  assert.equal(out.length, 64 * MiB);
  assert.ok(out.subarray(0, source.length).equals(source), 'copied back byte for byte');
  assert.ok(
    out.subarray(source.length).every((b) => b === 0),
    'the rest reads as zeros',
  );
});

test(
  'qemu-io: patterns, zeroes, discard, flush and FUA writes verify',
  { skip: missing('qemu-io') },
  async (t) => {
    const { server, port } = await startServer();
    t.after(() => server.close());
    const uri = `nbd://127.0.0.1:${port}/`;
    const commands = [
      'write -P 0xa5 0 1M',
      'read -P 0xa5 0 1M',
      'write -P 0x3c 12345 1000', // unaligned
      'read -P 0x3c 12345 1000',
      'read -P 0xa5 0 12345',
      'write -z 2M 1M',
      'read -P 0 2M 1M',
      'write -z -u 3M 1M',
      'read -P 0 3M 1M',
      'write -P 0x77 4M 512k',
      'discard 4M 256k',
      'read -P 0x77 4352k 256k',
      'flush',
      'write -f -P 0x11 8M 64k',
      'read -P 0x11 8M 64k',
      'aio_write -P 0x22 9M 64k',
      'aio_write -P 0x23 10M 64k',
      'aio_flush',
      'read -P 0x22 9M 64k',
      'read -P 0x23 10M 64k',
      'read -P 0 63M 1M',
    ];
    const args = ['-f', 'raw', uri];
    for (const c of commands) args.push('-c', c);
    const r = await runOk('qemu-io', args);
    const output = r.stdout + r.stderr;
    assert.doesNotMatch(output, /Pattern verification failed|error|failed/i, output);
    // Every command but the two flushes prints one line of success.
    assert.equal((output.match(/^(wrote|read|discard) /gm) ?? []).length, commands.length - 2);

    // Negative controls: qemu-io exits 0 on a pattern mismatch, so the output check above is
    // what catches corruption; and a failed read is reported as such.
    const wrong = await run('qemu-io', ['-f', 'raw', uri, '-c', 'read -P 0x99 0 4k']);
    assert.match(wrong.stdout + wrong.stderr, /Pattern verification failed/);
    const past = await run('qemu-io', ['-f', 'raw', uri, '-c', 'read 64M 4k']);
    assert.match(past.stdout + past.stderr, /read failed/);
  },
);

test('qemu-img: convert in and out, compare', { skip: missing('qemu-img') }, async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const tmp = tempDir(t);
  const uri = `nbd://127.0.0.1:${port}/`;
  // 20 MiB with data, a hole and an unaligned tail.
  const image = Buffer.alloc(20 * MiB + 4096);
  randomBytes(6 * MiB).copy(image, 0);
  randomBytes(3 * MiB + 100).copy(image, 12 * MiB);
  writeFileSync(join(tmp, 'src.img'), image);
  await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', join(tmp, 'src.img'), uri]);
  await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(tmp, 'src.img'), uri]);
  await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, join(tmp, 'back.img')]);
  await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(tmp, 'back.img'), uri]);
  const back = readFileSync(join(tmp, 'back.img'));
  assert.ok(back.subarray(0, image.length).equals(image));
  // A difference is noticed.
  image[7] ^= 0xff;
  writeFileSync(join(tmp, 'src.img'), image);
  const diff = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(tmp, 'src.img'), uri]);
  assert.equal(diff.code, 1, diff.stdout + diff.stderr);
});

test('fio: random writes verified with crc32c from 3 jobs', { skip: missing('fio') }, async (t) => {
  const { server, port } = await startServer();
  t.after(() => server.close());
  const r = await runOk(
    'fio',
    [
      '--name=verify',
      '--ioengine=nbd',
      `--uri=nbd://127.0.0.1:${port}/`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=8',
      '--numjobs=3',
      '--size=8M',
      '--offset_increment=8M',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--runtime=10',
      '--group_reporting',
      // fio otherwise leaves local-verify-*.state files in its working directory.
      '--verify_state_save=0',
    ],
    60_000,
  );
  assert.match(r.stdout, /err= 0/);
  assert.doesNotMatch(r.stdout + r.stderr, /verify: bad|crc32c: verify failed|fio: pid=\d+, err=/);
  const stats = server.stats();
  assert.ok(stats.requests.write >= 3 * 2048, `writes: ${stats.requests.write}`);
  assert.ok(stats.requests.read >= 3 * 2048, `reads: ${stats.requests.read}`);
  assert.equal(stats.errors, 0);
});
