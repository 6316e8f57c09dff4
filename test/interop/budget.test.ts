/**
 * The memory budget, seen by real clients: an appliance with 8 MiB of memory serving a 64 MiB
 * region. Writes that need frames the budget cannot give fail with ENOSPC, those requests only:
 * nothing they would have changed changes, earlier data still reads back, other connections
 * keep working, and after a discard frees frames a new write succeeds.
 *
 * Merging is off: qemu-io writes repeating patterns, and merging identical pages would (rightly)
 * make room that this test needs to be absent.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApplianceProcess, MiB, assertQemuIoClean, missing, qemuIo } from './appliance-process.js';

interface StatsBody {
  memory: { capacityBytes: number; usedBytes: number; freeBytes: number };
  nbd: { errors: number; connectionsOpen: number };
}

test(
  'an 8 MiB budget: ENOSPC for the requests that do not fit, and service goes on',
  { skip: missing('qemu-io') },
  async (t) => {
    const app = await ApplianceProcess.start({ memory: '8MiB', defaultSize: '8MiB', merge: false });
    t.after(() => app.stop());
    await app.createRegion('big', '64MiB');
    const stats = async () => (await app.api<StatsBody>('GET', '/v1/stats')).body;
    assert.equal((await stats()).memory.capacityBytes, 8 * MiB);

    assertQemuIoClean(await qemuIo(app.uri('big'), ['write -P 0x11 0 4M']), 1);
    assert.equal((await stats()).memory.usedBytes, 4 * MiB);

    // 16 MiB cannot fit in the 4 MiB left: those requests fail with ENOSPC and change nothing.
    const tooMuch = await qemuIo(app.uri('big'), [
      'write -P 0x22 8M 16M',
      'write -P 0x23 32M 8M',
      'read -P 0x11 0 4M', // the same connection keeps working
      'read -P 0 8M 32M', // nothing of the failed writes landed
    ]);
    assert.equal(
      (tooMuch.output.match(/write failed: No space left on device/g) ?? []).length,
      2,
      tooMuch.output,
    );
    assert.doesNotMatch(tooMuch.output, /Pattern verification failed|^wrote /m);
    assert.equal((tooMuch.output.match(/^read \d+\/\d+ bytes/gm) ?? []).length, 2, tooMuch.output);
    assert.equal((await stats()).memory.usedBytes, 4 * MiB, 'failed writes took no frames');

    // Fill the budget exactly; then even one page more fails, from any connection or region.
    assertQemuIoClean(await qemuIo(app.uri('big'), ['write -P 0x33 4M 4M']), 1);
    assert.equal((await stats()).memory.freeBytes, 0);
    const full = await Promise.all([
      qemuIo(app.uri('big'), ['write -P 0x44 40M 4k']),
      qemuIo(app.uri(''), ['write -P 0x45 0 4k']),
    ]);
    for (const r of full) assert.match(r.output, /write failed: No space left on device/, r.output);
    // Overwriting pages the region already owns needs no new frame, and reads all work.
    assertQemuIoClean(
      await qemuIo(app.uri('big'), [
        'write -P 0x55 1M 1M',
        'read -P 0x11 0 1M',
        'read -P 0x55 1M 1M',
        'read -P 0x33 4M 4M',
      ]),
      4,
    );

    // A discard gives frames back; the write that failed now succeeds.
    assertQemuIoClean(await qemuIo(app.uri('big'), ['discard 0 2M', 'write -P 0x44 40M 2M']), 2);
    assert.equal((await stats()).memory.freeBytes, 0);
    assertQemuIoClean(
      await qemuIo(app.uri('big'), [
        'read -P 0 0 2M',
        'read -P 0x11 2M 2M',
        'read -P 0x33 4M 4M',
        'read -P 0x44 40M 2M',
      ]),
      4,
    );
    const after = await stats();
    assert.ok(after.nbd.errors >= 4, `errors ${after.nbd.errors}`);
    assert.ok(app.alive);
  },
);
