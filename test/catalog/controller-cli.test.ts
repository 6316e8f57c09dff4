/**
 * `memfabric controller` as real processes (src/cli/controller-command.ts) beside appliances
 * started with `--no-controller`, on a real etcd member:
 *   - appliances with --no-controller run no candidate; two standalone controllers do, one leads;
 *   - the leader stopped with SIGTERM resigns and exits 0, and the other leads;
 *   - two appliances SIGKILLed at once: a coded 2+1 region that lost two shards is reported
 *     failed with MF_DATA_LOST and not retried (not even by a later scan), while a mirrored region that lost one copy is
 *     rebuilt (its bytes verified).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CONTROLLER_STATUS_KEY, type ControllerStatus } from '../../src/catalog/controller.js';
import { EtcdCatalog } from '../../src/catalog/etcd-catalog.js';
import { EtcdKeys } from '../../src/catalog/etcd.js';
import { ErrorCodes, MemfabricError } from '../../src/errors.js';
import { Fabric } from '../../src/fabric/fabric.js';
import type { ExternalRegion } from '../../src/fabric/external-region.js';
import { ApplianceProcess } from '../interop/appliance-process.js';
import { EtcdCluster, until } from '../support/etcd-cluster.js';
import { memfabricCommand } from '../support/cli.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const WAIT_MS = 60_000;
const SIZE = 2 * 1024 * 1024;

interface ControllerProcess {
  child: ChildProcess;
  output: { text: string };
  exited: Promise<number | null>;
}

function startController(args: string[]): ControllerProcess {
  const child = spawn(process.execPath, [...memfabricCommand(), 'controller', ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output = { text: '' };
  child.stdout!.on('data', (chunk: Buffer) => (output.text += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output.text += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  return { child, output, exited };
}

function idOf(controller: ControllerProcess): string | undefined {
  const line = controller.output.text.split('\n').find((l) => l.includes('controller campaigning'));
  return line ? (JSON.parse(line) as { id: string }).id : undefined;
}

test('memfabric controller: standalone candidates, a clean handover, MF_DATA_LOST not retried', async (t) => {
  const cluster = await EtcdCluster.start(t, { members: 1 });
  if (!cluster) return;
  const endpoints = cluster.endpoints;
  const apps = await Promise.all(
    Array.from({ length: 4 }, async () => {
      const app = await ApplianceProcess.start({
        memory: '32MiB',
        args: ['--etcd', endpoints.join(','), '--etcd-ttl', '1', '--no-merge', '--no-controller'],
      });
      t.after(() => app.stop());
      return app;
    }),
  );
  for (const app of apps) {
    const listening = app.logs.find((l) => l.msg === 'appliance listening');
    assert.equal(listening?.controller, undefined, '--no-controller runs no candidate');
  }
  const controllers = [0, 1].map(() => {
    const controller = startController([
      '--etcd',
      endpoints.join(','),
      '--etcd-ttl',
      '1',
      '--token-file',
      apps[0]!.tokenFile,
      '--max-concurrent-rebuilds',
      '2',
      '--rebuild-rate',
      '256MiB',
    ]);
    t.after(() => {
      if (controller.child.exitCode === null && controller.child.signalCode === null) {
        process.kill(controller.child.pid!, 'SIGKILL');
      }
    });
    return controller;
  });
  const etcd = cluster.client();
  t.after(() => etcd.close());
  const catalog = new EtcdCatalog({ endpoints });
  t.after(() => catalog.close());
  const status = async (): Promise<ControllerStatus | undefined> => {
    const text = await etcd.get(CONTROLLER_STATUS_KEY).string();
    return text === null ? undefined : (JSON.parse(text) as ControllerStatus);
  };
  await until('both controllers to campaign', () => controllers.every((c) => idOf(c) !== undefined), WAIT_MS);
  await until(
    'one of them to lead',
    async () => {
      const leader = (await status())?.leader;
      return controllers.some((c) => idOf(c) === leader);
    },
    WAIT_MS,
  );
  const leaderId = (await status())!.leader;
  const [leading, standby] =
    idOf(controllers[0]!) === leaderId
      ? [controllers[0]!, controllers[1]!]
      : [controllers[1]!, controllers[0]!];

  // A clean stop resigns: the standby leads without waiting for a lease to expire.
  process.kill(leading.child.pid!, 'SIGTERM');
  assert.equal(await leading.exited, 0, `the leader exits 0 on SIGTERM:\n${leading.output.text}`);
  await until('the standby to lead', async () => (await status())?.leader === idOf(standby), WAIT_MS);

  // Two appliances die at once: "doomed" (coded 2+1 on apps 0..2) loses two shards; "saved"
  // (two copies, on apps 2 and 3) loses one.
  const fabric = new Fabric({ etcd: endpoints, token: apps[0]!.token });
  t.after(() => fabric.close());
  const bytes = randomBytes(SIZE);
  const doomed = (await fabric.allocate({
    size: SIZE,
    redundancy: { data: 2, parity: 1 },
    name: 'doomed',
    placement: { appliances: apps.slice(0, 3).map((a) => a.httpUrl) },
  })) as ExternalRegion;
  await doomed.write(0, bytes);
  await doomed.detach();
  const saved = (await fabric.allocate({
    size: SIZE,
    redundancy: { copies: 2 },
    name: 'saved',
    placement: { appliances: [apps[2]!.httpUrl, apps[3]!.httpUrl] },
  })) as ExternalRegion;
  await saved.write(0, bytes);
  await saved.detach();
  const savedBefore = (await catalog.get('default', 'saved'))!.descriptor.generation;
  await Promise.all([apps[1]!.kill(), apps[2]!.kill()]);

  await until(
    'doomed reported MF_DATA_LOST and saved rebuilt',
    async () => {
      const s = await status();
      return (
        s?.failed.some((f) => f.name === 'doomed' && f.code === ErrorCodes.DATA_LOST) === true &&
        s.completed.some((c) => c.name === 'saved')
      );
    },
    WAIT_MS,
  );
  const failure = (await status())!.failed.find((f) => f.name === 'doomed')!;
  assert.equal(failure.retryAt, undefined, 'a region past its redundancy is not retried');
  // Another scan (an appliance that joins and leaves cleanly) does not try it again.
  const passer = await ApplianceProcess.start({
    memory: '16MiB',
    args: ['--etcd', endpoints.join(','), '--etcd-ttl', '1', '--no-merge', '--no-controller'],
  });
  t.after(() => passer.stop());
  await until(
    'the passing appliance to register',
    async () => (await etcd.getAll().prefix(EtcdKeys.appliances).keys()).length === 3,
    WAIT_MS,
  );
  await passer.stop();
  const leftAt = Date.now();
  await until('a status written after the rescan', async () => ((await status())?.at ?? 0) > leftAt, WAIT_MS);
  const after = (await status())!.failed.find((f) => f.name === 'doomed')!;
  assert.equal(after.attempts, failure.attempts, 'not tried again');
  assert.equal(after.code, ErrorCodes.DATA_LOST);
  const savedNow = (await catalog.get('default', 'saved'))!.descriptor;
  assert.ok(savedNow.generation > savedBefore);
  const live = new Set([apps[0]!.httpUrl, apps[3]!.httpUrl]);
  assert.ok(
    savedNow.shards.every((s) => s.state === 'live' && live.has(s.appliance)),
    JSON.stringify(savedNow.shards),
  );
  // The controller has detached; its appliance may count the NBD connection a moment longer.
  let reopened: ExternalRegion | undefined;
  await until(
    'saved to open',
    async () => {
      try {
        reopened = await fabric.open('saved');
        return true;
      } catch (error) {
        if (error instanceof MemfabricError && error.code === ErrorCodes.BUSY) return false;
        throw error;
      }
    },
    WAIT_MS,
  );
  reopened = reopened!;
  assert.ok(Buffer.from(await reopened.read(0, SIZE)).equals(bytes), 'every byte of saved');
  await reopened.detach();
});
