#!/usr/bin/env node
// `npm run test:mutation [group ...]`: runs StrykerJS once per module group (scripts/mutation-groups.mjs),
// each mutating its modules and running only its test files. Groups run MUTATION_JOBS at a time
// (default 2), each with MUTATION_CONCURRENCY test runners (default 1): on a 2-core machine two
// groups side by side keep both cores busy, including while one group is still type-checking its
// mutants. Each group's log goes to reports/mutation/<group>.log, its reports to
// reports/mutation/<group>.{html,json}; the scores per module are summarised at the end. See
// docs/testing.md.
import { spawn } from 'node:child_process';
import { createWriteStream, mkdirSync, readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { groups } from './mutation-groups.mjs';

const wanted = process.argv.slice(2);
for (const name of wanted) {
  if (!(name in groups)) {
    console.error(`unknown mutation group "${name}"; choose from ${Object.keys(groups).join(', ')}`);
    process.exit(2);
  }
}
// Groups marked `extra` (later issues' code) run only when named.
const names = wanted.length > 0 ? wanted : Object.keys(groups).filter((name) => !groups[name].extra);
const jobs = Math.max(1, Number(process.env.MUTATION_JOBS ?? 2));
const minutes = (since) => ((Date.now() - since) / 60000).toFixed(1);
const load = () =>
  loadavg()
    .map((l) => l.toFixed(1))
    .join(' ');

mkdirSync('reports/mutation', { recursive: true });
const started = Date.now();
console.log(`mutation run: ${names.join(', ')}; ${jobs} at a time; load average ${load()}`);

function runGroup(name) {
  const since = Date.now();
  const log = createWriteStream(`reports/mutation/${name}.log`);
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      ['node_modules/@stryker-mutator/core/bin/stryker.js', 'run', 'stryker.config.mjs'],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: {
          ...process.env,
          MUTATION_GROUP: name,
          MUTATION_CONCURRENCY: process.env.MUTATION_CONCURRENCY ?? '1',
        },
      },
    );
    child.stdout.pipe(log);
    child.stderr.pipe(log);
    child.on('close', (status) => {
      const ok = status === 0;
      console.log(
        `mutation group ${name} ${ok ? 'done' : `failed (exit ${status}), see reports/mutation/${name}.log,`} ` +
          `in ${minutes(since)} min; load average ${load()}`,
      );
      resolve(ok);
    });
  });
}

const queue = [...names];
let failed = false;
await Promise.all(
  Array.from({ length: Math.min(jobs, queue.length) }, async () => {
    while (queue.length > 0) {
      if (!(await runGroup(queue.shift()))) failed = true;
    }
  }),
);
console.log(`mutation run done in ${minutes(started)} min; load average ${load()}`);

// Score per mutated file: killed + timeout over killed + timeout + survived + no coverage
// (compile errors and ignored mutants do not count).
console.log('\nmutation score per module:');
for (const name of names) {
  let report;
  try {
    report = JSON.parse(readFileSync(`reports/mutation/${name}.json`, 'utf8'));
  } catch {
    continue;
  }
  for (const [file, { mutants }] of Object.entries(report.files)) {
    const count = (status) => mutants.filter((m) => m.status === status).length;
    const detected = count('Killed') + count('Timeout');
    const undetected = count('Survived') + count('NoCoverage');
    const score = detected + undetected === 0 ? 100 : (100 * detected) / (detected + undetected);
    console.log(
      `  ${`${name}: ${file}`.padEnd(44)} ${score.toFixed(1).padStart(5)}%  detected ${detected} ` +
        `(${count('Timeout')} of them timed out), survived ${undetected}, compile errors ${count('CompileError')}`,
    );
  }
}
process.exit(failed ? 1 : 0);
