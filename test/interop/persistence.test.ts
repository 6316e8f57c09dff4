/**
 * File-backed regions across appliance restarts, with real processes and real signals:
 *   - SIGTERM is a clean shutdown: everything written is saved, flushed or not, and a new
 *     appliance on the same data dir serves the same bytes (trimmed ranges read as zeros);
 *   - SIGKILL loses nothing that was acknowledged after a FLUSH or with FUA.
 * The image is a raw file, so the bytes are also checked in it directly.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, openSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { RawClient } from '../nbd/raw-client.js';
import {
  ApplianceProcess,
  MiB,
  assertQemuIoClean,
  missing,
  qemuIo,
  runOk,
  tempDir,
  waitFor,
} from './appliance-process.js';

function readImage(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const out = Buffer.alloc(length);
    assert.equal(readSync(fd, out, 0, length, offset), length);
    return out;
  } finally {
    closeSync(fd);
  }
}

interface RegionBody {
  name: string;
  file: string | null;
  size: number;
  stats: { connections: number };
}

test(
  'a file-backed region survives SIGTERM and, once flushed, SIGKILL',
  { skip: missing('qemu-io', 'nbdinfo') },
  async (t) => {
    const dataDir = tempDir(t);
    const image = join(dataDir, 'x.img');

    // ---- first life: write, flush some, leave some unflushed, then SIGTERM ----------------
    const first = await ApplianceProcess.start({ memory: '64MiB', dataDir });
    t.after(() => first.stop());
    await first.region('create', 'x', '--size', '16MiB', '--file');
    assert.ok(existsSync(image), 'the image file exists');
    assertQemuIoClean(
      await qemuIo(first.uri('x'), [
        'write -P 0xd1 0 1M',
        'write -P 0xd2 5M 4k',
        'write -P 0xd3 12345 100',
        'write -P 0xd4 10M 1M',
        'flush',
        'discard 10M 512k', // a flushed page, then trimmed: must come back as zeros
        'flush',
      ]),
      5,
    );
    // An unflushed write (a raw client that writes and hangs up without FLUSH or FUA): the
    // clean shutdown must still save it.
    const { client } = await RawClient.open(first.nbdPort, 'x');
    assert.equal(await client.pwrite(14 * MiB, Buffer.alloc(8192, 0xd5)), 0);
    client.destroy();
    await waitFor(
      'the raw connection to close',
      async () => (await first.api<RegionBody>('GET', '/v1/regions/x')).body.stats.connections === 0,
    );
    const exit = await first.stop();
    assert.deepEqual(exit, { code: 0, signal: null }, `clean exit; stderr:\n${first.stderr}`);
    assert.ok(first.logs.some((line) => line.msg === 'appliance stopped'));
    // The image is a raw image holding exactly the region's bytes.
    assert.ok(readImage(image, 0, 12345).every((b) => b === 0xd1));
    assert.ok(readImage(image, 12345, 100).every((b) => b === 0xd3));
    assert.ok(readImage(image, 14 * MiB, 8192).every((b) => b === 0xd5));
    assert.ok(readImage(image, 10 * MiB, 512 * 1024).every((b) => b === 0));

    // ---- second life: everything is back -----------------------------------------------------
    const second = await ApplianceProcess.start({ memory: '64MiB', dataDir });
    t.after(() => second.stop());
    await second.waitLoaded();
    assert.ok(second.logs.some((line) => line.msg === 'region loaded' && line.region === 'x'));
    const region = (await second.api<RegionBody>('GET', '/v1/regions/x')).body;
    assert.equal(region.size, 16 * MiB);
    assert.equal(region.file, image);
    const verifyFirstLife = [
      'read -P 0xd1 0 12345',
      'read -P 0xd3 12345 100',
      'read -P 0xd1 12445 1036131',
      'read -P 0xd2 5M 4k',
      'read -P 0 10M 512k',
      'read -P 0xd4 10752k 512k',
      'read -P 0xd5 14M 8k',
      'read -P 0 1M 4M',
    ];
    assertQemuIoClean(await qemuIo(second.uri('x'), verifyFirstLife), verifyFirstLife.length);
    // Loading maps only non-zero pages: the never-written and trimmed ranges are holes again.
    const map = JSON.parse((await runOk('nbdinfo', ['--map', '--json', second.uri('x')])).stdout) as Array<{
      offset: number;
      length: number;
      type: number;
    }>;
    const dataBytes = map.filter((e) => (e.type & 1) === 0).reduce((sum, e) => sum + e.length, 0);
    assert.equal(dataBytes, MiB + 4096 + 512 * 1024 + 8192, JSON.stringify(map));

    // ---- SIGKILL after FLUSH and FUA: acknowledged durable writes survive ---------------------
    assertQemuIoClean(
      await qemuIo(second.uri('x'), [
        'write -P 0xe1 2M 1M',
        'write -P 0xe2 0 4k', // over first-life data
        'flush',
        'write -f -P 0xe3 6M 64k', // FUA: durable when acknowledged
      ]),
      3,
    );
    const killed = await second.kill();
    assert.equal(killed.signal, 'SIGKILL');
    assert.ok(!second.logs.some((line) => line.msg === 'appliance stopped'), 'no clean shutdown ran');

    const third = await ApplianceProcess.start({ memory: '64MiB', dataDir });
    t.after(() => third.stop());
    await third.waitLoaded();
    const verify = [
      'read -P 0xe2 0 4k',
      'read -P 0xd1 4k 8249', // up to the 0xd3 bytes at 12345
      'read -P 0xd3 12345 100',
      'read -P 0xe1 2M 1M',
      'read -P 0xd2 5M 4k',
      'read -P 0xe3 6M 64k',
      'read -P 0 10M 512k',
      'read -P 0xd4 10752k 512k',
      'read -P 0xd5 14M 8k',
    ];
    assertQemuIoClean(await qemuIo(third.uri('x'), verify), verify.length);
    assert.deepEqual(await third.stop(), { code: 0, signal: null });
  },
);
