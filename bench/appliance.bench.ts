/**
 * Appliance data-path figures (issue 3): fio's nbd engine against a real appliance process and
 * against `nbdkit memory` in the same run. Both serve 1 GiB from memory on loopback, both are
 * prefilled with fio before any read (so reads hit data, not holes) and both run the same fio
 * jobs, interleaved job by job (ours then nbdkit, then nbdkit then ours, ...) because this
 * machine is noisy; each figure is the median over `context.repeats` runs.
 *
 *   4 KiB random read IOPS at QD1, QD16, QD64 · 4 KiB random write IOPS at QD1, QD16
 *   1 MiB sequential read and write MiB/s (QD8)
 *   p50 / p99 total latency of 4 KiB random reads at QD1 and QD16 (from the IOPS runs)
 *
 * The appliance runs as `memfabric appliance --memory 2GiB --no-merge` with one 1 GiB region;
 * nbdkit as `nbdkit --foreground --exit-with-parent memory 1 GiB` on a free loopback port. Both
 * are children of this process, stopped by PID. After the prefill, one untimed random-read run
 * on each warms up the read paths (and our JIT). Skipped, saying why, when fio or nbdkit is
 * not installed.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApplianceProcess, missing } from '../test/interop/appliance-process.js';
import { spawnNbdkitMemory } from '../test/nbd/client-servers.js';
import { median, type BenchContext, type Suite } from './harness.js';

const MiB = 1024 * 1024;
/** Both servers serve this much memory; fio spreads its I/O over all of it. */
const REGION_BYTES = 1024 * MiB;
/** Seconds per measured fio run. */
const RUN_S_QUICK = 1;
const RUN_S_FULL = 5;
/** Seconds of the untimed warm-up run on each server. */
const WARMUP_S = 1;
/** Time nbdkit may take to accept connections. */
/** Extra time a fio run may take beyond its runtime (start-up, connect, prefill). */
const FIO_SLACK_MS = 60_000;

export interface Job {
  rw: 'randread' | 'randwrite' | 'read' | 'write';
  bs: string;
  iodepth: number;
}

export interface FioResult {
  iops: number;
  mibps: number;
  /** fio's total-latency percentiles (submission start to completion), in µs. */
  p50us: number;
  p99us: number;
}

interface Target {
  name: string;
  uri: string;
}

/** `nbdkit memory` of the region's size on a free loopback port, stopped by PID. */
async function startNbdkit(): Promise<{ uri: string; stop: () => Promise<void> }> {
  const server = await spawnNbdkitMemory(String(REGION_BYTES));
  return { uri: `nbd://127.0.0.1:${server.port}/`, stop: () => server.stop() };
}

