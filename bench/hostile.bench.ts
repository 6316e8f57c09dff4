/**
 * RSS of an appliance under the hostile NBD load of issue 12 point 5 (30 connections each
 * pipelining 200 READs of 32 MiB without reading, 20 stalled 32 MiB WRITEs, idle connections,
 * a connection flood, LIST spam; test/interop/hostile-load.ts), beside its memory budget
 * (--memory 256MiB): the ratio is peak RSS / budget.
 *
 * With BENCH_BASELINE_ROOT=/path/to/an/older/checkout the same load also runs against that
 * build's appliance (started with the same flags minus the --nbd-* bounds it may not know),
 * to show what the load did before the bounds.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { ApplianceProcess } from '../test/interop/appliance-process.js';
import { hostileLoad, ISSUE_LOAD, SUITE_LOAD } from '../test/interop/hostile-load.js';
import type { BenchContext, Suite } from './harness.js';

const MiB = 1024 * 1024;
const MEMORY = '256MiB';
const MEMORY_BYTES = 256 * MiB;
const BOUNDS = ['--nbd-buffer-budget', '64MiB', '--nbd-stall-timeout', '2', '--nbd-max-connections', '96'];

interface Target {
  pid: number;
  host: string;
  port: number;
  createRegion(name: string, size: string): Promise<void>;
  stop(): Promise<unknown>;
}

/** An appliance from another checkout: `node --import tsx ROOT/src/cli/main.ts appliance`. */
async function startFrom(root: string): Promise<Target> {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      join(root, 'src', 'cli', 'main.ts'),
      'appliance',
      '--nbd',
      '127.0.0.1:0',
      '--http',
      '127.0.0.1:0',
      '--memory',
      MEMORY,
      '--default-size',
      '64MiB',
    ],
    { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] },
  );
  const line = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('baseline appliance did not start')), 60_000);
    let pending = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (text: string) => {
      pending += text;
      for (const raw of pending.split('\n')) {
        if (!raw.includes('appliance listening')) continue;
        clearTimeout(timer);
        resolve(JSON.parse(raw) as Record<string, unknown>);
      }
    });
  });
  const nbd = String(line.nbd);
  const http = String(line.http);
  return {
    pid: child.pid!,
    host: nbd.slice(0, nbd.lastIndexOf(':')),
    port: Number(nbd.slice(nbd.lastIndexOf(':') + 1)),
    async createRegion(name, size) {
      const r = await fetch(new URL('/v1/regions', http), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ name, size }),
      });
      if (r.status !== 201) throw new Error(`create ${name}: ${r.status}`);
    },
    stop: () =>
      new Promise((resolve) => {
        child.once('close', resolve);
        child.kill('SIGKILL');
      }),
  };
}

interface Measured {
  peakRssBytes: number;
  /** The good client's time for its rounds: alone, then under the hostile load. */
  goodAloneMs: number;
  goodUnderLoadMs: number;
}

async function peakRss(context: BenchContext, target: Target, label: string): Promise<Measured> {
  await target.createRegion('good', '16MiB');
  for (let i = 0; i < 50; i++) await target.createRegion(`r${i}`, '1MiB');
  const load = context.quick ? SUITE_LOAD : ISSUE_LOAD;
  const alone = await hostileLoad({
    ...load,
    readers: 0,
    stalled: 0,
    idle: 0,
    flood: 0,
    listers: 0,
    host: target.host,
    port: target.port,
    pid: target.pid,
    region: 'default',
    goodRegion: 'good',
  });
  const result = await hostileLoad({
    ...load,
    host: target.host,
    port: target.port,
    pid: target.pid,
    region: 'default',
    goodRegion: 'good',
  });
  context.log(
    `${label}: RSS ${(result.rssStartBytes / MiB).toFixed(0)} -> peak ${(result.rssMaxBytes / MiB).toFixed(0)} MiB, ` +
      `good client ${result.goodRoundsOk}/${load.goodRounds} rounds correct in ${result.goodMs} ms ` +
      `(alone: ${alone.goodMs} ms), ${result.elapsedMs} ms in all`,
  );
  return { peakRssBytes: result.rssMaxBytes, goodAloneMs: alone.goodMs, goodUnderLoadMs: result.goodMs };
}

export const hostileSuite: Suite = {
  name: 'hostile',
  async run(context) {
    const app = await ApplianceProcess.start({ memory: MEMORY, defaultSize: '64MiB', args: BOUNDS });
    try {
      const measured = await peakRss(
        context,
        {
          ...app,
          pid: app.pid,
          host: app.nbdHost,
          port: app.nbdPort,
          createRegion: (n, s) => app.createRegion(n, s),
          stop: () => app.stop(),
        },
        'bounded',
      );
      context.record({
        id: 'appliance RSS under hostile NBD load (peak)',
        unit: 'MiB',
        value: measured.peakRssBytes / MiB,
        baseline: 'memory budget (--memory)',
        baselineValue: MEMORY_BYTES / MiB,
        higherIsBetter: false,
        goal: '≤ budget + 64 MiB buffers + 192 MiB overhead',
      });
      context.record({
        id: 'good client 3 x (4 MiB write + read) under hostile load',
        unit: 'ms',
        value: measured.goodUnderLoadMs,
        baseline: 'the same client alone',
        baselineValue: measured.goodAloneMs,
        higherIsBetter: false,
      });
    } finally {
      await app.stop();
    }
    const root = process.env.BENCH_BASELINE_ROOT;
    if (root === undefined) return;
    const old = await startFrom(root);
    try {
      const measured = await peakRss(context, old, `baseline build at ${root}`);
      context.record({
        id: 'same load, build without bounds (peak RSS)',
        unit: 'MiB',
        value: measured.peakRssBytes / MiB,
        baseline: 'memory budget (--memory)',
        baselineValue: MEMORY_BYTES / MiB,
        higherIsBetter: false,
      });
    } finally {
      await old.stop();
    }
  },
};
