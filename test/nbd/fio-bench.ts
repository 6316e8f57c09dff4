/**
 * Manual benchmark (not run by the test runner): fio 4 KiB random reads against our server
 * (serving the test MemoryExport from a child process) and against `nbdkit memory`, interleaved
 * round by round so that both see the same machine state; prints the median IOPS of each.
 *
 *   node --import tsx test/nbd/fio-bench.ts [rounds=5] [seconds=3] [iodepths=1,16] [rw=randread]
 *
 * The server runs in its own process, as an appliance would, so fio and the server do not share
 * an event loop with this script.
 */
import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';

const GiB = 1024 * 1024 * 1024;

if (process.argv[2] === '--serve') {
  // Child mode: serve a 1 GiB MemoryExport and print the port.
  const { MemoryDirectory, MemoryExport } = await import('./memory-export.js');
  const { NbdServer } = await import('../../src/nbd/server.js');
  const dir = new MemoryDirectory();
  dir.add('', new MemoryExport(GiB, 4096, false, 'bench'));
  const server = new NbdServer({ directory: dir });
  const { port } = await server.listen(0);
  process.stdout.write(`PORT ${port}\n`);
  process.on('SIGTERM', () => void server.close().then(() => process.exit(0)));
} else {
  await main();
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const address = s.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      s.close(() => resolve(port));
    });
  });
}

function fio(uri: string, iodepth: number, seconds: number, rw: string): Promise<number> {
  const args = [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${rw}`,
    '--bs=4k',
    `--iodepth=${iodepth}`,
    '--size=1G',
    '--time_based',
    `--runtime=${seconds}`,
    '--output-format=json',
  ];
  return new Promise((resolve, reject) => {
    execFile('fio', args, { maxBuffer: 64 * 1024 * 1024 }, (err, stdout) => {
      if (err) return reject(err);
      const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0];
      resolve(rw.includes('read') ? job.read.iops : job.write.iops);
    });
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function main(): Promise<void> {
  const rounds = Number(process.argv[2] ?? 5);
  const seconds = Number(process.argv[3] ?? 3);
  const depths = (process.argv[4] ?? '1,16').split(',').map(Number);
  const rw = process.argv[5] ?? 'randread';

  const ours: ChildProcess = spawn(
    process.execPath,
    ['--import', 'tsx', new URL(import.meta.url).pathname, '--serve'],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const [line] = (await once(ours.stdout!, 'data')) as [Buffer];
  const oursPort = Number(/PORT (\d+)/.exec(line.toString())?.[1]);
  const nbdkitPort = await freePort();
  const nbdkit = spawn('nbdkit', ['-f', '-p', String(nbdkitPort), '-i', '127.0.0.1', 'memory', '1G'], {
    stdio: 'inherit',
  });
  await new Promise((r) => setTimeout(r, 500));
  try {
    for (const depth of depths) {
      const results = { memfabric: [] as number[], nbdkit: [] as number[] };
      for (let round = 0; round < rounds; round++) {
        results.memfabric.push(await fio(`nbd://127.0.0.1:${oursPort}/`, depth, seconds, rw));
        results.nbdkit.push(await fio(`nbd://127.0.0.1:${nbdkitPort}/`, depth, seconds, rw));
      }
      const m = median(results.memfabric);
      const n = median(results.nbdkit);
      console.log(
        `${rw} 4k QD${depth}: memfabric ${Math.round(m)} IOPS, nbdkit memory ${Math.round(n)} IOPS, ratio ${(m / n).toFixed(2)}  ` +
          `(rounds: ${results.memfabric.map(Math.round).join('/')} vs ${results.nbdkit.map(Math.round).join('/')})`,
      );
    }
  } finally {
    ours.kill('SIGTERM');
    nbdkit.kill('SIGTERM');
  }
}
