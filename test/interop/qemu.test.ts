/**
 * qemu-io and qemu-img against a running appliance process: pattern writes and reads
 * (aligned and not, zeroes, discard, flush, FUA, async), an unaligned region size,
 * convert/compare in both directions, a read-only region, and copy-on-write clones seen by a
 * real client. qemu-io exits 0 when a pattern check fails, so every check reads its output.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as C from '../../src/nbd/protocol/constants.js';
import { RawClient } from '../nbd/raw-client.js';
import {
  ApplianceProcess,
  MiB,
  assertQemuIoClean,
  missing,
  qemuIo,
  run,
  runOk,
  tempDir,
} from './appliance-process.js';

interface RegionBody {
  stats: {
    reads: number;
    writes: number;
    trims: number;
    zeroes: number;
    flushes: number;
    sharedBytes: number;
  };
}

test('qemu-io and qemu-img against the appliance', { skip: missing('qemu-io', 'qemu-img') }, async (t) => {
  const app = await ApplianceProcess.start({ memory: '256MiB' });
  t.after(() => app.stop());

  await t.test('patterns, zeroes, discard, flush, FUA and async writes verify', async () => {
    await app.createRegion('q', '64MiB');
    const commands = [
      'write -P 0xa5 0 1M',
      'read -P 0xa5 0 1M',
      'write -P 0x3c 12345 1000', // unaligned, inside one page
      'read -P 0x3c 12345 1000',
      'read -P 0xa5 0 12345',
      'read -P 0xa5 13345 1035231',
      'write -P 0x4d 4095 8194', // crosses three page boundaries
      'read -P 0x4d 4095 8194',
      'write -z 2M 1M',
      'read -P 0 2M 1M',
      'write -P 0x66 3M 1M',
      'write -z -u 3M 1M',
      'read -P 0 3M 1M',
      'write -P 0x77 4M 512k',
      'discard 4M 256k',
      'read -P 0 4M 256k',
      'read -P 0x77 4352k 256k',
      'flush',
      'write -f -P 0x11 8M 64k', // FUA
      'read -P 0x11 8M 64k',
      'aio_write -P 0x22 9M 64k',
      'aio_write -P 0x23 10M 64k',
      'aio_flush',
      'read -P 0x22 9M 64k',
      'read -P 0x23 10M 64k',
      'write -P 0x5e 60M 4M', // up to the very end
      'read -P 0x5e 60M 4M',
      'read -P 0 63M 0',
    ];
    const r = await qemuIo(app.uri('q'), commands);
    // Every command but the two flushes prints one line of success.
    assertQemuIoClean(r, commands.length - 2);
    // The appliance counted what qemu sent: flushes (flush, FUA, aio_flush), trims, zeroes.
    const region = (await app.api<RegionBody>('GET', '/v1/regions/q')).body;
    assert.ok(region.stats.flushes >= 3, `flushes ${region.stats.flushes}`);
    assert.ok(region.stats.trims >= 1, `trims ${region.stats.trims}`);
    assert.ok(region.stats.zeroes >= 2, `zeroes ${region.stats.zeroes}`);

    // A second connection sees what the first one wrote (the data lives in the appliance).
    assertQemuIoClean(
      await qemuIo(app.uri('q'), [
        'read -P 0xa5 0 4095',
        'read -P 0x4d 4095 8194',
        'read -P 0xa5 12289 56',
        'read -P 0x3c 12345 1000',
        'read -P 0x11 8M 64k',
        'read -P 0x5e 60M 4M',
      ]),
      6,
    );
    // Negative controls: a wrong pattern is reported (so the checks above can fail), and a
    // read past the end fails.
    const wrong = await qemuIo(app.uri('q'), ['read -P 0x99 0 4k']);
    assert.match(wrong.output, /Pattern verification failed/);
    const past = await qemuIo(app.uri('q'), ['read 64M 4k']);
    assert.match(past.output, /read failed/);
  });

  await t.test('a region whose size is not a whole number of pages', async () => {
    await app.createRegion('odd', 1_000_001);
    const r = await qemuIo(app.uri('odd'), [
      'write -P 0x42 995000 5001', // the partial last page, to the last byte
      'read -P 0x42 995000 5001',
      'read -P 0 0 995000',
    ]);
    assertQemuIoClean(r, 3);
    // qemu rounds the size up to a sector and passes this write on; the appliance refuses it
    // (ENOSPC, as the NBD spec asks for writes past the end) and keeps the last byte.
    const past = await qemuIo(app.uri('odd'), ['write -P 1 1000000 2']);
    assert.match(past.output, /write failed: No space left on device/);
    assertQemuIoClean(await qemuIo(app.uri('odd'), ['read -P 0x42 995000 5001']), 1);
  });

  await t.test('qemu-img convert in and out, and compare', async (tt) => {
    await app.createRegion('img', '24MiB');
    const tmp = tempDir(tt);
    // 20 MiB + 4 KiB: random data, a zero stretch (sparse paths), more data, an unaligned tail.
    const image = Buffer.alloc(20 * MiB + 4096);
    randomBytes(6 * MiB).copy(image, 0);
    randomBytes(3 * MiB + 100).copy(image, 12 * MiB);
    image.fill(0xc3, 20 * MiB);
    writeFileSync(join(tmp, 'src.img'), image);
    const uri = app.uri('img');
    await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', join(tmp, 'src.img'), uri]);
    // compare stops at the shorter image's end only if the longer one is zero beyond it.
    await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(tmp, 'src.img'), uri]);
    await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, join(tmp, 'back.img')]);
    const back = readFileSync(join(tmp, 'back.img'));
    assert.equal(back.length, 24 * MiB);
    assert.ok(back.subarray(0, image.length).equals(image), 'converted back byte for byte');
    assert.ok(back.subarray(image.length).every((b) => b === 0));
    // A one-byte difference is noticed, and its sector reported.
    image[7 * MiB + 3] ^= 0xff;
    writeFileSync(join(tmp, 'src.img'), image);
    const diff = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(tmp, 'src.img'), uri]);
    assert.equal(diff.code, 1, diff.output);
    assert.match(diff.output, /Content mismatch at offset 7340032/);
  });

  await t.test('a read-only region: reads work, writes get EPERM', async () => {
    await app.region('create', 'ro', '--size', '4MiB', '--read-only');
    // qemu honours the export's read-only flag: it will not open it for writing at all ...
    const rw = await qemuIo(app.uri('ro'), ['write -P 1 0 4k']);
    assert.notEqual(rw.code, 0);
    assert.match(rw.output, /Permission denied|read-only/i);
    assert.doesNotMatch(rw.output, /^wrote /m);
    // ... and opened read-only (-r) it refuses writes itself and reads normally.
    const r = await qemuIo(app.uri('ro'), ['read -P 0 0 4M', 'write -P 1 0 4k'], ['-r']);
    assert.match(r.output, /^read 4194304\/4194304 bytes at offset 0/m);
    assert.match(r.output, /read-only|Operation not permitted/i);
    assert.doesNotMatch(r.output, /^wrote /m);
    // So the server's own check is seen on the wire: WRITE, TRIM and WRITE_ZEROES sent anyway
    // get EPERM, and nothing changes.
    const { client } = await RawClient.open(app.nbdPort, 'ro');
    try {
      assert.equal(await client.pwrite(0, Buffer.alloc(4096, 1)), C.EPERM);
      for (const type of [C.CMD_TRIM, C.CMD_WRITE_ZEROES]) {
        client.request(type, 0, 4096, { cookie: 9n });
        assert.equal((await client.readReply()).error, C.EPERM, `command ${type}`);
      }
      assert.ok((await client.pread(0, 8192)).every((b) => b === 0));
    } finally {
      client.destroy();
    }
    const region = (await app.api<RegionBody>('GET', '/v1/regions/ro')).body;
    assert.equal(region.stats.writes, 0);
  });

  await t.test('a clone holds the original bytes; writing it leaves the original alone', async () => {
    await app.createRegion('orig', '16MiB');
    const seed = await qemuIo(app.uri('orig'), [
      'write -P 0xa1 0 4M',
      'write -P 0xa2 4M 4M',
      'write -P 0xa3 12345 777', // partial pages too
    ]);
    assertQemuIoClean(seed, 3);
    await app.region('clone', 'orig', 'copy');
    const copy = (await app.api<RegionBody>('GET', '/v1/regions/copy')).body;
    assert.ok(copy.stats.sharedBytes >= 8 * MiB, 'the clone shares frames, it did not copy them');

    // The clone reads like the original.
    assertQemuIoClean(
      await qemuIo(app.uri('copy'), [
        'read -P 0xa1 0 12345',
        'read -P 0xa3 12345 777',
        'read -P 0xa1 13122 4181182',
        'read -P 0xa2 4M 4M',
        'read -P 0 8M 8M',
      ]),
      5,
    );
    // Write, zero and discard the clone (FUA too), concurrently with reading the original.
    const [cloneWrites, origReads] = await Promise.all([
      qemuIo(app.uri('copy'), [
        'write -P 0xb1 0 1M',
        'write -f -P 0xb2 4M 64k',
        'write -z 5M 1M',
        'discard 6M 1M',
        'write -P 0xb3 12M 1M', // a hole in both: only the clone gets it
      ]),
      qemuIo(app.uri('orig'), ['read -P 0xa1 0 12345', 'read -P 0xa2 4M 4M']),
    ]);
    assertQemuIoClean(cloneWrites, 5);
    assertQemuIoClean(origReads, 2);
    const [orig, clone] = await Promise.all([
      qemuIo(app.uri('orig'), [
        'read -P 0xa1 0 12345',
        'read -P 0xa3 12345 777',
        'read -P 0xa1 13122 4181182',
        'read -P 0xa2 4M 4M',
        'read -P 0 12M 1M',
      ]),
      qemuIo(app.uri('copy'), [
        'read -P 0xb1 0 1M',
        'read -P 0xa1 1M 3M',
        'read -P 0xb2 4M 64k',
        'read -P 0xa2 4160k 960k',
        'read -P 0 5M 2M',
        'read -P 0xa2 7M 1M',
        'read -P 0xb3 12M 1M',
      ]),
    ]);
    assertQemuIoClean(orig, 5);
    assertQemuIoClean(clone, 7);
    // Writing the original now does not reach the clone either.
    assertQemuIoClean(await qemuIo(app.uri('orig'), ['write -P 0xc1 1M 1M']), 1);
    assertQemuIoClean(await qemuIo(app.uri('copy'), ['read -P 0xa1 1M 3M']), 1);
  });

  assert.ok(app.alive, 'the appliance survived every client');
});
