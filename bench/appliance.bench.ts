/**
 * Appliance data-path figures (issue 3): fio's nbd engine against a real appliance process and
 * against `nbdkit memory` in the same run. Both serve the same export from memory on loopback
 * (4 GiB in the full run, 1 GiB with --quick; the baseline's name says which), both are
 * prefilled with fio before any read (so reads hit data, not holes) and both run the same fio
 * jobs, interleaved job by job (ours then nbdkit, then nbdkit then ours, ...) because this
 * machine is noisy; each figure is the median over `context.repeats` runs.
 *
 *   4 KiB random read IOPS at QD1, QD16, QD64 · 4 KiB random write IOPS at QD1, QD16
 *   1 MiB sequential read and write MiB/s (QD8)
 *   p50 / p99 total latency of 4 KiB random reads at QD1, QD16 and QD64 (from the IOPS runs)
 *
 * The appliance runs as `memfabric appliance --memory <size + 1 GiB> --no-merge` with one region
 * of the export size; nbdkit as `nbdkit --foreground --exit-with-parent memory <size>` on a free
 * loopback port. Both are children of this process, stopped by PID. After the prefill, one
 * untimed random-read run on each warms up the read paths (and our JIT). Skipped, saying why,
 * when fio or nbdkit is not installed.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApplianceProcess, missing } from '../test/interop/appliance-process.js';
import { spawnNbdkitMemory } from '../test/nbd/client-servers.js';
import { median, type BenchContext, type Suite } from './harness.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/**
 * Both servers serve this much memory; fio spreads its random I/O over all of it. The full run
 * uses the 4 GiB (a working set far beyond the CPU caches, as a VM disk's would be);
 * quick runs 1 GiB, since prefilling costs about a minute per 4 GiB here (first-touch faults).
 */
const REGION_BYTES_QUICK = 1 * GiB;
const REGION_BYTES_FULL = 4 * GiB;
/** fio's default --size in the figures that reuse `fio` (tls.bench.ts): the quick region. */
const REGION_BYTES = REGION_BYTES_QUICK;
/** Seconds per measured fio run. */
const RUN_S_QUICK = 1;
const RUN_S_FULL = 5;
/** Seconds of the untimed warm-up run on each server. */
const WARMUP_S = 1;
/** Extra time a fio run may take beyond its runtime (start-up, connect). */
const FIO_SLACK_MS = 60_000;
/**
 * Time a run over the whole region (seconds null: the prefill) may take per GiB, beyond the
 * slack: first-touch writes are slow here (4 GiB took 52 s alone, 118-168 s for two servers at
 * once at load 10-18 on 2 cores), so the fixed minute killed the 4 GiB prefill.
 */
const FIO_WHOLE_MS_PER_GIB = 60_000;

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

/** `nbdkit memory` of `bytes` on a free loopback port, stopped by PID. */
async function startNbdkit(bytes: number): Promise<{ uri: string; stop: () => Promise<void> }> {
  const server = await spawnNbdkitMemory(String(bytes));
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
        timeout:
          (seconds === null ? (sizeBytes / GiB) * FIO_WHOLE_MS_PER_GIB : seconds * 1000) + FIO_SLACK_MS,
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
  sizeBytes: number,
): Promise<[FioResult[], FioResult[]]> {
  const ours: FioResult[] = [];
  const theirs: FioResult[] = [];
  for (let i = 0; i < repeats; i++) {
    if (i % 2 === 0) {
      ours.push(await fio(targets[0].uri, job, seconds, cwd, sizeBytes));
      theirs.push(await fio(targets[1].uri, job, seconds, cwd, sizeBytes));
    } else {
      theirs.push(await fio(targets[1].uri, job, seconds, cwd, sizeBytes));
      ours.push(await fio(targets[0].uri, job, seconds, cwd, sizeBytes));
    }
  }
  return [ours, theirs];
}

const pick = (runs: FioResult[], key: keyof FioResult): number => median(runs.map((r) => r[key]));

