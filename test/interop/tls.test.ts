/**
 * NBD TLS with real clients against a real appliance process started with
 * `--tls require --tls-psk FILE --tls-certificates DIR --tls-verify-peer`: libnbd's nbdinfo and
 * nbdcopy over `nbds://` with TLS-PSK (`?tls-psk-file=`) and X.509 (`?tls-certificates=`),
 * qemu-io with `--object tls-creds-psk` and `tls-creds-x509`, a tenant that cannot list or open
 * another tenant's region, plain clients refused with no data served, and bad credentials that
 * fail the handshake while the appliance keeps serving. Keys and certificates are made per run
 * (openssl CLI, crypto.randomBytes).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as C from '../../src/nbd/protocol/constants.js';
import { RawClient } from '../nbd/raw-client.js';
import { makePsk, makeX509 } from '../nbd/tls-credentials.js';
import { ApplianceProcess, MiB, missing, run, runOk, tempDir } from './appliance-process.js';

interface Stats {
  nbd: { bytesRead: number; bytesWritten: number; requests: Record<string, number> };
}

test(
  'real clients over TLS: PSK and X.509, tenants, plain clients refused, bad credentials',
  { skip: missing('nbdinfo', 'nbdcopy', 'qemu-io', 'openssl') },
  async (t) => {
    const dir = tempDir(t, 'memfabric-interop-tls-');
    const psk = makePsk(dir, ['tenant-a', 'tenant-b', 'ops']);
    const x509 = makeX509(dir, ['tenant-b']);
    const app = await ApplianceProcess.start({
      memory: '64MiB',
      defaultSize: '1MiB',
      args: [
        '--tls',
        'require',
        '--tls-psk',
        psk.file,
        '--tls-certificates',
        x509.serverDir,
        '--tls-verify-peer',
        '--tls-admin',
        'ops',
      ],
    });
    t.after(() => app.stop());
    await app.createRegion('a-disk', 8 * MiB, { tenant: 'tenant-a' });
    await app.createRegion('b-disk', 8 * MiB, { tenant: 'tenant-b' });
    const at = `${app.nbdHost}:${app.nbdPort}`;
    const aFile = psk.clientFile('tenant-a');
    const asA = (name: string): string => `nbds://tenant-a@${at}/${name}?tls-psk-file=${aFile}`;
    const asB = (name: string): string =>
      `nbds://${at}/${name}?tls-certificates=${x509.clientDir('tenant-b')}`;

    // Plain clients first, so the counters below show that nothing was served to them.
    const plainInfo = await run('nbdinfo', [`nbd://${at}/a-disk`]);
    assert.notEqual(plainInfo.code, 0, plainInfo.output);
    const plainList = await run('nbdinfo', ['--list', `nbd://${at}/`]);
    assert.notEqual(plainList.code, 0, plainList.output);
    const raw = await RawClient.handshake(app.nbdPort);
    t.after(() => raw.destroy());
    raw.sendOption(C.OPT_GO, Buffer.from([0, 0, 0, 6, ...Buffer.from('a-disk'), 0, 0]));
    assert.equal((await raw.readOptionReply()).type, C.REP_ERR_TLS_REQD);
    raw.sendOption(C.OPT_LIST);
    assert.equal((await raw.readOptionReply()).type, C.REP_ERR_TLS_REQD);
    const untouched = (await app.api<Stats>('GET', '/v1/stats')).body.nbd;
    assert.equal(untouched.bytesRead + untouched.bytesWritten, 0, 'no data was served in plain text');

    // nbdinfo with PSK: TLS negotiated, the region as created.
    const info = JSON.parse((await runOk('nbdinfo', ['--json', asA('a-disk')])).stdout) as {
      TLS: boolean;
      exports: Array<{ 'export-name': string; 'export-size': number }>;
    };
    assert.equal(info.TLS, true);
    assert.equal(info.exports[0]!['export-size'], 8 * MiB);

    // Tenants: each lists only its own; the other's region fails exactly as a missing one.
    const listA = await runOk('nbdinfo', ['--list', '--json', asA('')]);
    const listedA = (JSON.parse(listA.stdout) as { exports: Array<{ 'export-name': string }> }).exports;
    assert.deepEqual(
      listedA.map((e) => e['export-name']),
      ['a-disk'],
    );
    const listB = await runOk('nbdinfo', ['--list', '--json', asB('')]);
    const listedB = (JSON.parse(listB.stdout) as { exports: Array<{ 'export-name': string }> }).exports;
    assert.deepEqual(
      listedB.map((e) => e['export-name']),
      ['b-disk'],
    );
    const opsFile = psk.clientFile('ops');
    const listOps = await runOk('nbdinfo', ['--list', '--json', `nbds://ops@${at}/?tls-psk-file=${opsFile}`]);
    const listedOps = (JSON.parse(listOps.stdout) as { exports: Array<{ 'export-name': string }> }).exports;
    assert.deepEqual(listedOps.map((e) => e['export-name']).sort(), ['a-disk', 'b-disk', 'default']);
    const other = await run('nbdinfo', [asA('b-disk')]);
    const absent = await run('nbdinfo', [asA('no-disk')]);
    assert.notEqual(other.code, 0);
    assert.equal(other.code, absent.code);
    assert.equal(other.stderr.replaceAll('b-disk', 'NAME'), absent.stderr.replaceAll('no-disk', 'NAME'));

    // nbdcopy round trip over TLS-PSK.
    const input = join(dir, 'in.bin');
    const output = join(dir, 'out.bin');
    writeFileSync(input, randomBytes(8 * MiB));
    await runOk('nbdcopy', [input, asA('a-disk')]);
    await runOk('nbdcopy', [asA('a-disk'), output]);
    assert.ok(readFileSync(output).equals(readFileSync(input)), 'nbdcopy read back what it wrote');

    // qemu-io over TLS-PSK (a directory holding keys.psk) and X.509 (client certificate CN = tenant).
    const qemuPsk = await runOk('qemu-io', [
      '--object',
      `tls-creds-psk,id=tls0,endpoint=client,dir=${psk.qemuDir('tenant-a')},username=tenant-a`,
      '--image-opts',
      `driver=nbd,server.type=inet,server.host=${app.nbdHost},server.port=${app.nbdPort},export=a-disk,tls-creds=tls0`,
      '-c',
      'write -P 0x5c 1M 1M',
      '-c',
      'read -P 0x5c 1M 1M',
    ]);
    assert.doesNotMatch(qemuPsk.output, /fail|error/i, qemuPsk.output);
    assert.equal(
      (qemuPsk.output.match(/^(wrote|read) 1048576\/1048576 bytes/gm) ?? []).length,
      2,
      qemuPsk.output,
    );
    const qemuX509 = await runOk('qemu-io', [
      '--object',
      `tls-creds-x509,id=tls0,endpoint=client,dir=${x509.clientDir('tenant-b')}`,
      '--image-opts',
      `driver=nbd,server.type=inet,server.host=${app.nbdHost},server.port=${app.nbdPort},export=b-disk,tls-creds=tls0`,
      '-c',
      'write -P 0x3e 0 64k',
      '-c',
      'read -P 0x3e 0 64k',
    ]);
    assert.doesNotMatch(qemuX509.output, /fail|error/i, qemuX509.output);
    // tenant-a's bytes from qemu are there for nbdcopy (a different client, same region).
    await runOk('nbdcopy', [asA('a-disk'), output]);
    assert.ok(
      readFileSync(output)
        .subarray(MiB, 2 * MiB)
        .equals(Buffer.alloc(MiB, 0x5c)),
    );

    // Bad credentials: a wrong key, another CA. Each fails; the appliance serves the next client.
    const wrongKey = psk.clientFile('tenant-a', randomBytes(32));
    const bad = await run('nbdinfo', [`nbds://tenant-a@${at}/a-disk?tls-psk-file=${wrongKey}`]);
    assert.notEqual(bad.code, 0, bad.output);
    const wrongCa = await run('nbdinfo', [`nbds://${at}/b-disk?tls-certificates=${x509.otherCaDir}`]);
    assert.notEqual(wrongCa.code, 0, wrongCa.output);
    const rogue = await run('nbdinfo', [`nbds://${at}/b-disk?tls-certificates=${x509.rogueClientDir}`]);
    assert.notEqual(rogue.code, 0, `a certificate from another CA was accepted:\n${rogue.output}`);
    assert.ok(app.alive);
    await runOk('nbdinfo', ['--size', asA('a-disk')]);
    await runOk('nbdinfo', ['--size', asB('b-disk')]);
  },
);
