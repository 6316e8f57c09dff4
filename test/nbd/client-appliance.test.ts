/**
 * The NBD client against our appliance (in-process, real sockets): handshake values, round
 * trips, holes, a pipelined model-checked workload, large split requests, error replies that
 * fail only their request, list and info, local argument checks, and the queue bound.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Appliance } from '../../src/appliance/index.js';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import { NbdClient, NbdRequestError } from '../../src/nbd/index.js';
import { EINVAL, ENOSPC, EPERM, STATE_HOLE, STATE_ZERO } from '../../src/nbd/protocol/constants.js';
import { holesAfterTrim, KiB, MiB, pipelinedWorkload, roundTrips } from './client-suite.js';

async function startAppliance(memory = '64MiB'): Promise<Appliance> {
  return Appliance.start({ memory, nbd: { port: 0 }, http: { port: 0 }, merge: false });
}

function isRequestError(errno: number) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof NbdRequestError, `an NbdRequestError: ${String(err)}`);
    assert.ok(err instanceof MemfabricError);
    assert.equal(err.code, ErrorCodes.NBD_REQUEST_FAILED);
    assert.equal(err.errno, errno, err.message);
    return true;
  };
}

test('appliance: handshake values, list and info', async (t) => {
  const appliance = await startAppliance();
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'r1', size: 8 * MiB });
  await appliance.registry.create({ name: 'ro', size: MiB, readOnly: true });
  const port = appliance.nbdAddress.port;

  const names = (await NbdClient.list({ port })).map((e) => e.name).sort();
  assert.deepEqual(names, ['default', 'r1', 'ro']);
  const info = await NbdClient.info({ port, exportName: 'r1' });
  assert.equal(info.size, 8 * MiB);
  assert.equal(info.canonicalName, 'r1');
  assert.match(info.description, /r1/);
  assert.deepEqual(info.blockSizes, { minimum: 1, preferred: 4096, maximum: 32 * MiB });
  assert.equal(info.transmissionFlags.canMultiConn, true);
  await assert.rejects(NbdClient.info({ port, exportName: 'nope' }), { code: ErrorCodes.NOT_FOUND });
  await assert.rejects(NbdClient.connect({ port, exportName: 'nope' }), { code: ErrorCodes.NOT_FOUND });

  const client = await NbdClient.connect({ port, exportName: 'r1' });
  t.after(() => client.destroy());
  assert.equal(client.size, 8 * MiB);
  assert.equal(client.structuredReplies, true);
  assert.deepEqual(client.metaContexts, ['base:allocation']);
  assert.deepEqual(client.blockSizes, { minimum: 1, preferred: 4096, maximum: 32 * MiB });
  const f = client.transmissionFlags;
  assert.deepEqual(
    [f.readOnly, f.canFlush, f.canFua, f.canTrim, f.canWriteZeroes, f.canFastZero, f.canDf, f.canCache],
    [false, true, true, true, true, true, true, true],
  );
  assert.equal(f.canMultiConn, true);

  const ro = await NbdClient.connect({ port, exportName: 'ro' });
  t.after(() => ro.destroy());
  assert.equal(ro.transmissionFlags.readOnly, true);
  assert.equal(ro.transmissionFlags.canTrim, false);

  // Simple replies only, no metadata contexts: data calls work, block status is refused locally.
  const simple = await NbdClient.connect({ port, exportName: 'r1', structuredReplies: false });
  t.after(() => simple.destroy());
  assert.equal(simple.structuredReplies, false);
  assert.deepEqual(simple.metaContexts, []);
  assert.equal(simple.transmissionFlags.canDf, false);
  await simple.write(7, Buffer.from('simple'));
  assert.equal((await simple.read(7, 6)).toString(), 'simple');
  await assert.rejects(simple.blockStatus(0, 4096), { code: ErrorCodes.INVALID_ARGUMENT });

  await client.disconnect();
  assert.equal(await client.closed, undefined, 'a clean disconnect');
  await assert.rejects(client.read(0, 1), { code: ErrorCodes.CONNECTION_CLOSED });
});

test('appliance: round trips, holes after trim, 1000 pipelined requests against a model', async (t) => {
  const appliance = await startAppliance();
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'r1', size: 8 * MiB });
  const client = await NbdClient.connect({ port: appliance.nbdAddress.port, exportName: 'r1' });
  t.after(() => client.destroy());
  await roundTrips(client);
  await holesAfterTrim(client);
  // A fresh region is one hole that reads as zeros.
  const fresh = await client.blockStatus(6 * MiB, MiB);
  assert.deepEqual(fresh, [{ length: MiB, flags: STATE_HOLE | STATE_ZERO }]);
  await pipelinedWorkload(client, 0x5eed);
  await pipelinedWorkload(client, 0xbeef, 500, 64 * KiB, 2); // dense: many conflicts
  // Simple replies too.
  const simple = await NbdClient.connect({
    port: appliance.nbdAddress.port,
    exportName: 'r1',
    structuredReplies: false,
  });
  t.after(() => simple.destroy());
  await pipelinedWorkload(simple, 7, 300);
});

test('appliance: requests larger than the maximum payload are split', async (t) => {
  const appliance = await startAppliance('128MiB');
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'big', size: 64 * MiB });
  const client = await NbdClient.connect({ port: appliance.nbdAddress.port, exportName: 'big' });
  t.after(() => client.destroy());
  assert.equal(client.requestBytesMax, 32 * MiB);
  const data = Buffer.alloc(40 * MiB + 3);
  for (let i = 0; i + 4 <= data.length; i += 4096) data.writeUInt32LE(i, i);
  const requestsBefore = appliance.nbdServer.stats().requests.write;
  await client.write(5, data);
  assert.equal(appliance.nbdServer.stats().requests.write - requestsBefore, 2, '40 MiB = 2 writes');
  assert.ok((await client.read(5, data.length)).equals(data));
  await client.writeZeroes(5, data.length);
  assert.ok((await client.read(0, 48 * MiB)).every((b) => b === 0));
});

test('appliance: error replies fail only their request, with the errno', async (t) => {
  const appliance = await startAppliance();
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'r1', size: MiB });
  await appliance.registry.create({ name: 'ro', size: MiB, readOnly: true });
  const port = appliance.nbdAddress.port;
  const client = await NbdClient.connect({ port, exportName: 'r1' });
  t.after(() => client.destroy());
  await client.write(0, Buffer.from('kept'));

  // Out of range, surrounded by good requests in flight at the same time.
  const before = client.read(0, 4);
  const bad = client.read(MiB - 10, 20);
  const badWrite = client.write(MiB, Buffer.alloc(1));
  const after = client.read(0, 4);
  await assert.rejects(bad, isRequestError(EINVAL));
  await assert.rejects(badWrite, isRequestError(ENOSPC));
  assert.equal((await before).toString(), 'kept');
  assert.equal((await after).toString(), 'kept');
  await assert.rejects(client.read(MiB - 10, 20), (err: NbdRequestError) => {
    assert.match(err.message, /read at offset 1048566 length 20 failed with EINVAL \(22\)/);
    assert.equal(err.command, 'read');
    assert.equal(err.offset, MiB - 10);
    return true;
  });
  assert.ok(client.isOpen, 'error replies do not close the connection');

  // A write to a read-only region: EPERM.
  const ro = await NbdClient.connect({ port, exportName: 'ro' });
  t.after(() => ro.destroy());
  await assert.rejects(ro.write(0, Buffer.from('x')), isRequestError(EPERM));
  assert.equal((await ro.read(0, 1))[0], 0);
  // Commands the server does not advertise are refused before sending.
  await assert.rejects(ro.trim(0, 4096), { code: ErrorCodes.INVALID_ARGUMENT });
});

test('appliance: ENOSPC when the memory budget is exhausted fails only that write', async (t) => {
  const appliance = await startAppliance('1MiB');
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'sparse', size: 64 * MiB });
  const client = await NbdClient.connect({ port: appliance.nbdAddress.port, exportName: 'sparse' });
  t.after(() => client.destroy());
  await client.write(0, Buffer.alloc(64 * KiB, 1));
  const tooMuch = client.write(8 * MiB, Buffer.alloc(2 * MiB, 2));
  const fine = client.read(0, 64 * KiB);
  await assert.rejects(tooMuch, isRequestError(ENOSPC));
  assert.ok((await fine).every((b) => b === 1));
  await client.write(100, Buffer.from('still writable where memory exists'));
  assert.equal((await client.read(100, 5)).toString(), 'still');
});

test('appliance: argument checks, zero lengths and the queue bound', async (t) => {
  const appliance = await startAppliance();
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'r1', size: MiB });
  const port = appliance.nbdAddress.port;
  await assert.rejects(NbdClient.connect({ port, inflightMax: 3 }), { code: ErrorCodes.INVALID_ARGUMENT });
  await assert.rejects(NbdClient.connect({ port: 0 }), { code: ErrorCodes.INVALID_ARGUMENT });
  await assert.rejects(NbdClient.connect({ port, metaContexts: ['nocolon'] }), {
    code: ErrorCodes.INVALID_ARGUMENT,
  });
  const client = await NbdClient.connect({ port, exportName: 'r1', inflightMax: 4, queueMax: 8 });
  t.after(() => client.destroy());
  await assert.rejects(client.read(-1, 1), { code: ErrorCodes.INVALID_ARGUMENT });
  await assert.rejects(client.read(1.5, 1), { code: ErrorCodes.INVALID_ARGUMENT });
  await assert.rejects(client.read(0, 2 ** 53), { code: ErrorCodes.INVALID_ARGUMENT });
  await assert.rejects(client.blockStatus(0, 0), { code: ErrorCodes.INVALID_ARGUMENT });
  await assert.rejects(client.blockStatus(0, 1, { context: 'qemu:dirty-bitmap:x' }), {
    code: ErrorCodes.INVALID_ARGUMENT,
  });
  assert.equal((await client.read(0, 0)).length, 0);
  await client.write(0, Buffer.alloc(0));
  // 4 in flight + 8 queued; the 13th call is refused with MF_BUSY, the others complete.
  const calls = Array.from({ length: 12 }, (_, i) => client.write(i * 4096, Buffer.alloc(4096, i)));
  assert.equal(client.inFlight, 4);
  assert.equal(client.queued, 8);
  await assert.rejects(client.read(0, 1), { code: ErrorCodes.BUSY });
  await Promise.all(calls);
  assert.equal((await client.read(11 * 4096, 1))[0], 11);
});