function describe(runs: FioResult[], key: keyof FioResult): string {
  return runs.map((r) => Math.round(r[key])).join('/');
}

async function measure(
  context: BenchContext,
  targets: [Target, Target],
  cwd: string,
  sizeBytes: number,
): Promise<void> {
  const seconds = context.quick ? RUN_S_QUICK : RUN_S_FULL;
  // The export size is in the baseline's name (ids stay the same in quick and full runs).
  const baseline = `nbdkit memory ${sizeBytes / GiB}G`;
  const iopsFigure = async (job: Job, goal: string, latency: boolean, p99Goal?: string): Promise<void> => {
    const [ours, theirs] = await interleavedFio(targets, job, context.repeats, seconds, cwd, sizeBytes);
    const label = `${job.bs === '4k' ? '4 KiB' : job.bs} ${job.rw === 'randread' ? 'random read' : 'random write'} QD${job.iodepth}`;
    context.log(`${label} IOPS runs: ours ${describe(ours, 'iops')}, nbdkit ${describe(theirs, 'iops')}`);
    if (latency) {
      context.log(
        `${label} p99 µs runs: ours ${describe(ours, 'p99us')}, nbdkit ${describe(theirs, 'p99us')}`,
      );
    }
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
        ...(name === 'p99' && p99Goal !== undefined ? { goal: p99Goal } : {}),
      });
    }
  };
  const sequentialFigure = async (rw: 'read' | 'write'): Promise<void> => {
    const job: Job = { rw, bs: '1m', iodepth: 8 };
    const [ours, theirs] = await interleavedFio(targets, job, context.repeats, seconds, cwd, sizeBytes);
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
      // Issue 13's goals: reads at 0.9x of nbdkit memory, writes at 0.8x.
      goal: rw === 'read' ? '>= 0.9x' : '>= 0.8x',
    });
  };

  await iopsFigure({ rw: 'randread', bs: '4k', iodepth: 1 }, '>= 0.8x', true);
  await iopsFigure({ rw: 'randread', bs: '4k', iodepth: 16 }, '>= 1.2x', true);
  await iopsFigure({ rw: 'randread', bs: '4k', iodepth: 64 }, '>= 1.2x', true, '<= 1.5x');
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
    const sizeBytes = context.quick ? REGION_BYTES_QUICK : REGION_BYTES_FULL;
    context.log(`export size ${sizeBytes / GiB} GiB on both servers`);
    try {
      // Room for the region and 1 GiB more (the appliance's own heap lives outside this pool).
      const memory = `${sizeBytes / GiB + 1}GiB`;
      appliance = await ApplianceProcess.start({ memory, defaultSize: '1MiB', merge: false });
      await appliance.createRegion('bench', sizeBytes);
      nbdkit = await startNbdkit(sizeBytes);
      const targets: [Target, Target] = [
        { name: 'memfabric', uri: appliance.uri('bench') },
        { name: 'nbdkit', uri: nbdkit.uri },
      ];
      // Prefill all of both (in parallel: first-touch page faults dominate here), so
      // reads hit data and writes overwrite memory already faulted in.
      const started = performance.now();
      await Promise.all(
        targets.map((target) =>
          fio(target.uri, { rw: 'write', bs: '1m', iodepth: 8 }, null, cwd, sizeBytes).catch(
            (error: unknown) => {
              throw new Error(`prefilling ${target.name}: ${String(error)}`);
            },
          ),
        ),
      );
      context.log(`prefilled both servers in ${((performance.now() - started) / 1000).toFixed(1)} s`);
      for (const target of targets)
        await fio(target.uri, { rw: 'randread', bs: '4k', iodepth: 16 }, WARMUP_S, cwd, sizeBytes);
      await measure(context, targets, cwd, sizeBytes);
    } finally {
      await Promise.allSettled([appliance?.stop(), nbdkit?.stop()]);
      rmSync(cwd, { recursive: true, force: true });
    }
  },
};
