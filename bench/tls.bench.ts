/**
 * NBD over TLS against plain NBD (issue 12): fio's nbd engine against one appliance process
 * started with `--tls on`, so the same server, region and memory serve both: the TLS runs
 * connect with a libnbd `nbds://` URI, the plain runs with `nbd://`. Runs are interleaved (TLS
 * then plain, then plain then TLS, ...) because this machine is noisy; medians of
 * `context.repeats` runs.
 *
 *   4 KiB random read IOPS at QD16 · 1 MiB sequential read and write MiB/s (QD8)
 *
 * Goal: TLS >= 0.7x plain. The credentials are X.509 (made with the openssl CLI at start):
 * fio's engine does not let a URI name local files (libnbd refuses `tls-psk-file=` unless the
 * program allows it), so fio finds the CA in libnbd's default place, $HOME/.pki/libnbd/, with
 * HOME pointing at a temporary directory. After the handshake TLS-PSK and X.509 sessions run
 * the same record layer (the server prefers AES-128-GCM for both), so the figures stand for
 * PSK too. The region (256 MiB) is prefilled over plain NBD so reads hit data. Skipped, saying
 * why, when fio or openssl is not installed.
 */
import { cpSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApplianceProcess, missing } from '../test/interop/appliance-process.js';
import { makeX509 } from '../test/nbd/tls-credentials.js';
import { fio, type FioResult, type Job } from './appliance.bench.js';
import { median, type BenchContext, type Suite } from './harness.js';

const MiB = 1024 * 1024;
const REGION_BYTES = 256 * MiB;
const RUN_S_QUICK = 1;
const RUN_S_FULL = 5;
const WARMUP_S = 1;

interface Side {
  uri: string;
  env?: NodeJS.ProcessEnv;
}

async function interleaved(
  sides: [tls: Side, plain: Side],
  job: Job,
  repeats: number,
  seconds: number,
  cwd: string,
): Promise<[FioResult[], FioResult[]]> {
  const run = (side: Side): Promise<FioResult> => fio(side.uri, job, seconds, cwd, REGION_BYTES, side.env);
  const tls: FioResult[] = [];
  const plain: FioResult[] = [];
  for (let i = 0; i < repeats; i++) {
    if (i % 2 === 0) {
      tls.push(await run(sides[0]));
      plain.push(await run(sides[1]));
    } else {
      plain.push(await run(sides[1]));
      tls.push(await run(sides[0]));
    }
  }
  return [tls, plain];
}

async function measure(context: BenchContext, sides: [Side, Side], cwd: string): Promise<void> {
  const seconds = context.quick ? RUN_S_QUICK : RUN_S_FULL;
  const figure = async (job: Job, label: string, key: 'iops' | 'mibps', unit: string): Promise<void> => {
    const [tls, plain] = await interleaved(sides, job, context.repeats, seconds, cwd);
    const runs = (r: FioResult[]): string => r.map((x) => Math.round(x[key])).join('/');
    context.log(`${label} runs: TLS ${runs(tls)}, plain ${runs(plain)}`);
    context.record({
      id: `${label} over TLS (fio nbd)`,
      unit,
      value: median(tls.map((r) => r[key])),
      baseline: 'same appliance, plain NBD',
      baselineValue: median(plain.map((r) => r[key])),
      higherIsBetter: true,
      goal: '>= 0.7x',
    });
  };
  await figure({ rw: 'randread', bs: '4k', iodepth: 16 }, '4 KiB random read QD16', 'iops', 'IOPS');
  await figure({ rw: 'read', bs: '1m', iodepth: 8 }, '1 MiB sequential read QD8', 'mibps', 'MiB/s');
  await figure({ rw: 'write', bs: '1m', iodepth: 8 }, '1 MiB sequential write QD8', 'mibps', 'MiB/s');
}

export const tlsSuite: Suite = {
  name: 'tls',
  async run(context) {
    const absent = missing('fio', 'openssl');
    if (absent) {
      context.log(`skipped: ${absent}`);
      return;
    }
    const cwd = mkdtempSync(join(tmpdir(), 'memfabric-bench-tls-'));
    let appliance: ApplianceProcess | undefined;
    try {
      const x509 = makeX509(join(cwd, 'pki'), []);
      const home = join(cwd, 'home');
      mkdirSync(join(home, '.pki', 'libnbd'), { recursive: true });
      cpSync(join(x509.serverDir, 'ca-cert.pem'), join(home, '.pki', 'libnbd', 'ca-cert.pem'));
      appliance = await ApplianceProcess.start({
        memory: '512MiB',
        defaultSize: '1MiB',
        merge: false,
        args: ['--tls', 'on', '--tls-certificates', x509.serverDir],
      });
      await appliance.createRegion('bench', REGION_BYTES);
      const sides: [Side, Side] = [
        { uri: `nbds://${appliance.nbdHost}:${appliance.nbdPort}/bench`, env: { HOME: home } },
        { uri: appliance.uri('bench') },
      ];
      await fio(sides[1].uri, { rw: 'write', bs: '1m', iodepth: 8 }, null, cwd, REGION_BYTES);
      for (const side of sides) {
        await fio(side.uri, { rw: 'randread', bs: '4k', iodepth: 16 }, WARMUP_S, cwd, REGION_BYTES, side.env);
      }
      await measure(context, sides, cwd);
    } finally {
      await appliance?.stop();
      rmSync(cwd, { recursive: true, force: true });
    }
  },
};