/** One fio run: for `seconds` (time-based), or once over the whole region when `seconds` is null. */
export function fio(
  uri: string,
  job: Job,
  seconds: number | null,
  cwd: string,
  sizeBytes = REGION_BYTES,
  env?: NodeJS.ProcessEnv,
): Promise<FioResult> {
  const args = [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${job.rw}`,
    `--bs=${job.bs}`,
    `--iodepth=${job.iodepth}`,
    `--size=${sizeBytes}`,
    ...(seconds === null ? [] : ['--time_based', `--runtime=${seconds}`]),
    '--norandommap',
    '--randrepeat=0',
    // Total latency (submission + completion): with libnbd, a reply that arrives while fio is
    // still submitting lands in slat, so completion latency alone flatters a fast responder.
    '--lat_percentiles=1',
    '--percentile_list=50:99',
    '--output-format=json',
  ];
  return new Promise((resolve, reject) => {
    execFile(
      'fio',
      args,
      {
        cwd,
        maxBuffer: 16 * MiB,
        timeout: (seconds ?? 0) * 1000 + FIO_SLACK_MS,
        killSignal: 'SIGKILL',
        ...(env ? { env: { ...process.env, ...env } } : {}),
      },
      (err, stdout, stderr) => {
        if (err) return reject(new Error(`fio ${args.join(' ')} failed: ${err.message}\n${stderr}`));
        // fio's nbd engine prints a line before the JSON.
        const parsed = JSON.parse(stdout.slice(stdout.indexOf('{'))) as {
          jobs: Array<Record<string, FioSide> & { error: number }>;
        };
        const result = parsed.jobs[0]!;
        if (result.error !== 0) return reject(new Error(`fio job error ${result.error}: ${stderr}`));
        const side = result[job.rw.includes('read') ? 'read' : 'write']!;
        const percentiles = side.lat_ns.percentile ?? {};
        resolve({
          iops: side.iops,
          mibps: side.bw_bytes / MiB,
          p50us: (percentiles['50.000000'] ?? Number.NaN) / 1000,
          p99us: (percentiles['99.000000'] ?? Number.NaN) / 1000,
        });
      },
    );
  });
}

interface FioSide {
  iops: number;
  bw_bytes: number;
  lat_ns: { percentile?: Record<string, number> };
}

/** Runs `job` on both targets `repeats` times, alternating which goes first; returns all runs. */
async function interleavedFio(
  targets: [Target, Target],
  job: Job,
  repeats: number,
  seconds: number,
  cwd: string,
): Promise<[FioResult[], FioResult[]]> {
  const ours: FioResult[] = [];
  const theirs: FioResult[] = [];
  for (let i = 0; i < repeats; i++) {
    if (i % 2 === 0) {
      ours.push(await fio(targets[0].uri, job, seconds, cwd));
      theirs.push(await fio(targets[1].uri, job, seconds, cwd));
    } else {
      theirs.push(await fio(targets[1].uri, job, seconds, cwd));
      ours.push(await fio(targets[0].uri, job, seconds, cwd));
    }
  }
  return [ours, theirs];
}

const pick = (runs: FioResult[], key: keyof FioResult): number => median(runs.map((r) => r[key]));

function describe(runs: FioResult[], key: keyof FioResult): string {
  return runs.map((r) => Math.round(r[key])).join('/');
}

async function measure(context: BenchContext, targets: [Target, Target], cwd: string): Promise<void> {
  const seconds = context.quick ? RUN_S_QUICK : RUN_S_FULL;
  const baseline = 'nbdkit memory 1G';
  const iopsFigure = async (job: Job, goal: string, latency: boolean): Promise<void> => {
    const [ours, theirs] = await interleavedFio(targets, job, context.repeats, seconds, cwd);
    const label = `${job.bs === '4k' ? '4 KiB' : job.bs} ${job.rw === 'randread' ? 'random read' : 'random write'} QD${job.iodepth}`;
    context.log(`${label} IOPS runs: ours ${describe(ours, 'iops')}, nbdkit ${describe(theirs, 'iops')}`);
    context.record({
      id: `${label} (fio nbd)`,
      unit: 'IOPS',
      value: pick(ours, 'iops'),
      baseline,
      baselineValue: pick(theirs, 'iops'),
      higherIsBetter: true,
      goal,
    });
    if (!latency) return;
    for (const [key, name] of [
      ['p50us', 'p50'],
      ['p99us', 'p99'],
    ] as const) {
      context.record({
        id: `${label} ${name} latency`,
        unit: 'µs',
        value: pick(ours, key),
        baseline,
        baselineValue: pick(theirs, key),
        higherIsBetter: false,
      });
    }
  };
  const sequentialFigure = async (rw: 'read' | 'write'): Promise<void> => {
    const job: Job = { rw, bs: '1m', iodepth: 8 };
    const [ours, theirs] = await interleavedFio(targets, job, context.repeats, seconds, cwd);
    context.log(
      `1 MiB sequential ${rw} MiB/s runs: ours ${describe(ours, 'mibps')}, nbdkit ${describe(theirs, 'mibps')}`,
    );
    context.record({
      id: `1 MiB sequential ${rw} QD8 (fio nbd)`,
      unit: 'MiB/s',
      value: pick(ours, 'mibps'),
      baseline,
      baselineValue: pick(theirs, 'mibps'),
      higherIsBetter: true,
      goal: '>= 0.8x',
    });
  };

  await iopsFigure({ rw: 'randread', bs: '4k', iodepth: 1 }, '>= 0.8x', true);
  await iopsFigure({ rw: 'randread', bs: '4k', iodepth: 16 }, '>= 1.2x', true);
  await iopsFigure({ rw: 'randread', bs: '4k', iodepth: 64 }, '>= 1.2x', false);
  await iopsFigure({ rw: 'randwrite', bs: '4k', iodepth: 1 }, '>= 0.8x', false);
  await iopsFigure({ rw: 'randwrite', bs: '4k', iodepth: 16 }, '>= 1.2x', false);
  await sequentialFigure('read');
  await sequentialFigure('write');
}

export const applianceSuite: Suite = {
  name: 'appliance',
  async run(context) {
    const absent = missing('fio', 'nbdkit');
    if (absent) {
      context.log(`skipped: ${absent}`);
      return;
    }
    const cwd = mkdtempSync(join(tmpdir(), 'memfabric-bench-'));
    let appliance: ApplianceProcess | undefined;
    let nbdkit: { uri: string; stop: () => Promise<void> } | undefined;
    try {
      appliance = await ApplianceProcess.start({ memory: '2GiB', defaultSize: '1MiB', merge: false });
      await appliance.createRegion('bench', REGION_BYTES);
      nbdkit = await startNbdkit();
      const targets: [Target, Target] = [
        { name: 'memfabric', uri: appliance.uri('bench') },
        { name: 'nbdkit', uri: nbdkit.uri },
      ];
      // Prefill all 1 GiB of both (in parallel: first-touch page faults dominate here), so
      // reads hit data and writes overwrite memory already faulted in.
      const started = performance.now();
      await Promise.all(
        targets.map((target) =>
          fio(target.uri, { rw: 'write', bs: '1m', iodepth: 8 }, null, cwd).catch((error: unknown) => {
            throw new Error(`prefilling ${target.name}: ${String(error)}`);
          }),
        ),
      );
      context.log(`prefilled both servers in ${((performance.now() - started) / 1000).toFixed(1)} s`);
      for (const target of targets)
        await fio(target.uri, { rw: 'randread', bs: '4k', iodepth: 16 }, WARMUP_S, cwd);
      await measure(context, targets, cwd);
    } finally {
      await Promise.allSettled([appliance?.stop(), nbdkit?.stop()]);
      rmSync(cwd, { recursive: true, force: true });
    }
  },
};
