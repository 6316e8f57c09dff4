/**
 * The NBD client against servers nobody here wrote: `nbdkit memory 64M` and `qemu-nbd` over a
 * sparse raw file. Same conformance suite as against the appliance (client-suite.ts), plus
 * each server's handshake values and qemu's sparse reads (OFFSET_HOLE chunks). Skipped, saying
 * why, only when a binary is missing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes } from '../../src/errors.js';
import type { NbdRequestError } from '../../src/nbd/index.js';
import { NbdClient, NbdConnectionGroup } from '../../src/nbd/index.js';
import { EINVAL, ENOSPC, STATE_HOLE, STATE_ZERO } from '../../src/nbd/protocol/constants.js';
import { missing } from './helpers.js';
import { spawnNbdkitMemory, spawnQemuNbd } from './client-servers.js';
import { holesAfterTrim, MiB, pipelinedWorkload, roundTrips } from './client-suite.js';

test(
  'nbdkit memory: handshake, round trips, holes, 1000 pipelined requests',
  { skip: missing('nbdkit') },
  async (t) => {
    const server = await spawnNbdkitMemory('64M');
    t.after(() => server.stop());
    const exports = await NbdClient.list({ port: server.port });
    assert.ok(exports.length >= 1, `nbdkit lists its export: ${JSON.stringify(exports)}`);
    const info = await NbdClient.info({ port: server.port });
    assert.equal(info.size, 64 * MiB);

    const client = await NbdClient.connect({ port: server.port });
    t.after(() => client.destroy());
    assert.equal(client.size, 64 * MiB);
    assert.equal(client.structuredReplies, true);
    assert.deepEqual(client.metaContexts, ['base:allocation']);
    const f = client.transmissionFlags;
    assert.equal(f.readOnly, false);
    assert.ok(f.canFlush && f.canTrim && f.canWriteZeroes && f.canMultiConn && f.canFua);

    // A fresh memory export is all hole.
    const fresh = await client.blockStatus(0, 8 * MiB);
    assert.ok(fresh.length >= 1);
    assert.equal(fresh[0].flags, STATE_HOLE | STATE_ZERO);

    await roundTrips(client);
    await holesAfterTrim(client, 8 * MiB);
    await pipelinedWorkload(client, 0x1234);

    // Error replies: out of range.
    await assert.rejects(client.read(64 * MiB - 1, 2), (err: NbdRequestError) => err.errno === EINVAL);
    await assert.rejects(client.write(64 * MiB, Buffer.alloc(1)), (err: NbdRequestError) => {
      assert.equal(err.code, ErrorCodes.NBD_REQUEST_FAILED);
      return err.errno === ENOSPC || err.errno === EINVAL;
    });
    assert.ok(client.isOpen);
    await client.disconnect();
    assert.equal(await client.closed, undefined);
  },
);

test(
  'nbdkit memory: a connection group spreads over 4 connections',
  { skip: missing('nbdkit') },
  async (t) => {
    const server = await spawnNbdkitMemory('64M');
    t.after(() => server.stop());
    const group = await NbdConnectionGroup.connect({ port: server.port, connections: 4 });
    t.after(() => group.destroy());
    assert.equal(group.clients.length, 4);
    const writes = Array.from({ length: 64 }, (_, i) => group.write(i * 65536, Buffer.alloc(65536, i + 1)));
    await Promise.all(writes);
    await group.flush();
    for (const client of group.clients) {
      assert.equal((await client.read(63 * 65536, 1))[0], 64, 'each connection sees every write after flush');
    }
    await group.disconnect();
    assert.equal(await group.closed, undefined);
  },
);

test(
  'qemu-nbd: handshake, round trips, sparse reads, holes, pipelined requests',
  { skip: missing('qemu-nbd') },
  async (t) => {
    const server = await spawnQemuNbd(16 * MiB, 'disk');
    t.after(() => server.stop());
    const exports = await NbdClient.list({ port: server.port });
    assert.deepEqual(
      exports.map((e) => e.name),
      ['disk'],
    );
    const info = await NbdClient.info({ port: server.port, exportName: 'disk' });
    assert.equal(info.size, 16 * MiB);
    assert.ok(info.blockSizes !== undefined, 'qemu-nbd sends NBD_INFO_BLOCK_SIZE');
    await assert.rejects(NbdClient.connect({ port: server.port, exportName: 'other' }), {
      code: ErrorCodes.NOT_FOUND,
    });

    const client = await NbdClient.connect({ port: server.port, exportName: 'disk' });
    t.after(() => client.destroy());
    assert.equal(client.size, 16 * MiB);
    assert.equal(client.structuredReplies, true);
    assert.deepEqual(client.metaContexts, ['base:allocation']);
    assert.equal(client.transmissionFlags.canMultiConn, true, 'qemu-nbd -e 4 advertises multi-conn');

    // A sparse read: data, then a hole, then data; qemu answers with OFFSET_DATA + OFFSET_HOLE chunks.
    await client.write(10 * MiB, Buffer.alloc(4096, 0xaa));
    await client.write(10 * MiB + 3 * 65536, Buffer.alloc(4096, 0xbb));
    const sparse = await client.read(10 * MiB, 3 * 65536 + 4096);
    assert.ok(sparse.subarray(0, 4096).every((b) => b === 0xaa));
    assert.ok(sparse.subarray(4096, 3 * 65536).every((b) => b === 0));
    assert.ok(sparse.subarray(3 * 65536).every((b) => b === 0xbb));

    await roundTrips(client);
    await holesAfterTrim(client, 4 * MiB);
    // Fewer than elsewhere: qemu-nbd 7.2 leaves Nagle on, so a reply that follows another small
    // one can wait for our delayed ACK (about 40 ms) whenever the client has nothing to send.
    await pipelinedWorkload(client, 0x4321, 300);
    await assert.rejects(client.read(16 * MiB - 1, 2), (err: NbdRequestError) => err.errno === EINVAL);
    assert.ok(client.isOpen);

    await client.disconnect();

    // With multi-conn, a group of 3 (qemu-nbd -e 4 admits 4 clients).
    const group = await NbdConnectionGroup.connect({ port: server.port, exportName: 'disk', connections: 3 });
    t.after(() => group.destroy());
    assert.equal(group.clients.length, 3);
    await group.clients[2].write(MiB, Buffer.from('seen by the others'));
    await group.flush();
    assert.equal((await group.clients[0].read(MiB, 4)).toString(), 'seen');
    await group.disconnect();
  },
);

test(
  'qemu-nbd -e 1: no multi-conn, so a group keeps one connection',
  { skip: missing('qemu-nbd') },
  async (t) => {
    const server = await spawnQemuNbd(MiB, 'one', 1);
    t.after(() => server.stop());
    const group = await NbdConnectionGroup.connect({ port: server.port, exportName: 'one', connections: 4 });
    t.after(() => group.destroy());
    assert.equal(group.transmissionFlags.canMultiConn, false);
    assert.equal(group.clients.length, 1);
    await group.write(0, Buffer.from('one'));
    await group.flush();
    assert.equal((await group.read(0, 3)).toString(), 'one');
    await group.disconnect();
  },
);
